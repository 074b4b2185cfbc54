"""Profiling an ONNX file, as ``nas-sepconv profile --model m.onnx`` does for a model that
``convert --out m.onnx`` or ``export --out m.onnx`` wrote: MACs and parameters per node, read from
the graph (ONNX shape inference; nothing in the file runs but the graph, in ONNX Runtime), and
its latency in ONNX Runtime.

MACs follow the project's convention (:mod:`.counting`: multiply-accumulates of one input, bias
excluded): ``Conv`` and ``ConvTranspose`` count their kernel over every output (or input) element,
``Gemm`` and ``MatMul`` their products; other operators count none.  A dynamic batch dimension is
taken as 1.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..errors import UserInputError
from .latency import check_threads, summarise, time_rounds, torch_threads
from .onnx import need_module, onnx_session

__all__ = ["onnx_input_shape", "onnx_latency", "onnx_profile"]


def _load(path: str | Path) -> Any:
    onnx = need_module("onnx", "model")
    try:
        model = onnx.load(str(path))
        return onnx.shape_inference.infer_shapes(model)
    except Exception as e:  # noqa: BLE001 -- protobuf and checker raise many types for a bad file
        raise UserInputError(
            "model", f"cannot read the ONNX file {path} ({type(e).__name__}: {str(e)[:200]})", "give a valid .onnx"
        ) from None


def _dims(value_info: Any) -> tuple[int, ...] | None:
    """A tensor's shape; a dynamic first (batch) dimension as 1; None when another is unknown."""
    dims = []
    for i, d in enumerate(value_info.type.tensor_type.shape.dim):
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif i == 0:
            dims.append(1)
        else:
            return None
    return tuple(dims)


def onnx_input_shape(path: str | Path) -> tuple[int, ...]:
    """The shape of the graph's (first) input, batch 1."""
    graph = _load(path).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    shape = _dims(inputs[0]) if inputs else None
    if shape is None:
        raise UserInputError("model", f"{path} has no input of a fixed shape", "export it with a fixed input size")
    return shape


def _node_macs(node: Any, shapes: dict[str, tuple[int, ...]], weights: dict[str, tuple[int, ...]]) -> int:
    out = shapes.get(node.output[0]) if node.output else None
    if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1 and node.input[1] in weights:
        w = weights[node.input[1]]  # Conv: (C_out, C_in/g, k...); ConvTranspose: (C_in, C_out/g, k...)
        if node.op_type == "Conv":
            return math.prod(out) * math.prod(w[1:]) if out else 0
        source = shapes.get(node.input[0])
        return math.prod(source) * math.prod(w[1:]) if source else 0
    if node.op_type in ("Gemm", "MatMul") and out:
        a = shapes.get(node.input[0])
        if a is None:
            return 0
        transposed = node.op_type == "Gemm" and any(at.name == "transA" and at.i for at in node.attribute)
        inner = a[-2] if transposed and len(a) >= 2 else a[-1]
        return math.prod(out) * inner
    return 0


def onnx_profile(path: str | Path) -> pd.DataFrame:
    """One row per graph node: ``layer`` (the node's name), ``op``, ``output_shape``, ``macs``,
    ``params`` (the elements of the initializers it reads: the graph as exported, where ONNX
    Runtime's exporter has folded BatchNorm into the convolutions, so fewer than the module's)."""
    graph = _load(path).graph
    weights = {i.name: tuple(int(d) for d in i.dims) for i in graph.initializer}
    shapes: dict[str, tuple[int, ...]] = dict(weights)
    for v in [*graph.input, *graph.value_info, *graph.output]:
        dims = _dims(v)
        if dims is not None:
            shapes[v.name] = dims
    rows = []
    for i, node in enumerate(graph.node):
        out = shapes.get(node.output[0]) if node.output else None
        rows.append(
            {
                "layer": node.name or f"{node.op_type}_{i}",
                "op": node.op_type,
                "output_shape": str(tuple(out)) if out else "",
                "macs": _node_macs(node, shapes, weights),
                "params": sum(math.prod(weights[n]) for n in node.input if n in weights),
            }
        )
    return pd.DataFrame(rows, columns=["layer", "op", "output_shape", "macs", "params"])


def onnx_latency(path: str | Path, *, threads: int = 1, repeats: int = 30, warmup: int = 5) -> dict[str, float]:
    """Latency of one forward of the ONNX file in ONNX Runtime (batch 1, ``threads`` intra-op
    threads): median, p10 and p90 in ms, timed as :func:`~.latency.measure_latency` times."""
    check_threads(threads, "threads")
    shape = onnx_input_shape(path)
    session = onnx_session(path, threads=threads)
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    with torch_threads(threads), torch.inference_mode():
        (times,) = time_rounds([lambda: session.run(None, feed)], repeats=repeats, warmup=warmup)
    return summarise(times)
