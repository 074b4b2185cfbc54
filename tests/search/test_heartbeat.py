"""A RUNNING trial's worker record read back from a tampered study (issue 28, family 4): a pid
no process can have fails the trial as gone, never a traceback from ``os.kill`` or ``int``."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import optuna

from nas_sepconv.search.heartbeat import WORKER_ATTR, fail_stale_trials


def _orphan(tmp_path, pid: str) -> optuna.Study:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}")
    trial = study.ask()
    study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, f"{socket.gethostname()}:{pid}")
    fail_stale_trials(study, SimpleNamespace(options=SimpleNamespace(heartbeat=0)))
    return study


def test_a_pid_beyond_a_c_int_fails_the_trial_as_gone(tmp_path):
    (after,) = _orphan(tmp_path, "9" * 30).get_trials()
    assert after.state == optuna.trial.TrialState.FAIL
    assert after.user_attrs["fail_reason"].startswith("worker died: process")


def test_a_pid_of_non_ascii_digits_is_no_worker_record(tmp_path):
    (after,) = _orphan(tmp_path, "\u00b2").get_trials()  # str.isdigit() says yes, int() cannot read it
    assert after.state == optuna.trial.TrialState.RUNNING
