"""The supernet of a convert space: :class:`ConvertSupernet`, the user's trained model with every
searchable site's candidate blocks attached, one weight set per choice, run on one path at a
time (single-path one-shot, Guo et al., "Single Path One-Shot Neural Architecture Search with
Uniform Sampling", ECCV 2020); :func:`convert_supernet` makes one, and :func:`extract_converted`
takes a path out as the plain converted model a stand-alone convert trial produces.

Each site's conv module is replaced by a :class:`SiteChoices`: ``keep`` is the original conv
(its trained weights), and each block spec of the site's choices is a block initialised from
that conv in closed form and refit by least squares (:func:`~nas_sepconv.conversion.apply_plan`,
:func:`~nas_sepconv.conversion.refit`), as a convert trial initialises it.  The blocks of one
spec are made by one plan that gives the spec to every site offering it, refit in forward order
(so a site's refit sees the same spec upstream); a spec that cannot replace a site's conv (a
grouped block on a depthwise conv) is not made there, and that site keeps its conv, as
:func:`~nas_sepconv.conversion.make_plan` decides for a trial.  With every site on ``keep`` the
supernet is the original model.  Everything outside the sites (BatchNorm, the classifier) is
shared by every path.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from ..conversion import Plan, Policy, apply_plan, make_plan, refit
from ..conversion.narrowed import KEEP
from ..errors import UserInputError
from .supernet import resize

__all__ = ["KEEP", "ConvertSupernet", "SiteChoices", "convert_supernet", "extract_converted", "site_policy"]


class SiteChoices(nn.Module):
    """The weight sets of one site: ``choices["keep"]``, the original conv, and one block per
    spec (``choices["b<i>"]``, the spec string in :attr:`specs`); :attr:`active` runs."""

    def __init__(self, conv: nn.Module, blocks: Mapping[str, nn.Module]):
        super().__init__()
        self.specs = {spec: f"b{i}" for i, spec in enumerate(blocks)}
        self.choices = nn.ModuleDict({KEEP: conv, **{self.specs[s]: b for s, b in blocks.items()}})
        self.active = KEEP

    def key(self, spec: str | None) -> str:
        """The weight set of ``spec`` (``None``, or one this site does not hold: ``keep``)."""
        return self.specs.get(spec, KEEP) if spec is not None else KEEP

    def forward(self, x: Tensor) -> Tensor:
        return self.choices[self.active](x)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at every registration of the module ``name`` (a conv shared by two names
    stays shared)."""
    old = model.get_submodule(name)
    places = [
        (parent, child_name)
        for parent in model.modules()
        for child_name, child in parent._modules.items()  # not named_children(): it hides aliases
        if child is old
    ]
    for parent, child_name in places:  # (found first: ``new`` may hold ``old``)
        setattr(parent, child_name, new)


def site_policy(rules: Mapping[str, str | None]) -> Policy:
    """The conversion policy of a path (site -> spec string, or ``None`` to keep): what a convert
    trial's candidate is made with."""
    given = {k: v for k, v in rules.items() if v is not None}
    return Policy(
        default=None,
        rules=given,
        min_in_channels=1,
        skip_pointwise=False,
        skip_depthwise=False,
        min_macs_saving=None,
    )


class ConvertSupernet(nn.Module):
    """``supernet(x)`` runs the path :meth:`set_path` set (site -> spec string or ``None``, at an
    input side or the data's own); ``model`` is the original with :class:`SiteChoices` at the
    sites (module names ``model.<site>.choices.<key>.<...>``)."""

    def __init__(self, base: nn.Module, blocks: Mapping[str, Mapping[str, nn.Module]]):
        super().__init__()
        self.model = copy.deepcopy(base)
        self.sites = tuple(blocks)
        for name in self.sites:
            conv = self.model.get_submodule(name)
            _replace(self.model, name, SiteChoices(conv, {s: copy.deepcopy(b) for s, b in blocks[name].items()}))
        self.resolution: int | None = None

    def site(self, name: str) -> SiteChoices:
        return self.model.get_submodule(name)

    def set_path(self, rules: Mapping[str, str | None], *, resolution: int | None = None) -> None:
        """Run ``rules`` (sites not named keep their conv) at input side ``resolution``."""
        unknown = sorted(set(rules) - set(self.sites))
        if unknown:
            raise UserInputError("rules", f"names sites the supernet does not hold: {unknown[:5]}", "draw the path")
        for name in self.sites:
            self.site(name).active = self.site(name).key(rules.get(name))
        self.resolution = resolution

    def forward(self, x: Tensor) -> Tensor:
        return self.model(resize(x, self.resolution))


@torch.no_grad()
def convert_supernet(
    base: nn.Module,
    site_specs: Mapping[str, Sequence[str]],
    *,
    example_inputs: Tensor,
    init: str = "svd",
    refit_batches: Sequence[Tensor] | None = None,
) -> ConvertSupernet:
    """The convert supernet of the trained ``base``: at each site of ``site_specs`` (site name ->
    the block spec strings it may take, ``keep`` aside), one block per spec, made by
    :func:`~nas_sepconv.conversion.apply_plan` with ``init`` and refit on ``refit_batches``
    (none: no refit), one plan per spec (see the module docstring).  ``base`` itself is left as
    it is (a copy is made on the CPU, in eval mode)."""
    base = copy.deepcopy(base).cpu().eval()
    blocks: dict[str, dict[str, nn.Module]] = {name: {} for name in site_specs}
    for spec in dict.fromkeys(s for specs in site_specs.values() for s in specs):
        rules = {name: spec for name, specs in site_specs.items() if spec in specs}
        plan = make_plan(base, site_policy(rules), example_inputs=example_inputs)
        if not plan.converted:
            continue
        for entry in plan.converted:
            if entry.source != "module":
                problem = f"site {entry.name} is a functional convolution; a supernet attaches blocks to conv modules"
                raise UserInputError("convert.groups", problem, "leave the site out of the groups")
        converted = apply_plan(base, plan, init=init)
        if refit_batches is not None:
            refit(converted, base, refit_batches, plan=plan)
        for entry in plan.converted:
            blocks[entry.name][spec] = converted.get_submodule(entry.name)
    return ConvertSupernet(base, blocks).eval()


def _trunk(supernet: ConvertSupernet) -> nn.Module:
    """The supernet's model with every site back to its (trained) conv."""
    model = copy.deepcopy(supernet.model)
    for name in supernet.sites:
        _replace(model, name, model.get_submodule(name).choices[KEEP])
    return model


@torch.no_grad()
def extract_converted(
    supernet: ConvertSupernet, rules: Mapping[str, str | None], *, example_inputs: Tensor, plan: Plan | None = None
) -> nn.Module:
    """The path ``rules`` as a plain converted model: :func:`~nas_sepconv.conversion.apply_plan`
    of the plan a convert trial makes of ``rules`` (kept in the result, see
    :func:`~nas_sepconv.conversion.plan_of`), its weights and BatchNorm statistics copied out of
    the supernet; on the supernet's device, in eval mode.  No supernet code stays in it.
    ``plan``: that plan, if made already (of the original model, whose site names it has)."""
    device = next(supernet.parameters()).device
    trunk = _trunk(supernet).cpu().eval()
    if plan is None:
        plan = make_plan(trunk, site_policy(rules), example_inputs=example_inputs.cpu())
    model = apply_plan(trunk, plan, init="random", inplace=True)
    for entry in plan.converted:
        site = supernet.site(entry.name)
        weights = site.choices[site.key(rules[entry.name])].state_dict()
        model.get_submodule(entry.name).load_state_dict(weights)
    return model.to(device).eval()
