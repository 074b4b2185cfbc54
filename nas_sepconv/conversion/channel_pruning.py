"""Channel pruning at one conv site, a compressor beside the separable kinds: ``prune_r<keep>``.

Y. He, X. Zhang, J. Sun, "Channel Pruning for Accelerating Very Deep Neural Networks", ICCV 2017:
remove some of a convolution C's **input** channels and reconstruct C's output by least squares
from the channels that remain; the layer that produces those channels (its conv P, the
BatchNorm between) then loses the matching output channels, so both layers get cheaper and the
model's output shapes stay.  The channels go through Torch-Pruning's dependency graph (Fang et
al., "DepGraph: Towards Any Structural Pruning", CVPR 2023): the group of C's input channels is
pruned as a whole, the ``keep`` fraction of them with the largest L2 magnitude kept.

The candidate is offered only where that group is **local** (:func:`prune_sites`): C's input
channels reach exactly one other convolution, P, through BatchNorm and one-input element-wise
ops (activations) only; P is neither depthwise nor grouped, nor is C.  A residual addition, a
concatenation, a reshape, a second consumer, a depthwise layer or the model's input in the group
makes the site no candidate (in a ResNet basic block: ``conv2`` is one, ``conv1`` is not).

:func:`make_mixed_plan` turns per-site choices (blocks and ``prune_r<keep>``) into one
:class:`~.plan.Plan` of the pruned model; :func:`~.rewrite.apply_plan` prunes first (the
recorded channels, :func:`prune_for_plan`) and then converts; :func:`~.least_squares.refit`
re-solves each pruned site's conv by least squares (He et al.'s reconstruction).
"""

from __future__ import annotations

import copy
import dataclasses
import glob
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..blocks import BlockSpec, as_spec
from ..errors import UserInputError
from ..measure import as_inputs
from .plan import Plan
from .planning import make_plan
from .width import mark_pruned, torch_pruning

__all__ = [
    "PRUNE_PREFIX",
    "PruneSpec",
    "is_prune_spec",
    "make_mixed_plan",
    "prune_for_plan",
    "prune_inputs",
    "prune_sites",
    "single_prune_figures",
    "split_candidates",
]

#: the string form of a prune candidate: ``prune_r0.5`` keeps half of a site's input channels
PRUNE_PREFIX = "prune_r"
_PATTERN = re.compile(r"prune_r(\d*\.?\d+(?:e-?\d+)?)")


@dataclass(frozen=True)
class PruneSpec:
    """Keep the fraction ``keep`` (in (0, 1)) of a site's input channels: ``prune_r<keep>``."""

    keep: float

    def __str__(self) -> str:
        return f"{PRUNE_PREFIX}{self.keep:g}"

    def channels(self, in_channels: int) -> int:
        """The input channels kept of ``in_channels``: at least one, at most all but one."""
        return max(1, min(in_channels - 1, round(self.keep * in_channels)))

    @classmethod
    def parse(cls, text: Any, *, field: str = "candidates") -> PruneSpec:
        """``prune_r<keep>`` (or a PruneSpec) as a PruneSpec; anything else raises naming ``field``."""
        if isinstance(text, PruneSpec):
            return text
        match = _PATTERN.fullmatch(text) if isinstance(text, str) else None
        keep = float(match.group(1)) if match else None
        if keep is None or not 0 < keep < 1:
            raise UserInputError(
                field, f"{text!r} is not a prune candidate", "use prune_r<keep> with keep in (0, 1), e.g. prune_r0.5"
            )
        return cls(keep)


def is_prune_spec(candidate: Any) -> bool:
    """Whether ``candidate`` names channel pruning (a PruneSpec or a ``prune_r...`` string)."""
    return isinstance(candidate, PruneSpec) or (isinstance(candidate, str) and candidate.startswith(PRUNE_PREFIX))


