"""The schema of a search-space file: its pydantic sections.

A choice is a list (categorical), a range ``{low, high, step, log}`` or a single value (fixed,
not searched); choices, the base of every section and the limits record (:data:`LIMITS`) that
bounds every size a space may ask for are in :mod:`.choices`.  Which block options a kind takes
is read from the kind registry (:data:`nas_sepconv.blocks.KINDS`).
"""

from __future__ import annotations

import typing
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from ..blocks import KINDS, BlockSpec
from ..conversion import INIT_NAMES
from ..data import Dataset, find_dataset, load_dataset
from ..data.memory import MemoryPlan
from ..errors import UserInputError
from ..measure import find_runtime
from ..models import ARCH_ACTS, HEADS
from ..results import OBJECTIVES
from ..results.modes import SEARCH_MODE_NAMES, SEARCH_MODES, SearchMode
from ..tables import unknown_name
from ..train import TrainConfig
from .asha import rung_epochs
from .choices import (
    LIMITS,
    Choice,
    Range,
    Section,
    SpaceLimits,
    check_mult,
    check_names,
    refuse_booleans,
    short,
    suggest_choice,
    values_of,
)
from .finalize_starts import FINALIZE_START_NAMES
from .pruners import PRUNER_NAMES
from .samplers import SAMPLERS, find_sampler
from .space_kinds import SPACE_KIND_NAMES, SPACE_KINDS, SpaceKind

__all__ = [
    "SpaceFile",
    "Range",
    "SpaceLimits",
    "LIMITS",
    "BLOCK_OPTIONS",
    "SiteGroup",
    "MultiFidelitySection",
    "candidate_epochs",
]

BLOCK_OPTIONS = sorted({o.name for k in KINDS.values() for o in k.options})
#: The objectives a space may list (``search.objectives``), in the table's order.
SEARCHABLE = tuple(name for name, o in OBJECTIVES.items() if o.searchable)
#: The axes of the front: every space's objectives start with these.
REQUIRED_OBJECTIVES = ("accuracy", "macs")


class BlockChoices(Section):
    """Choices of block kind and options; options a kind does not take are not suggested."""

    model_config = ConfigDict(extra="allow", frozen=True)
    kind: Choice = ["dwsep"]

    @model_validator(mode="after")
    def _known(self) -> BlockChoices:
        if isinstance(self.kind, Range):
            raise UserInputError("kind", "takes kind names, not a range", f"give a list of {list(KINDS)}")
        kinds = values_of("kind", self.kind)
        for k in kinds:
            BlockSpec(str(k))  # raises UserInputError naming the kind
        taken = {o.name for k in kinds for o in BlockSpec(str(k)).info.options}
        for name, choice in self.options().items():
            if name not in BLOCK_OPTIONS:
                raise UserInputError(name, "is not a block option", f"block options are {BLOCK_OPTIONS}")
            if name not in taken:
                raise UserInputError(
                    name, f"is not an option of any kind in {kinds}", "remove it or add a kind that takes it"
                )
            # every value must be one the kinds accept: a bad value fails here, not in each trial
            values = values_of(name, choice)
            for k in kinds:
                info = BlockSpec(str(k)).info
                if any(o.name == name for o in info.options):
                    opt = info.option(name)
                    if isinstance(choice, Range) and opt.type is int and not choice.int:
                        raise UserInputError(name, f"{info.name}.{name} takes integers", "add int: true to the range")
                    for value in values:
                        if (
                            isinstance(value, (int, float))
                            and not isinstance(value, bool)
                            and not abs(value) <= LIMITS.option
                        ):
                            problem = f"{short(value)} is past the limit of {LIMITS.option}"
                            raise UserInputError(name, problem, f"give values of at most {LIMITS.option}")
                        try:
                            opt.normalise(info.name, value)
                        except UserInputError as exc:
                            raise UserInputError(name, exc.problem, exc.fix) from None
        return self

    def options(self) -> dict[str, Any]:
        """The block options' choices (a mapping is a range, as for the typed fields)."""
        out = {}
        for k, v in (self.model_extra or {}).items():
            if k in ("out_channels", "repeats", "stride", "name", "match"):
                continue
            if isinstance(v, dict):
                try:
                    v = Range.model_validate(v)
                except ValidationError as exc:
                    inner = exc.errors()[0].get("ctx", {}).get("error")
                    if isinstance(inner, UserInputError):
                        raise UserInputError(f"{k}.{inner.field}", inner.problem, inner.fix) from None
                    raise UserInputError(
                        k, f"{v} is not a range: {exc.errors()[0]['msg']}", "give {low, high, step, log, int}"
                    ) from None
            out[k] = v
        return out

    def suggest_spec(self, trial: Any, prefix: str) -> BlockSpec:
        kind = BlockSpec(str(suggest_choice(trial, f"{prefix}.kind", self.kind))).kind
        info = KINDS[kind]
        options = {}
        for opt in info.options:
            if opt.name in self.options():
                # option names are contracts with one meaning for every kind: one parameter
                options[opt.name] = suggest_choice(trial, f"{prefix}.{opt.name}", self.options()[opt.name])
        return BlockSpec(kind, **options)


