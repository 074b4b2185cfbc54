"""Search-space files: schema, validation, and ``suggest(trial)``.

A space is a YAML file (``search_spaces/*.yaml``, found by name from a checkout and from an
installed wheel alike, or any path).  Two kinds:

* ``build``: a MobileNetV2/V3-style skeleton (stages with repeats, stride, width) with per-stage
  choices of block kind, kernel, ``expand_ratio``, ``se_ratio``, ``act``..., global
  ``width_mult``, ``depth_mult``, ``resolution_mult``; candidates are trained from scratch.
* ``convert``: a base model (by name or import path) whose conv sites, alone or in groups that
  share one choice, get a block kind (``keep`` included) and its options; global ``width_mult``
  (Torch-Pruning) and ``resolution_mult``; candidates start from the base model's trained
  weights (closed-form init, refit) and are fine-tuned, by distillation from the base.

A choice is a list (categorical), a range ``{low, high, step, log}`` or a single value (fixed,
not searched).  Which block options are suggested for a kind is read from the kind registry
(:data:`nas_sepconv.specs.KINDS`): a stage whose kind is ``dwsep`` is never asked for
``expand_ratio``.  Parameter names: ``width_mult``, ``depth_mult``, ``resolution_mult``,
``act``, ``stage<i>.<option>`` (build) and ``<group>.<option>`` (convert).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import UserInputError
from ..models import ARCH_ACTS
from ..blocks import KINDS, BlockSpec

__all__ = ["Space", "load_space", "list_spaces", "space_dirs", "Candidate", "suggest", "BLOCK_OPTIONS", "LIMITS", "SpaceLimits"]

BLOCK_OPTIONS = sorted({o.name for k in KINDS.values() for o in k.options})
OBJECTIVES = ("accuracy", "macs", "params", "latency_ms")
MAX_SPACE_BYTES = 1 << 20
"""The largest space file read (1 MiB): a space is a page of YAML, not data."""


@dataclass(frozen=True)
class SpaceLimits:
    """The largest sizes a space file may ask for (read by the schema below, and only there).

    A value past these is a typo (``depth_mult: 1e9``) that would pass validation and then fail,
    or exhaust the memory, inside every trial; the message that refuses it states the limit.
    The multipliers lie in ``(0, mult]``: MobileNet's α and ρ are at most about 2 in practice.
    """

    mult: float = 4.0  # width_mult, depth_mult, resolution_mult (every value of the choice)
    channels: int = 4096  # stem_channels, a stage's out_channels, head_channels (before width_mult)
    repeats: int = 64  # layers of one stage (before depth_mult)
    stages: int = 64  # stages of a build space
    stride: int = 8  # stem_stride, a stage's stride
    image_size: int = 2048  # data.image_size, pixels per side
    subset: int = 100_000_000  # data.subset, images
    epochs: int = 10_000  # train.epochs, convert.base_epochs, convert.finetune_epochs
    batch_size: int = 65_536  # train.batch_size
    calibration_images: int = 1_000_000  # convert.calibration_images
    option: int = 4096  # any numeric block option value (expand_ratio, dw_mult, rank, groups, kernel_size...)
    nesting: int = 32  # levels of YAML mappings and lists
    aliases: int = 64  # YAML aliases (*name): more is an expansion bomb, not a space


LIMITS = SpaceLimits()


class _Strict(BaseModel):
    # inf and nan are never a learning rate, a weight or a size: refused for every float field
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Range(_Strict):
    """A numeric range: ``{low: 0.5, high: 1.5, step: 0.25}`` or ``{low: .., high: .., log: true}``."""

    low: float
    high: float
    step: float | None = None
    log: bool = False
    int: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "Range":
        if self.high < self.low:
            raise UserInputError("high", f"{self.high} is below low ({self.low})", "give low <= high")
        if self.log and self.low <= 0:
            raise UserInputError("low", "a log range needs low > 0")
        if self.step is not None and self.step <= 0:
            raise UserInputError("step", f"must be > 0, got {self.step}", "or leave step out")
        if self.step is not None and self.log:
            raise UserInputError("step", "a log range takes no step", "remove step or log")
        if self.int and not all(float(v).is_integer() for v in (self.low, self.high, self.step or 1)):
            raise UserInputError("low", f"an int range needs whole low, high and step, got {self.low}, {self.high}, {self.step}", "give integers or remove int: true")
        return self


Scalar = Union[bool, int, float, str, None]
Choice = Union[Range, list[Scalar], Scalar]


def _choice_values(choice: Any) -> list[Any] | None:
    """The discrete values of a choice (None for a continuous range)."""
    if isinstance(choice, Range):
        return None
    return list(choice) if isinstance(choice, list) else [choice]


def _values_of(field: str, choice: Any) -> list[Any]:
    """The values of a choice to validate: its list, its one value, or a range's ends; never empty."""
    if isinstance(choice, Range):
        return [choice.low, choice.high]
    values = _choice_values(choice)
    if not values:
        raise UserInputError(field, "is an empty list", "give at least one value (a list of one fixes it)")
    return values


