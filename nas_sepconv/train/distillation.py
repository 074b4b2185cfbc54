"""Knowledge distillation: :func:`distill` (a thin wrapper over :func:`~nas_sepconv.train.fit` with
a teacher) and the hint points of a converted model (:func:`converted_features`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from ..conversion import activation_after, plan_of
from ..data import Dataset
from ..errors import UserInputError
from .config import FitResult, TrainConfig
from .loop import fit

__all__ = ["distill", "converted_features"]


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Dataset | Iterable[Any],
    *,
    val: Iterable[Any] | None = None,
    steps_per_epoch: int | None = None,
    config: TrainConfig | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
    features: str | Sequence[str] | None = None,
    feature_weight: float = 10.0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> FitResult:
    """Train ``student`` to match ``teacher``'s softened outputs (knowledge distillation).

    Loss: ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE``,
    from G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a Neural Network", 2015
    (arXiv:1503.02531).  The ``T^2`` keeps the soft term's gradients at the scale of the hard
    term's as ``T`` changes.  A thin wrapper over :func:`fit`.

    ``features``: also match intermediate outputs (hint learning: A. Romero et al., "FitNets:
    Hints for Thin Deep Nets", ICLR 2015), adding ``feature_weight`` times the mean relative
    squared error ``‖f_student − f_teacher‖² / ‖f_teacher‖²`` of each named module's output.
    A list names modules both models have.  ``"converted"``, for a student made by
    ``apply_plan`` from the teacher: after each converted site, the first activation its output
    reaches through normalisations and additions (:func:`~nas_sepconv.conversion.activation_after`:
    in a ResNet block the ReLU after ``bn1`` and the one after the shortcut sum), else the
    site's own output.  No adapters are needed: conversion keeps every output shape.  With few
    gradient steps this recovers more than the logits alone (``benchmarks/fidelity.py``).

    ``data``: an in-memory :class:`~nas_sepconv.data.Dataset`, or your own pipeline: a
    ``DataLoader`` (e.g. over an ``ImageFolder``) or any re-iterable of ``(inputs, targets)``
    batches, with ``val=`` validation batches and ``steps_per_epoch`` when it has no ``len()``
    (see :func:`fit`).  Under ``torchrun`` (:func:`~nas_sepconv.train.init_distributed`) the
    student trains as DistributedDataParallel, each process on its shard; the teacher runs
    as it is in every process.

    ``progress``: show progress on stderr, as :func:`fit` does (default False: nothing printed).
    """
    if features == "converted":
        features = converted_features(student)
    elif features is None:
        features = ()
    elif isinstance(features, str):
        raise UserInputError(
            "features", f"unknown value {features!r}", "use 'converted', a list of module names, or None"
        )
    return fit(
        student,
        data,
        val=val,
        steps_per_epoch=steps_per_epoch,
        config=config,
        device=device,
        teacher=teacher,
        temperature=temperature,
        alpha=alpha,
        features=list(features),
        feature_weight=feature_weight,
        progress=progress,
    )


def converted_features(student: nn.Module) -> list[str]:
    """The hint points of ``distill(features="converted")``: per converted site of a model made
    by ``apply_plan``, the activation after it, or the site itself (see :func:`distill`)."""
    plan = plan_of(student)
    if plan is None:
        raise UserInputError(
            "features",
            "'converted' needs a student made by ns.apply_plan (it carries its plan)",
            "pass a list of module names instead",
        )
    names = []
    for entry in plan.converted:
        if entry.source != "module":
            continue
        after = activation_after(student, entry.name) if isinstance(student, fx.GraphModule) else None
        names.append(after or entry.name)
    return list(dict.fromkeys(names))