class StageChoices(BlockChoices):
    out_channels: int = Field(ge=1, le=LIMITS.channels)
    repeats: int = Field(default=1, ge=1, le=LIMITS.repeats)
    stride: int = Field(default=1, ge=1, le=LIMITS.stride)
    # identity shortcuts where shapes allow (Stage.shortcut); a list of both searches it
    shortcut: Choice = True

    @model_validator(mode="after")
    def _shortcut(self) -> StageChoices:
        if isinstance(self.shortcut, Range):
            raise UserInputError("shortcut", "takes true or false, not a range", "give true, false or [true, false]")
        for value in values_of("shortcut", self.shortcut):
            if not isinstance(value, bool):
                problem = f"expected true or false, got {short(value)}"
                raise UserInputError("shortcut", problem, "give true, false or [true, false]")
        return self


class BuildSection(Section):
    stem_channels: int = Field(default=16, ge=1, le=LIMITS.channels)
    stem_stride: int = Field(default=1, ge=1, le=LIMITS.stride)
    head_channels: int = Field(default=0, ge=0, le=LIMITS.channels)
    act: Choice = "relu"
    head: Choice = next(iter(HEADS))  # a name of HEADS (avgpool, gdc), or a list of them
    dropout: float = Field(default=0.0, ge=0, lt=1)
    stages: list[StageChoices] = Field(min_length=1, max_length=LIMITS.stages)
    width_mult: Choice = 1.0
    depth_mult: Choice = 1.0
    resolution_mult: Choice = 1.0

    @model_validator(mode="after")
    def _choices(self) -> BuildSection:
        for name in ("width_mult", "depth_mult", "resolution_mult"):
            check_mult(name, getattr(self, name))
        check_names("act", self.act, ARCH_ACTS)
        check_names("head", self.head, HEADS)
        return self


class SiteGroup(BlockChoices):
    name: str
    match: list[str] = Field(min_length=1)


class ConvertSection(Section):
    model: str
    model_kwargs: dict[str, Any] = {}
    weights: str | None = None
    base_epochs: int = Field(default=10, ge=0, le=LIMITS.epochs)
    groups: list[SiteGroup] | Literal["all"] = "all"
    choices: BlockChoices = BlockChoices()
    width_mult: Choice = 1.0
    resolution_mult: Choice = 1.0
    init: Literal[INIT_NAMES] = INIT_NAMES[0]
    refit: bool = True
    calibration_images: int = Field(default=256, ge=1, le=LIMITS.calibration_images)
    finetune_epochs: int = Field(default=1, ge=0, le=LIMITS.epochs)
    finetune_lr: float = Field(default=0.01, gt=0, le=LIMITS.lr)
    distill: bool = True
    # hints at the activations after the converted sites (ns.distill(features="converted")), at
    # this weight; 0: logits only.  Used where the student keeps the base's widths (width_mult 1)
    feature_weight: float = Field(default=10.0, ge=0)

    @model_validator(mode="after")
    def _choices(self) -> ConvertSection:
        for name in ("width_mult", "resolution_mult"):
            check_mult(name, getattr(self, name))
        if isinstance(self.groups, list):
            if not self.groups:
                raise UserInputError("groups", "is an empty list", "give at least one group, or all")
            names = [g.name for g in self.groups]
            if len(set(names)) != len(names):
                raise UserInputError("groups", f"group names repeat: {names}", "give each group its own name")
        return self