def _check_mult(field: str, choice: Any) -> None:
    """Every value a multiplier choice can take is a number in (0, LIMITS.mult]."""
    for value in _values_of(field, choice):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserInputError(field, f"expected a number, got {_short(value)}", "use e.g. 0.5, 1.0")
        if not 0 < value <= LIMITS.mult:  # also nan, inf and ints past the float range
            raise UserInputError(field, f"{_short(value)} is outside (0, {LIMITS.mult:g}], the allowed range", f"use values above 0 and at most {LIMITS.mult:g}")


def _check_names(field: str, choice: Any, known: Any) -> list[str]:
    """A choice of names (not a range), each one of ``known``."""
    if isinstance(choice, Range):
        raise UserInputError(field, "takes names, not a range", f"give a list of {sorted(known)}")
    values = _values_of(field, choice)
    for value in values:
        if not isinstance(value, str) or value not in known:
            raise UserInputError(field, f"unknown value {value!r}", f"use one of {list(known)}")
    return values


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters."""
    text = _printable(repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _printable(text: str) -> str:
    """``text`` with line breaks and other control characters escaped (messages are one line)."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _suggest(trial: Any, name: str, choice: Any) -> Any:
    """Suggest (or fix) one parameter."""
    if isinstance(choice, Range):
        if choice.int:
            return trial.suggest_int(name, int(choice.low), int(choice.high), step=int(choice.step or 1), log=choice.log)
        return trial.suggest_float(name, choice.low, choice.high, step=choice.step, log=choice.log)
    values = _choice_values(choice)
    if len(values) == 1:
        return values[0]
    return trial.suggest_categorical(name, values)


class BlockChoices(_Strict):
    """Choices of block kind and options; options a kind does not take are not suggested."""

    model_config = ConfigDict(extra="allow", frozen=True)
    kind: Choice = ["dwsep"]

    @model_validator(mode="after")
    def _known(self) -> "BlockChoices":
        if isinstance(self.kind, Range):
            raise UserInputError("kind", "takes kind names, not a range", f"give a list of {list(KINDS)}")
        kinds = _values_of("kind", self.kind)
        for k in kinds:
            BlockSpec(str(k))  # raises UserInputError naming the kind
        taken = {o.name for k in kinds for o in BlockSpec(str(k)).info.options}
        for name, choice in self.options().items():
            if name not in BLOCK_OPTIONS:
                raise UserInputError(name, "is not a block option", f"block options are {BLOCK_OPTIONS}")
            if name not in taken:
                raise UserInputError(name, f"is not an option of any kind in {kinds}", "remove it or add a kind that takes it")
            # every value must be one the kinds accept: a bad value fails here, not in each trial
            values = _values_of(name, choice)
            for k in kinds:
                info = BlockSpec(str(k)).info
                if any(o.name == name for o in info.options):
                    opt = info.option(name)
                    if isinstance(choice, Range) and opt.type is int and not choice.int:
                        raise UserInputError(name, f"{info.name}.{name} takes integers", "add int: true to the range")
                    for value in values:
                        if isinstance(value, (int, float)) and not isinstance(value, bool) and not abs(value) <= LIMITS.option:
                            raise UserInputError(name, f"{_short(value)} is past the limit of {LIMITS.option}", f"give values of at most {LIMITS.option}")
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
                    raise UserInputError(k, f"{v} is not a range: {exc.errors()[0]['msg']}", "give {low, high, step, log, int}") from None
            out[k] = v
        return out

    def suggest_spec(self, trial: Any, prefix: str) -> BlockSpec:
        kind = BlockSpec(str(_suggest(trial, f"{prefix}.kind", self.kind))).kind
        info = KINDS[kind]
        options = {}
        for opt in info.options:
            if opt.name in self.options():
                # option names are contracts with one meaning for every kind: one parameter
                options[opt.name] = _suggest(trial, f"{prefix}.{opt.name}", self.options()[opt.name])
        return BlockSpec(kind, **options)


