"""Optuna orchestration: objectives, samplers, budgets, storage, workers, outputs.

One trial: ``spaces.suggest`` draws a candidate, :func:`build_candidate` makes the model
(built from scratch, or converted from the trained base model with closed-form init and refit),
:func:`run_candidate` trains and evaluates it, and the trial stores everything needed to rebuild
it (``arch_json``: the recipe of :mod:`nas_sepconv.io`) with its ``accuracy`` (validation),
``test_accuracy`` (reported, never used to select), ``macs``, ``params``, ``wall_time_s``.

Pareto mode (default): objectives validation accuracy (max) and MACs (min), optionally params
and latency; NSGA-II by default.  Scalarised mode: MnasNet's reward ``ACC·(MACs/T)^w`` (Tan et
al., CVPR 2019; w = -0.07, or -0.15 as in MobileNetV3-Small), single objective, so a pruner
(median or Hyperband) can stop weak candidates after an epoch; its trials still record both
accuracy and MACs for the Pareto analysis.  Hard budgets (max MACs/params/latency) are Optuna
constraints; a candidate over a MACs/params budget is not trained (accuracy 0, infeasible).

Exactly ``trials`` trials finish (COMPLETE or PRUNED): workers claim a slot under a lock file
and re-check their rank after ``ask`` (several machines on one PostgreSQL storage); a failed
trial (NaN loss, out of memory, invalid candidate, a crash detected by the storage heartbeat)
is recorded as FAIL with its reason and does not use up a slot.  Running the same command again
resumes the study.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import optuna
import torch
import torch.nn as nn

from ..errors import CandidateError, StorageError, TrainingDiverged, UserInputError
from ..files import atomic_write, ensure_writable_dir
from ..storage import lock, normalise_storage_url, open_storage, redact, sqlite_path, storage_url_for, without_password
from .spaces import Space, load_space
from .suggestion import Candidate, suggest

__all__ = ["search", "SearchStatus", "build_candidate", "run_candidate", "storage_url_for", "normalise_storage_url", "open_study"]

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
SURPLUS = "surplus claim: another worker took the last slot"


@dataclass
class SearchStatus:
    """What the progress display shows."""

    target: int
    done: int = 0
    failed: int = 0
    running: int = 0
    front_size: int = 0
    best_accuracy: float | None = None
    last: str = ""
    #: outputs that could not be written (disk full, folder gone): the search goes on without them
    warning: str = ""


@dataclass
class _Settings:
    space: Space
    trials: int
    timeout: float | None
    storage: str
    study: str
    sampler: str
    seed: int
    device: str
    workers: int
    out_dir: Path
    retries: int
    heartbeat: int
    keep_weights: bool = True


# --------------------------------------------------------------------------------------------
# storage and study
# --------------------------------------------------------------------------------------------


def _sampler(name: str, seed: int, space: Space) -> optuna.samplers.BaseSampler:
    """Seeded samplers; hard budgets reach them as trial constraints (``Trial.set_constraint``)."""
    s = space.spec.search
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=s.population_size)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(10, max(2, s.trials // 3)))
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=min(10, max(2, s.trials // 3)))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UserInputError("--sampler", f"unknown sampler {name!r}", "use one of nsga2, tpe, gp, random")


def _pruner(space: Space) -> optuna.pruners.BasePruner:
    s = space.spec.search
    if s.mode != "scalarised" or s.pruner == "none":
        return optuna.pruners.NopPruner()
    if s.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=space.spec.train.epochs)
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)


def metric_names(space: Space) -> list[str]:
    s = space.spec.search
    return ["reward"] if s.mode == "scalarised" else list(s.objectives)


def open_study(settings: _Settings, *, worker: int = 0) -> optuna.Study:
    """Create or load the study (same name and storage: resumed)."""
    space = settings.space
    storage = open_storage(settings.storage, heartbeat=settings.heartbeat, stale_callback=_RetryStale(max_retry=settings.retries) if settings.retries else None)
    names = metric_names(space)
    directions = ["maximize" if n in ("accuracy", "reward") else "minimize" for n in names]
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=settings.study,
            directions=directions,
            sampler=_sampler(settings.sampler, settings.seed + worker, space),
            pruner=_pruner(space),
            load_if_exists=True,
        )
    except Exception as exc:
        if isinstance(exc, OSError) or _is_storage_failure(exc):
            raise _storage_error(exc, settings.storage, "opening the study") from None
        raise
    if [d.name.lower() for d in study.directions] != directions:
        raise UserInputError("--study", f"study {settings.study!r} exists with other objectives", "use another --study name")
    existing = study.user_attrs.get("space")
    recorded = study.user_attrs.get("space_yaml")
    if existing is None:  # new study; "space" is written last and marks the record complete
        try:
            study.set_metric_names(names)
            study.set_user_attr("space_yaml", space.text)
            study.set_user_attr("mode", space.spec.search.mode)
            study.set_user_attr("space", space.name)
        except Exception as exc:
            if isinstance(exc, OSError) or _is_storage_failure(exc):
                raise _storage_error(exc, settings.storage, "creating the study") from None
            raise
    elif existing != space.name or (recorded is not None and _defining(recorded) != _defining(space.text)):
        raise UserInputError(
            "--study", f"study {settings.study!r} was made with another version of space {existing!r}", "use another --study name, or the same space file"
        )
    return study


def _defining(space_yaml: str) -> dict:
    """What of a space defines its candidates and objectives: all but the description and the
    trial count (changing those resumes the same study)."""
    from .spaces import parse_space

    return parse_space(space_yaml).spec.model_dump(exclude={"description": True, "search": {"trials", "max_failures"}})


# --------------------------------------------------------------------------------------------
# candidates
# --------------------------------------------------------------------------------------------
class _Context:
    """Per-process state: the data set on the device, the trained base model (convert spaces)."""

    def __init__(self, settings: _Settings):
        from ..data import load_dataset

        self.settings = settings
        d = settings.space.spec.data
        self.data = load_dataset(d.dataset, root=d.root, val_fraction=d.val_fraction, seed=0, subset=d.subset, image_size=d.image_size).to(settings.device)
        self._base: nn.Module | None = None
        self._sites: list | None = None

    def base(self) -> nn.Module:
        """The trained base model of a convert space (loaded, or trained once and cached)."""
        if self._base is None:
            self._base = _prepare_base(self)
        return self._base

    def sites(self) -> list:
        if self._sites is None:
            from ..conversion import Policy, find_sites

            x = torch.randn(1, *self.data.input_shape)
            sites, _, _ = find_sites(self.base().cpu(), x)
            eligible = Policy(min_macs_saving=None)
            self._sites = [s for s in sites if eligible.decide(s)[0] is not None]
        return self._sites


def _base_recipe(ctx: _Context) -> dict[str, Any]:
    c = ctx.settings.space.spec.convert
    return {
        "kind": "converted",
        "model": c.model,
        "model_kwargs": dict(c.model_kwargs, num_classes=ctx.data.num_classes, in_channels=ctx.data.input_shape[0]),
        "width_mult": 1.0,
        "input_size": list(ctx.data.input_shape),
    }


def _prepare_base(ctx: _Context) -> nn.Module:
    """The base model of a convert space: its factory is the one the space names (the user's own
    file: that vouches for it), loaded from ``convert.weights``, from the cache of an earlier run
    (only if its recipe is exactly this space's), or trained once and cached."""
    from ..io import build_from_recipe, save_model
    from ..train import TrainConfig, fit

    c = ctx.settings.space.spec.convert
    if c.weights:
        path = Path(c.weights)
        if not path.is_file():
            raise UserInputError("convert.weights", f"{path} does not exist", "give a state dict (.safetensors or .pt) of the base model, or remove the field to train it")
        model = build_from_recipe(_base_recipe(ctx), allow_import=c.model)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        return model.eval()
    cache = ctx.settings.out_dir / "base.safetensors"
    with lock(ctx.settings.out_dir):
        if cache.is_file():
            return _load_base_cache(cache, ctx)
        model = build_from_recipe(_base_recipe(ctx), allow_import=c.model)
        cfg = TrainConfig(**ctx.settings.space.spec.train.model_dump(), seed=ctx.settings.seed)
        fit(model, ctx.data, config=replace(cfg, epochs=max(1, c.base_epochs)), device=ctx.settings.device)
        save_model(cache, model.cpu(), _base_recipe(ctx))
        return model.eval()


def _load_base_cache(cache: Path, ctx: _Context) -> nn.Module:
    """The cached base model of an earlier run, only if its recipe is the one this space makes:
    a results folder is shared, and its file must not choose what is built."""
    from ..io import FORMAT, load_model, read_recipe

    if read_recipe(cache) != {"format": FORMAT, **_base_recipe(ctx)}:
        raise UserInputError("convert.model", f"{cache} holds another base model than this space's", "delete it to train the base model again, or use another --out")
    return load_model(cache, allow_import=ctx.settings.space.spec.convert.model)


def build_candidate(ctx: _Context, candidate: Candidate) -> nn.Module:
    """The candidate's model, ready to train: built from scratch, or converted from the base."""
    from ..io import build_from_recipe

    if candidate.kind == "build":
        return build_from_recipe(candidate.recipe)
    from ..conversion import Policy, make_plan
    from ..conversion import apply_plan
    from ..conversion import apply_width_mult

    c = ctx.settings.space.spec.convert
    model = ctx.base().cpu()
    x = torch.randn(1, *candidate.recipe["input_size"])
    if candidate.recipe["width_mult"] != 1.0:
        model = apply_width_mult(model, candidate.recipe["width_mult"], example_inputs=x)
    rules = {k: v for k, v in candidate.recipe["rules"].items() if v is not None}
    if rules:
        policy = Policy(default=None, rules=rules, min_in_channels=1, skip_pointwise=False, skip_depthwise=False, min_macs_saving=None)
        plan = make_plan(model, policy, example_inputs=x)
        model = apply_plan(model, plan, init=c.init)
        candidate.recipe["plan"] = plan.to_json(indent=None)
        if c.init == "svd" and c.refit:
            from ..data import calibration_batches
            from ..conversion import refit

            batches = calibration_batches(ctx.data, n=c.calibration_images, batch_size=64)
            teacher = apply_width_mult(ctx.base().cpu(), candidate.recipe["width_mult"], example_inputs=x) if candidate.recipe["width_mult"] != 1.0 else ctx.base().cpu()
            # no BatchNorm re-estimation afterwards: the refit restores each conv's output, so the
            # original running statistics (from the whole training set) are the right ones
            refit(model, teacher, batches, plan=plan)
    return model


def _reward(accuracy: float, macs: int, space: Space) -> float:
    s = space.spec.search
    return accuracy * (macs / s.target_macs) ** s.reward_exponent


def run_candidate(ctx: _Context, candidate: Candidate, *, trial: Any = None, seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """Build, budget-check, train and evaluate one candidate; returns the model and metrics."""
    from ..measure import count_macs, count_params, measure_latency
    from ..train import TrainConfig, evaluate, fit

    space = ctx.settings.space
    s = space.spec.search
    started = time.perf_counter()
    model = build_candidate(ctx, candidate)
    x = torch.randn(1, ctx.data.input_shape[0], candidate.resolution, candidate.resolution)
    macs, params = count_macs(model, x), count_params(model)
    metrics: dict[str, Any] = {"macs": int(macs), "params": int(params), "arch": candidate.summary, "resolution": candidate.resolution}
    constraints: dict[str, float] = {}
    for key, limit, value in (("max_macs", s.max_macs, macs), ("max_params", s.max_params, params)):
        if limit is not None:
            constraints[key] = float(value - limit)
    feasible = all(c <= 0 for c in constraints.values())
    cfg = TrainConfig(**space.spec.train.model_dump(), seed=seed)
    teacher, features = None, []
    if candidate.kind == "convert":
        from ..conversion import plan_of
        from ..train import converted_features

        c = space.spec.convert
        cfg = replace(cfg, epochs=max(1, c.finetune_epochs), lr=c.finetune_lr, warmup_epochs=0.0 if c.finetune_epochs <= 1 else cfg.warmup_epochs)
        teacher = ctx.base() if c.distill else None
        # hints need the base's widths: a width-pruned student has other feature shapes
        if teacher is not None and c.feature_weight > 0 and candidate.recipe["width_mult"] == 1.0 and plan_of(model) is not None:
            features = converted_features(model)

    def report(epoch: int, val_acc: float) -> None:
        if trial is not None and s.mode == "scalarised":
            trial.report(_reward(val_acc, macs, space), epoch)
            if trial.should_prune():
                metrics.update(accuracy=val_acc, epochs=epoch)
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

    device = ctx.settings.device
    if not feasible:
        metrics.update(accuracy=0.0, test_accuracy=0.0, epochs=0, feasible=False)
    elif candidate.kind == "convert" and space.spec.convert.finetune_epochs == 0:
        model.to(device)
        metrics.update(
            accuracy=evaluate(model, ctx.data.val, data=ctx.data, device=device, resolution=candidate.resolution),
            test_accuracy=evaluate(model, ctx.data.test, data=ctx.data, device=device, resolution=candidate.resolution),
            epochs=0,
        )
    else:
        result = fit(model, ctx.data, config=cfg, device=device, resolution=candidate.resolution, teacher=teacher,
                     features=features, feature_weight=space.spec.convert.feature_weight if features else 0.0, on_epoch=report)
        metrics.update(accuracy=result.val_accuracy, test_accuracy=result.test_accuracy, epochs=result.epochs)
    if "latency_ms" in s.objectives or s.max_latency_ms is not None:
        metrics["latency_ms"] = measure_latency(model, x.to(device), repeats=10, warmup=3, threads=1)["median_ms"]
        if s.max_latency_ms is not None:
            constraints["max_latency_ms"] = metrics["latency_ms"] - s.max_latency_ms
    metrics["constraints"] = constraints
    metrics["feasible"] = all(c <= 0 for c in constraints.values())
    metrics["wall_time_s"] = time.perf_counter() - started
    if not math.isfinite(metrics["accuracy"]):
        raise TrainingDiverged("validation accuracy is not finite")
    return model, metrics


# --------------------------------------------------------------------------------------------
# workers
# --------------------------------------------------------------------------------------------


def _counts(study: optuna.Study) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    S = optuna.trial.TrialState
    return {
        "done": sum(t.state in FINISHED for t in trials),
        "running": sum(t.state == S.RUNNING for t in trials),
        "failed": sum(t.state == S.FAIL and t.user_attrs.get("fail_reason") != SURPLUS for t in trials),
    }


def _claim(study: optuna.Study, settings: _Settings) -> optuna.trial.Trial | str:
    """A new trial, or ``"finished"`` / ``"wait"``."""
    with lock(settings.out_dir):
        _fail_stale_trials(study, settings)
        n = _counts(study)
        if n["done"] >= settings.trials:
            return "finished"
        limit = settings.space.spec.search.max_failures
        if limit is None:  # a candidate or setup that fails every time must not loop forever
            limit = max(10, settings.trials)
        if n["failed"] >= limit:
            return "finished"
        if n["done"] + n["running"] >= settings.trials:
            return "wait"
        try:
            trial = study.ask()
        except Exception as exc:
            raise _storage_error(exc, settings.storage, "starting a trial") from None
        try:
            _Heartbeat.beat_once(study, trial, settings.heartbeat)  # a worker dying from here on is detected
            study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, _WORKER_ID)
            claimed = sorted(t.number for t in study.get_trials(deepcopy=False, states=(*FINISHED, optuna.trial.TrialState.RUNNING)))
            if claimed.index(trial.number) >= settings.trials:  # another machine raced us to the last slot
                _tell_failed(study, trial, SURPLUS)
                return "wait"
        except BaseException:  # Ctrl-C (or a storage error) before the trial ran: never leave it RUNNING
            _tell_failed(study, trial, "interrupted before it started")
            raise
        return trial


#: system attribute of a running trial: ``host:pid`` of the process that runs it
WORKER_ATTR = "nas_sepconv:worker"
_WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


def _fail_stale_trials(study: optuna.Study, settings: _Settings) -> None:
    """Fail the RUNNING trials whose worker died, each with its ``fail_reason``: those whose
    heartbeat stopped (Optuna's ``fail_stale_trials``, which records no reason), and those run
    by a process of this machine that is gone (a search killed, or stopped by a full disk, runs
    no heartbeat thread any more; without this a resumed search would wait for them)."""
    storage = study._storage
    stale: dict[int, str] = {}
    if settings.heartbeat and _heartbeat_enabled(storage):
        grace = 3 * settings.heartbeat
        for trial_id in storage._get_stale_trial_ids(study._study_id):
            stale[trial_id] = f"worker died: no heartbeat for {grace} s"
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner_host, _, pid = str(t.system_attrs.get(WORKER_ATTR, "")).rpartition(":")
        if owner_host == host and pid.isdigit() and not _alive(int(pid)):
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
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class _RetryStale(optuna.storages.RetryHeartbeatStaleTrialCallback):
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


class _Heartbeat:
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


def _fail_reason(exc: BaseException) -> str:
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return f"out of memory: {str(exc).splitlines()[0][:200]}"
    if isinstance(exc, (TrainingDiverged, CandidateError, UserInputError)):
        return f"{type(exc).__name__}: {exc}"
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}{where}"