class DataSection(Section):
    dataset: str = "digits"
    root: str | None = None
    subset: int | None = Field(default=None, ge=10, le=LIMITS.subset)
    val_fraction: float = Field(default=0.1, gt=0, lt=1)
    image_size: int | None = Field(default=None, ge=4, le=LIMITS.image_size)
    #: ``auto`` streams an image folder from disk when its decoded images exceed ``memory_budget_gb``
    #: (default: half the machine's memory); ``true`` always, ``false`` never (nas_sepconv.data.memory)
    stream: bool | Literal["auto"] = "auto"
    memory_budget_gb: float | None = Field(default=None, gt=0, le=1e6)

    @model_validator(mode="after")
    def _known(self) -> DataSection:
        find_dataset(self.dataset)  # raises naming the field dataset, listing the data sets
        return self

    def memory_plan(self) -> MemoryPlan:
        """Whether the data set is streamed: ``stream`` and ``memory_budget_gb``."""
        return MemoryPlan(
            stream=None if self.stream == "auto" else self.stream,
            budget=None if self.memory_budget_gb is None else int(self.memory_budget_gb * 1e9),
        )

    def load(self, *, seed: int = 0) -> Dataset:
        """The data set this section names, held in memory or streamed as it says."""
        plan = self.memory_plan()
        return load_dataset(
            self.dataset,
            root=self.root,
            val_fraction=self.val_fraction,
            seed=seed,
            subset=self.subset,
            image_size=self.image_size,
            stream=plan.stream,
            memory_budget=plan.budget,
        )


class MultiFidelitySection(Section):
    """``search.multi_fidelity``: MO-ASHA's rungs (:mod:`.asha`), at ``min_epochs · eta^k``
    epochs below the full budget; a ``1/eta`` share of each rung's results goes on."""

    min_epochs: int = Field(default=1, ge=1, le=LIMITS.epochs)
    eta: int = Field(default=3, ge=2, le=LIMITS.epochs)

    def rungs(self, budget: int) -> tuple[int, ...]:
        """The rungs in epochs, the last one ``budget`` (see :func:`.asha.rung_epochs`)."""
        return rung_epochs(self.min_epochs, self.eta, budget)


def check_discrete(choices: BlockChoices, where: str) -> None:
    """Mode oneshot, convert space: its supernet holds one block per spec a site may draw, so no
    block option may be a continuous range (a range with a step, or of integers, has points)."""
    for name, choice in choices.options().items():
        if isinstance(choice, Range) and choice.step is None and not choice.int:
            problem = "is a continuous range; a convert supernet holds one block per value (mode oneshot)"
            raise UserInputError(f"{where}.{name}", problem, "give a list of values, or a range with a step")


def candidate_epochs(spec: SpaceFile) -> int:
    """The epochs a candidate of the space trains: the field its kind names (``train.epochs``
    for build, ``convert.finetune_epochs`` for convert: :attr:`.SpaceKind.epochs_field`)."""
    section, _, name = spec.space_kind.epochs_field.partition(".")
    return getattr(getattr(spec, section), name)


def check_multi_fidelity(spec: SpaceFile) -> None:
    """The multi-fidelity mode fits the space: Pareto mode, and rungs below the full budget."""
    mf = spec.search.multi_fidelity
    if mf is None:
        return
    mode = spec.search.search_mode
    if not mode.multi_fidelity:
        allowed = " or ".join(m.name for m in SEARCH_MODES.values() if m.multi_fidelity)
        raise UserInputError(
            "search.multi_fidelity",
            f"needs mode {allowed} (the {mode.name} mode stops candidates early with its pruner)",
            f"remove multi_fidelity, or use mode: {allowed}",
        )
    budget = candidate_epochs(spec)
    if mf.min_epochs >= budget:
        where = spec.space_kind.epochs_field
        raise UserInputError(
            "search.multi_fidelity.min_epochs",
            f"{mf.min_epochs} is not below the {budget} epochs a candidate trains ({where})",
            f"give min_epochs below {budget}, or raise {where}",
        )
    mf.rungs(budget)


