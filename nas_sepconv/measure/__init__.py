"""MACs, parameters and latency of a model (in the runtimes of :data:`RUNTIMES`, cached per
op on disk); nothing else."""

from __future__ import annotations

from .counting import count_macs, count_params, profile
from .inputs import (
    ACTIVATION_BUDGET,
    activation_bytes,
    as_inputs,
    first_conv,
    input_mismatch,
    meta_copy,
    output_tensors,
    wrong_input,
)
from .latency import (
    MAX_THREADS,
    check_repeats,
    check_threads,
    measure_latency,
    reject_stalls,
    summarise,
    time_rounds,
    torch_threads,
)
from .latency_cache import LatencyCache, latency_cache_dir, latency_context, processor_name, valid_record
from .onnx import (
    ONNX_EXPORTERS,
    ONNX_OPSET,
    OnnxExporter,
    OnnxTraceWarning,
    need_module,
    onnx_session,
    run_onnx,
    to_onnx,
)
from .onnx_profile import onnx_node_latency
from .optimize import fold_batchnorm, optimize_for_inference
from .program import export_program
from .runtimes import RUNTIMES, Runtime, find_runtime, prepare_forward

__all__ = [
    "export_program",
    "ACTIVATION_BUDGET",
    "LatencyCache",
    "MAX_THREADS",
    "ONNX_EXPORTERS",
    "ONNX_OPSET",
    "OnnxExporter",
    "OnnxTraceWarning",
    "RUNTIMES",
    "Runtime",
    "activation_bytes",
    "as_inputs",
    "check_repeats",
    "check_threads",
    "count_macs",
    "count_params",
    "find_runtime",
    "first_conv",
    "fold_batchnorm",
    "input_mismatch",
    "latency_cache_dir",
    "latency_context",
    "measure_latency",
    "reject_stalls",
    "meta_copy",
    "need_module",
    "onnx_node_latency",
    "onnx_session",
    "optimize_for_inference",
    "output_tensors",
    "prepare_forward",
    "processor_name",
    "valid_record",
    "profile",
    "run_onnx",
    "summarise",
    "time_rounds",
    "to_onnx",
    "torch_threads",
    "wrong_input",
]
