"""What a field of a space file may hold: a choice (a list, a range ``{low, high, step, log}`` or
one fixed value), drawn from a trial by :func:`suggest_choice`; the base of every section of the
schema (:class:`Section`); and the limits record (:data:`LIMITS`) that bounds every size a
space may ask for.  The sections themselves are in :mod:`.schema`.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, model_validator

from ..errors import UserInputError
from ..recipe import MAX_MULTIPLIER
from ..train import MAX_BATCH_SIZE, MAX_EPOCHS

__all__ = [
    "SpaceLimits",
    "LIMITS",
    "Section",
    "Range",
    "Choice",
    "refuse_booleans",
    "choice_values",
    "values_of",
    "check_mult",
    "check_names",
    "short",
    "printable",
    "suggest_choice",
]


@dataclass(frozen=True)
class SpaceLimits:
    """The largest sizes a space file may ask for (read by the schema, and only there).

    A value past these is a typo (``depth_mult: 1e9``) that would pass validation and then fail,
    or exhaust the memory, inside every trial; the message that refuses it states the limit.
    The multipliers lie in ``(0, mult]``: MobileNet's α and ρ are at most about 2 in practice.
    """

    mult: float = MAX_MULTIPLIER  # width_mult, depth_mult, resolution_mult (every value of the choice)
    channels: int = 4096  # stem_channels, a stage's out_channels, head_channels (before width_mult)
    repeats: int = 64  # layers of one stage (before depth_mult)
    stages: int = 64  # stages of a build space
    stride: int = 8  # stem_stride, a stage's stride
    image_size: int = 2048  # data.image_size, pixels per side
    subset: int = 100_000_000  # data.subset, images
    epochs: int = MAX_EPOCHS  # train.epochs (TrainConfig's bound), convert.base_epochs, convert.finetune_epochs
    batch_size: int = MAX_BATCH_SIZE  # train.batch_size (TrainConfig's bound)
    calibration_images: int = 1_000_000  # convert.calibration_images
    option: int = 4096  # any numeric block option value (expand_ratio, dw_mult, rank, groups, kernel_size...)
    nesting: int = 32  # levels of YAML mappings and lists
    aliases: int = 64  # YAML aliases (*name): more is an expansion bomb, not a space
    # train.lr, convert.finetune_lr: past this every step overflows (LARS-style large-batch runs stay below)
    lr: float = 10.0
    range_points: int = 1_000_000  # values of a range with a step: a finer step is a typo


LIMITS = SpaceLimits()


def _is_number(annotation: Any) -> bool:
    """Whether a field's type is a number (``int``, ``float``, optionally ``| None``)."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = set(typing.get_args(annotation)) - {type(None)}
    else:
        args = {annotation}
    return bool(args) and args <= {int, float}


def refuse_booleans(values: Any, types_of: dict[str, Any], *, prefix: str = "") -> None:
    """Refuse ``true``/``false`` given for a number field (YAML's ``epochs: true`` would be
    taken as 1 epoch).  ``types_of``: field name -> its type."""
    if not isinstance(values, dict):
        return
    for name, value in values.items():
        if isinstance(value, bool) and _is_number(types_of.get(name)):
            raise UserInputError(f"{prefix}{name}", f"expected a number, got {str(value).lower()}", "give a number")


class Section(BaseModel):
    """A section of a space file: unknown fields are refused; so are inf and nan (never a
    learning rate, a weight or a size) and booleans in a number field."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _numbers_are_numbers(cls, values: Any) -> Any:
        refuse_booleans(values, {name: f.annotation for name, f in cls.model_fields.items()})
        return values


class Range(Section):
    """A numeric range: ``{low: 0.5, high: 1.5, step: 0.25}`` or ``{low: .., high: .., log: true}``."""

    low: float
    high: float
    step: float | None = None
    log: bool = False
    int: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.high < self.low:
            raise UserInputError("high", f"{self.high} is below low ({self.low})", "give low <= high")
        if self.log and self.low <= 0:
            raise UserInputError("low", "a log range needs low > 0")
        if self.step is not None and self.step <= 0:
            raise UserInputError("step", f"must be > 0, got {self.step}", "or leave step out")
        if self.step is not None and self.log:
            raise UserInputError("step", "a log range takes no step", "remove step or log")
        if self.step is not None and (self.high - self.low) / self.step > LIMITS.range_points:
            problem = f"{self.step:g} gives more than {LIMITS.range_points:,} values from {self.low:g} to {self.high:g}"
            raise UserInputError("step", problem, "give a larger step, or leave step out for a continuous range")
        if self.int and not all(float(v).is_integer() for v in (self.low, self.high, self.step or 1)):
            problem = f"an int range needs whole low, high and step, got {self.low}, {self.high}, {self.step}"
            raise UserInputError("low", problem, "give integers or remove int: true")
        return self


Scalar = bool | int | float | str | None
Choice = Range | list[Scalar] | Scalar


def choice_values(choice: Any) -> list[Any] | None:
    """The discrete values of a choice (None for a continuous range)."""
    if isinstance(choice, Range):
        return None
    return list(choice) if isinstance(choice, list) else [choice]


def values_of(field: str, choice: Any) -> list[Any]:
    """The values of a choice to validate: its list, its one value, or a range's ends; never empty."""
    if isinstance(choice, Range):
        return [choice.low, choice.high]
    values = choice_values(choice)
    if not values:
        raise UserInputError(field, "is an empty list", "give at least one value (a list of one fixes it)")
    return values


def check_mult(field: str, choice: Any) -> None:
    """Every value a multiplier choice can take is a number in (0, LIMITS.mult]."""
    for value in values_of(field, choice):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserInputError(field, f"expected a number, got {short(value)}", "use e.g. 0.5, 1.0")
        if not 0 < value <= LIMITS.mult:  # also nan, inf and ints past the float range
            problem = f"{short(value)} is outside (0, {LIMITS.mult:g}], the allowed range"
            raise UserInputError(field, problem, f"use values above 0 and at most {LIMITS.mult:g}")


def check_names(field: str, choice: Any, known: Any) -> list[str]:
    """A choice of names (not a range), each one of ``known``."""
    if isinstance(choice, Range):
        raise UserInputError(field, "takes names, not a range", f"give a list of {sorted(known)}")
    values = values_of(field, choice)
    for value in values:
        if not isinstance(value, str) or value not in known:
            raise UserInputError(field, f"unknown value {value!r}", f"use one of {list(known)}")
    return values


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters."""
    text = printable(repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def printable(text: str) -> str:
    """``text`` with line breaks and other control characters escaped (messages are one line)."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def suggest_choice(trial: Any, name: str, choice: Any) -> Any:
    """Suggest (or fix) one parameter."""
    if isinstance(choice, Range):
        if choice.int:
            step = int(choice.step or 1)
            return trial.suggest_int(name, int(choice.low), int(choice.high), step=step, log=choice.log)
        return trial.suggest_float(name, choice.low, choice.high, step=choice.step, log=choice.log)
    values = choice_values(choice)
    if len(values) == 1:
        return values[0]
    return trial.suggest_categorical(name, values)
