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

The summed single-site damages are a model of the joint damage, not a measurement: converting
several sites compounds their errors (which the forward-order refit partly undoes).  Measure
the converted model.  The table is the costly part (one refit and one pass over the batches
per site and candidate); compute it once and call :func:`plan_for_budget` for each budget.
"""

from __future__ import annotations

import dataclasses
import glob
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserInputError
from ..progress import track
from .plan import Plan, make_plan, with_spec
from ..measure import output_tensors
from .calibration import _batches, _device, _EvalMode, _on, _run
from .least_squares import refit
from .rewrite import apply_plan
from ..blocks import BlockSpec, as_spec

__all__ = ["sensitivity", "plan_for_budget"]

DEFAULT_CANDIDATES = ("dwsep_m1", "dwsep_m2", "dwsep_m4")
SENSITIVITY_COLUMNS = ["name", "spec", "calls", "macs_before", "macs_after", "params_before", "params_after", "damage"]
_METRICS = ("kl", "mse")


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


def _candidates(candidates: Sequence[Any]) -> list[BlockSpec]:
    if isinstance(candidates, (str, BlockSpec)) or not candidates:
        raise UserInputError("candidates", f"expected a non-empty list of block specs, got {candidates!r}",
                             "use e.g. ['dwsep_m1', 'dwsep_m2', 'spatial_r0.125']")
    return list(dict.fromkeys(as_spec(c) for c in candidates))


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
    specs = _candidates(candidates)
    if metric not in _METRICS:
        raise UserInputError("metric", f"expected one of {', '.join(_METRICS)}, got {metric!r}", "use 'kl' for classifiers")
    dev = _device(model, device)
    reference_model = _on(model, dev)
    data = _batches(batches, dev)
    if example_inputs is None:
        first = data[0][0] if isinstance(data[0], (tuple, list)) else data[0]
        if not isinstance(first, torch.Tensor):
            raise UserInputError("example_inputs", "cannot be taken from dict batches", "pass example_inputs=")
        example_inputs = first[:1].cpu()
    base = make_plan(model, policy, example_inputs=example_inputs)
    held = data if eval_batches is None else _batches(eval_batches, dev)
    with _EvalMode(reference_model):
        references = [_run(reference_model, b) for b in held]
    rows = []
    pairs = [(entry, spec) for entry in base.converted for spec in specs]
    for entry, spec in track(pairs, progress, "sensitivity", unit="conversions"):
        plan = _one_site(base, entry.name, spec)
        if plan is None:
            continue
        converted = apply_plan(model, plan, init="svd").to(dev)
        if refit_sites:
            refit(converted, reference_model, data, plan=plan, iterations=iterations)
        with _EvalMode(converted):
            outputs = [_run(converted, b) for b in held]
        e = next(e for e in plan.entries if e.name == entry.name)
        rows.append(dict(name=e.name, spec=str(spec), calls=e.calls, macs_before=e.macs_before,
                         macs_after=e.macs_after, params_before=e.params_before, params_after=e.params_after,
                         damage=_damage(outputs, references, metric)))
        del converted, outputs
    return pd.DataFrame(rows, columns=SENSITIVITY_COLUMNS)


def choose(options: list[list[tuple[int, float]]], required: int, *, resolution: int = 4000) -> list[int] | None:
    """Multiple-choice knapsack: one option per group, each ``(saving, damage)``, total saving at
    least ``required``, least total damage.  Returns the chosen index per group (None if no
    choice saves enough).  Savings are rounded down to ``required / resolution`` steps."""
    if required <= 0:
        return [min(range(len(g)), key=lambda j: (g[j][1], -g[j][0])) for g in options]
    unit = required / resolution
    inf = float("inf")
    best = np.full(resolution + 1, inf)
    best[0] = 0.0
    steps = []  # per group: the option and the predecessor state that reach each state
    for group in options:
        new = np.full(resolution + 1, inf)
        pick = np.zeros(resolution + 1, dtype=np.int64)
        came = np.zeros(resolution + 1, dtype=np.int64)
        for j, (saving, damage) in enumerate(group):
            s = min(int(saving // unit), resolution)
            cand = np.full(resolution + 1, inf)
            prev = np.arange(resolution + 1)
            cand[s:resolution] = best[: resolution - s] + damage
            prev[s:resolution] = np.arange(resolution - s)
            tail = best[resolution - s:]  # every state from which this saving reaches the budget
            k = int(np.argmin(tail))
            cand[resolution], prev[resolution] = tail[k] + damage, resolution - s + k
            better = cand < new
            new[better], pick[better], came[better] = cand[better], j, prev[better]
        steps.append((pick, came))
        best = new
    if not np.isfinite(best[resolution]):
        return None
    state, chosen = resolution, []
    for pick, came in reversed(steps):
        chosen.append(int(pick[state]))
        state = int(came[state])
    return chosen[::-1]


def plan_for_budget(
    model: nn.Module,
    table: pd.DataFrame,
    *,
    macs_ratio: float,
    example_inputs: Any,
    resolution: int = 4000,
) -> Plan:
    """The plan whose summed damage (from :func:`sensitivity`'s ``table``) is least among those
    with at most ``macs_ratio`` × the model's MACs; each site gets one of its candidates or is
    kept.  Sites the table does not name are kept.  The returned plan is an ordinary
    :class:`~nas_sepconv.conversion.Plan` (apply it with :func:`~nas_sepconv.conversion.apply_plan`,
    then :func:`~nas_sepconv.conversion.refit`); its ``notes`` record the budget and the predicted
    damage.

    Raises :class:`UserInputError` if ``macs_ratio`` is not in (0, 1] or is below what the
    candidates can reach, or if ``table`` lacks :func:`sensitivity`'s columns.
    """
    if isinstance(macs_ratio, bool) or not isinstance(macs_ratio, (int, float)) or not 0 < macs_ratio <= 1:
        raise UserInputError("macs_ratio", f"expected a number in (0, 1], got {macs_ratio!r}", "use e.g. 0.25 for a quarter of the MACs")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise UserInputError("resolution", f"expected a positive integer, got {resolution!r}", "use e.g. 4000")
    missing = [c for c in SENSITIVITY_COLUMNS if c not in getattr(table, "columns", [])]
    if missing:
        raise UserInputError("table", f"lacks the columns {', '.join(missing)}", "pass the DataFrame ns.sensitivity returned")
    base = make_plan(model, {}, example_inputs=example_inputs)  # every site kept: the sites and MACs only
    sites = {e.name for e in base.entries}
    names = [n for n in dict.fromkeys(table["name"]) if n in sites]
    unknown = sorted(set(table["name"]) - set(names))
    if unknown:
        raise UserInputError("table", f"names sites this model does not have ({', '.join(unknown[:3])})",
                             "compute the table with ns.sensitivity on this model")
    groups, labels = [], []
    for name in names:
        rows = table[table["name"] == name]
        groups.append([(0, 0.0)] + [(int((r.macs_before - r.macs_after) * r.calls), float(r.damage)) for r in rows.itertuples()])
        labels.append([None] + list(rows["spec"]))
    required = base.model_macs - int(macs_ratio * base.model_macs)
    chosen = choose(groups, required, resolution=resolution)
    if chosen is None:
        floor = (base.model_macs - sum(max(s for s, _ in g) for g in groups)) / base.model_macs
        raise UserInputError("macs_ratio", f"{macs_ratio:g} is below what these candidates reach ({floor:.3f} of the MACs)",
                             "raise macs_ratio, or add cheaper candidates (e.g. dwsep_m1) to ns.sensitivity")
    rules = {glob.escape(name): label[j] for name, label, j in zip(names, labels, chosen) if label[j] is not None}
    plan = make_plan(model, rules, example_inputs=example_inputs)
    damage = sum(g[j][1] for g, j in zip(groups, chosen))
    plan.notes.append(f"plan_for_budget: macs_ratio {macs_ratio:g} (reached {plan.macs_after / plan.model_macs:.4f}), "
                      f"predicted damage {damage:.4g} (sum of single-site damages)")
    return plan
