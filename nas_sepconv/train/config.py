"""How :func:`~nas_sepconv.train.fit` trains: :class:`TrainConfig` (validated, bounded), the
optimizer and learning-rate schedule tables it names, and :class:`FitResult`."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from ..errors import UserInputError

__all__ = [
    "TrainConfig",
    "FitResult",
    "OPTIMIZERS",
    "SCHEDULES",
    "MAX_EPOCHS",
    "MAX_BATCH_SIZE",
    "Optimizer",
    "Schedule",
]


@dataclass(frozen=True)
class Optimizer:
    """A ``TrainConfig.optimizer``: ``build(param_groups, lr)`` makes it (weight decay is per group)."""

    name: str
    description: str
    build: Callable[[list[dict], float], torch.optim.Optimizer]


@dataclass(frozen=True)
class Schedule:
    """A ``TrainConfig.schedule``: ``factor(warm, total)`` is the multiplier of the peak lr at each
    step (``LambdaLR``), for ``warm`` warm-up steps out of ``total``."""

    name: str
    description: str
    factor: Callable[[int, int], Callable[[int], float]]


def _onecycle(warm: int, total: int) -> Callable[[int], float]:
    lo, end = 1.0 / 25.0, 1.0 / 25e4  # torch's OneCycleLR shape: div_factor 25, final_div_factor 1e4, cos anneal

    def onecycle(step: int) -> float:
        if step < warm:
            return lo + (1 - lo) * (1 - math.cos(math.pi * step / warm)) / 2
        t = min(1.0, (step - warm) / max(1, total - 1 - warm))
        return end + (1 - end) * (1 + math.cos(math.pi * t)) / 2

    return onecycle


def _cosine(warm: int, total: int) -> Callable[[int], float]:
    def cosine(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        t = min(1.0, (step - warm) / max(1, total - warm))
        return 0.5 * (1 + math.cos(math.pi * t))

    return cosine


#: The optimizers of ``TrainConfig.optimizer``, by name.
OPTIMIZERS: dict[str, Optimizer] = {
    o.name: o
    for o in (
        Optimizer(
            "sgd",
            "SGD with Nesterov momentum 0.9",
            lambda groups, lr: torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True),
        ),
        Optimizer("adamw", "AdamW (decoupled weight decay)", lambda groups, lr: torch.optim.AdamW(groups, lr=lr)),
    )
}
#: The learning-rate schedules of ``TrainConfig.schedule``, by name.
SCHEDULES: dict[str, Schedule] = {
    s.name: s
    for s in (
        Schedule(
            "onecycle",
            "warm up from lr/25 along a half cosine, then cosine down to lr/25e4 (Smith & Topin 2019)",
            _onecycle,
        ),
        Schedule("cosine", "linear warm-up from 0, then cosine to 0", _cosine),
    )
}
#: The largest ``epochs`` and ``batch_size``: a value past these is a typo, not a plan.
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536


@dataclass
class TrainConfig:
    """How :func:`fit` trains.

    Attributes:
        epochs: passes over the training split, 1..:data:`MAX_EPOCHS`.
        batch_size: images per step, 1..:data:`MAX_BATCH_SIZE`.
        optimizer: a name of :data:`OPTIMIZERS`: ``"sgd"`` (Nesterov momentum 0.9) or ``"adamw"``.
        lr: peak learning rate.  Typical: 0.1 for SGD at batch size 128 (scale linearly with
            the batch size), 1e-3 to 3e-3 for AdamW.
        weight_decay: L2 (SGD) or decoupled (AdamW) weight decay, applied to weights only (not
            to biases or normalisation parameters).  Typical: 5e-4 for SGD, 0.05 for AdamW.
        schedule: a name of :data:`SCHEDULES`: ``"onecycle"`` (warm up from lr/25 to lr along a half cosine over
            ``warmup_epochs``, then cosine down to lr/25e4; Smith & Topin 2019) or ``"cosine"``
            (linear warm-up from 0 over ``warmup_epochs``, then cosine to 0).  The learning rate
            changes every step.
        warmup_epochs: length of the warm-up, in epochs (fractions allowed).
        label_smoothing: cross-entropy label smoothing, in [0, 1).
        amp: mixed precision on CUDA (bfloat16 autocast where supported, else float16 with a
            gradient scaler); ignored on the CPU.
        channels_last: channels-last memory format on CUDA; ignored on the CPU.
        grad_clip: clip the global gradient norm to this value; ``None`` to not clip.
        seed: seeds ``torch.manual_seed`` and the data order and augmentation.
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    amp: bool = True
    channels_last: bool = True
    grad_clip: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`UserInputError` naming ``train.<field>`` for the first bad field."""

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_real(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not is_int(self.epochs) or not 1 <= self.epochs <= MAX_EPOCHS:
            raise UserInputError(
                "train.epochs", f"must be a positive int of at most {MAX_EPOCHS}, got {self.epochs!r}", "use e.g. 10"
            )
        if not is_int(self.batch_size) or not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise UserInputError(
                "train.batch_size",
                f"must be a positive int of at most {MAX_BATCH_SIZE}, got {self.batch_size!r}",
                "use e.g. 128",
            )
        if not isinstance(self.optimizer, str) or self.optimizer not in OPTIMIZERS:
            raise UserInputError(
                "train.optimizer", f"unknown optimizer {self.optimizer!r}", f"use one of {', '.join(OPTIMIZERS)}"
            )
        if not is_real(self.lr) or self.lr <= 0:
            raise UserInputError(
                "train.lr", f"must be a positive number, got {self.lr!r}", "use e.g. 0.1 (sgd) or 1e-3 (adamw)"
            )
        if not is_real(self.weight_decay) or self.weight_decay < 0:
            raise UserInputError("train.weight_decay", f"must be >= 0, got {self.weight_decay!r}", "use e.g. 5e-4")
        if not isinstance(self.schedule, str) or self.schedule not in SCHEDULES:
            raise UserInputError(
                "train.schedule", f"unknown schedule {self.schedule!r}", f"use one of {', '.join(SCHEDULES)}"
            )
        if not is_real(self.warmup_epochs) or self.warmup_epochs < 0:
            raise UserInputError("train.warmup_epochs", f"must be >= 0, got {self.warmup_epochs!r}", "use e.g. 1")
        if not is_real(self.label_smoothing) or not 0 <= self.label_smoothing < 1:
            raise UserInputError(
                "train.label_smoothing", f"must be in [0, 1), got {self.label_smoothing!r}", "use e.g. 0.1"
            )
        if not isinstance(self.amp, bool):
            raise UserInputError("train.amp", f"must be true or false, got {self.amp!r}")
        if not isinstance(self.channels_last, bool):
            raise UserInputError("train.channels_last", f"must be true or false, got {self.channels_last!r}")
        if self.grad_clip is not None and (not is_real(self.grad_clip) or self.grad_clip <= 0):
            raise UserInputError(
                "train.grad_clip", f"must be a positive number or None, got {self.grad_clip!r}", "use e.g. 5.0"
            )
        if not is_int(self.seed):
            raise UserInputError("train.seed", f"must be an int, got {self.seed!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping (a YAML ``train:`` section); unknown keys raise :class:`UserInputError`."""
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise UserInputError(f"train.{key}", "unknown field", f"use one of {', '.join(sorted(known))}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitResult:
    """What :func:`fit` returns.

    ``val_accuracy`` is the accuracy after the last epoch (no checkpoint selection);
    ``history`` has one dict per epoch: ``epoch`` (1-based), ``train_loss`` (mean over the
    epoch), ``val_accuracy``, ``lr`` (of the epoch's last step) and ``seconds``.
    """

    val_accuracy: float
    test_accuracy: float | None
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    epochs: int = 0
