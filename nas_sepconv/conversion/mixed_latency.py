"""Latency of plans with channel pruning, from a :class:`~.latency_lookup.LatencyTable`: kept
names for what the table itself now answers.

A ``prune_r<keep>`` site narrows two convolutions (its own input, its producer's output;
:mod:`.channel_pruning`, after He et al., ICCV 2017), so its saving is timed as both of them,
pruned versus not; the table measures it and stores it as an entry of its site like a block's
(:func:`~.latency_lookup.prune_entry`), and :meth:`~.latency_lookup.LatencyTable.predict`
prices pruned plans (the per-layer lookup tables of FBNet, arXiv:1812.03443) with the same
calibration as converted ones.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from .channel_pruning import PruneSpec
from .latency_lookup import LatencyTable
from .plan import Plan

__all__ = ["annotate_mixed", "predict_mixed", "prune_saving_ms"]


def predict_mixed(table: LatencyTable, plan: Plan) -> float:
    """The latency (ms) ``table`` predicts for ``plan``, pruned sites and narrowed producers
    included: :meth:`~.latency_lookup.LatencyTable.predict`."""
    return table.predict(plan)


def annotate_mixed(table: LatencyTable, plan: Plan) -> Plan:
    """``plan`` with each site's measured latency before and after, narrowed sites included:
    :meth:`~.latency_lookup.LatencyTable.annotate`."""
    return table.annotate(plan)


def prune_saving_ms(table: LatencyTable, model: nn.Module, name: str, spec: PruneSpec, example_inputs: Any) -> float:
    """The time (ms, every call) that pruning site ``name`` alone to ``spec`` saves: the site and
    its producer, pruned versus not, as ``table`` prices it (:meth:`~.latency_lookup.LatencyTable.saving`
    times the site's calls; the table prunes its own model, which ``model`` and ``example_inputs``
    must be)."""
    return table.saving(name, spec) * max(table.sites[name].calls, 1)
