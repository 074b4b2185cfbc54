"""Plans for a MACs budget: measure how much each site minds each block, then choose the mix.

A uniform plan (every site ``dwsep_m2``) spends the same fraction of MACs everywhere, but sites
differ: in a CIFAR ResNet-18 the first stage's convolutions hurt the output ten times more
than the last stage's when converted the same way.  Two steps, after the per-layer rank
selection of X. Zhang, J. Zou, K. He, J. Sun, "Accelerating Very Deep Convolutional Networks
for Classification and Detection", TPAMI 2016 (arXiv:1505.06798), which picks each layer's
rank to minimise a per-layer damage objective under a whole-model complexity budget:

1. :func:`sensitivity` converts **one site at a time** to each candidate block (closed-form
   initialisation, then :func:`~nas_sepconv.conversion.refit` of that site on the calibration
   batches, as the full conversion will do) and measures the **damage** at the model's output
   on the same batches: the mean KL divergence ``KL(softmax(original) || softmax(converted))``
   over the class dimension (dim 1, so segmentation outputs work too), or with
   ``metric="mse"`` the relative squared error ``‖y' − y‖² / ‖y‖²``.
2. :func:`plan_for_budget` chooses one candidate or ``keep`` per site so that the whole
   model's MACs are at most ``macs_ratio`` times the original's and the summed damage is least:
   a multiple-choice knapsack, solved exactly by dynamic programming over MACs savings in
   ``resolution`` steps of the required saving (each site's saving is rounded *down*, so the
   plan never exceeds the budget; the rounding can cost at most one step per site).

With a latency table (:func:`~nas_sepconv.conversion.latency_table`), the budget can be a
latency instead (``latency_ratio`` of the original's measured latency, or ``latency_ms``): each
candidate then counts by the time it saves at its site on that machine and runtime, as the
platform-aware searches do (MnasNet, arXiv:1807.11626; FBNet's lookup tables,
arXiv:1812.03443), so that the budget buys the most speed for the least damage and a block
that saves MACs but no time (a depthwise convolution on a small feature map) is left out.

The summed single-site damages are a model of the joint damage, not a measurement: converting
several sites compounds their errors (which the forward-order refit partly undoes).  Measure
the converted model.  The table is the costly part (one refit and one pass over the batches
per site and candidate); compute it once and call :func:`plan_for_budget` for each budget.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..blocks import BlockSpec
from ..errors import UserInputError
from ..measure import output_tensors
from ..measure.inputs import eval_mode
from ..progress import track
from .calibration import batch_list, on_device, resolve_device, run_batch
from .channel_pruning import (
    PruneSpec,
    is_prune_spec,
    make_mixed_plan,
    prune_sites,
    single_prune_figures,
    split_candidates,
)
from .knapsack import choose
from .latency import DEFAULT_CANDIDATES, LatencyTable
from .least_squares import refit
from .mixed_latency import annotate_mixed, predict_mixed, prune_saving_ms
from .plan import Plan
from .planning import make_plan, with_spec
from .rewrite import apply_plan

__all__ = ["sensitivity", "plan_for_budget"]

SENSITIVITY_COLUMNS = ["name", "spec", "calls", "macs_before", "macs_after", "params_before", "params_after", "damage"]
_METRICS = ("kl", "mse")
#: choices re-solved, each asking for the saving the last one missed, when pruning a site and
#: converting its producer saved less than the two alone (exact MACs; predicted latency)
_PRUNE_RETRIES = 8


def _damage(outputs: list[Any], references: list[Any], metric: str) -> float:
    """Mean KL over positions (``kl``) or relative squared error (``mse``), summed over the
    output's tensors."""
    sums: dict[int, list[float]] = {}  # per output tensor: numerator, denominator
    for out, ref in zip(outputs, references):
        for i, (y, r) in enumerate(zip(output_tensors(out), output_tensors(ref))):
            y, r = y.double(), r.double()
            acc = sums.setdefault(i, [0.0, 0.0])
            if metric == "kl" and r.dim() >= 2:
                kl = F.kl_div(F.log_softmax(y, 1), F.log_softmax(r, 1), log_target=True, reduction="none").sum(1)
                acc[0], acc[1] = acc[0] + kl.sum().item(), acc[1] + kl.numel()
            else:  # mse, or a 1-D output (no class dimension)
                acc[0], acc[1] = acc[0] + (y - r).square().sum().item(), acc[1] + r.square().sum().item()
    return sum(num / den for num, den in sums.values() if den)


def _one_site(plan: Plan, name: str, spec: BlockSpec) -> Plan | None:
    """``plan`` with only site ``name`` converted to ``spec`` (None if the spec cannot replace it
    or would not save MACs there)."""
    entries = [with_spec(e, spec if e.name == name else None, reason="not this site") for e in plan.entries]
    if not any(e.converted for e in entries):
        return None
    return dataclasses.replace(plan, entries=entries)


