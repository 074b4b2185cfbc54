"""``suggest(trial)``: one candidate drawn from a space (an architecture and how to rebuild it).

Parameter names: ``width_mult``, ``depth_mult``, ``resolution_mult``, ``act``, ``head``,
``stage<i>.<option>`` and ``stage<i>.shortcut`` (build spaces) and ``<group>.<option>`` (convert spaces).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

import optuna

from ..errors import UserInputError
from ..models import Arch, Stage
from ..recipe import Recipe
from ..results.stored import TAMPERED
from .choices import suggest_choice
from .schema import SiteGroup
from .space_kinds import SPACE_KINDS, SpaceKind
from .spaces import Space

__all__ = ["Candidate", "StoredTrial", "site_groups", "site_rule", "suggest", "resolution_for", "trial_resolution"]


@dataclass
class Candidate:
    """What one trial evaluates: an architecture and how to train it.

    ``kind`` is the space's kind (:data:`~.space_kinds.SPACE_KINDS`); ``recipe`` rebuilds the
    architecture (see :mod:`nas_sepconv.io`); ``summary`` is a short human string;
    ``resolution`` the input side."""

    kind: str
    recipe: Recipe
    summary: str
    resolution: int
    spec_by_param: dict[str, str]

    @property
    def space_kind(self) -> SpaceKind:
        """The record of :attr:`kind`, the kind of the space that drew it."""
        return SPACE_KINDS[self.kind]


def resolution_for(base_side: int, resolution_mult: float) -> int:
    """The input side for a data set of side ``base_side`` at ``resolution_mult`` (at least 8)."""
    return max(8, int(round(base_side * float(resolution_mult))))


def trial_resolution(space: Space, trial: Any, base_side: int) -> int:
    """The input side ``trial`` draws from ``space`` (its ``resolution_mult``) for a data set
    of side ``base_side``."""
    spec = getattr(space.spec, space.spec.space_kind.section)
    return resolution_for(base_side, suggest_choice(trial, "resolution_mult", spec.resolution_mult))


class StoredTrial(optuna.trial.FixedTrial):
    """A finished trial's recorded parameters, replayed through a space: a FixedTrial that
    refuses, since the parameters came from a results folder.  A parameter the space asks for
    that the trial did not record, or a value the space could not have drawn (outside its
    range, off its step, not one of its choices), is a :class:`UserInputError` naming the
    parameter, the trial and ``source``, before the value reaches a model."""

    def __init__(self, params: dict[str, Any], *, number: int, source: str):
        super().__init__(dict(params), number=number)
        self._recorded = dict(params)
        self._source = source

    def _suggest(self, name: str, distribution: Any) -> Any:
        owner = f"trial {self.number} in {self._source}"
        if name not in self._recorded:
            raise UserInputError(name, f"{owner} records no value of this parameter of its space", TAMPERED)
        value = self._recorded[name]
        try:
            drawable = distribution._contains(distribution.to_internal_repr(value))
        except (ValueError, TypeError, OverflowError):
            drawable = False
        if not drawable:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            problem = f"{owner} records {shown}, which its space cannot draw ({distribution})"
            raise UserInputError(name, problem, TAMPERED)
        return super()._suggest(name, distribution)


def site_groups(convert: Any, names: list[str]) -> list[tuple[SiteGroup, list[str]]]:
    """The groups of a convert section (``groups: all``: one per site) and the sites each draws
    for: the sites of ``names`` its globs match that no earlier group took."""
    groups = (
        [SiteGroup(name=n.replace(".", "_"), match=[n], **convert.choices.model_dump()) for n in names]
        if convert.groups == "all"
        else convert.groups
    )
    taken: set[str] = set()
    out = []
    for group in groups:
        members = [n for n in names if n not in taken and any(fnmatch.fnmatchcase(n, g) for g in group.match)]
        taken.update(members)
        out.append((group, members))
    return out


def site_rule(spec: Any) -> str | None:
    """A drawn block spec as a site's conversion rule: ``None`` keeps the conv (``keep`` with no
    kernel size of its own)."""
    return None if spec.kind == "keep" and spec.get("kernel_size") is None else str(spec)


def suggest(
    space: Space, trial: Any, *, input_shape: tuple[int, int, int], num_classes: int, sites: list[Any] | None = None
) -> Candidate:
    """Draw one candidate from ``space`` with ``trial`` (an Optuna trial or FixedTrial).

    ``sites`` (for convert spaces) are the base model's conv sites (:func:`plan.find_sites`)
    eligible under the default policy; their names are matched against the groups' globs.
    """
    s = space.spec
    if not s.space_kind.from_base:  # a whole network, drawn stage by stage
        b = s.build
        stages = []
        specs = {}
        for i, st in enumerate(b.stages):
            spec = st.suggest_spec(trial, f"stage{i}")
            specs[f"stage{i}"] = str(spec)
            shortcut = bool(suggest_choice(trial, f"stage{i}.shortcut", st.shortcut))
            stages.append(Stage(spec, st.out_channels, st.repeats, st.stride, shortcut))
        # suggested in this order (a seeded sampler's draws follow it); head, the newest, last
        width = float(suggest_choice(trial, "width_mult", b.width_mult))
        depth = float(suggest_choice(trial, "depth_mult", b.depth_mult))
        act = str(suggest_choice(trial, "act", b.act))
        res = trial_resolution(space, trial, input_shape[-1])
        arch = Arch(
            stages=tuple(stages),
            stem_channels=b.stem_channels,
            stem_stride=b.stem_stride,
            head_channels=b.head_channels,
            num_classes=num_classes,
            in_channels=input_shape[0],
            width_mult=width,
            depth_mult=depth,
            act=act,
            dropout=b.dropout,
            head=str(suggest_choice(trial, "head", b.head)),
            input_size=res,  # the side the trial runs at (the gdc head's kernel is sized from it)
        )
        # the input size the trial runs at: a loaded model's MACs (count_macs, profile) are the trial's
        recipe = Recipe(kind=s.space_kind.recipe_kind, arch=arch, input_size=(input_shape[0], res, res))
        return Candidate(s.kind, recipe, f"r{res} {arch.summary()}", res, specs)

    c = s.convert
    width = float(suggest_choice(trial, "width_mult", c.width_mult))
    res = trial_resolution(space, trial, input_shape[-1])
    names = [site.name for site in sites or []]
    rules: dict[str, str | None] = {}
    specs: dict[str, str] = {}
    for group, members in site_groups(c, names):
        spec = group.suggest_spec(trial, group.name)
        specs[group.name] = str(spec)
        for n in members:
            rules[n] = site_rule(spec)
    summary = f"r{res} w{width:g} | " + " ".join(f"{g}:{v}" for g, v in specs.items())
    recipe = Recipe(
        kind=s.space_kind.recipe_kind,
        model=c.model,
        model_kwargs=dict(c.model_kwargs, num_classes=num_classes, in_channels=input_shape[0]),
        width_mult=width,
        input_size=(input_shape[0], res, res),
        rules=rules,
    )
    return Candidate(s.kind, recipe, summary, res, specs)
