"""Profiling an ONNX file, as ``nas-sepconv profile --model m.onnx`` does for a model that
``convert --out m.onnx`` or ``export --out m.onnx`` wrote: MACs and parameters per node, read from
the graph (ONNX shape inference; nothing in the file runs but the graph, in ONNX Runtime), and
its latency in ONNX Runtime, whole (:func:`onnx_latency`) and per node (:func:`onnx_node_latency`,
from ONNX Runtime's own profiler: ``SessionOptions.enable_profiling``).

MACs follow the project's convention (:mod:`.counting`: multiply-accumulates of one input, bias
excluded): ``Conv`` and ``ConvTranspose`` count their kernel over every output (or input) element,
``Gemm`` and ``MatMul`` their products; other operators count none.  A dynamic batch dimension is
taken as 1.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..errors import UserInputError
from .inputs import as_inputs
from .latency import check_repeats, check_threads, summarise, time_rounds, torch_threads
from .onnx import need_module, onnx_session

__all__ = ["CONV_OPS", "onnx_input_shape", "onnx_latency", "onnx_node_latency", "onnx_profile"]

#: the operators a per-node latency table times: the graph's convolutions
CONV_OPS = ("Conv", "ConvTranspose")


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


def _profiled_runs(path: str | Path, *, threads: int, runs: int) -> list[dict[str, Any]]:
    """The events of ONNX Runtime's profiler over ``runs`` forwards of the file (batch 1).

    The session optimises the graph at the *extended* level (constant folding, BatchNorm and
    activation fusion): a fused ``Conv`` keeps the name of the graph's ``Conv`` node; the level
    above (*all*) rewrites convolutions to blocked layouts under new names, which no graph node
    could be found by."""
    ort = need_module("onnxruntime", "runtime")
    shape = onnx_input_shape(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="ort-profile-") as folder:
        options.profile_file_prefix = str(Path(folder) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        with torch_threads(threads):
            for _ in range(runs):
                session.run(None, feed)
        written = Path(session.end_profiling())
        written = written if written.is_absolute() else Path(folder) / written.name
        return json.loads(written.read_text())


def onnx_node_latency(
    path: str | Path, example_inputs: Any = None, *, threads: int = 1, repeats: int = 20, warmup: int = 3
) -> tuple[pd.DataFrame, dict[str, float], dict[str, Any]]:
    """Per-node latency of the ONNX file in ONNX Runtime, from its profiler, and the whole
    model's from the same session and forwards: ``repeats`` forwards after ``warmup``, with
    ``threads`` intra-op threads, on random input of the file's input shape (batch 1).
    ``example_inputs``, if given, must have that shape (a file runs at the size it was
    exported with).

    Returns one row per convolution node of the graph (:data:`CONV_OPS`), in the columns of a
    latency table (:func:`~nas_sepconv.conversion.latency_table`): ``name`` (the node's name),
    ``spec`` (``keep``: the node as it is), ``op`` (operator and weight shape), ``input_shape``,
    ``calls`` (1), ``macs``, ``latency_ms`` (the median kernel time of the node, its fused
    activation included), ``p10_ms``, ``p90_ms`` (NaN for a node the session fused into
    another), ``source`` (``measured``); the whole forward's median, p10 and p90 (ms); and what
    the figures depend on (``context``: runtime and version, threads, the file)."""
    check_threads(threads, "threads")
    check_repeats(repeats, warmup)
    _check_inputs(path, example_inputs)
    graph = _load(path).graph
    weights = {i.name: tuple(int(d) for d in i.dims) for i in graph.initializer}
    shapes = {v.name: _dims(v) for v in [*graph.input, *graph.value_info]}
    events = _profiled_runs(path, threads=threads, runs=warmup + repeats)
    kernels: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            kernels[e["name"].removesuffix("_kernel_time")].append(e["dur"] / 1000)
    whole = [e["dur"] / 1000 for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    profile = onnx_profile(path)
    macs = dict(zip(profile["layer"], profile["macs"]))
    rows = []
    for i, node in enumerate(graph.node):
        if node.op_type not in CONV_OPS:
            continue
        name = node.name or f"{node.op_type}_{i}"
        times = kernels.get(name, [])[warmup:]
        stats = summarise(times) if times else dict.fromkeys(("median_ms", "p10_ms", "p90_ms"), math.nan)
        w = weights.get(node.input[1]) if len(node.input) > 1 else None
        rows.append(
            {
                "name": name,
                "spec": "keep",
                "op": f"{node.op_type} {'x'.join(map(str, w))}" if w else node.op_type,
                "input_shape": shapes.get(node.input[0]) or (),
                "calls": 1,
                "macs": int(macs.get(name, 0)),
                "latency_ms": stats["median_ms"],
                "p10_ms": stats["p10_ms"],
                "p90_ms": stats["p90_ms"],
                "source": "measured",
            }
        )
    ort = need_module("onnxruntime", "runtime")
    context = {"runtime": "onnxruntime", "runtime_version": ort.__version__, "threads": threads, "model": str(path)}
    return pd.DataFrame(rows), summarise(whole[warmup:] or whole), context


def _check_inputs(path: str | Path, example_inputs: Any) -> None:
    """``example_inputs`` (None passes) must have the file's input shape, the batch aside."""
    if example_inputs is None:
        return
    shape = onnx_input_shape(path)
    given = tuple(as_inputs(example_inputs)[0].shape)
    if given[1:] != shape[1:]:
        raise UserInputError(
            "example_inputs",
            f"has shape {given}, but {Path(path).name} runs at {shape} (the size it was exported with)",
            "leave example_inputs out",
        )
