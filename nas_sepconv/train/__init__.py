"""Training: one TrainConfig, fit, evaluate, distillation, on a Dataset or your DataLoader, under torchrun too."""

from __future__ import annotations

from .batchnorm import reestimate_batchnorm
from .config import MAX_BATCH_SIZE, MAX_EPOCHS, OPTIMIZERS, SCHEDULES, FitResult, TrainConfig
from .distillation import converted_features, distill
from .distributed import init_distributed, is_main_process
from .loop import correct_per_image, evaluate, fit

__all__ = [
    "FitResult",
    "MAX_BATCH_SIZE",
    "MAX_EPOCHS",
    "OPTIMIZERS",
    "SCHEDULES",
    "TrainConfig",
    "converted_features",
    "correct_per_image",
    "distill",
    "evaluate",
    "fit",
    "init_distributed",
    "is_main_process",
    "reestimate_batchnorm",
]