def _run_one(ctx: _Context, study: optuna.Study, trial: optuna.trial.Trial) -> None:
    settings = ctx.settings
    space = settings.space
    beat = None
    metrics: dict[str, Any] = {}
    try:
        beat = _Heartbeat(study, trial, settings.heartbeat)
        candidate = suggest(space, trial, input_shape=ctx.data.input_shape, num_classes=ctx.data.num_classes, sites=ctx.sites() if space.kind == "convert" else None)
        trial.set_user_attr("arch", candidate.summary)
        trial.set_user_attr("seed", settings.seed + trial.number)
        _maybe_inject_failure(trial)  # mid-trial: the candidate is drawn, training about to start
        model, metrics = run_candidate(ctx, candidate, trial=trial, seed=settings.seed + trial.number)
        trial.set_user_attr("arch_json", json.dumps(candidate.recipe))
        for key, value in metrics.items():
            trial.set_user_attr(key, value)
        for key, value in metrics["constraints"].items():  # Optuna constraints: <= 0 is feasible
            trial.set_constraint(key, value)
        if settings.keep_weights and metrics.get("feasible", True):
            _save_weights(settings, trial, model, candidate)
        values = [_reward(metrics["accuracy"], metrics["macs"], space)] if space.spec.search.mode == "scalarised" else [metrics[k] for k in space.spec.search.objectives]
        try:
            study.tell(trial, values)
        except Exception as exc:  # the storage could not take the result (disk full, server gone)
            raise _storage_error(exc, settings.storage, f"recording trial {trial.number}") from None
    except optuna.TrialPruned as exc:
        for key in ("accuracy", "macs", "params", "arch", "epochs"):
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
        if _is_storage_failure(exc):
            _tell_failed(study, trial, "the storage failed while recording it", quiet=True)
            raise _storage_error(exc, settings.storage, f"recording trial {trial.number}") from None
        _tell_failed(study, trial, _fail_reason(exc))
    finally:
        if beat is not None:
            beat.stop()


