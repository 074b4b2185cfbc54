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

import functools
from typing import Any

import pandas as pd
import torch.nn as nn

from ..errors import UserInputError
from .budget_args import check_budget
from .channel_pruning import is_prune_spec, make_mixed_plan, prune_sites
from .knapsack import Exclusion, choose_apart
from .latency import LatencyTable
from .latency_check import honour_latency_budget
from .plan import Plan
from .planning import make_plan
from .sensitivity import SENSITIVITY_COLUMNS, sensitivity

__all__ = ["sensitivity", "plan_for_budget"]

#: choices re-solved, each asking for the saving the last one missed, when pruning a site and
#: converting its producer saved less than the two alone (exact MACs; predicted latency)
_PRUNE_RETRIES = 8


def _savings(rows: pd.DataFrame, field: str, latency_table: LatencyTable | None) -> list[tuple[float, float]]:
    """Per candidate row of one site: (saving, damage); a saving of MACs, or of measured time
    (calibrated: :meth:`~.latency_lookup.LatencyTable.saving`, which prices a prune row too, its
    site and producer; a block that saves no time is no option: the site is then kept unless
    another block pays)."""
    if field == "macs_ratio":
        return [(int((r.macs_before - r.macs_after) * r.calls), float(r.damage)) for r in rows.itertuples()]
    return [(latency_table.saving(r.name, r.spec) * r.calls, float(r.damage)) for r in rows.itertuples()]


def _options(
    table: pd.DataFrame, names: list[str], field: str, latency_table: LatencyTable | None
) -> tuple[list[list[tuple[float, float]]], list[list[str | None]]]:
    """Per site of ``names``: the knapsack's options, ``keep`` first (saving, damage), and their
    specs (None for keep); only candidates that save.  Under a latency budget the table's
    entries are measured first, all in one session."""
    if field != "macs_ratio":
        latency_table.ensure([(r.name, r.spec) for r in table.itertuples()] + [(n, None) for n in names])
    groups, labels = [], []
    for name in names:
        rows = table[table["name"] == name]
        savings = _savings(rows, field, latency_table)
        options = [(o, spec) for o, spec in zip(savings, rows["spec"]) if o[0] > 0]
        groups.append([(0, 0.0)] + [o for o, _ in options])
        labels.append([None] + [spec for _, spec in options])
    return groups, labels


def _figure(plan: Plan, field: str, latency_table: LatencyTable | None) -> float:
    """What the budget bounds for ``plan``: its exact MACs, or its predicted latency (ms)."""
    if field == "macs_ratio":
        return plan.macs_after
    return latency_table.predict(plan)


def _solve(
    model: nn.Module,
    names: list[str],
    groups: list[list[tuple[float, float]]],
    labels: list[list[str | None]],
    required: float,
    limit: float,
    field: str,
    latency_table: LatencyTable | None,
    example_inputs: Any,
    resolution: int,
) -> tuple[Plan, list[int], float] | None:
    """The knapsack's choice (saving at least ``required``) as a plan, its chosen options and
    its figure (exact MACs, or predicted ms); None when no choice saves enough.  A pruned site
    and a compressed producer of its inputs save less than the two apart, so no choice takes
    both (:func:`~.knapsack.choose_apart`).  A plan whose figure still misses ``limit`` (a
    latency predicted of the whole plan) is solved again asking for the saving it missed
    (doubled each time), :data:`_PRUNE_RETRIES` times; then :class:`UserInputError` names the
    figure reached (a plan over budget is never returned)."""
    exclusions = _prune_exclusions(model, names, labels, example_inputs)
    for attempt in range(_PRUNE_RETRIES):
        chosen = choose_apart(groups, required, exclusions=exclusions, resolution=resolution)
        if chosen is None:
            return None
        rules = {name: label[j] for name, label, j in zip(names, labels, chosen) if label[j] is not None}
        plan = make_mixed_plan(model, rules, example_inputs=example_inputs)
        value = _figure(plan, field, latency_table)
        if value <= limit:
            return plan, chosen, value
        required += (value - limit) * 2**attempt
    figure = (
        f"{value:.4g} predicted ms against {limit:.4g}" if field != "macs_ratio" else f"{value} MACs against {limit}"
    )
    raise UserInputError(
        field,
        f"the budget is not kept: after {_PRUNE_RETRIES} choices each asking for the saving the last missed, "
        f"the plan reaches {figure}",
        f"raise {field}, or leave out the prune_r candidates (they save less beside a compressed producer)",
    )


def _prune_exclusions(
    model: nn.Module, names: list[str], labels: list[list[str | None]], example_inputs: Any
) -> list[Exclusion]:
    """Per pruned site whose producer is a site of ``names``: the site's prune options against
    the producer's every option but keep (their savings, site and producer counted apart, would
    be counted twice)."""
    if not any(is_prune_spec(label) for group in labels for label in group if label is not None):
        return []
    index = {name: i for i, name in enumerate(names)}
    out = []
    for site, producer in prune_sites(model, example_inputs).items():
        if site in index and producer in index:
            a, b = index[site], index[producer]
            pruned = frozenset(j for j, label in enumerate(labels[a]) if label is not None and is_prune_spec(label))
            compressed = frozenset(j for j, label in enumerate(labels[b]) if label is not None)
            if pruned and compressed:
                out.append((a, pruned, b, compressed))
    return out


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


