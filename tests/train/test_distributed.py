"""fit and distill under torchrun: two gloo processes on the CPU train to the same weights as one
process with the same global batch (the runs are in ddp_worker.py), and init_distributed /
is_main_process without a process group."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import ddp_worker
import pytest
import torch

from nas_sepconv.errors import UserInputError
from nas_sepconv.train import init_distributed, is_main_process

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    """Every run of ddp_worker in 2 processes, per rank.  The processes get the environment
    torchrun gives its workers (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) without
    torchrun's agent, which would cost another interpreter's start; the README recipe's test
    runs torchrun itself."""
    out = tmp_path_factory.mktemp("ddp")
    base = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, ddp_worker.__file__, str(out)],
            env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    try:
        logs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _assert_same(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol, msg=lambda m: f"{k}: {m}")


def _no_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "seconds"} for e in history]


def _assert_same_history(a: list[dict], b: list[dict], rel: float) -> None:
    assert len(a) == len(b)
    for ea, eb in zip(a, b):
        for key in ("train_loss", "val_accuracy", "lr"):
            assert ea[key] == pytest.approx(eb[key], rel=rel, nan_ok=True), key


@pytest.mark.parametrize("run, tol", [("dataset", 1e-5), ("loader", 1e-10), ("mapstyle", 1e-10)])
def test_two_processes_train_like_one_with_the_same_global_batch(two_ranks, run, tol):
    """No BatchNorm: averaging two shards' gradients is the global batch's gradient, so DDP
    reaches one process's weights (float32 Dataset: within rounding; float64 DataLoader and
    TensorDataset: to ~1e-10)."""
    one = getattr(ddp_worker, f"{run}_run")(0, 1)
    r0, r1 = two_ranks[0][run], two_ranks[1][run]
    _assert_same(r0["state"], r1["state"], rtol=0, atol=0)  # the ranks agree bit for bit
    _assert_same(r0["state"], one["state"], rtol=tol, atol=tol)
    _assert_same_history(r0["history"], one["history"], rel=tol)
    assert _no_seconds(r0["history"]) == _no_seconds(r1["history"])  # loss and accuracy reduced across the ranks
    moved = max(
        (one["state"][k] - ddp_worker.no_bn_model(one["state"][k].dtype).state_dict()[k]).abs().max().item()
        for k in one["state"]
    )
    assert moved > 1e-3  # it trained
    if run == "loader":
        assert r0["sampler_epoch"] == r1["sampler_epoch"] == 1  # set_epoch every epoch (0-based)
    elif run == "dataset":
        assert r0["test"] == pytest.approx(one["test"])
        # each process trains on its half of every global batch: the halves add up to it
        assert [n for n, _ in one["seen"]] == [16] * 8
        assert [n for n, _ in r0["seen"]] == [n for n, _ in r1["seen"]] == [8] * 8
        for (_, s0), (_, s1), (_, s) in zip(r0["seen"], r1["seen"], one["seen"]):
            assert s0 + s1 == pytest.approx(s, rel=1e-6) and s0 != pytest.approx(s1)


def test_distill_with_batchnorm_keeps_the_ranks_identical(two_ranks):
    """BatchNorm normalises each shard by its own statistics; rank 0's running statistics are
    broadcast after each epoch, so both processes end with the same model and history.  The
    teacher is not wrapped nor changed, and only rank 0 shows progress."""
    r0, r1 = two_ranks[0]["distill_bn"], two_ranks[1]["distill_bn"]
    _assert_same(r0["state"], r1["state"], rtol=0, atol=0)
    assert _no_seconds(r0["history"]) == _no_seconds(r1["history"])
    assert r0["teacher_unchanged"] and r1["teacher_unchanged"]
    assert "train" in r0["stderr"] and r1["stderr"] == ""


def test_loader_without_distributed_sampler_is_refused_under_ddp(two_ranks):
    for rank in two_ranks:
        assert rank["refused"]["error"].startswith("data:")
        assert "DistributedSampler" in rank["refused"]["error"]
    assert ddp_worker.refused_run(0, 1)["error"] is None  # one process: any loader


def test_a_loss_that_diverges_in_one_process_stops_every_process(two_ranks):
    """Rank 1's loss is NaN from step 1, rank 0's only once the averaged gradients reach it:
    both raise, naming the first bad step of any process (none waits forever)."""
    for rank in two_ranks:
        assert rank["diverged"]["error"].startswith("loss became nan or inf at epoch 1 step 1;")


def test_init_distributed_without_torchrun_is_one_process(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    device = init_distributed()
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert not torch.distributed.is_initialized()
    assert is_main_process()
    with pytest.raises(UserInputError, match="^backend"):
        init_distributed(backend="tcp")
