"""A worker: claim a slot under the lock, run the trial, record it (a failure with its reason),
until the study holds its trials; fault injection for the tests; Ctrl-C handling."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch
import torch.nn as nn

from ..errors import CandidateError, StorageError, TrainingDiverged, UserInputError
from ..io import save_model
from ..results.stored import data_seed_of
from ..storage import lock, redact
from .candidates import TrialContext, objective_values, run_candidate
from .heartbeat import WORKER_ATTR, WORKER_ID, Heartbeat, fail_stale_trials
from .settings import Settings
from .study import is_storage_failure, open_study, storage_error
from .suggestion import Candidate
from .tally import FINISHED, MISSING_ARTIFACTS, SESSION_ATTR, SURPLUS, MissingWeights, counts, failure_limit


def _claim(study: optuna.Study, settings: Settings) -> optuna.trial.Trial | str:
    """A new trial, or ``"finished"`` / ``"wait"``."""
    with lock(settings.out_dir):
        fail_stale_trials(study, settings)
        n = counts(study, settings.session)
        if n["done"] >= settings.options.trials:
            return "finished"
        if n["failed"] >= failure_limit(settings):  # this run's failures: an earlier run's fault may be gone
            return "finished"
        if n["done"] + n["running"] >= settings.options.trials:
            return "wait"
        try:
            trial = study.ask()
        except Exception as exc:
            raise storage_error(exc, settings.options.storage, "starting a trial") from None
        try:
            Heartbeat.beat_once(study, trial, settings.options.heartbeat)  # a worker dying from here on is detected
            study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, WORKER_ID)
            study._storage.set_trial_system_attr(trial._trial_id, SESSION_ATTR, settings.session)
            claimed = sorted(
                t.number for t in study.get_trials(deepcopy=False, states=(*FINISHED, optuna.trial.TrialState.RUNNING))
            )
            if claimed.index(trial.number) >= settings.options.trials:  # another machine raced us to the last slot
                _tell_failed(study, trial, SURPLUS)
                return "wait"
        except BaseException:  # Ctrl-C (or a storage error) before the trial ran: never leave it RUNNING
            _tell_failed(study, trial, "interrupted before it started")
            raise
        return trial


def _fail_reason(exc: BaseException) -> str:
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return f"out of memory: {str(exc).splitlines()[0][:200]}"
    if isinstance(exc, (TrainingDiverged, CandidateError, UserInputError)):
        return f"{type(exc).__name__}: {exc}"
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}{where}"


def _run_one(ctx: TrialContext, study: optuna.Study, trial: optuna.trial.Trial) -> None:
    settings = ctx.settings
    space = settings.space
    beat = None
    metrics: dict[str, Any] = {}
    try:
        beat = Heartbeat(study, trial, settings.options.heartbeat)
        candidate = ctx.suggest(trial)
        trial.set_user_attr("arch", candidate.summary)
        trial.set_user_attr("seed", settings.options.seed + trial.number)
        trial.set_user_attr("threads", torch.get_num_threads())  # what it trained with (--threads)
        _maybe_inject_failure(trial)  # mid-trial: the candidate is drawn, training about to start
        model, metrics = run_candidate(ctx, candidate, trial=trial, seed=settings.options.seed + trial.number)
        trial.set_user_attr("arch_json", json.dumps(candidate.recipe.to_dict()))
        for key, value in metrics.items():
            trial.set_user_attr(key, value)
        for key, value in metrics["constraints"].items():  # Optuna constraints: <= 0 is feasible
            trial.set_constraint(key, value)
        if (
            settings.keep_weights and metrics.get("feasible", True) and not metrics.get("stopped_early")
        ):  # (a stopped trial is never on the front)
            _save_weights(settings, trial, model, candidate)
        values = objective_values(metrics, space)
        try:
            study.tell(trial, values)
        except Exception as exc:  # the storage could not take the result (disk full, server gone)
            raise storage_error(exc, settings.options.storage, f"recording trial {trial.number}") from None
    except optuna.TrialPruned as exc:  # its metrics so far: the last validation accuracy, MACs, params, epochs
        metrics = {**metrics, **getattr(exc, "metrics", {})}
        for key in ("accuracy", "macs", "params", "arch", "resolution", "epochs", "train_compute"):
            if key in metrics:
                trial.set_user_attr(key, metrics[key])
        trial.set_user_attr("pruned_reason", str(exc))
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    except KeyboardInterrupt:
        _tell_failed(study, trial, "interrupted (Ctrl-C)")
        raise
    except StorageError:
        _tell_failed(study, trial, "the storage failed while recording it", quiet=True)
        raise
    except Exception as exc:  # every failure of a candidate is recorded; the study goes on
        if is_storage_failure(exc):
            _tell_failed(study, trial, "the storage failed while recording it", quiet=True)
            raise storage_error(exc, settings.options.storage, f"recording trial {trial.number}") from None
        _tell_failed(study, trial, _fail_reason(exc))
    finally:
        if beat is not None:
            beat.stop()


def _save_weights(settings: Settings, trial: optuna.trial.Trial, model: nn.Module, candidate: Candidate) -> None:
    """Save a trial's weights; a file that cannot be written (disk full, folder gone) costs the
    file only: the trial keeps its metrics and completes, with ``missing_artifacts`` saying
    what is missing (``export`` re-trains such a trial from its recipe).  Any failure of the
    write counts, not only ``OSError``: safetensors raises its own ``SafetensorError`` for a
    full disk."""
    path = weights_path(settings.out_dir, trial.number)
    try:
        save_model(path, model.cpu(), candidate.recipe)
    except Exception as exc:  # noqa: BLE001 - the write failed, whatever raised it; the metrics stay
        detail = getattr(exc, "strerror", None) or " ".join(str(exc).split())[:200] or type(exc).__name__
        trial.set_user_attr(MISSING_ARTIFACTS, [MissingWeights(path.name, detail).to_attr()])


def weights_path(out_dir: Path, number: int) -> Path:
    """Where the weights of trial ``number`` of the study in ``out_dir`` are saved."""
    return out_dir / "weights" / f"trial_{number}.safetensors"


def _tell_failed(study: optuna.Study, trial: optuna.trial.Trial, reason: str, *, quiet: bool = False) -> None:
    """Record a trial as FAIL with its reason, unless it is finished already (told just before
    an interrupt, or failed by another worker that found its heartbeat stale).  A storage that
    cannot take it raises :class:`StorageError` (``quiet``: nothing, the caller raises one)."""
    try:
        trial.set_user_attr("fail_reason", reason)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError):
        pass
    except Exception as exc:  # the storage itself fails: the trial stays RUNNING until a resume fails it
        if not quiet:
            raise storage_error(exc, None, f"recording trial {trial.number} as failed") from None


def _maybe_inject_failure(trial: optuna.trial.Trial) -> None:
    """Fault injection for the reliability tests and the soak benchmark only:
    ``NAS_SEPCONV_INJECT_FAILURES="nan:3,7;raise:5;kill:9"`` makes those trial numbers fail."""
    spec = os.environ.get("NAS_SEPCONV_INJECT_FAILURES")
    if not spec:
        return
    for part in spec.split(";"):
        kind, _, numbers = part.partition(":")
        if str(trial.number) in numbers.split(","):
            if kind == "nan":
                raise TrainingDiverged(f"loss became nan (injected at trial {trial.number})")
            if kind == "raise":
                raise RuntimeError(f"injected failure at trial {trial.number}")
            if kind == "kill":  # a retried trial gets a new number, so it is not killed again
                os.kill(os.getpid(), 9)


#: set by Ctrl-C.  The handlers also raise KeyboardInterrupt at once, to stop the running trial;
#: but Python drops an exception raised while a finalizer (``__del__``, a weakref callback) runs,
#: so the claim loop checks this too and stops after the trial.
INTERRUPTED = threading.Event()


def _interrupt(signum: int, frame: Any) -> None:
    INTERRUPTED.set()
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigint_deferred():
    """Hold Ctrl-C back for the block (main thread only): it raises KeyboardInterrupt after."""
    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if previous not in (signal.default_int_handler, _interrupt):
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        INTERRUPTED.set()
        caught.append(signum)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


@contextlib.contextmanager
def interruptible():
    """Ctrl-C in the block sets :data:`INTERRUPTED` and raises KeyboardInterrupt (main thread,
    default handler only); the default handler is put back after the block."""
    INTERRUPTED.clear()
    main = (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )
    if main:
        signal.signal(signal.SIGINT, _interrupt)
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def worker_loop(
    settings: Settings, worker: int, on_finish: Callable[[], None] | None = None, *, parent: int | None = None
) -> None:
    """Claim and run trials until the study holds ``settings.options.trials`` finished trials.  A
    spawned worker (``parent`` given) stops when its parent process is gone, so a killed
    ``nas-sepconv search`` leaves no orphans behind."""
    # we record heartbeats ourselves around ask/tell (see Heartbeat); Optuna warns on ask()
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    study = open_study(settings, worker=worker)
    # every run of a study validates on the split of its first run's seed (a resume may give another --seed)
    ctx = TrialContext(settings, data_seed=data_seed_of(study.user_attrs, source=redact(settings.options.storage)))
    if "num_classes" not in study.user_attrs:  # chance accuracy, for the comparison (results/protocol.py)
        study.set_user_attr("num_classes", ctx.data.num_classes)
    ctx.study = study  # where the base model's accuracy is recorded (convert spaces)
    deadline = None if settings.options.timeout is None else time.monotonic() + settings.options.timeout
    while deadline is None or time.monotonic() < deadline:
        if parent is not None and os.getppid() != parent:
            return
        claim = _claim(study, settings)
        if claim == "finished":
            return
        if claim == "wait":
            time.sleep(min(2.0, max(0.2, settings.options.heartbeat / 4 if settings.options.heartbeat else 1.0)))
            continue
        _run_one(ctx, study, claim)
        if on_finish:
            on_finish()
        if INTERRUPTED.is_set():  # the KeyboardInterrupt was swallowed on the way (see _interrupt)
            raise KeyboardInterrupt


def quiet_optuna() -> None:
    """For the CLI and its worker processes, which show their own progress: Optuna's per-trial
    INFO logs and its notices that heartbeats, metric names and retry callbacks are
    experimental are noise to a user."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
