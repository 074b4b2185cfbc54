"""The ``latency_ms`` a trial records: predicted from a latency table of the base model (convert
spaces, where the candidate is the base model with some sites converted: fast, and the default
there), or measured on the candidate (``search.latency: measured``, and wherever no prediction
applies: built candidates, a width-pruned base, another input size).  The trial's
``latency_source`` (a DataFrame column) says which.  Both use ``search.latency_runtime`` (a name
of :data:`~nas_sepconv.measure.RUNTIMES`) with one intra-op thread on the search device."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from ..conversion import LatencyTable, Plan, latency_table, plan_of
from ..measure import measure_latency
from .spaces import Space

__all__ = ["TrialLatency"]

REPEATS, WARMUP, THREADS = 10, 3, 1


class TrialLatency:
    """The latency of the trials of one process: the space's latency settings, the device, the
    base model (a convert space's, built on first use) and its input shape; the base model's
    latency table is made once, when a prediction first needs it."""

    def __init__(
        self, space: Space, *, device: str, base: Callable[[], nn.Module], input_shape: tuple[int, ...]
    ) -> None:
        self.space = space
        self.device = device
        self.base = base
        self.input_shape = input_shape
        self._table: LatencyTable | None = None

    def __call__(self, model: nn.Module, x: torch.Tensor) -> tuple[float, str]:
        """``(latency_ms, source)`` of the candidate ``model`` on the input ``x``; ``source`` is
        ``predicted`` or ``measured``."""
        s = self.space.spec.search
        plan = plan_of(model)
        if s.latency != "measured" and plan is not None and self._predictable(plan, x):
            return self._base_table(x).predict(plan), "predicted"
        lat = measure_latency(
            model, x.to(self.device), repeats=REPEATS, warmup=WARMUP, threads=THREADS, runtime=s.latency_runtime
        )
        return lat["median_ms"], "measured"

    def _predictable(self, plan: Plan, x: torch.Tensor) -> bool:
        base_shape = (1, *self.input_shape)
        return (
            self.space.spec.space_kind.from_base
            and tuple(x.shape) == base_shape
            and tuple(plan.input_shapes[0]) == base_shape
        )

    def _base_table(self, x: torch.Tensor) -> LatencyTable:
        """The base model's latency table in this process (its entries cached on disk, shared by
        the workers and by later searches on this machine)."""
        if self._table is None:
            self._table = latency_table(
                self.base().cpu(),
                x.cpu(),
                candidates=[],
                runtime=self.space.spec.search.latency_runtime,
                threads=THREADS,
                device=self.device,
                repeats=REPEATS,
                warmup=WARMUP,
            )
        return self._table