def split_candidates(candidates: Sequence[Any]) -> tuple[list[BlockSpec], list[PruneSpec]]:
    """``candidates`` as block specs and prune specs, each once, in their order."""
    blocks = [as_spec(c) for c in candidates if not is_prune_spec(c)]
    prunes = [PruneSpec.parse(c) for c in candidates if is_prune_spec(c)]
    return list(dict.fromkeys(blocks)), list(dict.fromkeys(prunes))


def _graph(model: nn.Module, example_inputs: Any) -> Any:
    """Torch-Pruning's dependency graph of ``model`` (traced with autograd on, inputs on the
    model's device)."""
    tp = torch_pruning("candidates")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    inputs = tuple(t.to(device) for t in as_inputs(example_inputs))
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore")
        return tp.DependencyGraph().build_dependency(model, example_inputs=inputs[0] if len(inputs) == 1 else inputs)


def _input_group(graph: Any, conv: nn.Module) -> Any:
    tp = torch_pruning("candidates")
    return graph.get_pruning_group(conv, tp.prune_conv_in_channels, idxs=list(range(conv.in_channels)))


def _producer(graph: Any, conv: nn.Module) -> nn.Module | None:
    """The one conv whose output channels go with ``conv``'s input channels, if the group is
    local (see the module's docstring), else None."""
    tp = torch_pruning("candidates")
    consumers, producers = [], []
    for dep, _ in _input_group(graph, conv).items:
        module, handler = dep.target.module, dep.handler
        if isinstance(module, nn.Conv2d) and handler == tp.prune_conv_in_channels:
            consumers.append(module)
        elif isinstance(module, nn.Conv2d) and handler == tp.prune_conv_out_channels:
            producers.append(module)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        elif type(module).__name__ != "_ElementWiseOp" or len(graph.module2node[module].inputs) != 1:
            return None
    if consumers != [conv] or len(producers) != 1 or producers[0] is conv:
        return None
    if conv.groups != 1 or producers[0].groups != 1:
        return None
    return producers[0]


def prune_sites(model: nn.Module, example_inputs: Any) -> dict[str, str]:
    """The conv modules of ``model`` where a prune candidate is offered (the group of their input
    channels is local: see the module's docstring), each with its producer's name."""
    names = {id(m): n for n, m in model.named_modules()}
    graph = _graph(model, example_inputs)
    sites = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels > 1:
            producer = _producer(graph, module)
            if producer is not None:
                sites[name] = names[id(producer)]
    return sites


def _weakest(graph: Any, conv: nn.Module, kept: int) -> list[int]:
    """The ``in_channels - kept`` input channels of ``conv`` whose group has the least L2 magnitude."""
    tp = torch_pruning("candidates")
    scores = tp.importance.MagnitudeImportance(p=2)(_input_group(graph, conv))
    return sorted(torch.argsort(scores.float())[: conv.in_channels - kept].tolist())


def prune_inputs(
    model: nn.Module, example_inputs: Any, choices: Mapping[str, int | Sequence[int]]
) -> dict[str, tuple[int, ...]]:
    """Prune, in place, the input channels of each site of ``choices``: to an ``int`` of kept
    channels (the weakest by group L2 magnitude go) or the listed channel indices.  Every site
    must be one of :func:`prune_sites`.  Marks ``model`` pruned; returns the channels removed."""
    modules = dict(model.named_modules())
    graph = _graph(model, example_inputs)
    removed = {}
    for name, choice in choices.items():
        conv = modules.get(name)
        if not isinstance(conv, nn.Conv2d) or _producer(graph, conv) is None:
            raise UserInputError(
                "plan",
                f"site {name!r} is no prune site (its input channels are coupled beyond one producer conv)",
                "prune only sites ns.sensitivity gave prune rows",
            )
        drop = _weakest(graph, conv, choice) if isinstance(choice, int) else sorted(int(i) for i in choice)
        if not drop or len(drop) >= conv.in_channels or drop[-1] >= conv.in_channels:
            raise UserInputError("plan", f"cannot remove channels {drop} of {name!r}", "make the plan from this model")
        graph.get_pruning_group(conv, torch_pruning("plan").prune_conv_in_channels, idxs=drop).prune()
        removed[name] = tuple(drop)
    mark_pruned(model)
    return removed