def _save_weights(settings: _Settings, trial: optuna.trial.Trial, model: nn.Module, candidate: Candidate) -> None:
    """Save a trial's weights; a file that cannot be written (disk full, folder gone) costs the
    file only: the trial keeps its metrics and completes, with ``missing_artifacts`` saying
    what is missing (``export`` re-trains such a trial from its recipe)."""
    from ..io import save_model

    path = settings.out_dir / "weights" / f"trial_{trial.number}.safetensors"
    try:
        save_model(path, model.cpu(), candidate.recipe)
    except OSError as exc:
        trial.set_user_attr("missing_artifacts", [f"weights ({path.name}: {exc.strerror or exc})"])


def _is_storage_failure(exc: BaseException) -> bool:
    import sqlite3

    import sqlalchemy.exc

    return isinstance(exc, (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError, sqlite3.Error))


def _storage_error(exc: BaseException, url: str | None, doing: str) -> StorageError:
    """One line for a storage that failed (the chained SQLAlchemy traceback runs to ~500 lines)."""
    chain, seen = [], exc
    while seen is not None and len(chain) < 10:  # StorageInternalError <- OperationalError <- sqlite3 ...
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    texts = [str(e).strip() for e in chain if str(e).strip()]
    detail = next((t for t in texts if "full" in t.lower() or "too large" in t.lower()), texts[0] if texts else type(exc).__name__)
    detail = detail.splitlines()[0][:160]
    return StorageError(
        f"storage: cannot write to {redact(url) if url else 'the storage'} while {doing} ({detail}); "
        "free disk space (or mend the database), then run the same command again: finished trials are kept and the search resumes"
    )


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
            raise _storage_error(exc, None, f"recording trial {trial.number} as failed") from None


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
_INTERRUPTED = threading.Event()


