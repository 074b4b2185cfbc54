"""One candidate: the per-process context (the data set on the device, the trained base model
of a convert space: :mod:`.base_model`), building the candidate's model, training and measuring
it (seeded: :mod:`.seeding`), the reward."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import torch
import torch.nn as nn

from ..conversion import INITS, Policy, apply_plan, apply_width_mult, find_sites, make_plan, plan_of, refit
from ..data import calibration_batches
from ..errors import TrainingDiverged
from ..io import build_from_recipe
from ..measure import count_macs, count_params, torch_threads
from ..oneshot import ConvertSupernet, Supernet
from ..results.protocol import CORRECT_ATTR, pack_correct
from ..train import TrainConfig, converted_features, correct_per_image, evaluate, fit
from .asha import RungLadder, StopAtRung
from .base_model import prepare_base, record_base
from .convert_oneshot import convert_supernet_compute, extract_candidate, prepare_convert_supernet
from .inherited import CALIBRATION_IMAGES, inherited_candidate, inherited_metrics, prepare_supernet, supernet_compute
from .latency import TrialLatency
from .options import SearchOptions
from .schema import candidate_epochs
from .seeding import seeded
from .settings import Settings
from .spaces import Space
from .suggestion import Candidate, StoredTrial, suggest


class TrialContext:
    """Per-process state: the data set on the device, the trained base model (convert spaces).

    Public for rebuilding a trial of a finished study (:meth:`for_rebuild`, :meth:`retrain`)."""

    def __init__(self, settings: Settings, *, data_seed: int | None = None):
        self.settings = settings
        #: seeds the validation hold-out (and ``data.subset``): the study's seed, so that each
        #: seed validates on its own images (the test split is the same for every seed)
        self.data_seed = settings.options.seed if data_seed is None else data_seed
        self.data = settings.space.spec.data.load(seed=self.data_seed).to(settings.options.device)
        self._base: nn.Module | None = None
        self._sites: list | None = None
        self._supernet: Supernet | ConvertSupernet | None = None
        #: the study a search records the base model's accuracy in (user attr ``base``); None
        #: when rebuilding a trial
        self.study: optuna.Study | None = None
        #: the ``latency_ms`` of this process's trials (predicted from the base model's table, or measured)
        self.latency = TrialLatency(
            settings.space, device=settings.options.device, base=self.base, input_shape=self.data.input_shape
        )

    def base(self) -> nn.Module:
        """The trained base model of a convert space (loaded, or trained once and cached); its
        accuracy and MACs are recorded in the study (see :func:`~.base_model.record_base`)."""
        if self._base is None:
            self._base = prepare_base(self.settings, self.data)
            if self.study is not None:
                record_base(self.settings, self.data, self._base, self.study)
        return self._base

    def supernet(self, *, progress: bool = False) -> Supernet | ConvertSupernet:
        """The study's supernet (mode oneshot): loaded, or trained once (:mod:`.inherited`);
        ``progress``: show its training's epochs."""
        if self._supernet is None:
            if self.settings.space.spec.space_kind.from_base:  # the base model with every site's blocks
                self._supernet = prepare_convert_supernet(
                    self.settings, self.data, self.base(), self.sites(), progress=progress
                )
                spent = convert_supernet_compute(self.settings, self.data, self.base())
            else:
                self._supernet = prepare_supernet(self.settings, self.data, progress=progress)
                spent = supernet_compute(self._supernet, self.settings, self.data)
            if self.study is not None:  # what it spent, for equal-compute comparisons (results.compare)
                self.study.set_user_attr("supernet_compute", spent)
        return self._supernet

    def sites(self) -> list:
        if self._sites is None:
            x = torch.randn(1, *self.data.input_shape)
            sites, _, _ = find_sites(self.base().cpu(), x)
            eligible = Policy(min_macs_saving=None)
            self._sites = [s for s in sites if eligible.decide(s)[0] is not None]
        return self._sites

    @classmethod
    def for_rebuild(
        cls, space: Space, *, device: str, out_dir: Path, study: str = "", data_seed: int = 0
    ) -> TrialContext:
        """A context to rebuild the trials of a study made with ``space`` (no storage; the base
        model of a convert space is looked for in ``out_dir``, as the search left it), on the
        data split of the study's ``data_seed`` (:func:`~nas_sepconv.results.stored.data_seed_of`)."""
        options = SearchOptions(
            trials=1, storage="", study=study, sampler="random", seed=data_seed, device=device, retries=0, heartbeat=0
        )
        return cls(Settings(space=space, options=options, out_dir=out_dir))

    def suggest(self, trial: optuna.trial.BaseTrial) -> Candidate:
        """The candidate ``trial`` (an Optuna trial, or a FixedTrial of a trial's parameters) draws."""
        space = self.settings.space
        return suggest(
            space,
            trial,
            input_shape=self.data.input_shape,
            num_classes=self.data.num_classes,
            sites=self.sites() if space.spec.space_kind.from_base else None,
        )

    def retrain(
        self, params: dict[str, Any], *, number: int, seed: int, threads: int | None = None, source: str = "the study"
    ) -> nn.Module:
        """The model of the trial with these parameters, drawn again and trained with ``seed`` on
        ``threads`` intra-op threads (the trial's: on the CPU the result depends on them).  The
        parameters must be ones the space can draw (:class:`~.suggestion.StoredTrial`; errors
        name ``source``, where they were read)."""
        candidate = self.suggest(StoredTrial(params, number=number, source=source))
        with torch_threads(threads):
            model, _ = run_candidate(self, candidate, seed=seed)
        return model


