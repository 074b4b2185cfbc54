"""Model -> plan -> converted model: conv sites, Plan, apply_plan, refit, fidelity, budgets,
width pruning, channel pruning to a MACs or latency budget (and per site, in budgeted plans),
inference optimisation and latency tables."""

from __future__ import annotations

from ..measure import fold_batchnorm, optimize_for_inference
from .budget import plan_for_budget, sensitivity
from .channel_pruning import PruneSpec, make_mixed_plan, prune_sites
from .examples import ExampleInputs
from .fidelity_report import fidelity
from .latency import LatencyTable, latency_table, predict_latency
from .least_squares import refit
from .normal_equations import conv_patches
from .plan import Plan, PlanEntry
from .planning import PlanWarning, make_plan
from .policy import Policy
from .pruning import PRUNING_IMPORTANCES, PruningImportance, is_pruned, prune, pruning_importance
from .rewrite import INIT_NAMES, INITS, InitMethod, apply_plan, convert, init_method, plan_of
from .sites import Site, activation_after, find_sites
from .width import apply_width_mult, find_classifier

__all__ = [
    "ExampleInputs",
    "INITS",
    "INIT_NAMES",
    "InitMethod",
    "init_method",
    "LatencyTable",
    "Plan",
    "PlanEntry",
    "PlanWarning",
    "Policy",
    "PRUNING_IMPORTANCES",
    "PruneSpec",
    "make_mixed_plan",
    "prune_sites",
    "PruningImportance",
    "Site",
    "activation_after",
    "apply_plan",
    "apply_width_mult",
    "conv_patches",
    "convert",
    "fidelity",
    "find_classifier",
    "find_sites",
    "fold_batchnorm",
    "latency_table",
    "make_plan",
    "optimize_for_inference",
    "plan_for_budget",
    "plan_of",
    "predict_latency",
    "is_pruned",
    "prune",
    "pruning_importance",
    "refit",
    "sensitivity",
]
