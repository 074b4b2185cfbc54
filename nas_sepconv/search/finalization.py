"""Finalisation of a one-shot study (``--finalize K``): the K candidates of the front its trials
found on inherited accuracy are each trained alone, and their accuracies replace the inherited
ones in every reader of the study.

An inherited accuracy ranks subnets; it is not what a subnet reaches when trained for itself.
Once-for-All (Cai et al., ICLR 2020, section 3.4) fine-tunes the subnets it specialises from
their inherited weights; single-path one-shot (Guo et al., ECCV 2020) retrains the architectures
it found from scratch.  Both starts are records of :data:`~.finalize_starts.FINALIZE_STARTS`
(the space's ``search.finalize_from``), trained with the space's ``train:`` recipe for
``search.finalize_epochs`` (default ``train.epochs``).

A finished trial's attributes cannot change in Optuna, so a finalisation is recorded in the
study (user attribute ``finalized:<number>``: :func:`~nas_sepconv.results.stored.with_finalized`
overlays it on the trial): ``accuracy``, ``test_accuracy`` and ``test_correct`` finalised,
``inherited_accuracy`` and ``inherited_test_accuracy`` kept, ``accuracy_source`` ``finalized``,
``epochs`` the finalisation's, ``train_compute`` the trial's plus the finalisation's.  The trial's
weights file (``weights/trial_<n>.safetensors``) is overwritten with the finalised subnet, a plain
model that ``export``, ``load_model``, ``profile`` and ONNX take like any other.  A trial already
finalised is skipped, so the same command resumes.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import torch
import torch.nn as nn

from ..errors import StorageError, UserInputError
from ..io import build_from_recipe, save_model
from ..measure import count_macs, torch_threads
from ..oneshot import inherited_subnet
from ..progress import progress as show_progress
from ..results import pareto_front
from ..results.stored import data_seed_of, finalized_key
from ..storage import redact
from ..train import fit
from .candidates import TrialContext, converted_candidate, measured_on_test, train_compute, training_recipe
from .convert_oneshot import extract_candidate
from .finalize_starts import FinalizeStart, finalize_start
from .inherited import CALIBRATION_IMAGES
from .outputs import refresh_outputs
from .schema import candidate_epochs
from .seeding import seeded
from .settings import Settings
from .suggestion import Candidate, StoredTrial
from .workers import weights_path

__all__ = ["check_finalize", "finalize_candidate", "finalize_front", "front_to_finalize", "refinalize"]


def check_finalize(finalize: int | None, settings: Settings) -> None:
    """``finalize`` is None, or a positive count of candidates for a study in a mode whose trials
    inherit their accuracy (mode oneshot)."""
    if finalize is None:
        return
    if isinstance(finalize, bool) or not isinstance(finalize, int) or finalize < 1:
        raise UserInputError("finalize", f"must be an integer >= 1, got {finalize!r}", "give e.g. finalize=8")
    mode = settings.space.spec.search.search_mode
    if mode.accuracy_source != "inherited":
        problem = f"finalises the inherited accuracies of a oneshot study; this space's mode is {mode.name}"
        raise UserInputError("finalize", problem, "leave it out, or use search.mode: oneshot")


def front_to_finalize(trials: list[optuna.trial.FrozenTrial], k: int, *, finalized: Collection[int] = ()) -> list[int]:
    """The numbers of the (at most) ``k`` trials that make up the study's finalised set: the
    trials already ``finalized`` (they count towards ``k``, so a re-run with a larger ``k``
    finalises ``k`` in all, never more), then trials of the Pareto front of inherited
    validation accuracy (max) and MACs (min) over the COMPLETE, feasible trials, spread over
    the part of the front not finalised yet when it holds more than the free places (evenly by
    rank in MACs, both ends kept).  Returned in that order: the ``finalized`` numbers first
    (ascending), then the new picks, fewest MACs first.  ``trials`` as the storage holds them
    (their ``accuracy`` the inherited one)."""
    done = sorted(set(finalized))
    rows = [
        {
            "number": t.number,
            "accuracy": t.user_attrs.get("accuracy"),
            "macs": t.user_attrs.get("macs"),
            "feasible": bool(t.user_attrs.get("feasible", True)),
        }
        for t in trials
        if t.state == optuna.trial.TrialState.COMPLETE
    ]
    free = k - len(done)
    if not rows or free <= 0:
        return done
    df = pd.DataFrame(rows).astype({"accuracy": "float64", "macs": "float64"})
    front = pareto_front(df, objectives=("accuracy", "macs"), directions=("maximize", "minimize"))
    front = front.sort_values(["macs", "number"])
    numbers = [int(n) for n in front["number"] if int(n) not in done]
    if len(numbers) > free:
        picks = np.unique(np.round(np.linspace(0, len(numbers) - 1, free)).astype(int))
        numbers = [numbers[i] for i in picks]
    return done + numbers


def finalize_candidate(
    ctx: TrialContext, candidate: Candidate, *, seed: int, epochs: int, start: FinalizeStart
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``candidate`` alone for ``epochs`` with the space's ``train:`` recipe (a convert
    space's: its fine-tuning, distilled from the base), from its inherited weights (the study's
    supernet, BatchNorm recalibrated) or from scratch (a convert space's: converted anew), seeded
    with ``seed``; the trained model and its ``accuracy`` (validation), ``test_accuracy``,
    ``test_correct``, ``epochs`` and ``train_compute`` (:func:`~.candidates.train_compute`)."""
    if start.inherits:
        ctx.supernet()  # loaded (or trained) outside the seeded block, as run_candidate does
    device = ctx.settings.options.device
    with seeded(seed, device):
        model = _start_model(ctx, candidate, start, seed)
        x = torch.randn(1, ctx.data.input_shape[0], candidate.resolution, candidate.resolution)
        macs = count_macs(model.cpu(), x)
        cfg, teacher, features = training_recipe(ctx, candidate, model, seed)  # a convert space's: distilled
        if candidate.space_kind.from_base and epochs <= 1:
            cfg = replace(cfg, warmup_epochs=0.0)
        result = fit(
            model,
            ctx.data,
            config=replace(cfg, epochs=epochs),
            device=device,
            resolution=candidate.resolution,
            teacher=teacher,
            features=features,
            feature_weight=ctx.settings.space.spec.convert.feature_weight if features else 0.0,
            evaluate_test=False,
        )
        metrics = {
            "accuracy": result.val_accuracy,
            **measured_on_test(ctx, model, candidate.resolution),
            "epochs": result.epochs,
        }
    metrics["train_compute"] = train_compute(ctx, result.epochs, macs)
    return model.eval(), metrics


