"""--threads (issue 19): the automatic choice per workload, and the count reaching the trials
(the single-process path and the worker processes); a bad count is one line naming --threads."""

from __future__ import annotations

import optuna
import pytest
import torch
import yaml
from conftest import FAST_SPACE
from typer.testing import CliRunner

import nas_sepconv as ns
from nas_sepconv.cli import app
from nas_sepconv.measure import MAX_THREADS
from nas_sepconv.search.threads import SMALL_BATCH_ELEMENTS, choose_threads


def test_small_inputs_train_on_one_thread_large_ones_share_the_cores():
    digits, cifar, imagenet = (1, 16, 16), (3, 32, 32), (3, 224, 224)
    for cores in (1, 2, 16):
        for workers in (1, 2):
            assert choose_threads(digits, batch_size=128, workers=workers, cores=cores) == 1
    assert choose_threads(cifar, batch_size=128, workers=1, cores=2) == 2
    assert choose_threads(cifar, batch_size=128, workers=2, cores=8) == 4
    assert choose_threads(cifar, batch_size=128, workers=3, cores=8) == 2
    assert choose_threads(cifar, batch_size=128, workers=4, cores=2) == 1  # never 0
    assert choose_threads(imagenet, batch_size=2, workers=1, cores=16) == 16  # two big images are large
    assert choose_threads(cifar, batch_size=8, workers=1, cores=16) == 1  # 8 x 3x32x32 is small
    assert 8 * 3 * 32 * 32 < SMALL_BATCH_ELEMENTS <= 128 * 3 * 32 * 32
    assert choose_threads(cifar, batch_size=128) >= 1  # this machine's cores


def test_a_machine_of_many_cores_gets_at_most_the_bound_of_threads():
    """A trial records its threads, and a results folder's are read back within --threads'
    bound: the default never exceeds it."""
    assert choose_threads((3, 32, 32), batch_size=128, workers=1, cores=1024) == MAX_THREADS


def _space(tmp_path, trials: int) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(dict(FAST_SPACE, search={"trials": trials, "sampler": "random"})))
    return str(path)


def _threads(study: optuna.Study) -> list[int]:
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done, [t.user_attrs.get("fail_reason") for t in study.trials]
    return [t.user_attrs["threads"] for t in done]


def test_threads_reach_the_trial_and_are_restored(tmp_path):
    space = _space(tmp_path, 1)
    torch.set_num_threads(3)
    study = ns.search(space, trials=1, out=tmp_path / "a", heartbeat=0, threads=2)
    assert _threads(study) == [2] and torch.get_num_threads() == 3
    study = ns.search(space, trials=1, out=tmp_path / "b", heartbeat=0)  # automatic: digits are small
    assert _threads(study) == [1] and torch.get_num_threads() == 3
    assert ns.results.load(tmp_path / "b" / "tiny")["threads"].tolist() == [1]


def test_threads_reach_the_worker_processes(tmp_path):
    study = ns.search(_space(tmp_path, 2), trials=2, out=tmp_path / "w", heartbeat=0, workers=2, threads=2)
    assert _threads(study) == [2, 2]


@pytest.mark.parametrize("value", ["0", "-1", "999"])
def test_bad_threads_is_one_line_naming_the_flag(value, tmp_path):
    result = CliRunner().invoke(
        app, ["search", "--space", _space(tmp_path, 1), "--threads", value, "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --threads:"), result.stderr
    assert not (tmp_path / "out").exists()
