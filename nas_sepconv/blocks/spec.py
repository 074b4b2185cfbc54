"""``BlockSpec``: a block kind with options, and its short string form.

String form (timm style): the kind, then one token per option that was given, in the kind's
declared order, e.g. ``dwsep_m2``, ``spatial_r0.5``, ``ir_e6_k5_se0.25_hswish``, ``grouped_g4``,
``dwsep_m1_bn_relu`` (MobileNetV1 style).  ``BlockSpec.parse(str(spec)) == spec``.  What each
kind and option is lives in :data:`~nas_sepconv.blocks.kinds.KINDS`.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch.nn as nn

from ..errors import UserInputError
from .geometry import ConvGeometry
from .kinds import KERNEL, KIND_ALIASES, KINDS, Kind, kind_by_name, kind_names

__all__ = ["BlockSpec", "as_spec"]


class BlockSpec:
    """A block kind with options, e.g. ``BlockSpec("dwsep", dw_mult=2)``.

    Only the options given are stored (the string form shows them); :meth:`resolved` adds the
    kind's defaults.  Immutable and hashable.
    """

    __slots__ = ("kind", "options")

    def __init__(self, kind: str, **options: Any):
        info = kind_by_name(kind)
        normalised = {}
        for name, value in options.items():
            opt = info.option(name)
            if opt is KERNEL and value is None:
                continue
            normalised[name] = opt.normalise(info.name, value)
        order = [o.name for o in info.options]
        object.__setattr__(self, "kind", info.name)
        object.__setattr__(self, "options", tuple(sorted(normalised.items(), key=lambda kv: order.index(kv[0]))))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("BlockSpec is immutable")

    def __reduce__(self) -> tuple:  # pickling and deepcopy go through the string form
        return (BlockSpec.parse, (str(self),))

    def __copy__(self) -> BlockSpec:
        return self

    def __deepcopy__(self, memo: dict) -> BlockSpec:
        return self

    @property
    def info(self) -> Kind:
        return KINDS[self.kind]

    def resolved(self) -> dict[str, Any]:
        """All options, defaults filled in (``kernel_size`` stays ``None`` = the convolution's own)."""
        out = {o.name: o.default for o in self.info.options}
        out.update(self.options)
        return out

    def get(self, name: str) -> Any:
        return self.resolved()[self.info.option(name).name]

    # -- string form ----------------------------------------------------------------------
    def __str__(self) -> str:
        tokens = [self.info.short or self.kind]
        tokens += [self.info.option(n).encode(v) for n, v in self.options]
        return "_".join(tokens)

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.options)
        return f"BlockSpec({self.kind!r}{args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BlockSpec) and (self.kind, self.options) == (other.kind, other.options)

    def __hash__(self) -> int:
        return hash((self.kind, self.options))

    @classmethod
    def parse(cls, text: str | BlockSpec) -> BlockSpec:
        """Parse the short string form (``dwsep_m2``, ``ir_e6_k5_se0.25_hswish``, ...)."""
        if isinstance(text, BlockSpec):
            return text
        if not isinstance(text, str) or not text.strip():
            raise UserInputError(
                "spec",
                f"expected a block spec string, got {text!r}",
                f"use e.g. 'dwsep' or 'ir_e6_k5'; kinds: {kind_names()}",
            )
        text = text.strip()
        names = sorted(KIND_ALIASES, key=len, reverse=True)
        head = next((n for n in names if text == n or text.startswith(n + "_")), None)
        if head is None:
            close = difflib.get_close_matches(text.split("_")[0], names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UserInputError(
                "spec", f"{text!r} does not start with a block kind", f"{hint}use one of {kind_names()}"
            )
        kind = kind_by_name(head)
        options: dict[str, Any] = {}
        for token in filter(None, text[len(head) :].split("_")):
            for opt in sorted(kind.options, key=lambda o: len(o.code), reverse=True):
                value = opt.decode(token)
                if value is not None and opt.name not in options:
                    options[opt.name] = value
                    break
            else:
                codes = ", ".join(f"{o.code or '<act>'}=<{o.name}>" for o in kind.options)
                raise UserInputError(
                    "spec", f"token {token!r} of {text!r} is not an option of {kind.name}", f"{kind.name} takes {codes}"
                )
        return cls(kind.name, **options)

    # -- building -----------------------------------------------------------------------
    def geometry_for(self, g: ConvGeometry) -> ConvGeometry:
        """The geometry the block is built with (the kernel size changed if the spec says so)."""
        k = self.get("kernel_size")
        return g if k is None else g.with_kernel(k)

    def unsupported(self, g: ConvGeometry) -> str | None:
        """Why this spec cannot replace a convolution of geometry ``g`` (``None`` if it can)."""
        try:
            g2 = self.geometry_for(g)
        except ValueError as exc:
            return str(exc)
        return self.info.unsupported(g2, self.resolved())

    def build(self, g: ConvGeometry) -> nn.Module:
        """A freshly initialised block replacing a convolution of geometry ``g``."""
        reason = self.unsupported(g)
        if reason:
            raise UserInputError("spec", f"{self} cannot replace {g.describe()}: {reason}")
        options = {k: v for k, v in self.resolved().items() if k != "kernel_size"}
        return self.info.build(self.geometry_for(g), **options)


def as_spec(value: str | BlockSpec | dict) -> BlockSpec:
    """A BlockSpec from a spec, its string form, or a mapping ``{"kind": ..., **options}``."""
    if isinstance(value, BlockSpec):
        return value
    if isinstance(value, str):
        return BlockSpec.parse(value)
    if isinstance(value, dict):
        data = dict(value)
        kind = data.pop("kind", None)
        if kind is None:
            raise UserInputError("spec.kind", "missing", f"give one of {kind_names()}")
        return BlockSpec(kind, **data)
    raise UserInputError("spec", f"expected a kind name, BlockSpec or mapping, got {type(value).__name__}")
