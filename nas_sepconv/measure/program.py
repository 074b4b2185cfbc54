"""A model captured with ``torch.export``: an :class:`torch.export.ExportedProgram`, the graph
PyTorch deploys from (the dynamo ONNX exporter, ExecuTorch, AOTInductor all start from one).

``torch.export`` captures the whole forward as one graph of ATen operators, or refuses: a Python
``if`` on a tensor's values, which a trace would silently freeze to one branch, is an error here
(a data-dependent guard).  The batch dimension is exported dynamic: ``torch.export`` specialises
a dimension of size 1 to a constant, so an example of batch 1 is repeated to batch 2 for the
capture (the program runs at any batch size from 2 up, and at 1; the ONNX file, at any).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import UserInputError
from .inputs import as_inputs

__all__ = ["export_program"]

_INSTEAD = "write .safetensors instead"


def _reason(exc: BaseException) -> str:
    """The first line of an exporter's message, shortened."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """Warnings, torch's log records and what it prints held back in the block (in the buffer
    yielded): when a capture fails, torch prints the graph it had; the error raised instead
    says, in one line, what failed and where."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    held = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(held), contextlib.redirect_stdout(held):
            warnings.simplefilter("ignore")
            yield held
    finally:
        logging.disable(previous)


def _user_line(printed: str) -> str:
    """The last ``file:line`` of the model's own code (not torch's) in the graph torch printed."""
    places = [m for m in re.findall(r"# File: (\S+?):(\d+) in ", printed) if f"{os.sep}torch{os.sep}" not in m[0]]
    return f" at {Path(places[-1][0]).name}:{places[-1][1]}" if places else ""


def _batched(inputs: tuple, dynamic_batch: bool) -> tuple:
    """``inputs`` on the CPU in float32, a batch of 1 repeated to 2 when the batch is dynamic."""
    xs = tuple(t.detach().cpu().float() for t in inputs)
    if dynamic_batch:
        xs = tuple(t.repeat(2, *([1] * (t.dim() - 1))) if t.dim() and t.shape[0] == 1 else t for t in xs)
    return xs


def export_program(
    model: nn.Module,
    example_inputs: Any,
    *,
    dynamic_batch: bool = True,
    instead: str = _INSTEAD,
) -> torch.export.ExportedProgram:
    """``model`` (an eval, float32, CPU copy; the model itself is not changed) captured with
    ``torch.export.export`` for ``example_inputs`` (a tensor, a tuple of them, or an input size
    ``C,H,W``), its batch dimension dynamic unless ``dynamic_batch=False``.

    A model ``torch.export`` cannot capture whole (a branch on a tensor's values, an operator
    it cannot trace) raises :class:`UserInputError` (``model``) whose fix ends with ``instead``.
    """
    inputs = _batched(as_inputs(example_inputs), dynamic_batch)
    net = copy.deepcopy(model).cpu().float().eval()
    shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1)
        shapes = tuple({0: batch} if t.dim() else None for t in inputs)
    label = type(model).__name__
    printed = io.StringIO()
    try:
        with _quiet() as printed:
            return torch.export.export(net, inputs, dynamic_shapes=shapes)
    except (OSError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - torch.export raises many types for what it cannot capture
        text = str(exc)
        if "data-dependent" in text or "data dependent" in text:
            problem = (
                f"{label}'s forward branches on a tensor's values{_user_line(printed.getvalue())} ({_reason(exc)})"
            )
            fix = f"compute the branch with tensor operations (torch.where), or {instead}"
        elif dynamic_batch and ("batch" in text and ("specialize" in text or "Constraints violated" in text)):
            problem = f"{label}'s forward fixes the batch size, which torch.export keeps dynamic ({_reason(exc)})"
            fix = f"reshape with -1 for the batch (x.flatten(1)), or {instead}"
        else:
            problem = f"{label} cannot be captured by torch.export ({_reason(exc)})"
            fix = instead
        raise UserInputError("model", problem, fix) from None
