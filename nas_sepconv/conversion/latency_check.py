"""Latency budgets honoured or refused: a plan chosen by predicted latency is measured whole
before it is returned.

A latency table predicts; it does not guarantee (kernel sums miss what a runtime shares between
kernels, and a machine drifts).  So :func:`~nas_sepconv.conversion.plan_for_budget` under a
latency budget measures the converted model beside the original, in the table's runtime and
threads, in the same interleaved rounds (:func:`measure_plan`).  A plan measuring above
:data:`TOLERANCE` × its budget is re-planned with a target tightened by the miss; one measuring
below :data:`UNDERSHOOT` × its budget, where the table over-predicted it, is re-planned with the
target loosened by the over-prediction, so that no more is converted (and no more accuracy lost)
than the budget needs (at most :data:`ROUNDS` plans in all; the slowest measured within the
budget is returned, else the closest above it), and if none meets it the budget is refused in one line
(:class:`~nas_sepconv.errors.UserInputError`) naming what the best plan measured: a budget is
never missed silently.  The closed-loop check follows the measured-latency searches of
MnasNet (M. Tan et al., CVPR 2019, arXiv:1807.11626), which time every candidate on the device.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from ..errors import UserInputError
from ..measure import as_inputs, torch_threads
from .latency import LatencyTable
from .latency_session import time_modules
from .plan import Plan
from .rewrite import apply_plan

__all__ = ["ROUNDS", "TOLERANCE", "UNDERSHOOT", "honour_latency_budget", "measure_plan"]

#: a plan measuring above this many times its latency budget is re-planned, then refused
TOLERANCE = 1.1
#: a plan measuring below this many times its budget, over-predicted by the table, is re-planned
#: with a looser target (it converts more than the budget needs)
UNDERSHOOT = 0.9
#: at most this many plans are measured for one budget
ROUNDS = 3


def measure_plan(model: nn.Module, plan: Plan, example_inputs: Any, table: LatencyTable) -> tuple[float, float]:
    """(the original's, the converted model's) median latency in ms, timed now in the same
    interleaved rounds with ``table``'s runtime, threads, device and dtype.  The converted model
    gets fresh weights (its latency does not depend on their values; no refit is needed)."""
    inputs = as_inputs(example_inputs)
    with torch.no_grad():
        converted = apply_plan(model, plan, init="random").eval()
    with torch_threads(table.settings.threads):
        original, after = time_modules(
            [(copy.deepcopy(model).eval(), inputs), (converted, inputs)], table.settings, progress=False
        )
    return original["median_ms"], after["median_ms"]


def honour_latency_budget(
    plan: Plan,
    plan_at: Callable[[float], Plan | None],
    *,
    model: nn.Module,
    example_inputs: Any,
    table: LatencyTable,
    field: str,
    budget: float,
    limit: float,
) -> Plan:
    """``plan`` (chosen for the predicted ``limit`` ms) if it measures within :data:`TOLERANCE`
    × the budget (``field`` ``latency_ratio``: of the original measured beside it;
    ``latency_ms``: in milliseconds), else the plan ``plan_at`` chooses for a limit tightened by
    the measured miss, measured again (:data:`ROUNDS` plans at most).  The returned plan's notes
    record the measured latency and ratio.  Raises :class:`UserInputError` (one line, the
    measured figure) when no plan meets the budget."""
    measured: list[tuple[float, Plan, float, float]] = []
    first_limit = limit
    for attempt in range(1, ROUNDS + 1):
        original, converted = measure_plan(model, plan, example_inputs, table)
        ratio = converted / original
        miss = (converted / budget) if field == "latency_ms" else (ratio / budget)
        measured.append((miss, plan, original, converted))
        if UNDERSHOOT <= miss <= TOLERANCE or attempt == ROUNDS:
            break
        if miss > TOLERANCE:
            limit = limit / miss
        else:  # under: loosen by what the table over-predicted, if it did
            predicted = table.predict(plan) / (1.0 if field == "latency_ms" else table.model_ms)
            over = predicted / (converted if field == "latency_ms" else ratio)
            if over <= 1.0:
                break
            limit = max(limit, first_limit * over)
        replanned = plan_at(limit)
        if replanned is None or _same(replanned, plan):
            break
        plan = replanned
    miss, plan, original, converted = _chosen(measured)
    note = (
        f"measured: {converted:.3f} ms, {converted / original:.3f}x the original's {original:.3f} ms timed beside "
        f"it ({table.context['runtime']}, {table.context['threads']} threads); {miss:.3f}x the {field} budget "
        f"after {attempt} measured plan(s)"
    )
    if miss > TOLERANCE:
        reached = f"{converted:.3g} ms" if field == "latency_ms" else f"{converted / original:.3f} of the original"
        raise UserInputError(
            field,
            f"{budget:g} is not met: the best plan measured {reached} ({table.context['runtime']}), "
            f"{miss:.2f}x the budget, after {attempt} plan(s) each tightened by its miss",
            f"raise {field}, add cheaper candidates, or pass measure=False for the predicted plan",
        )
    plan.notes.append(note)
    return plan


def _chosen(measured: list[tuple[float, Plan, float, float]]) -> tuple[float, Plan, float, float]:
    """Of the plans measured (miss, plan, original ms, converted ms): the slowest within the
    budget itself (it converts the least), else the closest above it (within :data:`TOLERANCE`
    or not: the caller refuses a miss above it).  Aiming a loosened plan at the tolerance's edge
    instead would leave a later measurement of it over the tolerance by the machine's noise."""
    under = [m for m in measured if m[0] <= 1.0]
    return max(under, key=lambda m: m[0]) if under else min(measured, key=lambda m: m[0])


def _same(a: Plan, b: Plan) -> bool:
    """Whether two plans make the same model (each site's block spec)."""
    return [(e.name, str(e.spec)) for e in a.entries] == [(e.name, str(e.spec)) for e in b.entries]
