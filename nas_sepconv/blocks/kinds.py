"""Block kinds and their options: the table :data:`KINDS`, one entry per kind.

This is the one place where a kind is declared: the module that builds it (``modules.py``), its
options with defaults and string codes, the convolutions it can replace, and its closed-form
initialiser (``closed_form*.py``).  The rewriter, the profiler, the initialiser and the search
spaces all read :data:`KINDS`; there is no per-kind ``if``/``elif`` anywhere else.
``BlockSpec`` (a kind with options, and its string form) is in :mod:`.spec`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..errors import UserInputError
from ..tables import lookup
from . import closed_form as decompose
from . import modules as blocks
from .closed_form_joint import DWSEP as _DWSEP_REFIT
from .closed_form_joint import JointRefit
from .closed_form_stacked import init_dw_spatial, init_inverted_residual
from .geometry import ConvGeometry

__all__ = ["Option", "Kind", "KINDS", "KIND_ALIASES", "kind_by_name", "kind_names", "resolve_rank"]


@dataclass(frozen=True)
class Option:
    """One option of a kind: its name (contract), string code, type and default.

    ``type`` is ``int``, ``float``, ``bool``, ``"act"`` (an activation name), ``"rank"`` (int, or
    float fraction in (0, 1]) or ``"kernel"`` (int or tuple of ints, odd).  Numbers must be
    finite and lie in [``minimum``, ``maximum``] (``None``: unbounded; for ``"rank"`` and
    ``"kernel"`` the bounds apply to ints); the maxima keep a typo such as ``dwsep_m100000``
    from building a block that cannot fit in memory.
    """

    name: str
    code: str
    type: Any
    default: Any
    minimum: float | None = None
    maximum: float | None = None

    def _bounded(self, where: str, value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            raise UserInputError(where, f"expected a finite number, got {value}", self._range_hint())
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            raise UserInputError(where, f"{value:g} is out of range", self._range_hint())
        return value

    def _range_hint(self) -> str:
        low = "-inf" if self.minimum is None else f"{self.minimum:g}"
        high = "inf" if self.maximum is None else f"{self.maximum:g}"
        what = "a number" if self.type is float else "an integer"
        return f"use {what} in [{low}, {high}]"

    def normalise(self, kind: str, value: Any) -> Any:
        where = f"{kind}.{self.name}"
        if self.type == "act":
            value = "none" if value is None else str(value)
            if value not in blocks.ACTIVATIONS:
                raise UserInputError(where, f"unknown activation {value!r}", f"use one of {sorted(blocks.ACTIVATIONS)}")
            return value
        if self.type is bool:
            if isinstance(value, bool):
                return value
            raise UserInputError(where, f"expected true or false, got {value!r}")
        if self.type == "kernel":
            ks = (
                (value,)
                if isinstance(value, int) and not isinstance(value, bool)
                else tuple(value)
                if isinstance(value, (tuple, list))
                else None
            )
            if not ks or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 and k % 2 == 1 for k in ks):
                raise UserInputError(
                    where, f"expected an odd positive int or tuple of them, got {value!r}", "use e.g. 3, 5 or 7"
                )
            for k in ks:
                self._bounded(where, k)
            return ks[0] if len(set(ks)) == 1 and len(ks) == 1 else tuple(ks)
        if self.type == "rank":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UserInputError(where, f"expected an int or a fraction in (0, 1], got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise UserInputError(
                    where, f"expected a finite number, got {value}", "give a fraction in (0, 1] or an int rank"
                )
            if isinstance(value, float) and value.is_integer() and value > 1:
                value = int(value)
            if isinstance(value, float) and not 0 < value <= 1:
                raise UserInputError(where, f"a fractional rank must lie in (0, 1], got {value}", "or give an int")
            if isinstance(value, int) and value < 1:
                raise UserInputError(where, f"rank must be >= 1, got {value}")
            return self._bounded(where, value) if isinstance(value, int) else value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserInputError(where, f"expected a number, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UserInputError(where, f"expected a finite number, got {value}", self._range_hint())
        if self.type is int:
            if isinstance(value, float) and not value.is_integer():
                raise UserInputError(where, f"expected an integer, got {value}")
            value = int(value)
        else:
            value = int(value) if float(value).is_integer() else float(value)
        if self.minimum is not None and value < self.minimum:
            raise UserInputError(where, f"must be >= {self.minimum:g}, got {value}", self._range_hint())
        return self._bounded(where, value)

    def encode(self, value: Any) -> str:
        if self.type == "act":
            return str(value)
        if self.type is bool:
            return self.code if value else "no" + self.code
        if self.type == "kernel":
            return self.code + (str(value) if isinstance(value, int) else "x".join(map(str, value)))
        return f"{self.code}{value:g}" if isinstance(value, float) else f"{self.code}{value}"

    def decode(self, token: str) -> Any | None:
        """The value a token gives this option, or ``None`` if the token is not this option's."""
        if self.type == "act":
            return token if token in blocks.ACTIVATIONS else None
        if self.type is bool:
            return True if token == self.code else False if token == "no" + self.code else None
        if not token.startswith(self.code):
            return None
        rest = token[len(self.code) :]
        try:
            if self.type == "kernel":
                parts = [int(p) for p in rest.split("x")]
                return parts[0] if len(parts) == 1 else tuple(parts)
            number = float(rest)
        except ValueError:
            return None
        if not math.isfinite(number):
            return number  # normalise refuses it, naming the option
        if self.type is int or (self.type == "rank" and "." not in rest):
            return int(number)
        return int(number) if self.type is float and number.is_integer() and "." not in rest else number