def _candidates(candidates: Sequence[Any]) -> tuple[list[BlockSpec], list[PruneSpec]]:
    """The block specs and the prune specs (``prune_r<keep>``) of ``candidates``."""
    if isinstance(candidates, (str, BlockSpec, PruneSpec)) or not candidates:
        raise UserInputError(
            "candidates",
            f"expected a non-empty list of block specs, got {candidates!r}",
            "use e.g. ['dwsep_m1', 'dwsep_m2', 'spatial_r0.125', 'prune_r0.5']",
        )
    return split_candidates(candidates)


def _site_plan(model: nn.Module, base: Plan, name: str, spec: Any, example_inputs: Any) -> Plan | None:
    """The plan that changes site ``name`` alone: converted to a block spec, or pruned."""
    if isinstance(spec, PruneSpec):
        return make_mixed_plan(model, {name: spec}, example_inputs=example_inputs)
    return _one_site(base, name, spec)


def _figures(plan: Plan, name: str, spec: Any) -> dict[str, int]:
    """A row's calls, MACs and params (one call) of site ``name`` in its one-site ``plan``."""
    if isinstance(spec, PruneSpec):
        return single_prune_figures(plan, name)
    e = next(e for e in plan.entries if e.name == name)
    return dict(
        calls=e.calls,
        macs_before=e.macs_before,
        macs_after=e.macs_after,
        params_before=e.params_before,
        params_after=e.params_after,
    )


def _first_sample(data: list[Any]) -> torch.Tensor:
    """The default example input of :func:`sensitivity`: the first sample of the first batch
    (on the CPU)."""
    first = data[0][0] if isinstance(data[0], (tuple, list)) else data[0]
    if not isinstance(first, torch.Tensor):
        raise UserInputError("example_inputs", "cannot be taken from dict batches", "pass example_inputs=")
    return first[:1].cpu()


@torch.no_grad()
def sensitivity(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    candidates: Sequence[str | BlockSpec] = DEFAULT_CANDIDATES,
    policy: Any = "dwsep",
    example_inputs: Any = None,
    refit_sites: bool = True,
    iterations: int = 10,
    metric: str = "kl",
    eval_batches: Iterable[Any] | None = None,
    device: Any = None,
    progress: bool = False,
) -> pd.DataFrame:
    """How much converting each site alone to each candidate block damages the output.

    ``policy`` chooses the sites (those :func:`~nas_sepconv.conversion.make_plan` would convert
    under it; by default every conv but the stem, 1×1 and depthwise convs); its own spec is
    not used.  For each site and each candidate that can replace it and saves MACs there, the
    model is converted at that site only (``init="svd"``), refit on ``batches`` when
    ``refit_sites`` (``iterations`` as in :func:`~nas_sepconv.conversion.refit`), and run on the
    same batches; ``damage`` compares its outputs to the original's (``metric``: ``"kl"``, the
    mean KL divergence over dim 1, or ``"mse"``, the relative squared error).

    ``eval_batches``: measure the damage on these instead (held-out inputs, e.g. the validation
    split).  On the batches it was fit to, a refit looks better than it generalises where it has
    few samples per unknown (deep sites on small feature maps), and the plan then spends too
    little of the budget there.

    ``example_inputs`` defaults to the first sample of the first batch.  ``progress``: show
    progress on stderr, one step per site and candidate (default False: nothing is printed; a
    rich bar on a terminal, else a plain ``done/total`` line with rate and time left every few
    seconds and at the end, :mod:`nas_sepconv.progress`).  ``model`` is never changed.

    Returns one row per (site, candidate), sites in forward order: ``name, spec, calls,
    macs_before, macs_after, params_before, params_after, damage`` (MACs and params of one call
    of the site, as in ``Plan.report()``).
    """
    specs, prunes = _candidates(candidates)
    if metric not in _METRICS:
        raise UserInputError(
            "metric", f"expected one of {', '.join(_METRICS)}, got {metric!r}", "use 'kl' for classifiers"
        )
    dev = resolve_device(model, device)
    reference_model = on_device(model, dev)
    data = batch_list(batches, dev)
    if example_inputs is None:
        example_inputs = _first_sample(data)
    base = make_plan(model, policy, example_inputs=example_inputs)
    held = data if eval_batches is None else batch_list(eval_batches, dev)
    with eval_mode(reference_model):
        references = [run_batch(reference_model, b) for b in held]
    rows = []
    local = prune_sites(model, example_inputs) if prunes else {}
    pairs = [(entry, spec) for entry in base.converted for spec in specs + (prunes if entry.name in local else [])]
    for entry, spec in track(pairs, progress, "sensitivity", unit="conversions"):
        plan = _site_plan(model, base, entry.name, spec, example_inputs)
        if plan is None:
            continue
        converted = apply_plan(model, plan, init="svd").to(dev)
        if refit_sites:
            refit(converted, reference_model, data, plan=plan, iterations=iterations)
        with eval_mode(converted):
            outputs = [run_batch(converted, b) for b in held]
        figures = _figures(plan, entry.name, spec)
        rows.append(dict(name=entry.name, spec=str(spec), **figures, damage=_damage(outputs, references, metric)))
        del converted, outputs
    return pd.DataFrame(rows, columns=SENSITIVITY_COLUMNS)


