"""Step 1 of a budgeted plan (:mod:`.budget`): how much converting (or pruning) each site alone
damages the model's output, per candidate.

The per-site damage table of X. Zhang, J. Zou, K. He, J. Sun, "Accelerating Very Deep
Convolutional Networks for Classification and Detection", TPAMI 2016 (arXiv:1505.06798): each
site is changed alone (a block with closed-form initialisation, or ``prune_r<keep>``: He et al.,
ICCV 2017, :mod:`.channel_pruning`), refit on calibration batches, and the output compared with
the original's (mean KL over the class dimension, or the relative squared error).
"""

from __future__ import annotations

import dataclasses
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
from .channel_pruning import PruneSpec, make_mixed_plan, prune_sites, single_prune_figures, split_candidates
from .latency import DEFAULT_CANDIDATES
from .least_squares import refit
from .plan import Plan
from .planning import make_plan, with_spec
from .rewrite import apply_plan

__all__ = ["SENSITIVITY_COLUMNS", "sensitivity"]

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

    Channel pruning is a candidate too: ``prune_r<keep>`` (e.g. ``prune_r0.5``) removes all but
    ``keep`` of the site's input channels, the weakest by L2 magnitude, through Torch-Pruning's
    dependency graph, so the conv that produces them (and its BatchNorm) narrows with it; the
    site's conv is then refit by least squares (He, Zhang, Sun, "Channel Pruning for
    Accelerating Very Deep Neural Networks", ICCV 2017; :mod:`.channel_pruning`).  It is offered
    only at sites whose input channels are local (one producer conv, through BatchNorm and
    activations only: no residual add, concatenation or depthwise coupling, not the model's
    input; :func:`~.channel_pruning.prune_sites` lists them): elsewhere it has no row.  A prune
    row's MACs and params count the site and its producer together (the saving is the model's).

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
