"""``apply_plan``: put the plan's blocks into a copy of the model.

A traced plan rewrites the torch.fx graph: a ``call_module`` conv site gets its submodule
replaced by the block (the graph node stays, so a conv module called twice stays one shared
block), and an ``F.convNd`` site becomes a ``call_module`` node of a new block inserted after
it, its uses redirected, the old node erased; then ``graph.lint()``,
``delete_all_unused_submodules()`` and ``recompile()``.  An untraceable model gets the same
blocks by swapping conv submodules in place (every registration of a shared conv gets the same
block).  Blocks are initialised from the original weights in closed form (``init="svd"``) or
left with PyTorch's fresh initialisation (``init="random"``).

What trains stays what trained: a block's parameters require gradients as its conv's weight
did, and a plan whose graph would drop a ``torch.no_grad()`` region of ``forward`` is not
traced (:func:`~.sites.find_sites`), so the module swap keeps the model's own ``forward`` and
its regions: a conv that ran without gradients becomes a block that runs without them.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from ..blocks import CONV_TYPES, BlockSpec, ConvGeometry, initialise
from ..errors import UserInputError
from ..tables import lookup
from .channel_pruning import prune_for_plan
from .plan import META_KEY, Plan, PlanEntry
from .planning import make_plan
from .policy import Policy
from .sites import functional_conv_args, functional_site_name, trace
from .width import mark_pruned

__all__ = ["apply_plan", "convert", "plan_of", "InitMethod", "INITS", "INIT_NAMES", "init_method"]


@dataclass(frozen=True)
class InitMethod:
    """One way :func:`apply_plan` initialises a block (its ``init=``).

    Attributes:
        name: what ``init=`` (``--init``, a convert space's ``convert.init``) says.
        from_weights: the block is fitted to its conv's weights in closed form
            (:func:`~nas_sepconv.blocks.initialise`), so they must be finite; a refit on
            calibration data may follow (a convert space's ``convert.refit``).
        doc: one line.
    """

    name: str
    from_weights: bool
    doc: str = ""


#: every initialisation by name; the first is the default
INITS: dict[str, InitMethod] = {
    m.name: m
    for m in (
        InitMethod("svd", from_weights=True, doc="closed form from the original weights"),
        InitMethod("random", from_weights=False, doc="PyTorch's fresh initialisation"),
    )
}

#: the names, for a schema's ``Literal`` (derived from the table, never listed again)
INIT_NAMES = tuple(INITS)


def init_method(name: Any, *, field: str = "init") -> InitMethod:
    """The record of the initialisation ``name``; :class:`UserInputError` naming ``field`` if
    there is none."""
    return lookup(INITS, name, field=field, what="initialisation")


def _check_finite(entry: PlanEntry, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """init='svd' factors the original weights: NaN or inf there would fail the SVD or spread."""
    for part, tensor in (("weight", weight), ("bias", bias)):
        if tensor is None or tensor.is_meta:
            continue
        bad = int((~torch.isfinite(tensor.detach())).sum())
        if bad:
            raise UserInputError(
                "model",
                f"layer {entry.name!r} has {bad} non-finite {part} value(s) (NaN or inf), which init='svd' cannot "
                "factor",
                "repair or reload the model's weights, or pass init='random'",
            )


def _build(
    entry: PlanEntry, weight: torch.Tensor, bias: torch.Tensor | None, init: InitMethod, training: bool
) -> nn.Module:
    if init.from_weights:
        _check_finite(entry, weight, bias)
    block = entry.spec.build(entry.geometry).to(device=weight.device, dtype=weight.dtype)
    if init.from_weights:
        initialise(block, entry.spec, entry.geometry, weight, bias)
    return block.train(training).requires_grad_(weight.requires_grad)  # a frozen conv gives a frozen block


def _check_site(entry: PlanEntry, geometry: ConvGeometry) -> None:
    if geometry != entry.geometry:
        raise UserInputError(
            f"plan.entries[{entry.name!r}]",
            f"the plan expects {entry.geometry.describe()} but this model has {geometry.describe()}",
            "make the plan from this model (ns.make_plan)",
        )


def _missing(entry: PlanEntry) -> UserInputError:
    return UserInputError(
        f"plan.entries[{entry.name!r}]",
        "no such convolution in this model",
        "make the plan from this model (ns.make_plan)",
    )


def _rewrite_graph(model: nn.Module, plan: Plan, init: InitMethod) -> fx.GraphModule:
    gm = trace(model)
    modules = dict(gm.named_modules())
    functional = {}
    for node in gm.graph.nodes:
        name = functional_site_name(node)
        if name is not None:
            functional.setdefault(name, []).append(node)
    for entry in plan.converted:
        if entry.source == "module":
            conv = modules.get(entry.name)
            if not isinstance(conv, CONV_TYPES):
                raise _missing(entry)
            _check_site(entry, ConvGeometry.from_module(conv))
            gm.set_submodule(entry.name, _build(entry, conv.weight, conv.bias, init, conv.training))
            continue
        nodes = functional.get(entry.name)
        if not nodes:
            raise _missing(entry)
        args = functional_conv_args(nodes[0])
        weight = gm.get_parameter(args["weight"].target)
        bias = gm.get_parameter(args["bias"].target) if isinstance(args["bias"], fx.Node) else None
        g = ConvGeometry.from_call(
            tuple(weight.shape),
            bias=bias is not None,
            stride=args["stride"],
            padding=args["padding"],
            dilation=args["dilation"],
            groups=args["groups"],
        )
        _check_site(entry, g)
        block_name = entry.name.replace(".", "_") + "_block"
        gm.add_submodule(block_name, _build(entry, weight, bias, init, gm.training))
        for node in nodes:  # every call of the same weight uses the one block
            a = functional_conv_args(node)
            with gm.graph.inserting_after(node):
                new = gm.graph.call_module(block_name, (a["input"],))
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
    dropped = set()
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users:
            dropped.add(node.target)
            gm.graph.erase_node(node)
    still_used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for target in dropped - still_used:  # the functional convs' weights now live in their blocks
        owner, _, leaf = target.rpartition(".")
        delattr(gm.get_submodule(owner) if owner else gm, leaf)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _swap_modules(model: nn.Module, plan: Plan, init: InitMethod) -> nn.Module:
    registrations: dict[int, list[tuple[nn.Module, str]]] = {}
    for parent in model.modules():
        for child_name, child in parent._modules.items():  # not named_children(): it hides aliases
            if child is not None:
                registrations.setdefault(id(child), []).append((parent, child_name))
    modules = dict(model.named_modules())
    for entry in plan.converted:
        conv = modules.get(entry.name)
        if not isinstance(conv, CONV_TYPES):
            raise _missing(entry)
        _check_site(entry, ConvGeometry.from_module(conv))
        block = _build(entry, conv.weight, conv.bias, init, conv.training)
        for parent, child_name in registrations[id(conv)]:
            setattr(parent, child_name, block)
    return model


def apply_plan(model: nn.Module, plan: Plan, *, init: str = "svd", inplace: bool = False) -> nn.Module:
    """The model with the plan's blocks in place of its convolutions.

    Returns an ``fx.GraphModule`` (or, for a plan made without tracing, the model with conv
    submodules swapped) whose forward takes the same inputs.  ``model`` is not changed unless
    ``inplace=True``.  The plan is kept in ``result.meta["nas_sepconv.plan"]`` for traced
    results (see :func:`plan_of`).  A plan with ``prune_r<keep>`` sites
    (:func:`~.channel_pruning.make_mixed_plan`, :func:`~.budget.plan_for_budget`) has their
    recorded input channels removed first (DepGraph, :func:`~.channel_pruning.prune_for_plan`),
    then the blocks put in; the result is marked pruned (``save_model`` refuses it)."""
    method = init_method(init)
    if not isinstance(plan, Plan):
        raise UserInputError(
            "plan", f"expected a Plan, got {type(plan).__name__}", "use ns.make_plan or ns.Plan.from_json"
        )
    target = model if inplace else copy.deepcopy(model)
    if plan.pruned:  # channel pruning first (the channels the plan records), then conversion
        prune_for_plan(target, plan)
    if not plan.traced:
        return _swap_modules(target, plan, method)
    gm = _rewrite_graph(target, plan, method)
    gm.meta[META_KEY] = plan
    return mark_pruned(gm) if plan.pruned else gm


def convert(
    model: nn.Module,
    policy: str | BlockSpec | Mapping | Policy | None = "dwsep",
    *,
    example_inputs: Any,
    init: str = "svd",
    inplace: bool = False,
) -> nn.Module:
    """``make_plan`` then ``apply_plan``: the model with separable blocks, initialised from its
    own weights in closed form by default.  ``make_plan``'s :class:`~.plan.PlanWarning` (sites
    not reached, a spec not made because it would not save MACs, ...) point at the caller;
    ``plan_of(result).notes`` keeps them for a traced result."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = make_plan(model, policy, example_inputs=example_inputs)
    for w in caught:
        warnings.warn(w.message, w.category, stacklevel=2)
    return apply_plan(model, plan, init=init, inplace=inplace)


def plan_of(model: nn.Module) -> Plan | None:
    """The plan a converted GraphModule was made with (``None`` if it is not one of ours)."""
    meta = getattr(model, "meta", None)
    return meta.get(META_KEY) if isinstance(meta, dict) else None