def build_candidate(ctx: TrialContext, candidate: Candidate, *, seed: int | None = None) -> nn.Module:
    """The candidate's model, ready to train: built from scratch, or converted from the base.
    In mode oneshot a convert space's candidate is its supernet path, BatchNorm recalibrated on
    images drawn with ``seed``: the trial's (None: the study's), as a build space's subnet is."""
    if not candidate.space_kind.from_base:
        return build_from_recipe(candidate.recipe)
    if ctx.settings.space.spec.search.search_mode.accuracy_source == "inherited":  # mode oneshot
        seed = ctx.settings.options.seed if seed is None else seed
        return extract_candidate(ctx.supernet(), ctx.base(), candidate, ctx.data, images=CALIBRATION_IMAGES, seed=seed)
    return converted_candidate(ctx, candidate)


def converted_candidate(ctx: TrialContext, candidate: Candidate) -> nn.Module:
    """A convert space's candidate as a stand-alone trial makes it: the base converted by the
    candidate's rules (and width), initialised as ``convert.init`` says and refit."""
    c = ctx.settings.space.spec.convert
    model = ctx.base().cpu()
    recipe = candidate.recipe
    x = torch.randn(1, *recipe.input_size)
    if recipe.width_mult != 1.0:
        model = apply_width_mult(model, recipe.width_mult, example_inputs=x)
    rules = {k: v for k, v in recipe.rules.items() if v is not None}
    if rules:
        policy = Policy(
            default=None,
            rules=rules,
            min_in_channels=1,
            skip_pointwise=False,
            skip_depthwise=False,
            min_macs_saving=None,
        )
        plan = make_plan(model, policy, example_inputs=x)
        model = apply_plan(model, plan, init=c.init)
        candidate.recipe = replace(recipe, plan=plan)
        if INITS[c.init].from_weights and c.refit:
            batches = calibration_batches(ctx.data, n=c.calibration_images, batch_size=64)
            teacher = (
                apply_width_mult(ctx.base().cpu(), recipe.width_mult, example_inputs=x)
                if recipe.width_mult != 1.0
                else ctx.base().cpu()
            )
            # no BatchNorm re-estimation afterwards: the refit restores each conv's output, so the
            # original running statistics (from the whole training set) are the right ones
            refit(model, teacher, batches, plan=plan)
    return model


def reward(accuracy: float, macs: int, space: Space) -> float:
    """The single-objective reward: accuracy times (MACs / target MACs) to the reward exponent."""
    s = space.spec.search
    return accuracy * (macs / s.target_macs) ** s.reward_exponent


def objective_values(metrics: dict[str, Any], space: Space) -> list[float]:
    """The values a trial tells its study, one per metric of the space's search mode (see
    :meth:`~nas_sepconv.results.modes.SearchMode.metric_names`): the reward is computed from
    the trial's accuracy and MACs, every other metric is the trial's own."""
    s = space.spec.search
    return [
        reward(metrics["accuracy"], metrics["macs"], space) if name == "reward" else metrics[name]
        for name in s.search_mode.metric_names(s.objectives)
    ]


