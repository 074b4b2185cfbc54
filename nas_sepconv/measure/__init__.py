"""MACs, parameters and latency of a model; nothing else."""

from __future__ import annotations

from .counting import count_macs, count_params, profile
from .inputs import ACTIVATION_BUDGET, activation_bytes, as_inputs, first_conv, input_mismatch, meta_copy, output_tensors, wrong_input
from .latency import MAX_THREADS, check_threads, measure_latency

__all__ = [
    "ACTIVATION_BUDGET",
    "MAX_THREADS",
    "activation_bytes",
    "as_inputs",
    "check_threads",
    "count_macs",
    "count_params",
    "first_conv",
    "input_mismatch",
    "measure_latency",
    "meta_copy",
    "output_tensors",
    "profile",
    "wrong_input",
]
