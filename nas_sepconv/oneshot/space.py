"""What a supernet covers: :class:`SupernetSpace`, every choice of a build space as plain data
(the block specs each stage may draw, the multipliers, activations, heads and input sides), and
the archs of the sandwich rule drawn from it: :meth:`~SupernetSpace.largest`,
:meth:`~SupernetSpace.smallest`, :meth:`~SupernetSpace.sample` and
:meth:`~SupernetSpace.sample_fair`.

The search turns a build space file into one (``nas_sepconv.search.supernet_space``); the
supernet is built from it and runs any :class:`~nas_sepconv.models.Arch` whose choices it holds.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..blocks import BlockSpec, ConvGeometry
from ..errors import UserInputError
from ..models import Arch, Stage
from .sharing import weight_key

__all__ = ["StageOptions", "SupernetSpace", "block_size"]


def block_size(spec: BlockSpec, in_channels: int, out_channels: int, stride: int = 1) -> int:
    """The parameters of ``spec``'s block replacing a 3×3 convolution (built on the meta
    device: nothing is allocated), the measure by which a stage's largest and smallest specs
    are chosen."""
    g = ConvGeometry.conv3x3(in_channels, out_channels, stride)
    with torch.device("meta"):
        block = spec.build(g)
    return sum(p.numel() for p in block.parameters())


@dataclass(frozen=True)
class StageOptions:
    """The choices of one stage: ``specs``, every block spec it may draw (a continuous range of
    an option is represented by its ends); ``shortcuts``, the shortcut settings it may draw."""

    out_channels: int
    repeats: int
    stride: int
    specs: tuple[BlockSpec, ...]
    shortcuts: tuple[bool, ...] = (True,)

    def __post_init__(self) -> None:
        if not self.specs or not self.shortcuts:
            raise UserInputError("stage.specs", "a stage needs at least one block spec and one shortcut setting")

    def kinds(self) -> list[str]:
        """The block kinds of :attr:`specs`, in order of first appearance."""
        return list(dict.fromkeys(s.kind for s in self.specs))

    def by_size(self) -> list[BlockSpec]:
        """:attr:`specs` from the smallest block to the largest (parameters at the base width)."""
        return sorted(self.specs, key=lambda s: block_size(s, self.out_channels, self.out_channels, self.stride))


@dataclass(frozen=True)
class SupernetSpace:
    """Every choice of a build space, as the supernet needs them.

    ``widths``, ``depths``: the ``width_mult`` and ``depth_mult`` values; ``resolutions``: the
    input sides (pixels) that ``resolution_mult`` gives on the data set; ``acts``, ``heads``:
    the activations and heads.  The fixed parts (stem, head conv, classes, dropout) are those of
    :class:`~nas_sepconv.models.Arch`."""

    stages: tuple[StageOptions, ...]
    widths: tuple[float, ...]
    depths: tuple[float, ...]
    resolutions: tuple[int, ...]
    acts: tuple[str, ...]
    heads: tuple[str, ...]
    stem_channels: int
    stem_stride: int
    head_channels: int
    num_classes: int
    in_channels: int
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("stages", "widths", "depths", "resolutions", "acts", "heads"):
            if not getattr(self, name):
                raise UserInputError(f"space.{name}", "is empty", "give at least one value")

    def arch(
        self,
        specs: tuple[BlockSpec, ...],
        *,
        shortcuts: tuple[bool, ...],
        width: float,
        depth: float,
        act: str,
        head: str,
        resolution: int,
    ) -> Arch:
        """The :class:`Arch` of these choices (one spec and shortcut setting per stage)."""
        stages = tuple(
            Stage(spec, s.out_channels, s.repeats, s.stride, shortcut)
            for s, spec, shortcut in zip(self.stages, specs, shortcuts)
        )
        return Arch(
            stages=stages,
            stem_channels=self.stem_channels,
            stem_stride=self.stem_stride,
            head_channels=self.head_channels,
            num_classes=self.num_classes,
            in_channels=self.in_channels,
            width_mult=width,
            depth_mult=depth,
            act=act,
            dropout=self.dropout,
            head=head,
            input_size=resolution,
        )

    def largest(self) -> Arch:
        """The largest subnet (the sandwich rule's top): the widest, deepest, largest block of
        each stage, at the largest input side."""
        return self._extreme(-1, max)

    def smallest(self) -> Arch:
        """The smallest subnet (the sandwich rule's bottom)."""
        return self._extreme(0, min)

    def _extreme(self, end: int, pick: Callable[..., Any]) -> Arch:
        return self.arch(
            tuple(s.by_size()[end] for s in self.stages),
            shortcuts=tuple(s.shortcuts[0] for s in self.stages),
            width=pick(self.widths),
            depth=pick(self.depths),
            act=self.acts[0],
            head=self.heads[0],
            resolution=pick(self.resolutions),
        )

    def sample(self, rng: random.Random) -> Arch:
        """A random subnet: per stage a kind, then that kind's options, each uniformly, as a
        random sampler draws them from the space (Guo et al. 2020, single-path uniform sampling)."""
        specs = []
        for s in self.stages:
            kind = rng.choice(s.kinds())
            specs.append(rng.choice([spec for spec in s.specs if spec.kind == kind]))
        return self._with_specs(tuple(specs), rng)

    def sample_fair(self, rng: random.Random, n: int) -> list[Arch]:
        """``n`` random subnets whose blocks take each stage's weight sets in turn: per stage a
        shuffled order of its weight sets (:func:`~.sharing.weight_key`: a kind, SE on or off, a
        group count...), subnet ``i`` drawing a spec of the ``i``-th (cycled); the other choices
        uniformly, as :meth:`sample`'s.  Every weight set of a stage is trained equally often, as
        FairNAS's strict fairness trains every choice once per step (Chu et al., ICCV 2021, with
        ``n`` the number of choices), where :meth:`sample` trains a kind's weight sets the fewer
        times the more sets the kind splits into."""
        orders = []
        for s in self.stages:
            sets: dict[str, list[BlockSpec]] = {}
            for spec in s.specs:
                sets.setdefault(weight_key(spec), []).append(spec)
            orders.append(rng.sample(list(sets.values()), len(sets)))
        subnets = []
        for i in range(n):
            specs = tuple(rng.choice(order[i % len(order)]) for order in orders)
            subnets.append(self._with_specs(specs, rng))
        return subnets

    def _with_specs(self, specs: tuple[BlockSpec, ...], rng: random.Random) -> Arch:
        """The subnet of ``specs``, its other choices drawn uniformly."""
        return self.arch(
            specs,
            shortcuts=tuple(rng.choice(s.shortcuts) for s in self.stages),
            width=rng.choice(self.widths),
            depth=rng.choice(self.depths),
            act=rng.choice(self.acts),
            head=rng.choice(self.heads),
            resolution=rng.choice(self.resolutions),
        )

    def to_dict(self) -> dict:
        """The JSON form (a checkpoint records it, to refuse resuming another space)."""
        return {
            "stages": [
                {
                    "out_channels": s.out_channels,
                    "repeats": s.repeats,
                    "stride": s.stride,
                    "specs": [str(spec) for spec in s.specs],
                    "shortcuts": list(s.shortcuts),
                }
                for s in self.stages
            ],
            **{name: list(getattr(self, name)) for name in ("widths", "depths", "resolutions", "acts", "heads")},
            **{
                name: getattr(self, name)
                for name in ("stem_channels", "stem_stride", "head_channels", "num_classes", "in_channels", "dropout")
            },
        }
