"""Training: one TrainConfig, fit, evaluate, distillation."""

from __future__ import annotations

from .batchnorm import reestimate_batchnorm
from .config import MAX_BATCH_SIZE, MAX_EPOCHS, OPTIMIZERS, SCHEDULES, FitResult, TrainConfig
from .distillation import converted_features, distill
from .loop import evaluate, fit

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