class StageChoices(BlockChoices):
    out_channels: int = Field(ge=1, le=LIMITS.channels)
    repeats: int = Field(default=1, ge=1, le=LIMITS.repeats)
    stride: int = Field(default=1, ge=1, le=LIMITS.stride)


class BuildSection(_Strict):
    stem_channels: int = Field(default=16, ge=1, le=LIMITS.channels)
    stem_stride: int = Field(default=1, ge=1, le=LIMITS.stride)
    head_channels: int = Field(default=0, ge=0, le=LIMITS.channels)
    act: Choice = "relu"
    dropout: float = Field(default=0.0, ge=0, lt=1)
    stages: list[StageChoices] = Field(min_length=1, max_length=LIMITS.stages)
    width_mult: Choice = 1.0
    depth_mult: Choice = 1.0
    resolution_mult: Choice = 1.0

    @model_validator(mode="after")
    def _choices(self) -> "BuildSection":
        for name in ("width_mult", "depth_mult", "resolution_mult"):
            _check_mult(name, getattr(self, name))
        _check_names("act", self.act, ARCH_ACTS)
        return self


class SiteGroup(BlockChoices):
    name: str
    match: list[str] = Field(min_length=1)


class ConvertSection(_Strict):
    model: str
    model_kwargs: dict[str, Any] = {}
    weights: str | None = None
    base_epochs: int = Field(default=10, ge=0, le=LIMITS.epochs)
    groups: list[SiteGroup] | Literal["all"] = "all"
    choices: BlockChoices = BlockChoices()
    width_mult: Choice = 1.0
    resolution_mult: Choice = 1.0
    init: Literal["svd", "random"] = "svd"
    refit: bool = True
    calibration_images: int = Field(default=256, ge=1, le=LIMITS.calibration_images)
    finetune_epochs: int = Field(default=1, ge=0, le=LIMITS.epochs)
    finetune_lr: float = Field(default=0.01, gt=0)
    distill: bool = True
    # hints at the activations after the converted sites (ns.distill(features="converted")), at
    # this weight; 0: logits only.  Used where the student keeps the base's widths (width_mult 1)
    feature_weight: float = Field(default=10.0, ge=0)

    @model_validator(mode="after")
    def _choices(self) -> "ConvertSection":
        for name in ("width_mult", "resolution_mult"):
            _check_mult(name, getattr(self, name))
        if isinstance(self.groups, list):
            if not self.groups:
                raise UserInputError("groups", "is an empty list", "give at least one group, or all")
            names = [g.name for g in self.groups]
            if len(set(names)) != len(names):
                raise UserInputError("groups", f"group names repeat: {names}", "give each group its own name")
        return self


class DataSection(_Strict):
    dataset: str = "digits"
    root: str | None = None
    subset: int | None = Field(default=None, ge=10, le=LIMITS.subset)
    val_fraction: float = Field(default=0.1, gt=0, lt=1)
    image_size: int | None = Field(default=None, ge=4, le=LIMITS.image_size)