def run_candidate(
    ctx: TrialContext, candidate: Candidate, *, trial: optuna.Trial | None = None, seed: int = 0
) -> tuple[nn.Module, dict[str, Any]]:
    """Build, budget-check, train and evaluate one candidate, all seeded with ``seed`` (see
    :func:`seeded`: a re-run reproduces it exactly on the CPU); returns the model and metrics."""
    if candidate.space_kind.from_base:
        ctx.base()  # trained (seeded on its own) first, if it is not yet: not inside the trial's seeded run
    if ctx.settings.space.spec.search.search_mode.accuracy_source == "inherited":
        ctx.supernet()  # likewise
    with seeded(seed, ctx.settings.options.device):
        return _run_candidate(ctx, candidate, trial=trial, seed=seed)


def _run_candidate(
    ctx: TrialContext, candidate: Candidate, *, trial: optuna.Trial | None, seed: int
) -> tuple[nn.Module, dict[str, Any]]:
    space = ctx.settings.space
    s = space.spec.search
    started = time.perf_counter()
    model = build_candidate(ctx, candidate, seed=seed)
    x = torch.randn(1, ctx.data.input_shape[0], candidate.resolution, candidate.resolution)
    macs, params = count_macs(model, x), count_params(model)
    metrics: dict[str, Any] = {
        "macs": int(macs),
        "params": int(params),
        "arch": candidate.summary,
        "resolution": candidate.resolution,
    }
    constraints = _size_constraints(space, macs, params)
    feasible = all(c <= 0 for c in constraints.values())
    cfg, teacher, features = training_recipe(ctx, candidate, model, seed)
    device = ctx.settings.options.device
    ladder = _ladder(trial, space)

    def report(epoch: int, val_acc: float) -> None:
        if ladder is not None and epoch in ladder.rungs:  # the multi-fidelity mode: go on, or StopAtRung
            if (
                "latency_ms" in s.objectives and "latency_ms" not in metrics
            ):  # fixed per candidate: measured once, at the first rung
                metrics["latency_ms"], metrics["latency_source"] = ctx.latency(model, x)
            ladder.on_epoch(epoch, val_acc, metrics)
        if trial is not None and s.search_mode.prunes:
            trial.report(reward(val_acc, macs, space), epoch)
            if trial.should_prune():
                metrics.update(accuracy=val_acc, epochs=epoch, train_compute=train_compute(ctx, epoch, macs))
                pruned = optuna.TrialPruned(f"pruned at epoch {epoch}")
                pruned.metrics = dict(metrics)  # what the trial measured, for its record (see workers._run_one)
                raise pruned

    if not feasible:
        metrics.update(accuracy=0.0, test_accuracy=0.0, epochs=0, feasible=False)
    elif s.search_mode.accuracy_source == "inherited":
        model = _inherit(ctx, candidate, model, metrics, seed)
    elif candidate.space_kind.from_base and space.spec.convert.finetune_epochs == 0:
        model.to(device)
        metrics.update(
            accuracy=evaluate(model, ctx.data.val, data=ctx.data, device=device, resolution=candidate.resolution),
            **measured_on_test(ctx, model, candidate.resolution),
            epochs=0,
        )
    else:
        metrics.update(_fit(ctx, candidate, model, cfg, teacher=teacher, features=features, report=report))
    if ladder is not None:
        metrics.update(ladder.attrs(metrics["epochs"]))
    if ("latency_ms" in s.objectives or s.max_latency_ms is not None) and "latency_ms" not in metrics:
        metrics["latency_ms"], metrics["latency_source"] = ctx.latency(model, x)
    if s.max_latency_ms is not None:
        constraints["max_latency_ms"] = metrics["latency_ms"] - s.max_latency_ms
    metrics["constraints"] = constraints
    metrics["feasible"] = all(c <= 0 for c in constraints.values())
    metrics["train_compute"] = train_compute(ctx, metrics["epochs"], macs)
    metrics["wall_time_s"] = time.perf_counter() - started
    if not math.isfinite(metrics["accuracy"]):
        raise TrainingDiverged("validation accuracy is not finite")
    return model, metrics


def training_recipe(
    ctx: TrialContext, candidate: Candidate, model: nn.Module, seed: int
) -> tuple[TrainConfig, nn.Module | None, list[str]]:
    """How the candidate trains: the space's ``train:`` recipe, or, converted from a base model,
    the ``convert:`` section's fine-tuning with distillation from the base (the teacher, and the
    features its hints match, if any)."""
    space = ctx.settings.space
    cfg = replace(space.spec.train, seed=seed)
    if not candidate.space_kind.from_base:
        return cfg, None, []
    c = space.spec.convert
    cfg = replace(
        cfg,
        epochs=max(1, c.finetune_epochs),
        lr=c.finetune_lr,
        warmup_epochs=0.0 if c.finetune_epochs <= 1 else cfg.warmup_epochs,
    )
    teacher = ctx.base() if c.distill else None
    # hints need the base's widths: a width-pruned student has other feature shapes
    hints = (
        teacher is not None
        and c.feature_weight > 0
        and candidate.recipe.width_mult == 1.0
        and plan_of(model) is not None
    )
    return cfg, teacher, converted_features(model) if hints else []