def _check_budget(macs_ratio: Any, latency_ratio: Any, latency_ms: Any, latency_table: Any) -> tuple[str, float]:
    """The one budget given, by field name, checked."""
    given = {
        k: v
        for k, v in (("macs_ratio", macs_ratio), ("latency_ratio", latency_ratio), ("latency_ms", latency_ms))
        if v is not None
    }
    if len(given) != 1:
        raise UserInputError(
            "budget",
            f"give exactly one of macs_ratio, latency_ratio, latency_ms (got {', '.join(given) or 'none'})",
            "e.g. macs_ratio=0.25, or latency_ratio=0.5 with latency_table=ns.latency_table(model, x)",
        )
    ((field, value),) = given.items()
    top = math.inf if field == "latency_ms" else 1
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= top:
        raise UserInputError(
            field,
            f"expected a number in (0, {top:g}], got {value!r}",
            "use e.g. 0.5 for half" if top == 1 else "use the budget in milliseconds, e.g. 20.0",
        )
    if field != "macs_ratio" and not isinstance(latency_table, LatencyTable):
        raise UserInputError(
            "latency_table",
            f"{field} needs a latency table, got {type(latency_table).__name__}",
            "pass latency_table=ns.latency_table(model, example_inputs)",
        )
    return field, float(value)


def _savings(
    rows: pd.DataFrame, field: str, latency_table: LatencyTable | None, prune_ms: dict[tuple[str, str], float]
) -> list[tuple[float, float]]:
    """Per candidate row of one site: (saving, damage); a saving of MACs, or of measured time
    (a block that saves no time is no option: the site is then kept unless another block pays;
    a prune row's time, site and producer, is in ``prune_ms``)."""
    if field == "macs_ratio":
        return [(int((r.macs_before - r.macs_after) * r.calls), float(r.damage)) for r in rows.itertuples()]
    keep = latency_table.ms(rows["name"].iloc[0], None)
    return [
        (
            prune_ms[(r.name, r.spec)]
            if is_prune_spec(r.spec)
            else (keep - latency_table.ms(r.name, r.spec)) * r.calls,
            float(r.damage),
        )
        for r in rows.itertuples()
    ]


def _options(
    model: nn.Module,
    table: pd.DataFrame,
    names: list[str],
    field: str,
    latency_table: LatencyTable | None,
    example_inputs: Any,
) -> tuple[list[list[tuple[float, float]]], list[list[str | None]]]:
    """Per site of ``names``: the knapsack's options, ``keep`` first (saving, damage), and their
    specs (None for keep); only candidates that save.  Under a latency budget the table's
    entries are measured first (a prune row: the site and its producer, pruned and not)."""
    prune_ms = {}
    if field != "macs_ratio":
        blocks = [(r.name, r.spec) for r in table.itertuples() if not is_prune_spec(r.spec)]
        latency_table.ensure(blocks + [(n, None) for n in names])
        prune_ms = {
            (r.name, r.spec): prune_saving_ms(latency_table, model, r.name, PruneSpec.parse(r.spec), example_inputs)
            for r in table.itertuples()
            if is_prune_spec(r.spec)
        }
    groups, labels = [], []
    for name in names:
        rows = table[table["name"] == name]
        savings = _savings(rows, field, latency_table, prune_ms)
        options = [(o, spec) for o, spec in zip(savings, rows["spec"]) if o[0] > 0]
        groups.append([(0, 0.0)] + [o for o, _ in options])
        labels.append([None] + [spec for _, spec in options])
    return groups, labels


def _figure(plan: Plan, field: str, latency_table: LatencyTable | None) -> float:
    """What the budget bounds for ``plan``: its exact MACs, or its predicted latency (ms)."""
    if field == "macs_ratio":
        return plan.macs_after
    return predict_mixed(latency_table, plan) if plan.pruned else latency_table.predict(plan)