def _start_model(ctx: TrialContext, candidate: Candidate, start: FinalizeStart, seed: int) -> nn.Module:
    """Where a finalised candidate starts: its inherited weights (BatchNorm recalibrated), or a
    fresh model (a convert space's: converted from the base in closed form and refit, as a
    stand-alone trial's)."""
    if not candidate.space_kind.from_base:
        if start.inherits:
            return inherited_subnet(
                ctx.supernet(), candidate.recipe.arch, ctx.data, images=CALIBRATION_IMAGES, seed=seed
            )
        return build_from_recipe(candidate.recipe)
    if start.inherits:
        return extract_candidate(ctx.supernet(), ctx.base(), candidate, ctx.data, images=CALIBRATION_IMAGES, seed=seed)
    return converted_candidate(ctx, candidate)


def finalize_front(settings: Settings, study: optuna.Study, k: int, *, progress: bool = False) -> list[int]:
    """Finalise front candidates of the one-shot ``study`` until ``k`` of its trials are
    finalised in all (:func:`front_to_finalize`), one after the other in this process, on ``settings.options.threads``,
    the results folder's outputs (``trials.csv``, the front) rewritten after each; ``progress``:
    show them (:mod:`nas_sepconv.progress`).  Returns the numbers of the trials finalised now."""
    check_finalize(k, settings)
    source = redact(settings.options.storage)
    trials = study.get_trials(deepcopy=False)
    finalized = [t.number for t in trials if finalized_key(t.number) in study.user_attrs]
    todo = [n for n in front_to_finalize(trials, k, finalized=finalized) if n not in finalized]
    if not todo:
        return []
    search = settings.space.spec.search
    start = finalize_start(search.finalize_from)
    epochs = search.finalize_epochs or max(1, candidate_epochs(settings.space.spec))
    by_number = {t.number: t for t in trials}
    with torch_threads(settings.options.threads), show_progress(progress, "finalize", len(todo), unit="trials") as bar:
        ctx = TrialContext(settings, data_seed=data_seed_of(study.user_attrs, source=source))
        for i, number in enumerate(todo):
            bar.update(i, info=f"#{number} {by_number[number].user_attrs.get('arch', '')}")
            _finalize_trial(ctx, study, by_number[number], epochs=epochs, start=start, source=source)
            refresh_outputs(study, settings.out_dir)
        bar.update(len(todo), info=f"finalised {', '.join(f'#{n}' for n in todo)}")
    return todo


