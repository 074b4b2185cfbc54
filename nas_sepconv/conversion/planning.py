"""Making a plan: choosing, per conv site, the block that replaces it.

``make_plan`` traces a model with torch.fx, propagates shapes from example inputs, finds every
convolution (``call_module`` of an ``nn.ConvNd`` and ``F.convNd`` calls on parameters), and
records per site the decision of a :class:`Policy` (a :class:`BlockSpec`, or why the site is
skipped) with MACs and parameters before and after.  Nothing is converted: a :class:`~.plan.Plan` is
data, printable as a DataFrame and re-applicable (JSON) to a fresh instance of the same model.

When symbolic tracing fails (data-dependent control flow), or the traced graph would drop a
``torch.no_grad()`` region of ``forward``, the sites are found by forward hooks on convolution
modules instead (:mod:`.sites`), the plan says so, and ``apply_plan`` swaps submodules in place.
Every conv module is in the plan: one that no example input reaches is kept, and the report,
the summary and a :class:`PlanWarning` say so (pass :class:`~.examples.ExampleInputs` to reach
every branch).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn

from ..blocks import BlockSpec, ConvGeometry, conv_from_geometry
from ..errors import UserInputError
from ..measure import count_macs, count_params
from .examples import ExampleInputs, example_list
from .plan import RULE_NOT_APPLIED, Plan, PlanEntry, short_list
from .policy import Policy
from .sites import Site, find_sites

__all__ = ["PlanWarning", "make_plan", "with_spec"]


class PlanWarning(UserWarning):
    """What :func:`make_plan` tells about a plan that differs from what was asked: sites no
    example input reached, a default spec that saves too few MACs to be made, convolutions that
    run with gradients disabled.  The same lines are in ``Plan.notes``."""


def _site_cost(g: ConvGeometry, spec: BlockSpec | None, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """MACs and params of one call of the block ``spec`` builds for ``g`` (the conv itself when
    spec is None), counted on the meta device; 0 MACs when the input shape is unknown."""
    with torch.device("meta"):
        module = conv_from_geometry(g) if spec is None else spec.build(g)
        if not input_shape:
            return 0, count_params(module)
        x = torch.empty(input_shape)
    return count_macs(module, x), count_params(module)


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.3g} %"


def _saving(macs: int, before: int) -> str:
    """``saves 9.6 %`` (negative when the block costs more MACs than the conv)."""
    return f"saves {_percent(1 - macs / before) if before else '0 %'}"


def with_spec(
    entry: PlanEntry,
    spec: BlockSpec | None,
    *,
    reason: str = "",
    min_macs_saving: float | None = 0.0,
    must_save: bool = False,
) -> PlanEntry:
    """``entry`` converted to ``spec`` (its MACs and params after recomputed), or kept (with
    ``reason``) when ``spec`` is None, cannot replace the conv, or saves less than
    ``min_macs_saving`` of its MACs (``None``: no check), or, with ``must_save``, saves none;
    the reason then states the numbers (``"... saves 9.6 %, below min_macs_saving 50 %"``)."""
    kept = replace(
        entry,
        spec=None,
        reason=reason,
        macs_after=entry.macs_before,
        params_after=entry.params_before,
        latency_after_ms=entry.latency_before_ms,
    )
    if spec is None:
        return kept
    why_not = spec.unsupported(entry.geometry)
    if why_not:
        return replace(kept, reason=f"{spec} does not apply: {why_not}")
    macs, params = _site_cost(entry.geometry, spec, entry.input_shape)
    before = entry.macs_before
    if min_macs_saving is not None and (macs > before * (1 - min_macs_saving) or (must_save and macs >= before)):
        below = (
            f"below min_macs_saving {_percent(min_macs_saving)}"
            if macs > before * (1 - min_macs_saving)
            else "a default conversion must save some"
        )
        return replace(
            kept, reason=f"{spec} would not save MACs: {_saving(macs, before)}, {below} ({macs:,} vs {before:,} MACs)"
        )
    return replace(entry, spec=spec, reason="", macs_after=macs, params_after=params, latency_after_ms=None)


def _rule_note(entry: PlanEntry, glob: str, min_macs_saving: float | None) -> str:
    """What a rule's block costs, when it saves less than the default would have to."""
    macs, before, floor = entry.macs_after, entry.macs_before, min_macs_saving or 0.0
    if macs < before * (1 - floor):
        return ""
    if macs > before:
        cost = f"costs {_percent(macs / before - 1)} more MACs than the conv"
    else:
        cost = _saving(macs, before) + (f", below min_macs_saving {_percent(floor)}" if floor else "")
    return f"rule {glob!r}: {entry.spec} {cost} ({macs:,} vs {before:,} MACs); applied as written"


