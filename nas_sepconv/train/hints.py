"""The teacher's part of the training loss: Hinton et al.'s distillation loss and FitNets-style
feature hints (outputs of named modules of the student matched to the teacher's), with the
checks of their arguments."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserInputError

# used by fit and distill only (not re-exported by the package)
__all__ = ["FeatureHints", "check_distill_args", "check_features", "distill_loss"]


def check_distill_args(temperature: float, alpha: float) -> None:
    """Refuse a distillation temperature that is not a positive number, or an alpha outside [0, 1]."""
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not temperature > 0
        or not math.isfinite(temperature)
    ):
        raise UserInputError("distill.temperature", f"must be a positive number, got {temperature!r}", "use e.g. 4")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise UserInputError("distill.alpha", f"must be in [0, 1], got {alpha!r}", "use e.g. 0.9")


def check_features(features: Any, weight: float, teacher: nn.Module | None) -> tuple[str, ...]:
    """The module names to hint (none when ``weight`` is 0), checked: names, a weight >= 0, a teacher."""
    if (
        isinstance(features, str)
        or not isinstance(features, (list, tuple))
        or not all(isinstance(n, str) for n in features)
    ):
        raise UserInputError(
            "features",
            f"expected a list of module names, got {features!r}",
            "use e.g. plan.converted names, or 'converted' with ns.distill",
        )
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0 or not math.isfinite(weight):
        raise UserInputError("feature_weight", f"must be a number >= 0, got {weight!r}", "use e.g. 10")
    if features and teacher is None:
        raise UserInputError("features", "feature hints need a teacher", "pass teacher=, or features=()")
    return tuple(features) if weight > 0 else ()


class FeatureHints:
    """Collects the outputs of the named modules of a student and its teacher during one
    training forward pass (``active``) and turns them into the hint loss: the mean over
    modules (and calls) of ‖f_s − f_t‖² / ‖f_t‖²."""

    def __init__(self, student: nn.Module, teacher: nn.Module, names: Sequence[str]):
        self.active = False
        self.student: list[Tensor] = []
        self.teacher: list[Tensor] = []
        self.names: list[str] = []
        self.handles = []
        for name in names:
            pair = []
            for side, model in (("student", student), ("teacher", teacher)):
                try:
                    pair.append(model.get_submodule(name))
                except AttributeError:
                    self.close()
                    raise UserInputError(
                        "features",
                        f"the {side} has no module {name!r}",
                        "name modules that both models have (a converted model's sites)",
                    ) from None
            self.handles.append(pair[0].register_forward_hook(self._keep(self.student, name)))
            self.handles.append(pair[1].register_forward_hook(self._keep(self.teacher, None)))

    def _keep(self, store: list[Tensor], name: str | None):
        def hook(module, args, output):
            if self.active:
                # the teacher's copy is cloned: a later in-place op of its forward must not change it
                store.append(output if name is not None else output.detach().clone())
                if name is not None:
                    self.names.append(name)

        return hook

    def loss(self) -> Tensor:
        try:
            if len(self.student) != len(self.teacher):
                raise UserInputError(
                    "features",
                    f"the student ran {len(self.student)} hinted modules, the teacher {len(self.teacher)}",
                    "name modules that both models run equally often",
                )
            terms = []
            for name, fs, ft in zip(self.names, self.student, self.teacher):
                if fs.shape != ft.shape:
                    raise UserInputError(
                        "features",
                        f"{name!r}: student output {tuple(fs.shape)} vs teacher {tuple(ft.shape)}",
                        "name modules whose outputs have the same shape",
                    )
                ft = ft.float()
                terms.append((fs.float() - ft).square().mean() / ft.square().mean().clamp_min(1e-12))
            return torch.stack(terms).mean() if terms else torch.zeros(())
        finally:
            self.student.clear()
            self.teacher.clear()
            self.names.clear()

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def distill_loss(
    student: Tensor, teacher: Tensor, y: Tensor, temperature: float, alpha: float, smoothing: float
) -> Tensor:
    """Hinton et al. 2015: ``alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE``."""
    t = float(temperature)
    kl = F.kl_div(
        F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), reduction="batchmean", log_target=True
    )
    loss = (alpha * t * t) * kl
    if alpha < 1:
        loss = loss + (1 - alpha) * F.cross_entropy(student, y, label_smoothing=smoothing)
    return loss