def make_mixed_plan(model: nn.Module, choices: Mapping[str, Any], *, example_inputs: Any) -> Plan:
    """One plan for per-site choices: ``choices`` maps site names to a block spec or a prune
    spec (``prune_r<keep>``); unnamed sites are kept.  With prune sites the plan describes the
    pruned model (entries with ``prune`` and the channels removed; each site's ``macs_unpruned``
    where pruning changed it), ``model_macs`` stays the original's and ``macs_after`` is exact."""
    blocks = {glob.escape(n): as_spec(c) for n, c in choices.items() if not is_prune_spec(c)}
    prunes = {n: PruneSpec.parse(c, field="plan") for n, c in choices.items() if is_prune_spec(c)}
    if not prunes:
        return make_plan(model, blocks, example_inputs=example_inputs)
    inputs = as_inputs(example_inputs)
    base = make_plan(model, {}, example_inputs=inputs)
    original = {e.name: e for e in base.entries}
    pruned = copy.deepcopy(model)
    modules = dict(pruned.named_modules())
    kept = {n: p.channels(modules[n].in_channels) if n in modules else 0 for n, p in prunes.items()}
    names = {id(m): n for n, m in pruned.named_modules()}
    graph = _graph(pruned, inputs)
    producers = {}  # producer name -> the pruned site it feeds
    for n in prunes:
        producer = _producer(graph, modules[n]) if isinstance(modules.get(n), nn.Conv2d) else None
        if producer is not None:
            producers[names[id(producer)]] = n
    removed = prune_inputs(pruned, inputs, kept)
    plan = make_plan(pruned, blocks, example_inputs=inputs)
    entries = []
    for e in plan.entries:
        before = original[e.name].macs_before
        e = dataclasses.replace(e, macs_unpruned=before if before != e.macs_before else None)
        if e.name in producers:
            e = dataclasses.replace(e, pruned_outputs=removed[producers[e.name]])
        if e.name in prunes:
            n = len(removed[e.name])
            e = dataclasses.replace(
                e,
                prune=str(prunes[e.name]),
                pruned_channels=removed[e.name],
                reason=f"pruned: {n} of {n + e.geometry.in_channels} input channels removed",
            )
        entries.append(e)
    return dataclasses.replace(
        plan,
        model=type(model).__name__,
        entries=entries,
        model_macs=base.model_macs,
        model_params=base.model_params,
        pruned_macs=plan.model_macs,
        pruned_params=plan.model_params,
    )


def prune_for_plan(model: nn.Module, plan: Plan) -> nn.Module:
    """``model`` (in place) with the input channels ``plan``'s prune sites record removed, as
    :func:`~.rewrite.apply_plan` does before converting; example inputs of the plan's shapes."""
    inputs = tuple(torch.zeros(s) for s in plan.input_shapes)
    prune_inputs(model, inputs, {e.name: e.pruned_channels for e in plan.pruned})
    return model


def single_prune_figures(plan: Plan, name: str) -> dict[str, int]:
    """A one-site prune plan's figures as a sensitivity row has them (per call of the site):
    ``calls``, and MACs and params before and after of the site and its producer together
    (the producer's BatchNorm params too), so the saving is the whole model's."""
    site = next(e for e in plan.entries if e.name == name)
    producer = next(e for e in plan.entries if e.pruned_outputs)
    calls = max(site.calls, 1)
    macs_after = site.macs_before + producer.macs_before * producer.calls // calls
    params_after = site.params_before + producer.params_before
    return dict(
        calls=site.calls,
        macs_before=macs_after + (plan.model_macs - plan.macs_after) // calls,
        macs_after=macs_after,
        params_before=params_after + plan.model_params - plan.params_after,
        params_after=params_after,
    )