class TrainSection(_Strict):
    epochs: int = Field(default=10, ge=1, le=LIMITS.epochs)
    batch_size: int = Field(default=128, ge=1, le=LIMITS.batch_size)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(default=0.1, gt=0)
    weight_decay: float = Field(default=5e-4, ge=0)
    schedule: Literal["onecycle", "cosine"] = "onecycle"
    warmup_epochs: float = Field(default=1.0, ge=0)
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    amp: bool = True
    channels_last: bool = True
    grad_clip: float | None = Field(default=None, gt=0)


class SearchSection(_Strict):
    trials: int = Field(default=20, ge=1)
    sampler: Literal["nsga2", "tpe", "gp", "random"] = "nsga2"
    objectives: list[Literal["accuracy", "macs", "params", "latency_ms"]] = ["accuracy", "macs"]
    mode: Literal["pareto", "scalarised"] = "pareto"
    target_macs: float | None = Field(default=None, gt=0)
    reward_exponent: float = -0.07
    pruner: Literal["median", "hyperband", "none"] = "median"
    max_macs: float | None = Field(default=None, gt=0)
    max_params: float | None = Field(default=None, gt=0)
    max_latency_ms: float | None = Field(default=None, gt=0)
    max_failures: int | None = Field(default=None, ge=0)
    population_size: int = Field(default=8, ge=2)

    @model_validator(mode="after")
    def _consistent(self) -> "SearchSection":
        if self.objectives[:2] != ["accuracy", "macs"] or len(set(self.objectives)) != len(self.objectives):
            raise UserInputError("objectives", f"got {self.objectives}; they must start with accuracy, macs (then optionally params, latency_ms), without repeats")
        if self.mode == "scalarised" and self.target_macs is None:
            raise UserInputError("target_macs", "missing: mode scalarised needs it (the T of MnasNet's reward ACC·(MACs/T)^w)")
        return self


class SpaceFile(_Strict):
    name: str
    description: str = ""
    kind: Literal["build", "convert"]
    data: DataSection = DataSection()
    train: TrainSection = TrainSection()
    search: SearchSection = SearchSection()
    build: BuildSection | None = None
    convert: ConvertSection | None = None

    @model_validator(mode="after")
    def _section(self) -> "SpaceFile":
        if self.kind == "build" and self.build is None:
            raise UserInputError("build", "missing: kind build needs a build: section")
        if self.kind == "convert" and self.convert is None:
            raise UserInputError("convert", "missing: kind convert needs a convert: section")
        return self


# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Space:
    """A validated search space and where it came from."""

    spec: SpaceFile
    path: Path | None
    text: str

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind


def space_dirs() -> list[Path]:
    """Where bundled spaces live: ``search_spaces/`` of a checkout, and the installed package data."""
    dirs = [Path(__file__).resolve().parents[2] / "search_spaces"]
    try:
        from importlib.resources import files

        dirs.append(Path(str(files("nas_sepconv.search_spaces"))))
    except (ModuleNotFoundError, TypeError):
        pass
    return [d for i, d in enumerate(dirs) if d.is_dir() and d not in dirs[:i]]


def list_spaces() -> dict[str, str]:
    """Bundled spaces: name -> one-line description."""
    found: dict[str, str] = {}
    for d in space_dirs():
        for path in sorted(d.glob("*.yaml")):
            if path.stem not in found:
                try:
                    found[path.stem] = load_space(path).spec.description.strip().splitlines()[0]
                except (UserInputError, IndexError):
                    found[path.stem] = "(invalid)"
    return found


