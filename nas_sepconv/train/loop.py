"""Training and evaluation on a device-resident :class:`~nas_sepconv.data.Dataset`: :func:`fit`, :func:`evaluate`.

:func:`fit` is the one training loop: candidate training in the search, fine-tuning of converted
models, and distillation (:func:`~nas_sepconv.train.distill`) all go through it.  It is seeded (two runs with the
same :class:`TrainConfig` give identical results on the CPU), raises
:class:`~nas_sepconv.errors.TrainingDiverged` as soon as the loss stops being finite, and reports
validation accuracy after every epoch to an ``on_epoch`` callback (the search forwards it to
Optuna's pruners; an exception raised there, such as ``optuna.TrialPruned``, propagates).

On CUDA it uses mixed precision (bfloat16 where supported, else float16 with a gradient scaler)
and channels-last memory format; on the CPU it runs plain float32.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..data import Dataset, DeviceLoader, Split
from ..errors import TrainingDiverged, UserInputError
from ..progress import progress as show_progress
from .config import OPTIMIZERS, SCHEDULES, FitResult, TrainConfig
from .hints import _check_distill_args, _check_features, _distill_loss, _FeatureHints

__all__ = ["fit", "evaluate"]

_CUDA_CHECK_EVERY = 50  # steps between finiteness checks on CUDA (each one is a host sync)


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
        progress: show progress on stderr, one step per epoch with the loss and the
            validation accuracy (default False: nothing is printed; a rich bar on a terminal,
            else a plain ``done/total`` line with rate and time left every few seconds and at
            the end, :mod:`nas_sepconv.progress`).
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
    run = _Run.start(model, data, cfg, torch.device(device), resolution)
    teacher_was_training = teacher.training if teacher is not None else False
    if teacher is not None:
        teacher.to(run.device).eval()
    hints = _FeatureHints(model, teacher, features) if features else None
    loss_of = _loss_function(run, model, teacher, hints, temperature, alpha, feature_weight)
    start = time.perf_counter()
    try:
        history = _train_epochs(run, model, loss_of, on_epoch, progress)
        test_acc = run.accuracy(model, run.data.test) if evaluate_test and len(run.data.test) else None
    finally:
        model.eval()
        if hints is not None:
            hints.close()
        if teacher is not None and teacher_was_training:
            teacher.train()
    return FitResult(
        val_accuracy=history[-1]["val_accuracy"], test_accuracy=test_acc, history=history,
        seconds=time.perf_counter() - start, epochs=cfg.epochs,
    )


@dataclass
class _Run:
    """What one :func:`fit` trains with: the data on the device, the precision, the loader, the
    optimizer and its schedule."""

    cfg: TrainConfig
    device: torch.device
    data: Dataset
    resolution: int | None
    amp_dtype: torch.dtype | None
    channels_last: bool
    scaler: torch.amp.GradScaler
    loader: DeviceLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @classmethod
    def start(cls, model: nn.Module, data: Dataset, cfg: TrainConfig, device: torch.device,
              resolution: int | None) -> "_Run":
        """Seed, move the model and data to ``device``, choose the precision, build the loader,
        optimizer and schedule."""
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
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(cfg, len(loader)))
        return cls(cfg, device, data, resolution, amp_dtype, channels_last, scaler, loader, optimizer, scheduler)

    def accuracy(self, model: nn.Module, split: Split) -> float:
        return _accuracy(model, split, self.data, batch_size=512, resolution=self.resolution,
                         amp_dtype=self.amp_dtype, channels_last=self.channels_last)


def _loss_function(run: _Run, model: nn.Module, teacher: nn.Module | None, hints: _FeatureHints | None,
                   temperature: float, alpha: float, feature_weight: float) -> Callable[[Tensor, Tensor], Tensor]:
    """The training loss of a batch: cross-entropy, or with a teacher the distillation loss plus
    the weighted feature hints."""
    smoothing = run.cfg.label_smoothing

    def loss_of(x: Tensor, y: Tensor) -> Tensor:
        with _autocast(run.device, run.amp_dtype):
            if hints is not None:
                hints.active = True
            try:
                logits = model(x)
                if teacher is None:
                    return F.cross_entropy(logits.float(), y, label_smoothing=smoothing)
                with torch.no_grad():
                    teacher_logits = teacher(x)
            finally:
                if hints is not None:
                    hints.active = False
        loss = _distill_loss(logits.float(), teacher_logits.float(), y, temperature, alpha, smoothing)
        return loss if hints is None else loss + feature_weight * hints.loss()

    return loss_of


def _train_epochs(run: _Run, model: nn.Module, loss_of: Callable[[Tensor, Tensor], Tensor],
                  on_epoch: Callable[[int, float], None] | None, progress: bool) -> list[dict]:
    """Every epoch, each followed by the validation accuracy, the progress bar and ``on_epoch``."""
    history: list[dict] = []
    with show_progress(progress, "train", run.cfg.epochs, unit="epochs") as bar:
        for epoch in range(1, run.cfg.epochs + 1):
            epoch_start = time.perf_counter()
            train_loss, lr = _train_epoch(run, model, loss_of, epoch)
            val_acc = run.accuracy(model, run.data.val)
            history.append({
                "epoch": epoch, "train_loss": train_loss, "val_accuracy": val_acc, "lr": lr,
                "seconds": time.perf_counter() - epoch_start,
            })
            bar.update(epoch, info=f"loss {train_loss:.3f}  val acc {val_acc:.3f}")
            if on_epoch is not None:
                on_epoch(epoch, val_acc)
    return history


def _train_epoch(run: _Run, model: nn.Module, loss_of: Callable[[Tensor, Tensor], Tensor],
                 epoch: int) -> tuple[float, float]:
    """One pass over the training split; returns the mean loss and the lr of the last step.
    A loss that is not finite raises at once on the CPU, within 50 steps on CUDA."""
    model.train()
    optimizer, scaler = run.optimizer, run.scaler
    loss_sum = torch.zeros((), device=run.device)
    bad_step = torch.full((), -1, dtype=torch.long, device=run.device)
    lr = optimizer.param_groups[0]["lr"]
    step = 0
    for step, (x, y) in enumerate(run.loader, 1):
        lr = optimizer.param_groups[0]["lr"]
        loss = loss_of(x, y)
        finite = torch.isfinite(loss.detach())
        if not run.cuda:
            if not finite:
                _diverged(loss, epoch, step, lr)
        else:  # record the first bad step without a host sync; look every 50 steps
            bad_step = torch.where((bad_step < 0) & ~finite, step, bad_step)
            if step % _CUDA_CHECK_EVERY == 0:
                _check_bad_step(bad_step, epoch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if run.cfg.grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), run.cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        run.scheduler.step()
        loss_sum += loss.detach()
    if run.cuda:
        _check_bad_step(bad_step, epoch)
    return loss_sum.item() / max(step, 1), lr


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


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