KERNEL = Option("kernel_size", "k", "kernel", None, minimum=1, maximum=63)


@dataclass(frozen=True)
class Kind:
    """A block kind: how to build it, its options, where it applies and how to initialise it.

    ``last_linear`` names the block's last linear sub-layer (``""``: the block itself), the part
    that data-aware refit re-solves by least squares; ``joint_refit``, where given, re-solves
    all of the block's factors instead (:mod:`.closed_form_joint`).  ``effective`` gives the
    dense kernel of a built block, ``None`` when it is not linear (no entry: never linear);
    ``short`` is the prefix of the string form (``""``: the name)."""

    name: str
    aliases: tuple[str, ...]
    options: tuple[Option, ...]
    build: Callable[..., nn.Module]
    init: Callable[..., None]
    last_linear: str = ""
    joint_refit: JointRefit | None = None
    effective: Callable[[nn.Module, ConvGeometry], torch.Tensor | None] | None = None
    short: str = ""
    unsupported: Callable[[ConvGeometry, dict], str | None] = field(default=lambda g, o: None)
    doc: str = ""
    #: what the block is, in words, for reports (a plan report's ``compressor`` column)
    title: str = ""

    def option(self, name: str) -> Option:
        for opt in self.options:
            if opt.name == name:
                return opt
        raise UserInputError(
            f"{self.name}.{name}", "unknown option", f"{self.name} takes {[o.name for o in self.options]}"
        )