def _entry(site: Site, policy: Policy) -> PlanEntry:
    """The plan entry of one site: the policy's decision, MACs checked for the default only."""
    macs0, params0 = _site_cost(site.geometry, None, site.input_shape)
    kept = PlanEntry(
        site.name,
        site.source,
        site.geometry,
        site.input_shape,
        site.output_shape,
        site.calls,
        None,
        "",
        macs0,
        macs0,
        params0,
        params0,
        reached=site.reached,
        grad_enabled=site.grad_enabled,
    )
    spec, reason = policy.decide(site)
    glob = policy.rule_for(site.name)
    if glob is None or spec is None:  # the default (or kept): it must save MACs
        return with_spec(kept, spec, reason=reason, min_macs_saving=policy.min_macs_saving, must_save=True)
    entry = with_spec(kept, spec, reason=reason, min_macs_saving=None)  # the user's rule: as written
    if not entry.converted:  # the block cannot replace this conv: kept, and said so
        return replace(
            entry,
            note=f"{RULE_NOT_APPLIED}{glob!r} names {spec}, which cannot replace this conv "
            f"({entry.reason.split(': ', 1)[-1]})",
        )
    return replace(entry, note=_rule_note(entry, glob, policy.min_macs_saving))


def _warnings(plan: Plan, policy: Policy) -> list[str]:
    """The :class:`PlanWarning` lines of a plan: sites not reached, a default spec not made for
    MACs (with the numbers), convolutions under ``torch.no_grad()``."""
    lines = []
    if plan.not_reached:
        fix = (
            "pass inputs that reach them, example_inputs=ns.ExampleInputs(x1, x2)"
            if not plan.traced
            else "forward never calls them"
        )
        lines.append(
            f"{len(plan.not_reached)} conv site(s) not reached by the example inputs, kept: "
            f"{short_list(plan.not_reached)} ({fix})"
        )
    marker = f"{policy.default} would not save MACs: "
    refused = [e for e in plan.entries if e.reason.startswith(marker)]
    if refused:
        shown = "; ".join(f"{e.name}: {e.reason[len(marker) :]}" for e in refused[:3]) + (
            "; ..." if len(refused) > 3 else ""
        )
        lines.append(
            f"{policy.default} not made at {len(refused)} site(s), as it would not save MACs there: {shown}; to "
            "apply it "
            f"anyway, pass ns.Policy(default={str(policy.default)!r}, min_macs_saving=None) or name the sites in "
            "Policy(rules=...)"
        )
    against = plan.rules_not_applied
    if against:
        shown = "; ".join(f"{e.name}: {e.note[len(RULE_NOT_APPLIED) :]}" for e in against[:3])
        lines.append(
            f"{len(against)} site(s) kept against their rule, whose block cannot replace the conv: "
            f"{shown}{'; ...' if len(against) > 3 else ''}; name a block that can "
            "(spec.unsupported(geometry) says why not), or keep those sites with None"
        )
    if plan.no_grad:
        how = "" if plan.traced else " (conv modules are swapped in place, so forward keeps the region)"
        lines.append(
            f"{len(plan.no_grad)} conv site(s) run under torch.no_grad() in {plan.model}.forward: "
            f"{short_list(plan.no_grad)}; "
            f"their blocks will not train through those calls either{how}"
        )
    return lines


def make_plan(
    model: nn.Module, policy: str | BlockSpec | Mapping | Policy | None = "dwsep", *, example_inputs: Any
) -> Plan:
    """Decide, for every conv site of ``model``, the block that replaces it (pure: the model is
    not changed).  See :class:`Policy` for what ``policy`` may be.

    ``example_inputs``: a tensor, a tuple of tensors (the arguments of one call), an input size,
    or :class:`~nas_sepconv.conversion.ExampleInputs` of several (each run on its own) so that
    every branch of a data-dependent ``forward`` is reached; totals are those of the first.
    Warns (:class:`PlanWarning`, the same lines in ``plan.notes``) about sites no input
    reached, a default spec not made because it would not save MACs, convs under no_grad."""
    if not isinstance(model, nn.Module):
        raise UserInputError("model", f"expected an nn.Module, got {type(model).__name__}")
    policy = Policy.from_any(policy)
    examples = example_list(example_inputs)
    sites, traced, notes = find_sites(model, ExampleInputs(*examples))
    if not sites:
        raise UserInputError(
            "model",
            f"{type(model).__name__} has no convolution to convert",
            "pass a model with nn.Conv layers or F.conv calls",
        )
    policy.check_globs([s.name for s in sites])
    plan = Plan(
        model=type(model).__name__,
        input_shapes=[tuple(t.shape) for t in examples[0]],
        entries=[_entry(site, policy) for site in sites],
        traced=traced,
        notes=notes,
        model_macs=count_macs(model, examples[0]),
        model_params=count_params(model),
    )
    for line in _warnings(plan, policy):
        plan.notes.append(line)
        warnings.warn(line, PlanWarning, stacklevel=2)
    return plan