def _finalize_trial(
    ctx: TrialContext,
    study: optuna.Study,
    trial: optuna.trial.FrozenTrial,
    *,
    epochs: int,
    start: FinalizeStart,
    source: str,
) -> None:
    """Finalise one trial: train it, overwrite its weights file, then record it in the study
    (in that order: a run stopped between the two finalises the trial again)."""
    started = time.perf_counter()
    candidate = ctx.suggest(StoredTrial(trial.params, number=trial.number, source=source))
    seed = trial.user_attrs.get("seed", ctx.settings.options.seed + trial.number)
    model, metrics = finalize_candidate(ctx, candidate, seed=seed, epochs=epochs, start=start)
    if ctx.settings.keep_weights:
        _save(weights_path(ctx.settings.out_dir, trial.number), model, candidate)
    record = {
        **metrics,
        "inherited_accuracy": trial.user_attrs.get("accuracy"),
        "inherited_test_accuracy": trial.user_attrs.get("test_accuracy"),
        "train_compute": int(trial.user_attrs.get("train_compute", 0)) + metrics["train_compute"],
        "accuracy_source": "finalized",
        "finalized_from": start.name,
        "threads": torch.get_num_threads(),  # what it trained on (export re-trains it so)
        "finalize_wall_time_s": time.perf_counter() - started,
    }
    study.set_user_attr(finalized_key(trial.number), record)


def _save(path: Path, model: nn.Module, candidate: Candidate) -> None:
    """Write the finalised weights over the trial's; a write that fails (a full disk) is a
    :class:`StorageError` (the trial is not recorded as finalised: the same command retries it)."""
    try:
        save_model(path, model.cpu(), candidate.recipe)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error for a full disk
        detail = getattr(exc, "strerror", None) or " ".join(str(exc).split())[:200] or type(exc).__name__
        raise StorageError(
            f"out: cannot write {path} ({detail}); free disk space and run the same command again"
        ) from None


def refinalize(ctx: TrialContext, trial: optuna.trial.FrozenTrial, *, source: str) -> nn.Module:
    """The finalised model of ``trial`` (as :func:`~nas_sepconv.results.stored.with_finalized`
    gives it) trained again, from its record's start and epochs with its seed: what ``export``
    makes of a finalised trial whose weights file is gone."""
    candidate = ctx.suggest(StoredTrial(trial.params, number=trial.number, source=source))
    start = finalize_start(trial.user_attrs.get("finalized_from"), field=finalized_key(trial.number))
    seed = trial.user_attrs.get("seed", trial.number)
    with torch_threads(trial.user_attrs.get("threads")):
        model, _ = finalize_candidate(ctx, candidate, seed=seed, epochs=trial.user_attrs["epochs"], start=start)
    return model