def resolve_rank(g: ConvGeometry, rank: int | float) -> int:
    """An int rank for a spatially-separable block: a float is a fraction of the full rank
    ``groups * min(C_in/groups * Kh, C_out/groups * Kw)``; the result is a multiple of groups."""
    full = g.groups * min(g.in_channels // g.groups * g.kernel_size[0], g.out_channels // g.groups * g.kernel_size[1])
    r = math.ceil(rank * full) if isinstance(rank, float) else int(rank)
    return max(g.groups, math.ceil(r / g.groups) * g.groups)


def _not_2d(g: ConvGeometry, o: dict) -> str | None:
    if g.dims != 2:
        return f"needs a 2-D convolution, this one is {g.dims}-D"
    if g.transposed:
        return "transposed convolutions are only converted to dwsep or keep"
    return None


def _not_transposed(g: ConvGeometry, o: dict) -> str | None:
    return "transposed convolutions are only converted to dwsep or keep" if g.transposed else None


def _grouped_unsupported(g: ConvGeometry, o: dict) -> str | None:
    groups = o["groups"]
    if g.transposed:
        return "transposed convolutions are only converted to dwsep or keep"
    if g.in_channels % groups or g.out_channels % groups:
        return f"groups={groups} must divide C_in={g.in_channels} and C_out={g.out_channels}"
    if groups <= g.groups:
        return f"groups={groups} is not more than the convolution's own groups={g.groups}"
    return None


def _build_spatial(g: ConvGeometry, *, rank: Any) -> nn.Module:
    return blocks.SpatialSeparable(g, rank=resolve_rank(g, rank))


KINDS: dict[str, Kind] = {
    k.name: k
    for k in [
        Kind(
            "keep",
            (),
            (KERNEL,),
            build=lambda g: blocks.conv_from_geometry(g),
            init=decompose.init_keep,
            effective=decompose.effective_conv,
            doc="the original convolution (optionally with another kernel size)",
            title="keep",
        ),
        Kind(
            "dwsep",
            ("sep", "depthwise_separable"),
            (
                Option("dw_mult", "m", int, 1, minimum=1, maximum=64),
                Option("mid_norm", "bn", bool, False),
                Option("mid_act", "", "act", "none"),
                KERNEL,
            ),
            build=lambda g, **o: blocks.DepthwiseSeparable(g, **o),
            init=decompose.init_dwsep,
            effective=decompose.effective_dwsep,
            last_linear="conv_pw",
            joint_refit=_DWSEP_REFIT,
            doc="depthwise KxK then pointwise 1x1 (MobileNetV1, Xception)",
            title="depthwise separable",
        ),
        Kind(
            "spatial",
            ("spatially_separable",),
            (Option("rank", "r", "rank", 0.25, minimum=1, maximum=65536), KERNEL),
            build=_build_spatial,
            init=decompose.init_spatial,
            effective=decompose.effective_spatial,
            last_linear="conv_h",
            unsupported=_not_2d,
            doc="Kx1 to `rank` channels then 1xK (Jaderberg et al. 2014, Tai et al. 2016)",
            title="low-rank (spatial SVD)",
        ),
        Kind(
            "dw_spatial",
            ("factorized_dw",),
            (Option("dw_mult", "m", int, 1, minimum=1, maximum=64), KERNEL),
            build=lambda g, **o: blocks.DepthwiseSpatial(g, **o),
            init=init_dw_spatial,
            effective=decompose.effective_dw_spatial,
            last_linear="conv_pw",
            unsupported=_not_2d,
            doc="depthwise Kx1, depthwise 1xK, pointwise (EffNet, Flattened networks)",
            title="depthwise spatially separable",
        ),
        Kind(
            "inverted_residual",
            ("ir", "mbconv"),
            (
                Option("expand_ratio", "e", float, 6, minimum=1, maximum=64),
                KERNEL,
                Option("se_ratio", "se", float, 0.0, minimum=0, maximum=1),
                Option("act", "", "act", "relu6"),
                Option("mid_norm", "bn", bool, True),
            ),
            build=lambda g, **o: blocks.InvertedResidual(g, **o),
            init=init_inverted_residual,
            short="ir",
            last_linear="conv_pwl",
            unsupported=_not_transposed,
            doc="expand 1x1, depthwise KxK, [SE], project 1x1 (MobileNetV2/V3)",
            title="inverted residual",
        ),
        Kind(
            "grouped",
            ("group",),
            (Option("groups", "g", int, 4, minimum=2, maximum=4096), KERNEL),
            build=lambda g, **o: blocks.GroupedShuffle(g, **o),
            init=decompose.init_grouped,
            effective=decompose.effective_grouped,
            last_linear="conv",
            unsupported=_grouped_unsupported,
            doc="grouped conv + channel shuffle (ResNeXt, ShuffleNet)",
            title="grouped + shuffle",
        ),
    ]
}

#: every name a kind answers to (name, short name, aliases) -> the kind's name
KIND_ALIASES = {alias: k.name for k in KINDS.values() for alias in (k.name, k.short, *k.aliases) if alias}


def kind_names() -> list[str]:
    return list(KINDS)


def kind_by_name(name: str) -> Kind:
    """The kind that ``name`` (its name, short name or an alias) names."""
    return KINDS[lookup(KIND_ALIASES, name, field="kind", what="block kind", names=KINDS)]
