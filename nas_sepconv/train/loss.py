"""The loss :func:`~nas_sepconv.train.fit` minimises, batch by batch: cross-entropy (with label
smoothing), or with a teacher Hinton et al.'s distillation loss plus the weighted FitNets feature
hints (:mod:`.hints`).  :func:`training_loss` sets it up for one run (the teacher in eval mode,
the hints' hooks, DistributedDataParallel under ``torchrun``) and undoes that when the run ends;
the first batch is checked (:mod:`.checks`) before its step changes the model."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .checks import check_batch, check_outputs, check_teacher, checked_forward
from .distributed import wrap_ddp
from .feeds import amp_context
from .hints import FeatureHints, distill_loss
from .run import Run

__all__ = ["training_loss"]


@contextmanager
def training_loss(
    run: Run,
    model: nn.Module,
    teacher: nn.Module | None,
    features: Sequence[str],
    temperature: float,
    alpha: float,
    feature_weight: float,
) -> Iterator[Callable[[Tensor, Tensor], Tensor]]:
    """The loss of a batch for the run of ``model`` (see :func:`_loss_function`): the teacher, if
    any, moved to the run's device and put in eval mode, the ``features`` hooked; on exit the
    hooks are removed and a teacher that was training is put back in train mode."""
    teacher_was_training = teacher.training if teacher is not None else False
    if teacher is not None:
        teacher.to(run.device).eval()
    hints = FeatureHints(model, teacher, features) if features else None
    net = wrap_ddp(model, run.device) if run.world.distributed else model
    try:
        yield _loss_function(run, net, teacher, hints, temperature, alpha, feature_weight)
    finally:
        if hints is not None:
            hints.close()
        if teacher is not None and teacher_was_training:
            teacher.train()


def _loss_function(
    run: Run,
    net: nn.Module,
    teacher: nn.Module | None,
    hints: FeatureHints | None,
    temperature: float,
    alpha: float,
    feature_weight: float,
) -> Callable[[Tensor, Tensor], Tensor]:
    """The training loss of a batch: cross-entropy, or with a teacher the distillation loss plus
    the weighted feature hints.  ``net`` is the model, or its DistributedDataParallel wrapper."""
    smoothing = run.cfg.label_smoothing
    unchecked = [True]  # the first batch is checked (checks.py) before its step changes the model

    def loss_of(x: Tensor, y: Tensor) -> Tensor:
        first, unchecked[0] = unchecked[0], False
        if first:
            check_batch(x, y, "data")
        with amp_context(run.device, run.amp_dtype):
            if hints is not None:
                hints.active = True
            try:
                logits = checked_forward(net, x, "data", "the model") if first else net(x)
                if first:
                    check_outputs(logits, y, "data")
                if teacher is None:
                    return F.cross_entropy(_full(logits), y, label_smoothing=smoothing)
                with torch.no_grad():
                    teacher_logits = checked_forward(teacher, x, "teacher", "the teacher") if first else teacher(x)
            finally:
                if hints is not None:
                    hints.active = False
        if first:
            check_teacher(logits, teacher_logits)
        student = _full(logits)
        loss = distill_loss(student, teacher_logits.to(student.dtype), y, temperature, alpha, smoothing)
        return loss if hints is None else loss + feature_weight * hints.loss()

    return loss_of


def _full(t: Tensor) -> Tensor:
    """Half-precision (autocast) logits in float32 for the loss; float32 and float64 as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
