"""The latency table of an ``.onnx`` file: ONNX Runtime's profiler times its Conv nodes and the
whole model in one session (:func:`~nas_sepconv.measure.onnx_node_latency`; after nn-Meter,
L. L. Zhang et al., MobiSys 2021, which times a runtime's fused kernels).

A graph is not a PyTorch model: there are no sites to convert and no candidate blocks to time,
so such a table has per-node and whole-model times only, in ONNX Runtime on the CPU, and is not
cached.  :func:`~nas_sepconv.conversion.latency_table`'s arguments that only a model's table
uses are refused when given for a file (:func:`check_unused`), and a table of a file refuses to
predict a plan that converts sites (:func:`onnx_only_error`).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch

from ..errors import UserInputError
from ..measure import onnx_node_latency
from .latency_session import LatencySettings

__all__ = ["check_unused", "is_onnx_context", "onnx_only_error", "onnx_session"]

#: the runtimes an ``.onnx`` file's table may name (it is always timed in ONNX Runtime)
_RUNTIMES = ("eager", "onnxruntime")


def _same(name: str, value: Any, default: Any) -> bool:
    """Whether ``value`` of argument ``name`` says what its ``default`` says."""
    try:
        if name == "runtime":
            return value in _RUNTIMES
        if name == "device":
            return torch.device(value).type == "cpu"
        if isinstance(default, tuple) and isinstance(value, (list, tuple)):
            return [str(v) for v in value] == [str(d) for d in default]
        return bool(value == default)
    except (TypeError, ValueError, RuntimeError):
        return False


def check_unused(given: dict[str, Any], builder: Callable[..., Any]) -> None:
    """Raise :class:`UserInputError` naming the first argument of ``given`` (name -> value)
    that differs from its default in ``builder``'s signature: a table of an ``.onnx`` file does
    not use it."""
    defaults = {k: p.default for k, p in inspect.signature(builder).parameters.items()}
    changed = [name for name, value in given.items() if not _same(name, value, defaults[name])]
    if changed:
        raise UserInputError(
            changed[0],
            f"{', '.join(changed)} {'is' if len(changed) == 1 else 'are'} not used for an .onnx file: its table "
            "has per-node and whole-model times only, in ONNX Runtime on the CPU, not cached",
            "leave them out, or pass the PyTorch model to time candidate blocks",
        )


def onnx_only_error() -> UserInputError:
    """The one-line refusal of a table of an ``.onnx`` file asked to time or predict sites."""
    return UserInputError(
        "latency_table",
        "is a table of an .onnx file: it has per-node and whole-model times only, no site to convert",
        "build the table of the PyTorch model: ns.latency_table(model, x)",
    )


def is_onnx_context(context: dict[str, Any]) -> bool:
    """Whether a table's ``context`` is of an ``.onnx`` file (it names the file)."""
    return "model" in context


def onnx_session(
    path: str | os.PathLike,
    example_inputs: Any,
    builder: Callable[..., Any],
    *,
    threads: int | None,
    dtype: torch.dtype,
    repeats: int,
    warmup: int,
    unused: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any], LatencySettings]:
    """The rows, the whole model's record, the context and the settings of an ``.onnx`` file's
    table (:func:`~nas_sepconv.measure.onnx_node_latency`), after :func:`check_unused` of
    ``unused`` against ``builder``'s defaults."""
    check_unused(unused, builder)
    settings = LatencySettings.checked("onnxruntime", threads, "cpu", dtype, repeats, warmup, None)
    frame, whole, context = onnx_node_latency(
        path, example_inputs, threads=settings.threads, repeats=repeats, warmup=warmup
    )
    return frame, whole, context, settings