def _check_options(resolution: Any, latency_table: Any) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise UserInputError("resolution", f"expected a positive integer, got {resolution!r}", "use e.g. 4000")
    if latency_table is not None and not isinstance(latency_table, LatencyTable):
        raise UserInputError(
            "latency_table",
            f"expected a LatencyTable, got {type(latency_table).__name__}",
            "use ns.latency_table(model, x)",
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
    measure: bool = True,
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

    With ``prune_r<keep>`` rows in ``table`` a site may also be pruned: the plan is then
    :func:`~.channel_pruning.make_mixed_plan`'s, of the pruned model (each site's ``choice`` in
    the report: ``keep``, ``prune_r0.5``, ``dwsep_m2``, ...; ``compressor`` says what it is, e.g.
    ``low-rank (spatial SVD)``); :func:`~nas_sepconv.conversion.apply_plan` prunes first and then
    converts, and its MACs are exactly ``plan.macs_after``.  Under a latency budget a prune row
    counts by the time its site and producer save, pruned versus not, measured in the table's
    runtime (the table's prune entry: :func:`~.latency_lookup.prune_entry`).  When a pruned
    site's producer is also converted, the two save less than apart; the choice is then solved
    again asking for more, so the plan keeps to the budget (MACs exactly, latency as predicted).

    A latency-budget plan is then measured (``measure=False``: not), re-planned tighter if above
    1.1× the budget or looser if well under it (the table over-predicted), and refused if still
    above (:mod:`~nas_sepconv.conversion.latency_check`).

    Raises :class:`UserInputError` unless exactly one budget is given, if it is out of range,
    below what the candidates can reach or not met when measured, or if ``table`` lacks
    :func:`sensitivity`'s columns.
    """
    field, budget = check_budget(
        dict(macs_ratio=macs_ratio, latency_ratio=latency_ratio, latency_ms=latency_ms), latency_table, whole=True
    )
    _check_options(resolution, latency_table)
    base, names = _table_sites(model, table, example_inputs)
    groups, labels = _options(table, names, field, latency_table)
    total = base.model_macs if field == "macs_ratio" else latency_table.model_ms
    limit = {"macs_ratio": int(budget * total), "latency_ratio": budget * total, "latency_ms": budget}[field]
    plan_at = functools.partial(
        _plan_at, model, example_inputs, field, budget, groups, labels, names, total, resolution, latency_table
    )
    plan = plan_at(limit)
    if plan is None:
        raise _below_reach(field, budget, total, groups, table)
    if field != "macs_ratio" and measure:
        plan = honour_latency_budget(
            plan,
            plan_at,
            model=model,
            example_inputs=example_inputs,
            table=latency_table,
            field=field,
            budget=budget,
            limit=limit,
        )
    return plan if latency_table is None else latency_table.annotate(plan)


def _table_sites(model: nn.Module, table: Any, example_inputs: Any) -> tuple[Plan, list[str]]:
    """The plan keeping every site of ``model`` (its sites and MACs), and the sites ``table``
    names in its order; raises unless ``table`` is :func:`sensitivity`'s, of this model."""
    missing = [c for c in SENSITIVITY_COLUMNS if c not in getattr(table, "columns", [])]
    if missing:
        raise UserInputError(
            "table", f"lacks the columns {', '.join(missing)}", "pass the DataFrame ns.sensitivity returned"
        )
    base = make_plan(model, {}, example_inputs=example_inputs)
    sites = {e.name for e in base.entries}
    names = [n for n in dict.fromkeys(table["name"]) if n in sites]
    unknown = sorted(set(table["name"]) - set(names))
    if unknown:
        raise UserInputError(
            "table",
            f"names sites this model does not have ({', '.join(unknown[:3])})",
            "compute the table with ns.sensitivity on this model",
        )
    return base, names


def _plan_at(
    model: nn.Module,
    example_inputs: Any,
    field: str,
    budget: float,
    groups: list[list[tuple[float, float]]],
    labels: list[list[str | None]],
    names: list[str],
    total: float,
    resolution: int,
    latency_table: LatencyTable | None,
    limit: float,
) -> Plan | None:
    """The plan of least summed damage within ``limit`` (MACs, or predicted ms), its notes
    naming the budget; None if no choice reaches it."""
    solved = _solve(
        model, names, groups, labels, total - limit, limit, field, latency_table, example_inputs, resolution
    )
    if solved is None:
        return None
    plan, chosen, value = solved
    damage = sum(g[j][1] for g, j in zip(groups, chosen))
    reached = value / (1 if field == "latency_ms" else total)
    plan.notes.append(
        f"plan_for_budget: {field} {budget:g} (reached {reached:.4f}{'' if field == 'macs_ratio' else ', predicted'}), "
        f"predicted damage {damage:.4g} (sum of single-site damages)"
    )
    return plan
