"""Training: one TrainConfig, fit, evaluate, distillation."""

from __future__ import annotations

from .loop import (
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    OPTIMIZERS,
    SCHEDULES,
    FitResult,
    TrainConfig,
    converted_features,
    distill,
    evaluate,
    fit,
    reestimate_batchnorm,
)

__all__ = [
    "FitResult",
    "MAX_BATCH_SIZE",
    "MAX_EPOCHS",
    "OPTIMIZERS",
    "SCHEDULES",
    "TrainConfig",
    "converted_features",
    "distill",
    "evaluate",
    "fit",
    "reestimate_batchnorm",
]
