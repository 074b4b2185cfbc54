"""Structured channel pruning to a MACs or latency budget: the compressor users reach for beside conversion.

Fang et al., "DepGraph: Towards Any Structural Pruning" (CVPR 2023), through Torch-Pruning: the
dependency graph couples the channels that must go together (residual additions,
concatenations, depthwise convolutions, normalisation layers), every coupled group gets one
importance, and the groups are ranked GLOBALLY (one ranking over the whole network, so layers
lose different fractions of their channels).  The channels are removed in small steps until the
model's MACs (:func:`~nas_sepconv.measure.count_macs`, this project's convention) are at most
``macs_ratio`` of the original's, or until its latency, measured as a latency table measures,
is at most ``latency_ratio`` of the original's.  (Pruning one site's input channels, as a
candidate of a budgeted plan beside conversion, is :mod:`.channel_pruning`.)

The importances are a table, :data:`PRUNING_IMPORTANCES`: ``magnitude`` (L2 norm of the
group's weights) and ``taylor`` (first-order Taylor expansion of the loss, |w · dL/dw|: Molchanov
et al., "Importance Estimation for Neural Network Pruning", CVPR 2019; needs a few labelled
batches).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserInputError
from ..measure import as_inputs, count_macs
from ..tables import lookup
from .budget_args import check_budget
from .latency import LatencyTable
from .latency_session import time_modules
from .width import check_model_and_input, check_output_shapes, is_pruned, mark_pruned, prunable_copy, torch_pruning

__all__ = [
    "PRUNING_IMPORTANCES",
    "PruningImportance",
    "pruning_importance",
    "prune",
    "is_pruned",
    "mark_pruned",
    "PRUNE_STEPS",
    "MAX_LAYER_PRUNING",
    "LATENCY_EVERY",
]

#: Pruning steps from the full model to :data:`MAX_LAYER_PRUNING` of the channels pruned: the
#: MACs reached are at most the budget and usually within one step (about 1-2 % of the
#: original's MACs) below it.
PRUNE_STEPS = 100
#: The largest fraction of its channels one coupled group may lose (no layer vanishes).
MAX_LAYER_PRUNING = 0.9
#: Under a latency budget, the pruned model is measured every this many pruning steps.
LATENCY_EVERY = 5


@dataclass(frozen=True)
class PruningImportance:
    """One way to score channel groups: ``make(tp)`` builds Torch-Pruning's importance from the
    ``torch_pruning`` module; ``needs_data``: it reads gradients of the loss on ``data``."""

    name: str
    make: Callable[[Any], Any]
    needs_data: bool
    paper: str


PRUNING_IMPORTANCES: dict[str, PruningImportance] = {
    record.name: record
    for record in (
        PruningImportance(
            "magnitude",
            lambda tp: tp.importance.MagnitudeImportance(p=2),
            needs_data=False,
            paper="Fang et al., DepGraph, CVPR 2023 (group L2 norm)",
        ),
        PruningImportance(
            "taylor",
            lambda tp: tp.importance.TaylorImportance(),
            needs_data=True,
            paper="Molchanov et al., Importance Estimation for Neural Network Pruning, CVPR 2019",
        ),
    )
}


def pruning_importance(name: str) -> PruningImportance:
    """The record of :data:`PRUNING_IMPORTANCES` named ``name`` (field ``importance`` in errors)."""
    return lookup(PRUNING_IMPORTANCES, name, field="importance", what="pruning importance")


def _check_arguments(
    model: nn.Module, example_inputs: Any, importance: str, data: Any, round_to: int | None
) -> PruningImportance:
    """The arguments of :func:`prune`, checked before anything is copied; the importance record."""
    check_model_and_input(model, example_inputs)
    record = pruning_importance(importance)
    if record.needs_data and data is None:
        raise UserInputError(
            "data", f"importance {record.name!r} needs a few labelled batches", "pass data=[(inputs, targets), ...]"
        )
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise UserInputError("round_to", f"expected an integer >= 1 or None, got {round_to!r}", "use 8, or None")
    return record


def _batches(data: Iterable[Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``data`` as a list of (inputs, targets) pairs, checked."""
    batches = list(data)
    if not batches or not all(isinstance(b, (tuple, list)) and len(b) == 2 for b in batches):
        raise UserInputError(
            "data", "expected a non-empty list of (inputs, targets) batches", "e.g. [(x, y), (x2, y2)]"
        )
    return [(b[0], b[1]) for b in batches]


