"""Training and evaluation: :func:`fit`, :func:`evaluate`.

:func:`fit` is the one training loop: candidate training in the search, fine-tuning of converted
models, and distillation (:func:`~nas_sepconv.train.distill`) all go through it.  It trains on
an in-memory :class:`~nas_sepconv.data.Dataset` (device-resident) or on the user's own data
pipeline (a ``DataLoader`` or any re-iterable of ``(inputs, targets)`` batches,
:mod:`nas_sepconv.train.feeds`), and under ``torchrun`` as DistributedDataParallel
(:mod:`nas_sepconv.train.distributed`).  It is seeded (two runs with the same
:class:`TrainConfig` give identical results on the CPU), raises
:class:`~nas_sepconv.errors.TrainingDiverged` as soon as the loss stops being finite, and reports
validation accuracy after every epoch to an ``on_epoch`` callback (the search forwards it to
Optuna's pruners; an exception raised there, such as ``optuna.TrialPruned``, propagates).

On CUDA it uses mixed precision (bfloat16 where supported, else float16 with a gradient scaler)
and channels-last memory format; on the CPU it runs plain float32.  What a run trains with (seed,
precision, feed, optimizer, schedule) is set up in :mod:`nas_sepconv.train.run`, the loss of a
batch (cross-entropy or distillation with feature hints) in :mod:`nas_sepconv.train.loss`; this
module holds the loop of epochs and steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..data import Dataset, Split
from ..errors import TrainingDiverged, UserInputError
from ..progress import progress as show_progress
from .config import FitResult, TrainConfig
from .distributed import World, broadcast_buffers
from .feeds import EVAL_BATCH, batch_counts, check_iterable, is_map_style, split_correct, split_counts
from .hints import check_distill_args, check_features
from .loss import training_loss
from .run import Run

__all__ = ["fit", "evaluate"]

_CUDA_CHECK_EVERY = 50  # steps between finiteness checks on CUDA and under DDP (each one is a host sync)
_NO_STEP = 2**62  # "no bad step yet"


def fit(
    model: nn.Module,
    data: Dataset | Iterable[Any],
    *,
    val: Iterable[Any] | None = None,
    steps_per_epoch: int | None = None,
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
    """Train ``model`` in place on ``data``; measure validation accuracy after every epoch.

    Seeds torch's global generator with ``config.seed`` (plus the process's rank under
    ``torch.distributed``: dropout, a DataLoader's workers) and a Dataset's loader with
    ``config.seed`` (order, augmentation): the same model, data and config train identically
    on the CPU.

    Args:
        model: trained in place and moved to ``device``; left in eval mode.
        data: a :class:`~nas_sepconv.data.Dataset` (moved to ``device`` once; batches of
            ``config.batch_size`` of its ``train`` split, the last partial one dropped; its
            ``val`` split) or your pipeline: a ``DataLoader`` or any iterable of ``(inputs,
            targets)`` batches that can be iterated once per epoch (a generator: one epoch),
            inputs ready for the model, targets class indices, moved to ``device`` as they
            come (``config.batch_size`` is not used: give the loader ``drop_last=True``).
        val: with batches, validation batches of the same form (default None: NaN accuracy; empty: refused).
        steps_per_epoch: with batches, the steps of an epoch (it stops there) for the
            learning-rate schedule; default ``len(data)``, needed where it has none.
        config: the :class:`TrainConfig`; defaults to ``TrainConfig()``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... (under torchrun: the one
            :func:`~nas_sepconv.train.init_distributed` returns).
        resolution: with a Dataset, the input side for training and evaluation (MobileNet
            ``resolution_mult``); ``None`` keeps the data set's size.
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
            the end, :mod:`nas_sepconv.progress`); under torch.distributed, rank 0 only.
        evaluate_test: with a Dataset, also measure accuracy on its ``test`` split at the end.

    Under ``torchrun`` (:func:`~nas_sepconv.train.init_distributed`) it trains as
    DistributedDataParallel, each process on its shard: call it in every process; see
    :mod:`nas_sepconv.train.distributed` for what it does then (BatchNorm included).

    The first batch of ``data`` and ``val`` is checked before the first step (:mod:`~nas_sepconv.train.checks`):
    inputs the model runs on, targets in ``[0, classes)`` one per input, a teacher with the model's classes.

    Raises:
        TrainingDiverged: the loss became NaN or infinite.
        UserInputError: bad ``data``, ``val``, ``teacher``, ``config``, ``temperature``, ``alpha``, ``resolution``.
    """
    cfg = _checked_config(config)
    if teacher is not None:
        check_distill_args(temperature, alpha)
    features = check_features(features, feature_weight, teacher)
    run = Run.start(model, data, val, steps_per_epoch, cfg, torch.device(device), resolution)
    with training_loss(run, model, teacher, features, temperature, alpha, feature_weight) as loss_of:
        return _train(run, model, loss_of, on_epoch, progress, evaluate_test)


def _checked_config(config: TrainConfig | None) -> TrainConfig:
    """The config to train with: ``TrainConfig()`` when None, else the one given, validated."""
    cfg = TrainConfig() if config is None else config
    if not isinstance(cfg, TrainConfig):
        raise UserInputError("train", f"expected a TrainConfig, got {type(cfg).__name__}", "pass TrainConfig(...)")
    cfg.validate()
    return cfg


def _train(
    run: Run,
    model: nn.Module,
    loss_of: Callable[[Tensor, Tensor], Tensor],
    on_epoch: Callable[[int, float], None] | None,
    progress: bool,
    evaluate_test: bool,
) -> FitResult:
    """Train every epoch with ``loss_of``, then measure the test accuracy; the model is left in eval mode."""
    start = time.perf_counter()
    try:
        run.feed.check_val(model)
        history = _train_epochs(run, model, loss_of, on_epoch, progress)
        test_acc = run.feed.test_accuracy(model) if evaluate_test else None
    finally:
        model.eval()
    return FitResult(
        val_accuracy=history[-1]["val_accuracy"],
        test_accuracy=test_acc,
        history=history,
        seconds=time.perf_counter() - start,
        epochs=run.cfg.epochs,
    )


def _train_epochs(
    run: Run,
    model: nn.Module,
    loss_of: Callable[[Tensor, Tensor], Tensor],
    on_epoch: Callable[[int, float], None] | None,
    progress: bool,
) -> list[dict]:
    """Every epoch, each followed by the validation accuracy, the progress bar and ``on_epoch``."""
    history: list[dict] = []
    with show_progress(progress and run.world.rank == 0, "train", run.cfg.epochs, unit="epochs") as bar:
        for epoch in range(1, run.cfg.epochs + 1):
            epoch_start = time.perf_counter()
            train_loss, lr = _train_epoch(run, model, loss_of, epoch)
            if run.world.distributed:
                broadcast_buffers(model)
            val_acc = run.feed.val_accuracy(model)
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "val_accuracy": val_acc,
                    "lr": lr,
                    "seconds": time.perf_counter() - epoch_start,
                }
            )
            bar.update(epoch, info=f"loss {train_loss:.3f}  val acc {val_acc:.3f}")
            if on_epoch is not None:
                on_epoch(epoch, val_acc)
    return history


def _train_epoch(
    run: Run, model: nn.Module, loss_of: Callable[[Tensor, Tensor], Tensor], epoch: int
) -> tuple[float, float]:
    """One pass over the training batches; returns the mean loss (over every process) and the
    lr of the last step.  A loss that is not finite raises at once on the CPU, within 50 steps
    on CUDA and under DDP (every process at the same step)."""
    model.train()
    optimizer, scaler = run.optimizer, run.scaler
    deferred = run.cuda or run.world.distributed
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    bad_step = torch.full((), _NO_STEP, dtype=torch.long, device=run.device)
    lr = optimizer.param_groups[0]["lr"]
    step = 0
    for step, (x, y) in enumerate(run.feed.batches(epoch), 1):
        lr = optimizer.param_groups[0]["lr"]
        loss = loss_of(x, y)
        finite = torch.isfinite(loss.detach())
        if not deferred:
            if not finite:
                _diverged(loss, epoch, step, lr)
        else:  # record the first bad step without a host sync; look every 50 steps
            bad_step = torch.where((bad_step == _NO_STEP) & ~finite, step, bad_step)
            if step % _CUDA_CHECK_EVERY == 0:
                _check_bad_step(run.world.min(bad_step), epoch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if run.cfg.grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), run.cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        run.scheduler.step()
        loss_sum += loss.detach().double()
    if deferred:
        _check_bad_step(run.world.min(bad_step), epoch)
    totals = run.world.sum(torch.stack([loss_sum, torch.tensor(float(step), dtype=torch.float64, device=run.device)]))
    return totals[0].item() / max(totals[1].item(), 1), lr


def _diverged(loss: Tensor, epoch: int, step: int, lr: float) -> None:
    kind = "nan" if torch.isnan(loss).item() else "inf"
    raise TrainingDiverged(
        f"loss became {kind} at epoch {epoch} step {step} (lr {lr:.3g}); lower train.lr or set train.grad_clip"
    )


def _check_bad_step(bad_step: Tensor, epoch: int) -> None:
    step = int(bad_step.item())
    if step != _NO_STEP:
        raise TrainingDiverged(
            f"loss became nan or inf at epoch {epoch} step {step}; lower train.lr or set train.grad_clip"
        )


def evaluate(
    model: nn.Module,
    split: Split | Iterable[Any],
    *,
    data: Dataset | None = None,
    batch_size: int = EVAL_BATCH,
    device: str | torch.device = "cpu",
    resolution: int | None = None,
) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on ``split`` (eval mode, no gradients, float32).

    ``split``: a :class:`~nas_sepconv.data.Split` of a Dataset, whose ``data`` supplies the
    normalisation (``mean``/``std``); or batches of ``(inputs, targets)`` (a DataLoader, ready
    for the model; targets class indices; ``data`` and ``resolution`` not used), or a torch
    map-style dataset of such pairs (read in batches of ``batch_size``).  Under
    ``torch.distributed``, batches are each process's shard: the counts are summed across
    processes (call it in every process).  The model is moved to ``device`` and its train/eval
    mode is restored afterwards.
    """
    device = torch.device(device)
    if is_map_style(split) and not isinstance(split, Split):
        from torch.utils.data import DataLoader

        split = DataLoader(split, batch_size=batch_size)
    if not isinstance(split, Split):
        check_iterable(split, "split", 1)
    elif data is None:
        raise UserInputError("data", "a Split needs its Dataset (for the normalisation)", "pass data=dataset")
    elif len(split) == 0:
        raise UserInputError("split", "is empty", "evaluate on a split with images")
    was_training = model.training
    model.to(device)
    try:
        if isinstance(split, Split):
            correct, total = split_counts(model, split.to(device), data, resolution=resolution, batch_size=batch_size)
            return correct.item() / total
        counts = World.current().sum(torch.stack(batch_counts(model, split, device, "split")))
        if counts[1].item() == 0:
            raise UserInputError("split", "has no batches", "evaluate on batches with images")
        return counts[0].item() / counts[1].item()
    finally:
        model.train(was_training)


def correct_per_image(
    model: nn.Module,
    split: Split,
    *,
    data: Dataset,
    batch_size: int = EVAL_BATCH,
    device: str | torch.device = "cpu",
    resolution: int | None = None,
) -> Tensor:
    """Whether ``model`` predicts each image of ``split`` right: a bool tensor on the CPU, one
    entry per image in the split's order (eval mode, no gradients, float32); its mean is
    :func:`evaluate`'s accuracy.  What a bootstrap over the images resamples (Efron 1979; see
    :func:`nas_sepconv.results.bootstrap_ratios`).  The model's train/eval mode is restored."""
    if not isinstance(split, Split):
        raise UserInputError("split", f"expected a Split of a Dataset, got {type(split).__name__}", "pass data.test")
    if len(split) == 0:
        raise UserInputError("split", "is empty", "evaluate on a split with images")
    device = torch.device(device)
    was_training = model.training
    model.to(device)
    try:
        return split_correct(model, split.to(device), data, resolution=resolution, batch_size=batch_size).cpu()
    finally:
        model.train(was_training)
