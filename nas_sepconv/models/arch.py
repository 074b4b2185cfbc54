"""A MobileNet-style network as plain data: :class:`Arch` (stages of one block spec each,
width and depth multipliers, a head from :data:`~.heads.HEADS`) and :class:`Stage`, checked on
construction and bounded in size (an Arch can come from a file); :func:`make_divisible`,
MobileNet's channel rounding.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..blocks import ACTIVATIONS, BlockSpec
from ..errors import UserInputError
from ..jsonfile import loads
from .heads import HEADS

__all__ = [
    "ARCH_ACTS",
    "Arch",
    "MAX_CHANNELS",
    "MAX_INPUT_SIDE",
    "MAX_LAYERS",
    "Stage",
    "is_int",
    "is_number",
    "make_divisible",
]

ARCH_ACTS = tuple(name for name in ACTIVATIONS if name != "none")  # the blocks' table, less "none"
#: The largest network an :class:`Arch` may describe (an Arch can come from a file): layers
#: after the depth multiplier, and channels of any layer after the width multiplier.
MAX_LAYERS = 1000
MAX_CHANNELS = 16384
#: The largest input side (an Arch's ``input_size``, a recipe's ``input_size``) in pixels.
MAX_INPUT_SIDE = 8192


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, not below 90 % of it (MobileNet)."""
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return int(new)


