"""ONNX: a model written to ONNX (PyTorch's TorchScript-based exporter, ``torch.onnx.export``
with ``dynamo=False``: it needs only the ``onnx`` package), and run with ONNX Runtime
(``onnxruntime``), the runtime models are commonly deployed with on CPUs.  Both packages are
the ``onnx`` extra: ``pip install 'nas-sepconv[onnx]'``."""

from __future__ import annotations

import copy
import importlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..errors import UserInputError
from .inputs import as_inputs, output_tensors

__all__ = ["ONNX_OPSET", "need_module", "onnx_session", "run_onnx", "to_onnx"]

ONNX_OPSET = 17
_HINT = "pip install 'nas-sepconv[onnx]'"


def need_module(name: str, field: str, *, fix: str = _HINT) -> Any:
    """Import ``name`` (``onnx``, ``onnxruntime``), or raise :class:`UserInputError` naming
    ``field`` and how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserInputError(field, f"needs the {name} package", fix) from None


def _names(prefix: str, n: int) -> list[str]:
    return [prefix] if n == 1 else [f"{prefix}_{i}" for i in range(n)]


def to_onnx(model: nn.Module, example_inputs: Any, out: "str | Path | None" = None, *, output_name: str = "output") -> bytes | Path:
    """``model`` (an eval copy; the model itself is not changed) written to ONNX for
    ``example_inputs``, at opset :data:`ONNX_OPSET`, with its batch dimension dynamic.  Inputs
    are named ``input`` (``input_0``, ``input_1``, ... for several), outputs ``output_name``
    likewise.  Returns the path ``out``, or the model's bytes when ``out`` is None."""
    need_module("onnx", "onnx")
    inputs = tuple(t.detach().cpu().float() for t in as_inputs(example_inputs))
    net = copy.deepcopy(model).cpu().float().eval()
    with torch.no_grad():
        n_out = len(output_tensors(net(*inputs)))
    input_names, output_names = _names("input", len(inputs)), _names(output_name, n_out)
    axes = {name: {0: "batch"} for name in input_names + output_names}
    target: Any = io.BytesIO() if out is None else str(out)
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated in favour of dynamo's
        warnings.simplefilter("ignore")
        torch.onnx.export(net, inputs, target, input_names=input_names, output_names=output_names,
                          dynamic_axes=axes, opset_version=ONNX_OPSET, dynamo=False)
    return target.getvalue() if out is None else Path(out)


def onnx_session(model: "bytes | str | Path", *, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session of ``model`` (bytes or a path) with ``threads`` intra-op
    threads (default: torch's current setting) and one inter-op thread, all graph
    optimisations on."""
    ort = need_module("onnxruntime", "runtime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, example_inputs: Any) -> list[np.ndarray]:
    """The outputs of an ONNX Runtime ``session`` on ``example_inputs`` (tensors, in order)."""
    inputs = as_inputs(example_inputs)
    feeds = {i.name: t.detach().cpu().float().numpy() for i, t in zip(session.get_inputs(), inputs)}
    return session.run(None, feeds)
