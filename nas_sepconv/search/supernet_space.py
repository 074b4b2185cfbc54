"""A build space file as the supernet's :class:`~nas_sepconv.oneshot.SupernetSpace`: every block
spec each stage may draw, the multipliers, activations, heads and input sides.

A discrete choice gives its values; a range with a step (or of integers), its points; a continuous range, its
two ends (the supernet holds the largest, and every value between runs on shared weights; the
training draws the ends).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from ..blocks import KINDS, BlockSpec
from ..errors import UserInputError
from ..oneshot import StageOptions, SupernetSpace
from .choices import LIMITS, Range, choice_values
from .spaces import Space
from .suggestion import resolution_for

__all__ = ["MAX_STAGE_SPECS", "block_specs", "covered_values", "supernet_space"]

#: The most block specs one stage may enumerate (a weight set each at most).
MAX_STAGE_SPECS = 4096


def covered_values(choice: Any) -> list[Any]:
    """The values of a choice the supernet covers (see the module docstring)."""
    if not isinstance(choice, Range):
        return list(choice_values(choice) or [])
    step = choice.step if choice.step is not None or not choice.int else 1  # an int range: every integer
    if step is None:
        values = [choice.low, choice.high]
    else:
        count = int(math.floor((choice.high - choice.low) / step + 1e-9)) + 1
        values = [choice.low + k * step for k in range(min(count, LIMITS.range_points + 1))]
    return [int(v) for v in values] if choice.int else values


def block_specs(stage: Any, where: str) -> tuple[BlockSpec, ...]:
    """Every spec a stage's (or a convert site group's) choices may draw: per kind, the product
    of the options it takes (a continuous range: its two ends)."""
    specs: list[BlockSpec] = []
    options = stage.options()
    for kind in covered_values(stage.kind):
        info = KINDS[BlockSpec(str(kind)).kind]
        names = [o.name for o in info.options if o.name in options]
        for combo in itertools.product(*(covered_values(options[n]) for n in names)):
            specs.append(BlockSpec(info.name, **dict(zip(names, combo))))
            if len(specs) > MAX_STAGE_SPECS:
                problem = f"draws more than {MAX_STAGE_SPECS} block specs, one weight set each in a supernet"
                raise UserInputError(where, problem, "give fewer values, or ranges without a step")
    return tuple(dict.fromkeys(specs))


def supernet_space(space: Space, *, input_shape: tuple[int, int, int], num_classes: int) -> SupernetSpace:
    """The :class:`SupernetSpace` of a build ``space`` on a data set of ``input_shape`` (C, H, W)
    and ``num_classes`` classes; a convert space has no supernet (:class:`UserInputError`)."""
    build = space.spec.build
    if build is None:
        raise UserInputError(
            "space.kind", f"{space.name} is a {space.kind} space: a supernet needs a build space", "use a build space"
        )
    stages = tuple(
        StageOptions(
            out_channels=st.out_channels,
            repeats=st.repeats,
            stride=st.stride,
            specs=block_specs(st, f"build.stages[{i}]"),
            shortcuts=tuple(bool(v) for v in covered_values(st.shortcut)),
        )
        for i, st in enumerate(build.stages)
    )
    resolutions = tuple(
        dict.fromkeys(resolution_for(input_shape[-1], m) for m in covered_values(build.resolution_mult))
    )
    return SupernetSpace(
        stages=stages,
        widths=tuple(float(v) for v in covered_values(build.width_mult)),
        depths=tuple(float(v) for v in covered_values(build.depth_mult)),
        resolutions=resolutions,
        acts=tuple(str(v) for v in covered_values(build.act)),
        heads=tuple(str(v) for v in covered_values(build.head)),
        stem_channels=build.stem_channels,
        stem_stride=build.stem_stride,
        head_channels=build.head_channels,
        num_classes=num_classes,
        in_channels=input_shape[0],
        dropout=build.dropout,
    )