def _locate(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    try:
        exists = path.exists()
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte
        raise UserInputError("space", f"{str(name_or_path)[:80]!r} is not a usable path ({type(exc).__name__})", "give a YAML file or a bundled name (nas-sepconv spaces)") from None
    if path.suffix in (".yaml", ".yml") or exists:
        if not exists:
            raise UserInputError("space", f"{path} does not exist", "give a YAML file or a bundled name (nas-sepconv spaces)")
        if path.is_dir():
            raise UserInputError("space", f"{path} is a directory, not a space file", "give the path of a YAML file inside it")
        if not path.is_file():  # a device, a FIFO, a socket: reading it could block or never end
            raise UserInputError("space", f"{path} is not a regular file", "give a YAML file")
        return path
    for d in space_dirs():
        candidate = d / f"{name_or_path}.yaml"
        if candidate.is_file():
            return candidate
    names = sorted({p.stem for d in space_dirs() for p in d.glob("*.yaml")})
    raise UserInputError("space", f"no bundled space named {str(name_or_path)!r}", f"use one of {names} or a path to a YAML file")


def _read_text(path: Path) -> str:
    """The text of a space file: at most :data:`MAX_SPACE_BYTES` bytes of UTF-8."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SPACE_BYTES + 1)  # bounded even if the size on disk lies
    except OSError as exc:
        raise UserInputError("space", f"{path} cannot be read ({exc.strerror or type(exc).__name__})", "check the path and its permissions") from None
    if len(data) > MAX_SPACE_BYTES:
        raise UserInputError("space", f"{path} is larger than {MAX_SPACE_BYTES} bytes, too big for a space file", "give a YAML search-space file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserInputError("space", f"{path} is not UTF-8 text (a binary file?)", "give a YAML search-space file") from None


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("list[union[bool,int,float,str,none]]", "Range", "bool", "int", "float", "str", "none") or "[" in str(part) or str(part).startswith(("function-", "literal")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def _one_line(exc: ValidationError, source: str) -> UserInputError:
    errors = exc.errors()
    # prefer the most specific error (longest location) of the first field that failed
    first = max((e for e in errors if e["loc"][:1] == errors[0]["loc"][:1]), key=lambda e: len(e["loc"]))
    field = _field_path(first["loc"]) or "space"
    msg = first["msg"].removeprefix("Value error, ")
    inner = first.get("ctx", {}).get("error")
    fix = f"fix it in {source}"
    if isinstance(inner, UserInputError):  # raised by a validator: its field lies below the location
        field = f"{_field_path(first['loc'])}.{inner.field}".lstrip(".")
        msg = inner.problem
        fix = f"{inner.fix}; {fix}" if inner.fix else fix
    elif first["type"] == "literal_error":
        expected = first.get("ctx", {}).get("expected", "")
        msg = f"got {first.get('input')!r}; allowed values: {expected}"
    elif first["type"] == "extra_forbidden":
        msg = "unknown field"
    others = {_field_path(e["loc"]) for e in errors} - {_field_path(first["loc"])}  # union alternatives share a path
    more = f" (and {len(others)} more problems)" if others else ""
    return UserInputError(_printable(field), _printable(f"{msg}{more}"), _printable(fix))


def load_space(name_or_path: "str | Path | Space") -> Space:
    """A validated space from a bundled name or a YAML path."""
    if isinstance(name_or_path, Space):
        return name_or_path
    path = _locate(name_or_path)
    text = _read_text(path)
    return parse_space(text, source=str(path), path=path)


class _TooDeep(Exception):
    pass


class _SpaceLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing deep nesting and alias bombs before they cost time."""

    _depth = 0
    _aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > LIMITS.aliases:
                raise _TooDeep(f"uses more than {LIMITS.aliases} YAML aliases")
        self._depth += 1
        try:
            if self._depth > LIMITS.nesting:
                raise _TooDeep(f"nests deeper than {LIMITS.nesting} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _safe_load(text: str) -> Any:
    """``yaml.safe_load`` with the limits of :class:`_SpaceLoader` (a SafeLoader: plain values only)."""
    loader = _SpaceLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_space(text: str, *, source: str = "<text>", path: Path | None = None) -> Space:
    """Validate the YAML text of a space (safe loader; nothing is imported or executed)."""
    if not isinstance(text, str):
        raise UserInputError("space", f"{source} gave {type(text).__name__}, not text", "pass the YAML as a str (or a path to load_space)")
    if len(text) > MAX_SPACE_BYTES:
        raise UserInputError("space", f"{source} is longer than {MAX_SPACE_BYTES} characters, too big for a space", "give a YAML search-space file")
    try:
        data = _safe_load(text)
    except _TooDeep as exc:
        raise UserInputError("space", f"{source} {exc.args[0]}", "a space is a few levels of plain mappings and lists") from None
    except yaml.constructor.ConstructorError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserInputError("space", f"{source} uses a tag the safe YAML loader refuses{where} ({exc.problem})", "spaces hold plain values only; remove the !!tag") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserInputError("space", f"{source} is not valid YAML{where}", "check indentation and colons") from None
    if not isinstance(data, dict):
        raise UserInputError("space", f"{source} must hold a mapping with name, kind, ...", "see search_spaces/default.yaml")
    try:
        spec = SpaceFile.model_validate(data)
    except ValidationError as exc:
        raise _one_line(exc, source) from None
    except RecursionError:
        raise UserInputError("space", f"{source} nests too deeply", "a space is a few levels of mappings and lists") from None
    except UserInputError as exc:
        raise UserInputError(_printable(exc.field), _printable(exc.problem), _printable(f"fix it in {source}")) from None
    return Space(spec, path, text)


# --------------------------------------------------------------------------------------------
@dataclass
class Candidate:
    """What one trial evaluates: an architecture and how to train it.

    ``recipe`` rebuilds the architecture (see :mod:`nas_sepconv.io`); ``summary`` is a short
    human string; ``resolution`` the input side."""

    kind: str
    recipe: dict[str, Any]
    summary: str
    resolution: int
    spec_by_param: dict[str, str]


def resolution_for(space: Space, base_side: int, resolution_mult: float) -> int:
    return max(8, int(round(base_side * float(resolution_mult))))


def suggest(space: Space, trial: Any, *, input_shape: tuple[int, int, int], num_classes: int, sites: list[Any] | None = None) -> Candidate:
    """Draw one candidate from ``space`` with ``trial`` (an Optuna trial or FixedTrial).

    ``sites`` (for convert spaces) are the base model's conv sites (:func:`plan.find_sites`)
    eligible under the default policy; their names are matched against the groups' globs.
    """
    s = space.spec
    if s.kind == "build":
        from ..models import Arch, Stage

        b = s.build
        stages = []
        specs = {}
        for i, st in enumerate(b.stages):
            spec = st.suggest_spec(trial, f"stage{i}")
            specs[f"stage{i}"] = str(spec)
            stages.append(Stage(str(spec), st.out_channels, st.repeats, st.stride))
        arch = Arch(
            stages=tuple(stages),
            stem_channels=b.stem_channels,
            stem_stride=b.stem_stride,
            head_channels=b.head_channels,
            num_classes=num_classes,
            in_channels=input_shape[0],
            width_mult=float(_suggest(trial, "width_mult", b.width_mult)),
            depth_mult=float(_suggest(trial, "depth_mult", b.depth_mult)),
            act=str(_suggest(trial, "act", b.act)),
            dropout=b.dropout,
        )
        res = resolution_for(space, input_shape[-1], _suggest(trial, "resolution_mult", b.resolution_mult))
        return Candidate("build", {"kind": "built", "arch": arch.to_json()}, f"r{res} {arch.summary()}", res, specs)

    c = s.convert
    width = float(_suggest(trial, "width_mult", c.width_mult))
    res = resolution_for(space, input_shape[-1], _suggest(trial, "resolution_mult", c.resolution_mult))
    names = [site.name for site in sites or []]
    rules: dict[str, str | None] = {}
    specs: dict[str, str] = {}
    groups = [SiteGroup(name=n.replace(".", "_"), match=[n], **c.choices.model_dump()) for n in names] if c.groups == "all" else c.groups
    for group in groups:
        spec = group.suggest_spec(trial, group.name)
        specs[group.name] = str(spec)
        for n in names:
            if n not in rules and any(fnmatch.fnmatchcase(n, g) for g in group.match):
                rules[n] = None if spec.kind == "keep" and spec.get("kernel_size") is None else str(spec)
    summary = f"r{res} w{width:g} | " + " ".join(f"{g}:{v}" for g, v in specs.items())
    recipe = {
        "kind": "converted",
        "model": c.model,
        "model_kwargs": dict(c.model_kwargs, num_classes=num_classes, in_channels=input_shape[0]),
        "width_mult": width,
        "input_size": [input_shape[0], res, res],
        "rules": rules,
    }
    return Candidate("convert", recipe, summary, res, specs)
