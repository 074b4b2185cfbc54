"""MACs, parameters and latency of a model; nothing else."""

from __future__ import annotations

from .counting import as_inputs, count_macs, count_params, measure_latency, profile

__all__ = [
    "as_inputs",
    "count_macs",
    "count_params",
    "measure_latency",
    "profile",
]
