"""The first batch of :func:`~nas_sepconv.train.fit`'s data checked before any training step:
the inputs are ones the model runs on, the targets are class indices (integers in
``[0, classes)``, one per input), and a teacher has the student's classes.

Torch finds each of these mistakes too, but deep in a convolution or the loss, in its own
words (``Target 15 is out of bounds``, ``expected target dtype to be Long``, a size mismatch of
two tensors), or on CUDA as an asynchronous device-side assertion.  Checked here, each is one
:class:`~nas_sepconv.errors.UserInputError` that names the argument (``data``, ``val``,
``split``, ``teacher``) and the fix, raised on the first batch, before the first optimizer step.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import NasSepconvError, UserInputError

__all__: list[str] = []  # used by fit, distill and evaluate only

_TARGETS_FIX = "give each input's class as an integer index (torch.long), not one-hot vectors or probabilities"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def check_batch(x: Tensor, y: Tensor, field: str) -> None:
    """The inputs and targets of a batch, before the model runs: a batch of at least one input,
    targets of an integer type with one (row of) class indices per input, none negative."""
    if x.ndim == 0 or x.shape[0] == 0:
        raise UserInputError(
            field,
            f"a batch has inputs of shape {tuple(x.shape)}, with no input in it",
            "give batches of at least one input (batch dimension first)",
        )
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise UserInputError(field, f"the targets are {y.dtype} tensors, not class indices", _TARGETS_FIX)
    if y.ndim == 0 or y.shape[0] != x.shape[0]:
        raise UserInputError(
            field,
            f"a batch of {x.shape[0]} inputs has targets of shape {tuple(y.shape)}",
            "give one target per input (targets of shape (batch,))",
        )
    low = int(y.min()) if y.numel() else 0
    if low < 0:
        raise UserInputError(
            field, f"a target is negative ({low}): targets are class indices 0..classes-1", _TARGETS_FIX
        )


def checked_forward(model: nn.Module, x: Tensor, field: str, who: str) -> Tensor:
    """``model(x)``, with the error of a model that does not run on ``x`` as one line naming
    ``field`` (torch's first line in it).  Running out of memory stays what it is."""
    try:
        return model(x)
    except (NasSepconvError, torch.cuda.OutOfMemoryError):
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        shape = f"inputs of shape {tuple(x.shape)}, {x.dtype}"
        if not x.is_floating_point():
            raise UserInputError(
                field,
                f"{who} does not run on {shape} ({_first_line(exc)})",
                "give floating-point inputs (e.g. torchvision's ToTensor, then Normalize)",
            ) from exc
        raise UserInputError(
            field,
            f"{who} does not run on {shape} ({_first_line(exc)})",
            "give inputs of the shape the model takes (channels, size, batch first)",
        ) from exc


def check_outputs(logits: Tensor, y: Tensor, field: str) -> None:
    """The model's outputs against the targets: class scores along dim 1 (``(batch, classes)``),
    as many as there are targets, and every target below the number of classes."""
    if not isinstance(logits, Tensor):
        raise UserInputError(
            field,
            f"the model returns a {type(logits).__name__}, not a tensor of class scores",
            "train a model whose forward returns the logits (wrap it if it returns more)",
        )
    if logits.ndim < 2 or (logits.shape[0],) + tuple(logits.shape[2:]) != tuple(y.shape):
        raise UserInputError(
            field,
            f"the model's outputs have shape {tuple(logits.shape)}, the targets {tuple(y.shape)}",
            "give one class index per input, for a model that outputs (batch, classes)",
        )
    classes, high = logits.shape[1], int(y.max()) if y.numel() else -1
    if high >= classes:
        raise UserInputError(
            field,
            f"a target is {high}, but the model has {classes} classes (0..{classes - 1})",
            "give targets below the model's number of classes, or a model with as many classes as the data",
        )


def check_teacher(student: Tensor, teacher: Tensor) -> None:
    """A teacher whose outputs have the student's shape (the same classes)."""
    if tuple(teacher.shape) != tuple(student.shape):
        raise UserInputError(
            "teacher",
            f"outputs {tuple(teacher.shape)} where the student outputs {tuple(student.shape)}",
            "distill from a teacher with the student's classes (the same output shape)",
        )