def _interrupt(signum: int, frame: Any) -> None:
    _INTERRUPTED.set()
    raise KeyboardInterrupt


def _worker_loop(settings: _Settings, worker: int, on_finish: Callable[[], None] | None = None, *, parent: int | None = None) -> None:
    """Claim and run trials until the study holds ``settings.trials`` finished trials.  A
    spawned worker (``parent`` given) stops when its parent process is gone, so a killed
    ``nas-sepconv search`` leaves no orphans behind."""
    # we record heartbeats ourselves around ask/tell (see _Heartbeat); Optuna warns on ask()
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    ctx = _Context(settings)
    study = open_study(settings, worker=worker)
    deadline = None if settings.timeout is None else time.monotonic() + settings.timeout
    while deadline is None or time.monotonic() < deadline:
        if parent is not None and os.getppid() != parent:
            return
        claim = _claim(study, settings)
        if claim == "finished":
            return
        if claim == "wait":
            time.sleep(min(2.0, max(0.2, settings.heartbeat / 4 if settings.heartbeat else 1.0)))
            continue
        _run_one(ctx, study, claim)
        if on_finish:
            on_finish()
        if _INTERRUPTED.is_set():  # the KeyboardInterrupt was swallowed on the way (see _interrupt)
            raise KeyboardInterrupt


