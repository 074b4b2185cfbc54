"""Supernet training under torchrun: two gloo processes on the CPU (supernet_ddp_worker.py)
train the same weights in both, and rank 0 writes the checkpoint."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import supernet_ddp_worker
import torch

from nas_sepconv.oneshot import Supernet, load_supernet, read_checkpoint

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[Path, list[dict]]:
    """The worker in 2 processes with the environment torchrun gives its workers."""
    out = tmp_path_factory.mktemp("supernet_ddp")
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
            [sys.executable, supernet_ddp_worker.__file__, str(out)],
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
    return out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_two_processes_train_one_supernet(two_ranks):
    out, (r0, r1) = two_ranks
    assert r0["state"].keys() == r1["state"].keys()
    for key in r0["state"]:  # the ranks agree bit for bit (BatchNorm statistics too: rank 0's)
        assert torch.equal(r0["state"][key], r1["state"][key]), key
    assert r0["checkpoint"] == r1["checkpoint"] and r0["checkpoint"].epoch == 2
    assert len(r0["checkpoint"].history) == 2 and all(v == v for v in r0["checkpoint"].history)
    saved = load_supernet(out / "supernet", r0["space"]).state_dict()
    assert all(torch.equal(saved[k], r0["state"][k]) for k in saved)
    torch.manual_seed(supernet_ddp_worker.CFG.seed)
    start = Supernet(r0["space"]).state_dict()
    assert not all(torch.equal(start[k], r0["state"][k]) for k in start)  # it trained


def test_each_process_trains_on_its_shard_of_the_global_batch(two_ranks, tmp_path):
    """One process at the same global batch: not the same weights (each process normalises its
    shard with its own BatchNorm statistics; unsharded, the two would be equal), but the same
    training: the epochs' losses agree closely."""
    _, (r0, _) = two_ranks
    torch.set_num_threads(1)
    one = supernet_ddp_worker.run(tmp_path / "one")
    assert not all(torch.equal(one["state"][k], r0["state"][k]) for k in one["state"])
    history = torch.tensor(r0["checkpoint"].history)
    alone = torch.tensor(read_checkpoint(tmp_path / "one").history)
    torch.testing.assert_close(history, alone, rtol=0.01, atol=0)