def _accumulate_gradients(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Gradients of the cross-entropy on ``batches`` in the parameters' ``.grad`` (Taylor)."""
    model.zero_grad()
    for inputs, targets in batches:
        F.cross_entropy(model(inputs), targets).backward()


def _latency_ratio(original: nn.Module, pruned: nn.Module, example_inputs: Any, table: LatencyTable) -> float:
    """The median latency of ``pruned`` over ``original``'s, both timed now in the same
    interleaved rounds (:func:`~.latency_session.time_modules`) as ``table`` measures (runtime,
    threads, device, dtype, repeats), as :func:`~.latency_check.measure_plan` times a plan."""
    inputs = as_inputs(example_inputs)
    before, after = time_modules([(original, inputs), (pruned, inputs)], table.settings)
    return after["median_ms"] / before["median_ms"]


def _prune_until(
    pruner: Any,
    pruned: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    measure: Callable[[], float],
    target: float,
    every: int,
) -> float:
    """Step ``pruner`` until ``measure()`` (taken every ``every`` steps and after the last) is at
    most ``target``, or :data:`PRUNE_STEPS` are done; the last measurement."""
    reached = math.inf
    for step in range(1, PRUNE_STEPS + 1):
        if batches:
            _accumulate_gradients(pruned, batches)
        pruner.step()
        if step % every == 0 or step == PRUNE_STEPS:
            reached = measure()
            if reached <= target:
                break
    return reached


def prune(
    model: nn.Module,
    example_inputs: torch.Tensor,
    *,
    macs_ratio: float | None = None,
    latency_ratio: float | None = None,
    latency_table: LatencyTable | None = None,
    importance: str = "magnitude",
    data: Iterable[Any] | None = None,
    round_to: int | None = None,
    ignored: Sequence[nn.Module] | None = None,
) -> nn.Module:
    """A copy of ``model`` with channels pruned until its MACs are at most ``macs_ratio`` of the
    original's (DepGraph, Fang et al. CVPR 2023, with one global importance ranking).

    ``importance``: a name of :data:`PRUNING_IMPORTANCES` (``taylor``, Molchanov et al. 2019,
    needs ``data``: a few ``(inputs, targets)`` batches whose cross-entropy gradients score the
    channels).  ``round_to``: channel counts kept as multiples of it.  ``ignored``: modules of
    ``model`` whose output channels stay; the classifier's outputs always stay, so
    ``model(example_inputs)`` keeps its shape.  The result is a plain ``nn.Module`` with the
    original's classes and narrower layers, in ``model``'s train/eval mode; ``model`` is never
    changed.  Its MACs end at most one step of :data:`PRUNE_STEPS` (about 1-2 % of the
    original's) below the budget.

    ``latency_ratio`` (instead of ``macs_ratio``: exactly one budget) prunes until the
    **measured** latency of the pruned model, in ``latency_table``'s runtime, threads, device
    and dtype (a :class:`~nas_sepconv.conversion.LatencyTable`; its ``repeats``), is at most
    ``latency_ratio`` of the original's, the two timed together in the same interleaved rounds
    at each check (as a latency budget's plan is measured); the model is measured every
    :data:`LATENCY_EVERY` pruning steps, so it ends within that many steps of the budget.

    Raises:
        UserInputError: a bad argument (naming it), or a ratio that pruning cannot reach
            (each group keeps at least 1 - :data:`MAX_LAYER_PRUNING` of its channels; the
            message says what was reached).
    """
    field, ratio = check_budget(dict(macs_ratio=macs_ratio, latency_ratio=latency_ratio), latency_table, whole=False)
    record = _check_arguments(model, example_inputs, importance, data, round_to)
    batches = _batches(data) if record.needs_data else []
    tp = torch_pruning("importance")
    pruned, kept, shapes = prunable_copy(model, example_inputs, ignored, field="ignored")

    was_training = pruned.training
    pruned.eval()
    original = copy.deepcopy(pruned) if field == "latency_ratio" else None  # timed beside each pruned state
    macs = count_macs(pruned, example_inputs)

    def measure() -> float:
        """The fraction of the original reached: MACs, or latency timed beside the original."""
        if field == "macs_ratio":
            return count_macs(pruned, example_inputs) / macs
        return _latency_ratio(original, pruned, example_inputs, latency_table)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.BasePruner(
            pruned,
            example_inputs,
            importance=record.make(tp),
            global_pruning=True,
            pruning_ratio=MAX_LAYER_PRUNING,
            max_pruning_ratio=MAX_LAYER_PRUNING,
            iterative_steps=PRUNE_STEPS,
            ignored_layers=kept,
            round_to=round_to,
        )
        every = 1 if field == "macs_ratio" else LATENCY_EVERY
        reached = _prune_until(pruner, pruned, batches, measure, ratio, every)
    pruned.zero_grad(set_to_none=True)
    pruned.train(was_training)
    if reached > ratio:
        what = "MACs" if field == "macs_ratio" else "measured latency"
        raise UserInputError(
            field,
            f"{ratio} cannot be reached: pruning stopped at {reached:.3f} of the original {what}",
            f"use a ratio above {reached:.2f}, or convert the model (ns.convert) as well",
        )
    check_output_shapes(pruned, example_inputs, shapes, field="ignored")
    return mark_pruned(pruned)
