"""Latency of plans with channel pruning, from a :class:`~.latency.LatencyTable`.

A ``prune_r<keep>`` site narrows two convolutions (its own input, its producer's output;
:mod:`.channel_pruning`), so its saving is timed as both of them, pruned versus not, in the
table's runtime: each narrowed layer is a :class:`~.narrowed.NarrowedSite` entry of its site,
measured (and cached) like a block.  A plan's predicted latency is then, as for conversion
alone (the per-layer lookup tables of FBNet, arXiv:1812.03443), the measured whole model plus,
per site that the plan changes, its new entry less its conv's.  A converted site's saving is
calibrated as :meth:`~.latency.LatencyTable.predict` calibrates it (``table.scales``), so a plan
predicts the same here and there; a narrowed entry has no calibration plan and counts raw.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch.nn as nn

from .channel_pruning import PruneSpec, make_mixed_plan
from .latency import LatencyTable
from .narrowed import NarrowedSite
from .plan import Plan, PlanEntry

__all__ = ["annotate_mixed", "predict_mixed", "prune_saving_ms"]


def _changed(table: LatencyTable, plan: Plan) -> list[tuple[PlanEntry, Any]]:
    """The entries ``plan`` changes (converted or narrowed), each with its table spec."""
    pairs = []
    for e in plan.entries:
        site = table.sites.get(e.name)
        if site is None or not e.reached:
            continue
        narrowed = site.geometry != e.geometry
        if e.converted or narrowed:
            pairs.append((e, NarrowedSite(e.spec, e.geometry, tuple(e.input_shape)) if narrowed else e.spec))
    table.ensure([(e.name, spec) for e, spec in pairs] + [(e.name, None) for e, _ in pairs])
    return pairs


def predict_mixed(table: LatencyTable, plan: Plan) -> float:
    """The latency (ms) ``table`` predicts for ``plan``, pruned sites and narrowed producers
    included (entries it lacks are measured first); a converted site's saving calibrated as
    :meth:`~.latency.LatencyTable.predict` does, so a plan without pruned sites predicts the same."""
    pairs = _changed(table, plan)
    scales = table.scales
    total = 0.0
    for e, spec in pairs:
        scale = 1.0 if isinstance(spec, NarrowedSite) else scales.get(str(spec), scales["*"])
        total += (table.ms(e.name, None) - table.ms(e.name, spec)) * e.calls * scale
    return table.model_ms - total


def annotate_mixed(table: LatencyTable, plan: Plan) -> Plan:
    """``plan`` with each site's measured latency before and after (one call), narrowed sites
    included, and a note of the predicted whole-model latency (as ``LatencyTable.annotate``)."""
    after = {e.name: table.ms(e.name, spec) for e, spec in _changed(table, plan)}
    predicted = predict_mixed(table, plan)
    entries = []
    for e in plan.entries:
        before = table.ms(e.name, None)
        entries.append(dataclasses.replace(e, latency_before_ms=before, latency_after_ms=after.get(e.name, before)))
    notes = [n for n in plan.notes if not n.startswith("latency table:")]
    notes.append(
        f"latency table: predicted {predicted:.3f} ms, {predicted / table.model_ms:.3f}x the measured "
        f"{table.model_ms:.3f} ms ({table.context['runtime']}, {table.context['threads']} threads)"
    )
    return dataclasses.replace(plan, entries=entries, notes=notes)


def prune_saving_ms(table: LatencyTable, model: nn.Module, name: str, spec: PruneSpec, example_inputs: Any) -> float:
    """The time (ms, every call) that pruning site ``name`` alone to ``spec`` saves: the site and
    its producer, pruned versus not, as ``table`` measures them."""
    plan = make_mixed_plan(model, {name: spec}, example_inputs=example_inputs)
    return table.model_ms - predict_mixed(table, plan)