def quiet_optuna() -> None:
    """For the CLI and its worker processes, which show their own progress: Optuna's per-trial
    INFO logs and its notices that heartbeats, metric names and retry callbacks are
    experimental are noise to a user."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")


#: exit status of a worker stopped by a storage failure (EX_TEMPFAIL); its message goes up a queue
STORAGE_FAILED = 75


def _worker_main(settings: _Settings, worker: int, errors: Any = None) -> None:
    """A spawned worker.  It starts with Ctrl-C blocked (see :func:`_start_worker`): a Ctrl-C
    while it imported torch would have printed a traceback per worker; it arrives now."""
    quiet_optuna()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // max(1, settings.workers)))

    def interrupt_once(signum: int, frame: Any) -> None:  # Ctrl-C reaches us and the parent forwards it
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _INTERRUPTED.set()
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGINT, interrupt_once)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        _worker_loop(settings, worker, parent=os.getppid())
    except KeyboardInterrupt:  # the running trial is recorded FAIL; exit without a traceback
        sys.exit(130)
    except StorageError as exc:  # the parent reports it, once
        if errors is not None:
            errors.put(str(exc))
        sys.exit(STORAGE_FAILED)


# --------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------
def refresh_outputs(study: optuna.Study, out_dir: Path) -> SearchStatus | None:
    """Rewrite trials.csv, pareto.csv, pareto.png and pareto/trial_<n>.json; drop the saved
    weights of trials no longer on the front.  A file that cannot be written (disk full) is
    named in the status's ``warning``; the study holds everything, so the next refresh (or
    ``nas-sepconv report``) writes it again."""
    try:
        return _refresh_outputs(study, out_dir)
    except OSError as exc:
        status = SearchStatus(target=0)
        name = Path(exc.filename).name if getattr(exc, "filename", None) else "outputs"
        status.warning = f"could not write {name} ({exc.strerror or exc}); nas-sepconv report rewrites it"
        return status


def _refresh_outputs(study: optuna.Study, out_dir: Path) -> SearchStatus | None:
    from .. import results

    # only the weights of trials finished before the frame is loaded may go: a trial still
    # running (or started since) may have saved its weights already, in another worker
    finished = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    df = results.load(study)
    status = SearchStatus(target=0)
    if df.empty:
        return status
    results.write_outputs(df, out_dir)
    front = results.pareto_front(df)
    keep = set(int(n) for n in front["number"])
    pareto_dir = out_dir / "pareto"
    pareto_dir.mkdir(exist_ok=True)
    for _, row in front.iterrows():
        record = {k: (None if _isna(v) else v) for k, v in row.items() if k in ("number", "accuracy", "test_accuracy", "macs", "params", "latency_ms", "arch")}
        record["recipe"] = json.loads(row["arch_json"]) if isinstance(row.get("arch_json"), str) else None
        atomic_write(pareto_dir / f"trial_{int(row['number'])}.json", json.dumps(record, indent=2, default=_json_default))
    for path in pareto_dir.glob("trial_*.json"):
        if int(path.stem.split("_")[1]) not in keep:
            path.unlink(missing_ok=True)
    weights = out_dir / "weights"
    if weights.is_dir():
        for path in weights.glob("trial_*.safetensors"):
            number = int(path.stem.split("_")[1])
            if number in finished and number not in keep:
                path.unlink(missing_ok=True)
    complete = df[df["state"] == "COMPLETE"]
    status.front_size = len(front)
    status.best_accuracy = float(complete["accuracy"].max()) if len(complete) else None
    return status


def _isna(value: Any) -> bool:
    try:
        return bool(value != value) or value is None
    except (TypeError, ValueError):
        return False


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# --------------------------------------------------------------------------------------------
def search(
    space: "str | Path | Space" = "default",
    *,
    trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    study: str | None = None,
    sampler: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    workers: int = 1,
    out: str | Path = "results",
    retries: int = 1,
    heartbeat: int = 10,
    progress: Callable[[SearchStatus], None] | None = None,
) -> optuna.Study:
    """Run (or resume) a search until ``trials`` trials have finished; returns the study.

    Args:
        space: a bundled space name (``nas-sepconv spaces``) or a YAML path.
        trials: the number of finished (COMPLETE or PRUNED) trials the study should hold;
            defaults to the space's ``search.trials``.  Failed trials do not count.
        timeout: stop claiming new trials after this many seconds.
        storage: any Optuna storage URL, or a journal file path ending in ``.log``; default
            SQLite ``<out>/<study>/study.db``.
        study: the study name (default: the space name); outputs go to ``<out>/<study>/``.
        sampler: ``nsga2`` (default in pareto mode), ``tpe``, ``gp`` or ``random``.
        seed: seeds the sampler (worker i uses seed + i) and each trial (seed + trial number).
        device: ``cpu``, ``cuda``, ``cuda:1``.
        workers: local worker processes sharing the storage.
        retries: how many times a trial whose worker died is retried (heartbeat detection).
        heartbeat: heartbeat interval in seconds (RDB storages); a RUNNING trial without a
            heartbeat for 3 intervals is marked FAIL.
        progress: called with a :class:`SearchStatus` after each finished trial.
    """
    space = load_space(space)
    if trials is not None and trials < 1:
        raise UserInputError("--trials", f"must be >= 1, got {trials}")
    if workers < 1:
        raise UserInputError("--workers", f"must be >= 1, got {workers}")
    _check_workers(workers)
    if timeout is not None and math.isnan(timeout):
        raise UserInputError("--timeout", "nan is not a number of seconds", "give seconds > 0, or leave it out (or inf) for no limit")
    if timeout is not None and timeout <= 0:
        raise UserInputError("--timeout", f"must be > 0 seconds, got {timeout}")
    if timeout == math.inf:  # inf: no limit, as when --timeout is left out
        timeout = None
    if heartbeat < 0 or retries < 0:
        raise UserInputError("--heartbeat" if heartbeat < 0 else "--retries", f"must be >= 0, got {min(heartbeat, retries)}")
    _check_device(device)
    name = study or space.name
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UserInputError("--study", f"{name!r} is not a usable name", "use letters, digits, '-', '_' and '.'")
    out_dir = Path(out) / name
    ensure_writable_dir(out_dir, "--out")  # a new search, or the folder of the one it resumes
    settings = _Settings(
        space=space,
        trials=trials or space.spec.search.trials,
        timeout=timeout,
        storage=storage_url_for(storage, out_dir),
        study=name,
        sampler=sampler or ("tpe" if space.spec.search.mode == "scalarised" else space.spec.search.sampler),
        seed=seed,
        device=device,
        workers=workers,
        out_dir=out_dir,
        retries=retries,
        heartbeat=heartbeat,
    )
    _sampler(settings.sampler, seed, space)  # validate before creating anything
    if storage is not None:
        open_storage(settings.storage)  # a bad URL fails before the results directory exists
        if settings.storage.startswith("sqlite"):  # SQLite writes a journal beside the database
            ensure_writable_dir(Path(sqlite_path(settings.storage) or ".").parent, "--storage")
    from ..data import load_dataset

    d = space.spec.data
    try:  # bad data fails early, named by its field in the space file
        data = load_dataset(d.dataset, root=d.root, val_fraction=d.val_fraction, subset=d.subset, image_size=d.image_size)
    except UserInputError as exc:
        raise UserInputError("data." + exc.field.removeprefix("dataset.") if exc.field.startswith("dataset") else exc.field, exc.problem, exc.fix) from None
    if space.kind == "convert":
        _check_convert(space, data)  # a bad base model would otherwise fail every trial
    out_dir.mkdir(parents=True, exist_ok=True)
    the_study = open_study(settings)
    try:
        atomic_write(out_dir / "meta.json", json.dumps({"storage": without_password(settings.storage), "study": name, "space": space.name, "mode": space.spec.search.mode}, indent=2))
    except OSError as exc:  # (the folder was checked writable: a full disk)
        raise StorageError(f"--out: cannot write {out_dir / 'meta.json'} ({exc.strerror or exc}); free disk space and run the same command again") from None

    def update() -> None:
        with _sigint_deferred():  # Ctrl-C while writing outputs (or importing matplotlib) waits until they are written
            _update()

    def _update() -> None:
        status = refresh_outputs(the_study, out_dir) or SearchStatus(target=settings.trials)
        counts = _counts(the_study)
        status.target, status.done, status.failed, status.running = settings.trials, counts["done"], counts["failed"], counts["running"]
        done = [t for t in the_study.get_trials(deepcopy=False) if t.state.is_finished()]
        if done:
            last = max(done, key=lambda t: t.number)
            status.last = f"#{last.number} {last.state.name} {last.user_attrs.get('arch', '')} {last.user_attrs.get('fail_reason', '')}".strip()
        if progress:
            progress(status)

    _INTERRUPTED.clear()
    main = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if main:
        signal.signal(signal.SIGINT, _interrupt)
    try:
        if workers == 1:
            _worker_loop(settings, 0, on_finish=update)
        else:
            _run_workers(settings, update)
    except BaseException:
        try:  # the outputs of what finished; never in place of the error that stopped the run
            with contextlib.suppress(Exception):
                update()
        finally:
            if main:
                signal.signal(signal.SIGINT, signal.default_int_handler)
        raise
    try:
        update()
    finally:
        if main:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    return the_study


@contextlib.contextmanager
def _sigint_deferred():
    """Hold Ctrl-C back for the block (main thread only): it raises KeyboardInterrupt after."""
    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if previous not in (signal.default_int_handler, _interrupt):
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        _INTERRUPTED.set()
        caught.append(signum)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _check_convert(space: Space, data: Any) -> None:
    """The base model of a convert space can be built, and its weights file exists."""
    from ..models import model_from_name

    c = space.spec.convert
    if c.weights and not Path(c.weights).is_file():
        raise UserInputError("convert.weights", f"{c.weights} does not exist", "give a state dict (.safetensors or .pt) of the base model, or remove the field to train it")
    try:
        model_from_name(c.model, **dict(c.model_kwargs, num_classes=data.num_classes, in_channels=data.input_shape[0]))
    except UserInputError as exc:
        raise UserInputError(f"convert.{exc.field}" if exc.field in ("model", "num_classes", "in_channels") else exc.field, exc.problem, exc.fix) from None


#: host memory a worker process needs (torch, the data set on the device, one model training)
WORKER_MEMORY = 1 << 30


def _available_memory() -> int | None:
    """Available host memory in bytes (``MemAvailable`` of /proc/meminfo; else free pages)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check_workers(workers: int) -> None:
    """At most one worker per CPU core, and ~1 GiB of available memory per worker: more start
    that many torch processes that only fight over cores and memory (or get OOM-killed)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    memory = _available_memory()
    by_memory = max(1, memory // WORKER_MEMORY) if memory is not None else workers
    cap = min(cores, by_memory)
    if workers > cap:
        why = f"{cores} CPU cores" if cap == cores else f"{memory / (1 << 30):.1f} GiB of available memory at ~1 GiB per worker"
        raise UserInputError("--workers", f"{workers} is more than this machine can run ({cap}: {why})", f"use --workers {cap} or fewer")


def _check_device(device: str) -> None:
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserInputError("--device", f"{device!r} is not a device", "use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device", "CUDA is not available on this machine", "use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UserInputError("--device", f"{device!r} is not supported", "use cpu, cuda or cuda:N")


def _start_worker(ctx: Any, settings: _Settings, number: int, errors: Any) -> Any:
    """Start a spawned worker with Ctrl-C blocked: a terminal's Ctrl-C reaches every process of
    the group, and a worker still importing torch would die with a traceback of its own.  The
    blocked mask survives fork and exec; the worker unblocks it once its handler is in place,
    and a Ctrl-C that came meanwhile is delivered then (here too, after the start)."""
    proc = ctx.Process(target=_worker_main, args=(settings, number, errors), daemon=False)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        proc.start()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    return proc


def _run_workers(settings: _Settings, update: Callable[[], None]) -> None:
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.SimpleQueue()
    procs: dict[int, Any] = {}
    restarts = 0
    seen = -1
    try:
        for i in range(settings.workers):
            procs[i] = _start_worker(ctx, settings, i, errors)
        storage = open_storage(settings.storage)
        study_id = storage.get_study_id_from_name(settings.study)
        while procs:
            time.sleep(1.0)
            if _INTERRUPTED.is_set():  # swallowed on the way: see _interrupt
                raise KeyboardInterrupt
            for i, p in list(procs.items()):
                if p.exitcode is None:
                    continue
                del procs[i]
                if p.exitcode == STORAGE_FAILED:  # every worker would fail the same way
                    raise StorageError(errors.get() if not errors.empty() else "storage: a worker could not write to the storage; run the same command again to resume")
                if p.exitcode != 0 and restarts < 4 * settings.workers:  # a killed worker is replaced
                    restarts += 1
                    procs[i] = _start_worker(ctx, settings, i + settings.workers * restarts, errors)
            finished = sum(t.state.is_finished() for t in storage.get_all_trials(study_id, deepcopy=False))
            if finished != seen:
                seen = finished
                update()
    except BaseException:  # Ctrl-C or a failed storage: each worker records its running trial as FAIL, then stops
        with _sigint_deferred():
            for p in procs.values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGINT)
            for p in procs.values():
                p.join(timeout=30)
                if p.exitcode is None:
                    p.terminate()
                    p.join()
        raise