def is_int(value: Any) -> bool:
    """``value`` is an ``int`` and not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """``value`` is an ``int`` or a ``float`` and not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Stage:
    """``repeats`` layers of one block spec; the first has ``stride``, the others stride 1.

    ``spec``: a :class:`BlockSpec`; its string form (``ir_e6_k5``) is parsed here, once, where
    it enters.  A string that does not parse stays as given, so that the :class:`Arch` holding
    the stage reports it under the stage's place (:meth:`check`).  ``shortcut``: an identity
    shortcut around every layer whose input and output shapes match (stride 1, same channels),
    as in MobileNetV2's inverted residuals; ``False`` for plain stacks such as MobileNetV1's."""

    spec: BlockSpec
    out_channels: int
    repeats: int = 1
    stride: int = 1
    shortcut: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.spec, BlockSpec):
            try:
                object.__setattr__(self, "spec", BlockSpec.parse(self.spec))
            except UserInputError:
                pass  # reported by check(), naming the stage

    def check(self, where: str = "stage") -> None:
        """Raise :class:`UserInputError` naming ``where.<field>`` if a field is invalid."""
        if not isinstance(self.spec, BlockSpec):
            try:
                BlockSpec.parse(self.spec)
            except UserInputError as exc:
                raise UserInputError(f"{where}.spec", exc.problem, exc.fix) from None
        for name, low, high in (("out_channels", 1, MAX_CHANNELS), ("repeats", 1, MAX_LAYERS), ("stride", 1, 64)):
            value = getattr(self, name)
            if not is_int(value) or not low <= value <= high:
                raise UserInputError(f"{where}.{name}", f"expected an integer in [{low}, {high}], got {value!r}")
        if not isinstance(self.shortcut, bool):
            raise UserInputError(f"{where}.shortcut", f"expected true or false, got {self.shortcut!r}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the spec as its string."""
        return {**asdict(self), "spec": str(self.spec)}


@dataclass(frozen=True)
class Arch:
    """A MobileNet-style network: stem, stages of block specs, optional 1×1 head conv, a head
    (:data:`~.heads.HEADS`: global average pooling, or MobileFaceNets' global depthwise
    convolution ``gdc``), classifier.

    ``width_mult`` (MobileNet α) scales every channel count (stem, stages, head) with
    :func:`make_divisible` rounding; ``depth_mult`` scales the repeats per stage (rounded up, at
    least one).  ``act`` is the activation of the stem, the head and of layers whose block does
    not end linearly.  ``head_channels == 0`` means no head convolution.  ``input_size``: the
    input side (an int, or ``(height, width)``) the network is built for; a head that sizes a
    kernel from the final feature map (``gdc``) needs it, other heads run at any size.
    """

    stages: tuple[Stage, ...]
    stem_channels: int = 16
    stem_stride: int = 1
    head_channels: int = 0
    num_classes: int = 10
    in_channels: int = 3
    width_mult: float = 1.0
    depth_mult: float = 1.0
    act: str = "relu"
    dropout: float = 0.0
    head: str = "avgpool"
    input_size: int | tuple[int, int] | None = None

    def __post_init__(self) -> None:
        stages = self.stages
        if isinstance(stages, Stage) or not isinstance(stages, (list, tuple)) or not stages:
            raise UserInputError("arch.stages", f"expected a non-empty list of stages, got {stages!r}")
        converted = []
        for i, stage in enumerate(stages):
            where = f"arch.stages[{i}]"
            if isinstance(stage, dict):
                stage = _from_mapping(Stage, stage, where)
            elif isinstance(stage, (list, tuple)) and not isinstance(stage, Stage):
                if len(stage) not in (4, 5):
                    raise UserInputError(
                        where, f"expected (spec, out_channels, repeats, stride[, shortcut]), got {stage!r}"
                    )
                stage = Stage(*stage)
            if not isinstance(stage, Stage):
                raise UserInputError(where, f"expected a Stage, got {type(stage).__name__}")
            stage.check(where)
            converted.append(stage)
        object.__setattr__(self, "stages", tuple(converted))
        for name, low in (
            ("stem_channels", 1),
            ("stem_stride", 1),
            ("head_channels", 0),
            ("num_classes", 1),
            ("in_channels", 1),
        ):
            value = getattr(self, name)
            if not is_int(value) or value < low:
                raise UserInputError(f"arch.{name}", f"expected an integer >= {low}, got {value!r}")
        for name in ("width_mult", "depth_mult"):
            value = getattr(self, name)
            if not is_number(value) or not math.isfinite(value) or value <= 0:
                raise UserInputError(f"arch.{name}", f"expected a number > 0, got {value!r}")
        self._check_size()
        if self.act not in ARCH_ACTS:
            raise UserInputError("arch.act", f"unknown activation {self.act!r}", f"use one of {list(ARCH_ACTS)}")
        if not is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise UserInputError("arch.dropout", f"expected a number in [0, 1), got {self.dropout!r}")
        self._check_head()

    def _check_head(self) -> None:
        """``head`` is one of :data:`HEADS`; ``input_size`` a side (or a pair), given if the head needs it."""
        if not isinstance(self.head, str) or self.head not in HEADS:
            raise UserInputError("arch.head", f"unknown head {self.head!r}", f"use one of {list(HEADS)}")
        size = self.input_size
        if isinstance(size, list):  # from JSON
            size = tuple(size)
            object.__setattr__(self, "input_size", size)
        sides = (size,) if is_int(size) else size if isinstance(size, tuple) and len(size) == 2 else None
        if size is not None and (sides is None or not all(is_int(v) and 1 <= v <= MAX_INPUT_SIDE for v in sides)):
            raise UserInputError(
                "arch.input_size", f"expected a side (or [height, width]) of 1 to {MAX_INPUT_SIDE} pixels, got {size!r}"
            )
        if size is None and HEADS[self.head].needs_input_size:
            raise UserInputError(
                "arch.input_size",
                f"missing: the {self.head} head sizes its kernel from the final feature map",
                "give the input side, e.g. input_size=112",
            )

    def _check_size(self) -> None:
        """At most :data:`MAX_LAYERS` layers and :data:`MAX_CHANNELS` channels per layer."""
        layers = sum(self.repeats(s) for s in self.stages)
        if layers > MAX_LAYERS:
            raise UserInputError(
                "arch.depth_mult",
                f"{layers:,} layers after depth_mult {self.depth_mult:g} (at most {MAX_LAYERS})",
                "use fewer repeats or a smaller depth_mult",
            )
        widest = max(
            self.channels(c) for c in (self.stem_channels, self.head_channels, *(s.out_channels for s in self.stages))
        )
        if (
            widest > MAX_CHANNELS
            or self.stem_channels > MAX_CHANNELS
            or self.head_channels > MAX_CHANNELS
            or self.in_channels > MAX_CHANNELS
        ):
            raise UserInputError(
                "arch.width_mult",
                f"a layer of {widest:,} channels after width_mult {self.width_mult:g} (at most {MAX_CHANNELS})",
                "use fewer channels or a smaller width_mult",
            )

    # -- derived --------------------------------------------------------------------------
    def channels(self, value: int) -> int:
        """A channel count after the width multiplier."""
        return make_divisible(value * self.width_mult, 8)

    def repeats(self, stage: Stage) -> int:
        """The number of layers of a stage after the depth multiplier."""
        return max(1, math.ceil(stage.repeats * self.depth_mult))

    def feature_size(self) -> tuple[int, int] | None:
        """``(H, W)`` of the final feature map at :attr:`input_size` (``None`` without one).

        Every layer keeps the output shape of a 3×3 convolution with padding 1 (the block
        contract), so each stride ``s`` maps a side ``n`` to ``ceil(n / s)``."""
        if self.input_size is None:
            return None
        sides = (self.input_size,) * 2 if is_int(self.input_size) else tuple(self.input_size)
        for stride in (self.stem_stride, *(s.stride for s in self.stages)):
            sides = tuple(-(-n // stride) for n in sides)
        return sides  # type: ignore[return-value]

    def summary(self) -> str:
        """One line, e.g. ``w0.75 d1.0 relu6 | 16:ir_e6_k3x2/s1 24:ir_e4_k5x3/s2 | head1280``:
        multipliers, activation, stages (``/noskip``: no shortcuts), head conv, head if not avgpool."""
        stages = " ".join(
            f"{s.out_channels}:{s.spec}x{s.repeats}/s{s.stride}{'' if s.shortcut else '/noskip'}" for s in self.stages
        )
        parts = ([f"head{self.head_channels}"] if self.head_channels else []) + (
            [self.head] if self.head != next(iter(HEADS)) else []
        )
        head = f" | {' '.join(parts)}" if parts else ""
        return f"w{float(self.width_mult)} d{float(self.depth_mult)} {self.act} | {stages}{head}"

    # -- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stages"] = [s.to_dict() for s in self.stages]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Arch:
        return _from_mapping(cls, data, "arch")

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> Arch:
        data = loads(text, field="arch", what="the arch", fix="pass the text Arch.to_json() wrote")
        if not isinstance(data, dict):
            raise UserInputError("arch", f"expected a JSON object, got {type(data).__name__}")
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> Arch:
        return replace(self, **changes)


def _from_mapping(cls: type, data: dict[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserInputError(f"{where}.{unknown[0]}", "unknown field", f"{cls.__name__} takes {sorted(known)}")
    try:
        return cls(**data)
    except TypeError as exc:  # a required field is missing
        raise UserInputError(
            where, str(exc).split(".__init__() ")[-1], f"{cls.__name__} takes {sorted(known)}"
        ) from None