def _inherit(
    ctx: TrialContext, candidate: Candidate, model: nn.Module, metrics: dict[str, Any], seed: int
) -> nn.Module:
    """Mode oneshot: the candidate's subnet with weights from the study's supernet (its
    metrics added to ``metrics``) instead of a trained model.  A convert space's ``model`` is
    that already (:func:`build_candidate`)."""
    device = ctx.settings.options.device
    if candidate.space_kind.from_base:
        metrics.update(inherited_metrics(model, candidate, ctx.data, device=device))
        return model
    model, inherited = inherited_candidate(ctx.supernet(), candidate, ctx.data, device=device, seed=seed)
    metrics.update(inherited)
    return model


def _size_constraints(space: Space, macs: int, params: int) -> dict[str, float]:
    """The candidate's hard budgets on MACs and params that the space sets, as Optuna
    constraints (how far over the limit: <= 0 when it is met)."""
    s = space.spec.search
    constraints: dict[str, float] = {}
    for key, limit, value in (("max_macs", s.max_macs, macs), ("max_params", s.max_params, params)):
        if limit is not None:
            constraints[key] = float(value - limit)
    return constraints


def _fit(
    ctx: TrialContext,
    candidate: Candidate,
    model: nn.Module,
    cfg: TrainConfig,
    *,
    teacher: nn.Module | None,
    features: list,
    report: Callable[[int, float], None],
) -> dict[str, Any]:
    """Train the candidate; its accuracy, test accuracy and epochs.  A trial that the
    multi-fidelity mode stops at a rung (:class:`~.asha.StopAtRung`) ends with that rung's
    validation accuracy, and its test accuracy measured then."""
    device, resolution = ctx.settings.options.device, candidate.resolution
    try:
        result = fit(
            model,
            ctx.data,
            config=cfg,
            device=device,
            resolution=resolution,
            teacher=teacher,
            features=features,
            feature_weight=ctx.settings.space.spec.convert.feature_weight if features else 0.0,
            on_epoch=report,
            evaluate_test=False,  # measured below, image by image (measured_on_test)
        )
    except StopAtRung as stop:
        return {"accuracy": stop.accuracy, **measured_on_test(ctx, model, resolution), "epochs": stop.epoch}
    return {"accuracy": result.val_accuracy, **measured_on_test(ctx, model, resolution), "epochs": result.epochs}


def measured_on_test(ctx: TrialContext, model: nn.Module, resolution: int) -> dict[str, Any]:
    """``test_accuracy`` and ``test_correct`` (which test images it predicts right, packed:
    :func:`~nas_sepconv.results.protocol.pack_correct`, what the comparison's bootstrap
    resamples); ``test_accuracy`` None when the data set has no test split."""
    if len(ctx.data.test) == 0:
        return {"test_accuracy": None}
    correct = correct_per_image(
        model, ctx.data.test, data=ctx.data, device=ctx.settings.options.device, resolution=resolution
    ).numpy()
    return {"test_accuracy": float(correct.mean()), CORRECT_ATTR: pack_correct(correct)}


def train_compute(ctx: TrialContext, epochs: int, macs: int) -> int:
    """What a trial spent training: the training images it saw (``epochs`` x the training
    split) times the candidate's forward MACs at its resolution (a teacher's forward passes,
    the backward pass and evaluation are not counted: the same for every candidate of a
    comparison, they scale it)."""
    return int(epochs) * len(ctx.data.train) * int(macs)


def _ladder(trial: optuna.Trial | None, space: Space) -> RungLadder | None:
    """The trial's rungs in the multi-fidelity mode (:mod:`.asha`); None otherwise."""
    mf = space.spec.search.multi_fidelity
    if mf is None or not isinstance(trial, optuna.trial.Trial):
        return None
    return RungLadder(
        trial, rungs=mf.rungs(candidate_epochs(space.spec)), eta=mf.eta, objectives=space.spec.search.objectives
    )
