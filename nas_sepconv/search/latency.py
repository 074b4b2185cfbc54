"""The ``latency_ms`` a trial records: predicted from a latency table of the base model (convert
spaces, where the candidate is the base model with some sites converted: fast, and the default
there), or measured on the candidate (``search.latency: measured``, and wherever no prediction
applies: built candidates, a width-pruned base, another input size).  The trial's
``latency_source`` (a DataFrame column) says which.  Both use ``search.latency_runtime`` (a name
of :data:`~nas_sepconv.measure.RUNTIMES`) with one intra-op thread on the search device."""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn as nn

from ..conversion import LatencyTable, latency_table, plan_of
from ..measure import measure_latency

__all__ = ["trial_latency"]

REPEATS, WARMUP, THREADS = 10, 3, 1
_TABLES: weakref.WeakKeyDictionary[Any, LatencyTable] = weakref.WeakKeyDictionary()  # per TrialContext


def _table(ctx: Any, x: torch.Tensor) -> LatencyTable:
    """The base model's latency table in this process (its entries cached on disk, shared by the
    workers and by later searches on this machine)."""
    if ctx not in _TABLES:
        s = ctx.settings.space.spec.search
        _TABLES[ctx] = latency_table(
            ctx.base().cpu(),
            x.cpu(),
            candidates=[],
            runtime=s.latency_runtime,
            threads=THREADS,
            device=ctx.settings.device,
            repeats=REPEATS,
            warmup=WARMUP,
        )
    return _TABLES[ctx]


def _predictable(ctx: Any, model: nn.Module, x: torch.Tensor) -> bool:
    plan = plan_of(model)
    base_shape = (1, *ctx.data.input_shape)
    return (
        ctx.settings.space.spec.space_kind.from_base
        and plan is not None
        and tuple(x.shape) == base_shape
        and tuple(plan.input_shapes[0]) == base_shape
    )


def trial_latency(ctx: Any, model: nn.Module, x: torch.Tensor) -> tuple[float, str]:
    """``(latency_ms, source)`` of the candidate ``model`` on the input ``x``; ``source`` is
    ``predicted`` or ``measured``."""
    s = ctx.settings.space.spec.search
    if s.latency != "measured" and _predictable(ctx, model, x):
        return _table(ctx, x).predict(plan_of(model)), "predicted"
    lat = measure_latency(
        model, x.to(ctx.settings.device), repeats=REPEATS, warmup=WARMUP, threads=THREADS, runtime=s.latency_runtime
    )
    return lat["median_ms"], "measured"