def _below_reach(
    field: str, budget: float, total: float, groups: list[list[tuple[float, float]]], table: pd.DataFrame
) -> UserInputError:
    """The error for a budget below what the candidates reach: the least fraction of ``total``
    that saving the most at every site reaches, and cheaper candidates to compute the table with."""
    floor = (total - sum(max(s for s, _ in g) for g in groups)) / total
    what = "of the MACs" if field == "macs_ratio" else f"of the measured {total:.3g} ms, predicted"
    tried = list(dict.fromkeys(str(spec) for spec in table["spec"]))
    cheaper = (
        "cheaper candidates than " + ", ".join(tried[:4]) + (", ..." if len(tried) > 4 else "")
        if "dwsep_m1" in tried
        else "cheaper candidates (e.g. dwsep_m1)"
    )
    return UserInputError(
        field,
        f"{budget:g} is below what these candidates reach ({floor:.3f} {what})",
        f"raise {field}, or add {cheaper} to ns.sensitivity",
    )


def plan_for_budget(
    model: nn.Module,
    table: pd.DataFrame,
    *,
    macs_ratio: float | None = None,
    latency_ratio: float | None = None,
    latency_ms: float | None = None,
    latency_table: LatencyTable | None = None,
    example_inputs: Any,
    resolution: int = 4000,
) -> Plan:
    """The plan whose summed damage (from :func:`sensitivity`'s ``table``) is least among those
    within one budget: at most ``macs_ratio`` × the model's MACs, or a predicted latency of at
    most ``latency_ratio`` × the original's measured latency or ``latency_ms`` milliseconds
    (both need ``latency_table``, a :class:`~nas_sepconv.conversion.LatencyTable` of this model
    at these ``example_inputs``; entries it lacks are measured).  Each site gets one of its
    candidates or is kept; under a latency budget a candidate counts by the time it saves at
    that site on the table's machine and runtime, so a block that saves MACs but no time is
    never chosen.  Sites the table does not name are kept.  The returned plan is an ordinary
    :class:`~nas_sepconv.conversion.Plan` (apply it with :func:`~nas_sepconv.conversion.apply_plan`,
    then :func:`~nas_sepconv.conversion.refit`); its ``notes`` record the budget and the
    predicted damage; with a ``latency_table`` (any budget) its report has each site's measured
    ``latency_before_ms`` and ``latency_after_ms`` beside the MACs.

    Raises :class:`UserInputError` unless exactly one budget is given, if it is out of range or
    below what the candidates can reach, or if ``table`` lacks :func:`sensitivity`'s columns.
    """
    field, budget = _check_budget(macs_ratio, latency_ratio, latency_ms, latency_table)
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise UserInputError("resolution", f"expected a positive integer, got {resolution!r}", "use e.g. 4000")
    if latency_table is not None and not isinstance(latency_table, LatencyTable):
        raise UserInputError(
            "latency_table",
            f"expected a LatencyTable, got {type(latency_table).__name__}",
            "use ns.latency_table(model, x)",
        )
    missing = [c for c in SENSITIVITY_COLUMNS if c not in getattr(table, "columns", [])]
    if missing:
        raise UserInputError(
            "table", f"lacks the columns {', '.join(missing)}", "pass the DataFrame ns.sensitivity returned"
        )
    base = make_plan(model, {}, example_inputs=example_inputs)  # every site kept: the sites and MACs only
    sites = {e.name for e in base.entries}
    names = [n for n in dict.fromkeys(table["name"]) if n in sites]
    unknown = sorted(set(table["name"]) - set(names))
    if unknown:
        raise UserInputError(
            "table",
            f"names sites this model does not have ({', '.join(unknown[:3])})",
            "compute the table with ns.sensitivity on this model",
        )
    groups, labels = _options(model, table, names, field, latency_table, example_inputs)
    total = base.model_macs if field == "macs_ratio" else latency_table.model_ms
    limit = {"macs_ratio": int(budget * total), "latency_ratio": budget * total, "latency_ms": budget}[field]
    required = total - limit
    for attempt in range(_PRUNE_RETRIES):
        chosen = choose(groups, required, resolution=resolution)
        if chosen is None:
            raise _below_reach(field, budget, total, groups, table)
        rules = {name: label[j] for name, label, j in zip(names, labels, chosen) if label[j] is not None}
        plan = make_mixed_plan(model, rules, example_inputs=example_inputs)
        value = _figure(plan, field, latency_table)
        if value <= limit:
            break
        # a producer both narrowed and converted saves less than the two choices alone: ask for more
        required += (value - limit) * 2**attempt
    damage = sum(g[j][1] for g, j in zip(groups, chosen))
    reached = value / (1 if field == "latency_ms" else total)
    plan.notes.append(
        f"plan_for_budget: {field} {budget:g} (reached {reached:.4f}{'' if field == 'macs_ratio' else ', predicted'}), "
        f"predicted damage {damage:.4g} (sum of single-site damages)"
    )
    if latency_table is not None and plan.pruned:
        return annotate_mixed(latency_table, plan)
    return plan if latency_table is None else latency_table.annotate(plan)