class SearchSection(Section):
    trials: int = Field(default=20, ge=1)
    sampler: str = next(iter(SAMPLERS))
    objectives: list[str] = list(REQUIRED_OBJECTIVES)
    mode: Literal[SEARCH_MODE_NAMES] = SEARCH_MODE_NAMES[0]
    target_macs: float | None = Field(default=None, gt=0)
    reward_exponent: float = -0.07
    pruner: Literal[PRUNER_NAMES] = PRUNER_NAMES[0]
    max_macs: float | None = Field(default=None, gt=0)
    max_params: float | None = Field(default=None, gt=0)
    max_latency_ms: float | None = Field(default=None, gt=0)
    latency: Literal["predicted", "measured"] = (
        "predicted"  # predicted where a latency table applies (search/latency.py)
    )
    latency_runtime: str = "eager"
    max_failures: int | None = Field(default=None, ge=0)
    population_size: int = Field(default=8, ge=2)
    multi_fidelity: MultiFidelitySection | None = None
    # mode oneshot: the epochs of the study's supernet (default: train.epochs)
    supernet_epochs: int | None = Field(default=None, ge=1, le=LIMITS.epochs)
    # mode oneshot, finalisation (--finalize K): the epochs a front candidate trains alone
    # (default: train.epochs), and where it starts (search/finalize_starts.py)
    finalize_epochs: int | None = Field(default=None, ge=1, le=LIMITS.epochs)
    finalize_from: Literal[FINALIZE_START_NAMES] = FINALIZE_START_NAMES[0]

    @model_validator(mode="after")
    def _consistent(self) -> SearchSection:
        find_sampler(self.sampler, field="sampler")
        find_runtime(self.latency_runtime, field="latency_runtime")
        for name in self.objectives:
            if name not in SEARCHABLE:
                raise unknown_name(name, field="objectives", what="objective", names=SEARCHABLE)
        if tuple(self.objectives[: len(REQUIRED_OBJECTIVES)]) != REQUIRED_OBJECTIVES or len(
            set(self.objectives)
        ) != len(self.objectives):
            optional = ", ".join(n for n in SEARCHABLE if n not in REQUIRED_OBJECTIVES)
            raise UserInputError(
                "objectives",
                f"got {self.objectives}; they must start with {', '.join(REQUIRED_OBJECTIVES)} (then optionally "
                f"{optional}), without repeats",
            )
        for need, why in self.search_mode.needs.items():
            if getattr(self, need) is None:
                raise UserInputError(need, f"missing: mode {self.mode} needs it ({why})")
        return self

    @property
    def search_mode(self) -> SearchMode:
        """The record of :attr:`mode` (:data:`~nas_sepconv.results.modes.SEARCH_MODES`)."""
        return SEARCH_MODES[self.mode]


class SpaceFile(Section):
    name: str
    description: str = ""
    kind: Literal[SPACE_KIND_NAMES]
    data: DataSection = DataSection()
    # the one training configuration: its own validation and bounds apply (errors name train.<field>)
    train: TrainConfig = Field(default_factory=TrainConfig)
    search: SearchSection = SearchSection()
    build: BuildSection | None = None
    convert: ConvertSection | None = None

    @field_validator("train", mode="before")
    @classmethod
    def _unseeded(cls, value: Any) -> Any:
        if isinstance(value, dict) and "seed" in value:
            raise UserInputError("seed", "unknown field", "the search seeds each trial itself: give --seed")
        refuse_booleans(value, typing.get_type_hints(TrainConfig))  # (pydantic would take true as 1)
        return value

    @model_validator(mode="after")
    def _section(self) -> SpaceFile:
        section = self.space_kind.section
        if getattr(self, section) is None:
            raise UserInputError(section, f"missing: kind {self.kind} needs a {section}: section")
        if self.train.lr > LIMITS.lr:
            problem = f"{self.train.lr:g} is above {LIMITS.lr:g}, the largest learning rate a space may give"
            raise UserInputError("train.lr", problem, "use e.g. 0.1 (sgd) or 1e-3 (adamw)")
        check_multi_fidelity(self)
        if self.search.search_mode.accuracy_source == "inherited" and self.space_kind.from_base:
            widths = values_of("width_mult", self.convert.width_mult)
            if isinstance(self.convert.width_mult, Range) or any(float(w) != 1.0 for w in widths):
                problem = f"mode {self.search.mode} converts at the base model's widths: width_mult must be 1"
                raise UserInputError("convert.width_mult", problem, "give width_mult: 1.0, or use mode pareto")
            groups = [self.convert.choices] if self.convert.groups == "all" else self.convert.groups
            for i, group in enumerate(groups):
                check_discrete(group, "convert.choices" if self.convert.groups == "all" else f"convert.groups[{i}]")
        return self

    @property
    def space_kind(self) -> SpaceKind:
        """The record of :attr:`kind` (:data:`~.space_kinds.SPACE_KINDS`)."""
        return SPACE_KINDS[self.kind]
