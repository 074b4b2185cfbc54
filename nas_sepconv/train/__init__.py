"""Training: one TrainConfig, fit, evaluate, distillation."""

from __future__ import annotations

from .loop import FitResult, TrainConfig, converted_features, distill, evaluate, fit, reestimate_batchnorm

__all__ = [
    "FitResult",
    "TrainConfig",
    "converted_features",
    "distill",
    "evaluate",
    "fit",
    "reestimate_batchnorm",
]
