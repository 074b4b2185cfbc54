"""Detecting a dead worker: the heartbeat of a running trial, failing stale trials with their
reason, and Optuna's retry of such a trial."""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import threading
import warnings

import optuna

from .settings import Settings

#: system attribute of a running trial: ``host:pid`` of the process that runs it
WORKER_ATTR = "nas_sepconv:worker"

#: this process's ``host:pid``, the value of WORKER_ATTR on the trials it runs
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


def fail_stale_trials(study: optuna.Study, settings: Settings) -> None:
    """Fail the RUNNING trials whose worker died, each with its ``fail_reason``: those whose
    heartbeat stopped (Optuna's ``fail_stale_trials``, which records no reason), and those run
    by a process of this machine that is gone (a search killed, or stopped by a full disk, runs
    no heartbeat thread any more; without this a resumed search would wait for them)."""
    storage = study._storage
    stale: dict[int, str] = {}
    if settings.options.heartbeat and _heartbeat_enabled(storage):
        grace = 3 * settings.options.heartbeat
        for trial_id in storage._get_stale_trial_ids(study._study_id):
            stale[trial_id] = f"worker died: no heartbeat for {grace} s"
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner_host, _, pid = str(t.system_attrs.get(WORKER_ATTR, "")).rpartition(":")
        if owner_host == host and pid.isascii() and pid.isdigit() and not _alive(int(pid)):
            stale.setdefault(t._trial_id, f"worker died: process {pid} is gone")
    callback = storage.get_heartbeat_stale_trial_callback() if _heartbeat_enabled(storage) else None
    for trial_id, reason in stale.items():
        try:  # the reason first: a finished trial takes no more attributes
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            if not storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker failed it first
            continue
        if callback is not None:
            callback(study, storage.get_trial(trial_id))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # (no process has a pid beyond the C int: a tampered record)
        return False
    except PermissionError:  # another user's process
        return True
    return True


class RetryStale(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a trial whose worker died, without the dead trial's ``fail_reason``
    (the retry copies its user attributes: it would complete with a failure reason)."""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trial = copy.copy(trial)
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k != "fail_reason"}
        super().__call__(study, trial)


def _heartbeat_enabled(storage: optuna.storages.BaseStorage) -> bool:
    """Whether the storage keeps heartbeats.  A study holds its RDBStorage wrapped in Optuna's
    cache layer, so an ``isinstance(..., RDBStorage)`` test is always false."""
    get_interval = getattr(storage, "get_heartbeat_interval", None)
    return get_interval is not None and get_interval() is not None


class Heartbeat:
    """Records the storage heartbeat of the running trial (Optuna does this only inside
    ``study.optimize``; we use ask/tell)."""

    def __init__(self, study: optuna.Study, trial: optuna.trial.Trial, interval: int):
        self._stop = threading.Event()
        storage = study._storage
        self._thread = None
        if interval and _heartbeat_enabled(storage):
            self.beat_once(study, trial, interval)

            def beat() -> None:
                while not self._stop.wait(interval):
                    with contextlib.suppress(Exception):
                        storage.record_heartbeat(trial._trial_id)

            self._thread = threading.Thread(target=beat, daemon=True)
            self._thread.start()

    @staticmethod
    def beat_once(study: optuna.Study, trial: optuna.trial.Trial, interval: int) -> None:
        if interval and _heartbeat_enabled(study._storage):
            with warnings.catch_warnings():  # Optuna warns that heartbeats are meant for optimize()
                warnings.simplefilter("ignore", UserWarning)
                study._storage.record_heartbeat(trial._trial_id)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
