"""Training, evaluation and knowledge distillation on a device-resident :class:`~nas_sepconv.data.Dataset`.

:func:`fit` is the one training loop: candidate training in the search, fine-tuning of converted
models, and distillation (:func:`distill`) all go through it.  It is seeded (two runs with the
same :class:`TrainConfig` give identical results on the CPU), raises
:class:`~nas_sepconv.errors.TrainingDiverged` as soon as the loss stops being finite, and reports
validation accuracy after every epoch to an ``on_epoch`` callback (the search forwards it to
Optuna's pruners; an exception raised there, such as ``optuna.TrialPruned``, propagates).

On CUDA it uses mixed precision (bfloat16 where supported, else float16 with a gradient scaler)
and channels-last memory format; on the CPU it runs plain float32.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..data import Dataset, DeviceLoader, Split
from ..errors import TrainingDiverged, UserInputError

__all__ = [
    "TrainConfig", "FitResult", "fit", "evaluate", "distill", "converted_features", "reestimate_batchnorm",
    "OPTIMIZERS", "SCHEDULES", "MAX_EPOCHS", "MAX_BATCH_SIZE",
]

@dataclass(frozen=True)
class Optimizer:
    """A ``TrainConfig.optimizer``: ``build(param_groups, lr)`` makes it (weight decay is per group)."""

    name: str
    description: str
    build: Callable[[list[dict], float], torch.optim.Optimizer]


@dataclass(frozen=True)
class Schedule:
    """A ``TrainConfig.schedule``: ``factor(warm, total)`` is the multiplier of the peak lr at each
    step (``LambdaLR``), for ``warm`` warm-up steps out of ``total``."""

    name: str
    description: str
    factor: Callable[[int, int], Callable[[int], float]]


def _onecycle(warm: int, total: int) -> Callable[[int], float]:
    lo, end = 1.0 / 25.0, 1.0 / 25e4  # torch's OneCycleLR shape: div_factor 25, final_div_factor 1e4, cos anneal

    def onecycle(step: int) -> float:
        if step < warm:
            return lo + (1 - lo) * (1 - math.cos(math.pi * step / warm)) / 2
        t = min(1.0, (step - warm) / max(1, total - 1 - warm))
        return end + (1 - end) * (1 + math.cos(math.pi * t)) / 2

    return onecycle


def _cosine(warm: int, total: int) -> Callable[[int], float]:
    def cosine(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        t = min(1.0, (step - warm) / max(1, total - warm))
        return 0.5 * (1 + math.cos(math.pi * t))

    return cosine


#: The optimizers of ``TrainConfig.optimizer``, by name.
OPTIMIZERS: dict[str, Optimizer] = {
    o.name: o
    for o in (
        Optimizer("sgd", "SGD with Nesterov momentum 0.9",
                  lambda groups, lr: torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)),
        Optimizer("adamw", "AdamW (decoupled weight decay)", lambda groups, lr: torch.optim.AdamW(groups, lr=lr)),
    )
}
#: The learning-rate schedules of ``TrainConfig.schedule``, by name.
SCHEDULES: dict[str, Schedule] = {
    s.name: s
    for s in (
        Schedule("onecycle", "warm up from lr/25 along a half cosine, then cosine down to lr/25e4 (Smith & Topin 2019)",
                 _onecycle),
        Schedule("cosine", "linear warm-up from 0, then cosine to 0", _cosine),
    )
}
#: The largest ``epochs`` and ``batch_size``: a value past these is a typo, not a plan.
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536
_CUDA_CHECK_EVERY = 50  # steps between finiteness checks on CUDA (each one is a host sync)


@dataclass
class TrainConfig:
    """How :func:`fit` trains.

    Attributes:
        epochs: passes over the training split, 1..:data:`MAX_EPOCHS`.
        batch_size: images per step, 1..:data:`MAX_BATCH_SIZE`.
        optimizer: a name of :data:`OPTIMIZERS`: ``"sgd"`` (Nesterov momentum 0.9) or ``"adamw"``.
        lr: peak learning rate.  Typical: 0.1 for SGD at batch size 128 (scale linearly with
            the batch size), 1e-3 to 3e-3 for AdamW.
        weight_decay: L2 (SGD) or decoupled (AdamW) weight decay, applied to weights only (not
            to biases or normalisation parameters).  Typical: 5e-4 for SGD, 0.05 for AdamW.
        schedule: a name of :data:`SCHEDULES`: ``"onecycle"`` (warm up from lr/25 to lr along a half cosine over
            ``warmup_epochs``, then cosine down to lr/25e4; Smith & Topin 2019) or ``"cosine"``
            (linear warm-up from 0 over ``warmup_epochs``, then cosine to 0).  The learning rate
            changes every step.
        warmup_epochs: length of the warm-up, in epochs (fractions allowed).
        label_smoothing: cross-entropy label smoothing, in [0, 1).
        amp: mixed precision on CUDA (bfloat16 autocast where supported, else float16 with a
            gradient scaler); ignored on the CPU.
        channels_last: channels-last memory format on CUDA; ignored on the CPU.
        grad_clip: clip the global gradient norm to this value; ``None`` to not clip.
        seed: seeds ``torch.manual_seed`` and the data order and augmentation.
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    amp: bool = True
    channels_last: bool = True
    grad_clip: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`UserInputError` naming ``train.<field>`` for the first bad field."""

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_real(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not is_int(self.epochs) or not 1 <= self.epochs <= MAX_EPOCHS:
            raise UserInputError("train.epochs", f"must be a positive int of at most {MAX_EPOCHS}, got {self.epochs!r}", "use e.g. 10")
        if not is_int(self.batch_size) or not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise UserInputError(
                "train.batch_size", f"must be a positive int of at most {MAX_BATCH_SIZE}, got {self.batch_size!r}", "use e.g. 128"
            )
        if not isinstance(self.optimizer, str) or self.optimizer not in OPTIMIZERS:
            raise UserInputError("train.optimizer", f"unknown optimizer {self.optimizer!r}", f"use one of {', '.join(OPTIMIZERS)}")
        if not is_real(self.lr) or self.lr <= 0:
            raise UserInputError("train.lr", f"must be a positive number, got {self.lr!r}", "use e.g. 0.1 (sgd) or 1e-3 (adamw)")
        if not is_real(self.weight_decay) or self.weight_decay < 0:
            raise UserInputError("train.weight_decay", f"must be >= 0, got {self.weight_decay!r}", "use e.g. 5e-4")
        if not isinstance(self.schedule, str) or self.schedule not in SCHEDULES:
            raise UserInputError("train.schedule", f"unknown schedule {self.schedule!r}", f"use one of {', '.join(SCHEDULES)}")
        if not is_real(self.warmup_epochs) or self.warmup_epochs < 0:
            raise UserInputError("train.warmup_epochs", f"must be >= 0, got {self.warmup_epochs!r}", "use e.g. 1")
        if not is_real(self.label_smoothing) or not 0 <= self.label_smoothing < 1:
            raise UserInputError("train.label_smoothing", f"must be in [0, 1), got {self.label_smoothing!r}", "use e.g. 0.1")
        if not isinstance(self.amp, bool):
            raise UserInputError("train.amp", f"must be true or false, got {self.amp!r}")
        if not isinstance(self.channels_last, bool):
            raise UserInputError("train.channels_last", f"must be true or false, got {self.channels_last!r}")
        if self.grad_clip is not None and (not is_real(self.grad_clip) or self.grad_clip <= 0):
            raise UserInputError("train.grad_clip", f"must be a positive number or None, got {self.grad_clip!r}", "use e.g. 5.0")
        if not is_int(self.seed):
            raise UserInputError("train.seed", f"must be an int, got {self.seed!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """Build from a mapping (a YAML ``train:`` section); unknown keys raise :class:`UserInputError`."""
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise UserInputError(f"train.{key}", "unknown field", f"use one of {', '.join(sorted(known))}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitResult:
    """What :func:`fit` returns.

    ``val_accuracy`` is the accuracy after the last epoch (no checkpoint selection);
    ``history`` has one dict per epoch: ``epoch`` (1-based), ``train_loss`` (mean over the
    epoch), ``val_accuracy``, ``lr`` (of the epoch's last step) and ``seconds``.
    """

    val_accuracy: float
    test_accuracy: float | None
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    epochs: int = 0


# --------------------------------------------------------------------------------------------
# fit


def fit(
    model: nn.Module,
    data: Dataset,
    *,
    config: TrainConfig | None = None,
    device: str | torch.device = "cpu",
    resolution: int | None = None,
    teacher: nn.Module | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
    features: Sequence[str] = (),
    feature_weight: float = 10.0,
    on_epoch: Callable[[int, float], None] | None = None,
    progress: bool = False,
    evaluate_test: bool = True,
) -> FitResult:
    """Train ``model`` in place on ``data.train``; evaluate on ``data.val`` after every epoch.

    Seeds torch's global generator with ``config.seed`` (dropout, ...) and the loader's own
    generator (order, augmentation): the same model, data and config train identically on the
    CPU.  The training loader drops the last partial batch (a batch of one breaks BatchNorm).

    Args:
        model: trained in place and moved to ``device``; left in eval mode.
        data: moved to ``device`` once (a no-op if already there).
        config: the :class:`TrainConfig`; defaults to ``TrainConfig()``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        resolution: input side for training and evaluation (MobileNet ``resolution_mult``);
            ``None`` keeps the data set's size.
        teacher: with a teacher, the loss is
            ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE``
            (Hinton et al. 2015); the teacher runs in eval mode without gradients.
        temperature: the distillation temperature ``T`` (> 0).
        alpha: weight of the distillation term, in [0, 1].
        features: with a teacher, names of modules that both models have with outputs of the
            same shape (a converted model's sites: the block and the conv it replaced); the
            loss then adds ``feature_weight`` times the mean over them of
            ``‖f_student − f_teacher‖² / ‖f_teacher‖²`` per batch (hint learning, Romero et al.
            2015, "FitNets").
        feature_weight: weight of the feature term (>= 0).
        on_epoch: called as ``on_epoch(epoch, val_accuracy)`` after each epoch (1-based);
            whatever it raises propagates (e.g. ``optuna.TrialPruned``).
        progress: show a rich progress bar on stderr.
        evaluate_test: also measure accuracy on ``data.test`` at the end.

    Raises:
        TrainingDiverged: the loss became NaN or infinite.
        UserInputError: bad ``config``, ``temperature``, ``alpha`` or ``resolution``.
    """
    cfg = TrainConfig() if config is None else config
    if not isinstance(cfg, TrainConfig):
        raise UserInputError("train", f"expected a TrainConfig, got {type(cfg).__name__}", "pass TrainConfig(...)")
    cfg.validate()
    if teacher is not None:
        _check_distill_args(temperature, alpha)
    features = _check_features(features, feature_weight, teacher)
    device = torch.device(device)
    cuda = device.type == "cuda"

    torch.manual_seed(cfg.seed)
    data = data.to(device)
    model.to(device)
    channels_last = cuda and cfg.channels_last
    if channels_last:
        model.to(memory_format=torch.channels_last)
    amp_dtype = None
    if cuda and cfg.amp:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    n_train = len(data.train)
    if n_train == 0:
        raise UserInputError("dataset", "the training split is empty", "use a larger data set or subset")
    loader = DeviceLoader(
        data.train, batch_size=cfg.batch_size, mean=data.mean, std=data.std, augment=data.augment, shuffle=True,
        drop_last=n_train >= cfg.batch_size,  # no ragged last batch (a batch of 1 breaks BatchNorm)
        seed=cfg.seed, resolution=resolution, channels_last=channels_last,
    )
    optimizer = _make_optimizer(model, cfg)
    steps_per_epoch = len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(cfg, steps_per_epoch))

    teacher_was_training = teacher.training if teacher is not None else False
    if teacher is not None:
        teacher.to(device).eval()
    hints = _FeatureHints(model, teacher, features) if features else None

    def loss_of(x: Tensor, y: Tensor) -> Tensor:
        with _autocast(device, amp_dtype):
            if hints is not None:
                hints.active = True
            try:
                logits = model(x)
                if teacher is None:
                    return F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                with torch.no_grad():
                    teacher_logits = teacher(x)
            finally:
                if hints is not None:
                    hints.active = False
        loss = _distill_loss(logits.float(), teacher_logits.float(), y, temperature, alpha, cfg.label_smoothing)
        return loss if hints is None else loss + feature_weight * hints.loss()

    history: list[dict] = []
    start = time.perf_counter()
    val_acc = float("nan")
    try:
        with _progress_bar(progress, cfg.epochs) as bar:
            for epoch in range(1, cfg.epochs + 1):
                epoch_start = time.perf_counter()
                model.train()
                loss_sum = torch.zeros((), device=device)
                bad_step = torch.full((), -1, dtype=torch.long, device=device)
                lr = optimizer.param_groups[0]["lr"]
                step = 0
                for step, (x, y) in enumerate(loader, 1):
                    lr = optimizer.param_groups[0]["lr"]
                    loss = loss_of(x, y)
                    finite = torch.isfinite(loss.detach())
                    if not cuda:
                        if not finite:
                            _diverged(loss, epoch, step, lr)
                    else:  # record the first bad step without a host sync; look every 50 steps
                        bad_step = torch.where((bad_step < 0) & ~finite, step, bad_step)
                        if step % _CUDA_CHECK_EVERY == 0:
                            _check_bad_step(bad_step, epoch)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if cfg.grad_clip is not None:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    loss_sum += loss.detach()
                if cuda:
                    _check_bad_step(bad_step, epoch)
                train_loss = loss_sum.item() / max(step, 1)
                val_acc = _accuracy(model, data.val, data, batch_size=512, resolution=resolution,
                                    amp_dtype=amp_dtype, channels_last=channels_last)
                history.append({
                    "epoch": epoch, "train_loss": train_loss, "val_accuracy": val_acc, "lr": lr,
                    "seconds": time.perf_counter() - epoch_start,
                })
                bar(epoch, train_loss, val_acc)
                if on_epoch is not None:
                    on_epoch(epoch, val_acc)
        test_acc = None
        if evaluate_test and len(data.test):
            test_acc = _accuracy(model, data.test, data, batch_size=512, resolution=resolution,
                                 amp_dtype=amp_dtype, channels_last=channels_last)
    finally:
        model.eval()
        if hints is not None:
            hints.close()
        if teacher is not None and teacher_was_training:
            teacher.train()
    return FitResult(
        val_accuracy=val_acc, test_accuracy=test_acc, history=history,
        seconds=time.perf_counter() - start, epochs=cfg.epochs,
    )


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _check_distill_args(temperature: float, alpha: float) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0 or not math.isfinite(temperature):
        raise UserInputError("distill.temperature", f"must be a positive number, got {temperature!r}", "use e.g. 4")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise UserInputError("distill.alpha", f"must be in [0, 1], got {alpha!r}", "use e.g. 0.9")


def _check_features(features: Any, weight: float, teacher: nn.Module | None) -> tuple[str, ...]:
    if isinstance(features, str) or not isinstance(features, (list, tuple)) or not all(isinstance(n, str) for n in features):
        raise UserInputError("features", f"expected a list of module names, got {features!r}",
                             "use e.g. plan.converted names, or 'converted' with ns.distill")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0 or not math.isfinite(weight):
        raise UserInputError("feature_weight", f"must be a number >= 0, got {weight!r}", "use e.g. 10")
    if features and teacher is None:
        raise UserInputError("features", "feature hints need a teacher", "pass teacher=, or features=()")
    return tuple(features) if weight > 0 else ()


class _FeatureHints:
    """Collects the outputs of the named modules of a student and its teacher during one
    training forward pass (``active``) and turns them into the hint loss: the mean over
    modules (and calls) of ‖f_s − f_t‖² / ‖f_t‖²."""

    def __init__(self, student: nn.Module, teacher: nn.Module, names: Sequence[str]):
        self.active = False
        self.student: list[Tensor] = []
        self.teacher: list[Tensor] = []
        self.names: list[str] = []
        self.handles = []
        for name in names:
            pair = []
            for side, model in (("student", student), ("teacher", teacher)):
                try:
                    pair.append(model.get_submodule(name))
                except AttributeError:
                    self.close()
                    raise UserInputError("features", f"the {side} has no module {name!r}",
                                         "name modules that both models have (a converted model's sites)") from None
            self.handles.append(pair[0].register_forward_hook(self._keep(self.student, name)))
            self.handles.append(pair[1].register_forward_hook(self._keep(self.teacher, None)))

    def _keep(self, store: list[Tensor], name: str | None):
        def hook(module, args, output):
            if self.active:
                # the teacher's copy is cloned: a later in-place op of its forward must not change it
                store.append(output if name is not None else output.detach().clone())
                if name is not None:
                    self.names.append(name)
        return hook

    def loss(self) -> Tensor:
        try:
            if len(self.student) != len(self.teacher):
                raise UserInputError("features", f"the student ran {len(self.student)} hinted modules, the teacher "
                                     f"{len(self.teacher)}", "name modules that both models run equally often")
            terms = []
            for name, fs, ft in zip(self.names, self.student, self.teacher):
                if fs.shape != ft.shape:
                    raise UserInputError("features", f"{name!r}: student output {tuple(fs.shape)} vs teacher "
                                         f"{tuple(ft.shape)}", "name modules whose outputs have the same shape")
                ft = ft.float()
                terms.append((fs.float() - ft).square().mean() / ft.square().mean().clamp_min(1e-12))
            return torch.stack(terms).mean() if terms else torch.zeros(())
        finally:
            self.student.clear()
            self.teacher.clear()
            self.names.clear()

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def _distill_loss(student: Tensor, teacher: Tensor, y: Tensor, temperature: float, alpha: float, smoothing: float) -> Tensor:
    """Hinton et al. 2015: ``alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE``."""
    t = float(temperature)
    kl = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), reduction="batchmean", log_target=True)
    loss = (alpha * t * t) * kl
    if alpha < 1:
        loss = loss + (1 - alpha) * F.cross_entropy(student, y, label_smoothing=smoothing)
    return loss


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    if not decay and not no_decay:
        raise UserInputError("model", "has no trainable parameters", "unfreeze some parameters (requires_grad=True)")
    groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    return OPTIMIZERS[cfg.optimizer].build(groups, cfg.lr)


def _lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at each step (``LambdaLR``).  The warm-up is capped at 30% of
    the run, so a short run (one epoch of fine-tuning) still anneals."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = min(round(cfg.warmup_epochs * steps_per_epoch), int(0.3 * total))

    return SCHEDULES[cfg.schedule].factor(warm, total)


def _diverged(loss: Tensor, epoch: int, step: int, lr: float) -> None:
    kind = "nan" if torch.isnan(loss).item() else "inf"
    raise TrainingDiverged(f"loss became {kind} at epoch {epoch} step {step} (lr {lr:.3g}); lower train.lr or set train.grad_clip")


def _check_bad_step(bad_step: Tensor, epoch: int) -> None:
    step = int(bad_step.item())
    if step >= 0:
        raise TrainingDiverged(f"loss became nan or inf at epoch {epoch} step {step}; lower train.lr or set train.grad_clip")


@contextlib.contextmanager
def _progress_bar(enabled: bool, epochs: int):
    """Yields ``update(epoch, loss, val_acc)``; a rich bar on stderr when enabled, else a no-op."""
    if not enabled:
        yield lambda *args: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (
        TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("epochs"),
        TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as prog:
        task = prog.add_task("train", total=epochs, stats="")

        def update(epoch: int, loss: float, acc: float) -> None:
            prog.update(task, completed=epoch, stats=f"loss {loss:.3f}  val acc {acc:.3f}")

        yield update


# --------------------------------------------------------------------------------------------
# evaluate / distill / reestimate_batchnorm


@torch.no_grad()
def _accuracy(
    model: nn.Module, split: Split, data: Dataset, *, batch_size: int, resolution: int | None,
    amp_dtype: torch.dtype | None = None, channels_last: bool = False,
) -> float:
    if len(split) == 0:
        return float("nan")
    model.eval()
    loader = DeviceLoader(split, batch_size=batch_size, mean=data.mean, std=data.std, shuffle=False,
                          resolution=resolution, channels_last=channels_last)
    correct = torch.zeros((), dtype=torch.long, device=split.device)
    with _autocast(split.device, amp_dtype):
        for x, y in loader:
            correct += (model(x).argmax(dim=1) == y).sum()
    return correct.item() / len(split)


def evaluate(
    model: nn.Module,
    split: Split,
    *,
    data: Dataset,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    resolution: int | None = None,
) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on ``split`` (eval mode, no gradients, float32).

    ``data`` supplies the normalisation (``mean``/``std``).  The model is moved to ``device``
    and its train/eval mode is restored afterwards.
    """
    if len(split) == 0:
        raise UserInputError("split", "is empty", "evaluate on a split with images")
    device = torch.device(device)
    was_training = model.training
    model.to(device)
    try:
        return _accuracy(model, split.to(device), data, batch_size=batch_size, resolution=resolution)
    finally:
        model.train(was_training)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Dataset,
    *,
    config: TrainConfig | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
    features: str | Sequence[str] | None = None,
    feature_weight: float = 10.0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> FitResult:
    """Train ``student`` to match ``teacher``'s softened outputs (knowledge distillation).

    Loss: ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE``,
    from G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a Neural Network", 2015
    (arXiv:1503.02531).  The ``T^2`` keeps the soft term's gradients at the scale of the hard
    term's as ``T`` changes.  A thin wrapper over :func:`fit`.

    ``features``: also match intermediate outputs (hint learning: A. Romero et al., "FitNets:
    Hints for Thin Deep Nets", ICLR 2015), adding ``feature_weight`` times the mean relative
    squared error ``‖f_student − f_teacher‖² / ‖f_teacher‖²`` of each named module's output.
    A list names modules both models have.  ``"converted"``, for a student made by
    ``apply_plan`` from the teacher: after each converted site, the first activation its output
    reaches through normalisations and additions (:func:`~nas_sepconv.plan.activation_after`:
    in a ResNet block the ReLU after ``bn1`` and the one after the shortcut sum), else the
    site's own output.  No adapters are needed: conversion keeps every output shape.  With few
    gradient steps this recovers more than the logits alone (``benchmarks/fidelity.py``).
    """
    if features == "converted":
        features = converted_features(student)
    elif features is None:
        features = ()
    elif isinstance(features, str):
        raise UserInputError("features", f"unknown value {features!r}", "use 'converted', a list of module names, or None")
    return fit(student, data, config=config, device=device, teacher=teacher, temperature=temperature,
               alpha=alpha, features=list(features), feature_weight=feature_weight, progress=progress)


def converted_features(student: nn.Module) -> list[str]:
    """The hint points of ``distill(features="converted")``: per converted site of a model made
    by ``apply_plan``, the activation after it, or the site itself (see :func:`distill`)."""
    import torch.fx as fx

    from ..conversion.plan import activation_after
    from ..conversion import plan_of

    plan = plan_of(student)
    if plan is None:
        raise UserInputError("features", "'converted' needs a student made by ns.apply_plan (it carries its plan)",
                             "pass a list of module names instead")
    names = []
    for entry in plan.converted:
        if entry.source != "module":
            continue
        after = activation_after(student, entry.name) if isinstance(student, fx.GraphModule) else None
        names.append(after or entry.name)
    return list(dict.fromkeys(names))


_BatchNorm = nn.modules.batchnorm._BatchNorm


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: Iterable[Tensor], *, device: str | torch.device = "cpu") -> None:
    """Recompute every BatchNorm's running mean and variance from ``batches``.

    Resets the running statistics, runs the batches through the model in train mode without
    gradients with cumulative averaging (``momentum=None``), then restores each layer's momentum
    and leaves the model in eval mode.  Use after converting a model, whose new layers change
    the statistics the BatchNorms downstream see.  ``batches`` may also yield ``(x, y)`` pairs.
    """
    it = iter(batches)
    first = next(it, None)
    if first is None:
        raise UserInputError("batches", "is empty", "pass at least one input batch (see data.calibration_batches)")
    device = torch.device(device)
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    model.to(device)
    if not norms:
        model.eval()
        return
    momenta = [m.momentum for m in norms]
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        for batch in _chain(first, it):
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x.to(device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()


def _chain(first: Any, rest: Iterable) -> Iterable:
    yield first
    yield from rest
