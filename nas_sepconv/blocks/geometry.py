"""The geometry of a convolution: what a replacement block must reproduce.

A :class:`ConvGeometry` is read from an ``nn.ConvNd`` module or from the arguments of an
``F.convNd`` call, and every block kind is built from one.  It is plain data (JSON-able) so a
plan can record it and check, when re-applied, that it meets the same convolution again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch.nn as nn

__all__ = ["ConvGeometry", "CONV_TYPES"]

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _tuple(value: Any, dims: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * dims
    value = tuple(int(v) for v in value)
    if len(value) == 1 and dims > 1:
        return value * dims
    return value


@dataclass(frozen=True)
class ConvGeometry:
    """Shape-relevant attributes of a convolution (``nn.ConvNd`` semantics)."""

    dims: int
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    groups: int = 1
    bias: bool = True
    padding_mode: str = "zeros"
    transposed: bool = False
    output_padding: tuple[int, ...] = ()

    @classmethod
    def conv3x3(cls, in_channels: int, out_channels: int, stride: int = 1) -> ConvGeometry:
        """A 2-D 3x3 convolution, padding 1, no bias: the layer a network built from an ``Arch`` replaces."""
        return cls(
            dims=2,
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=(3, 3),
            stride=(stride, stride),
            padding=(1, 1),
            dilation=(1, 1),
            groups=1,
            bias=False,
        )

    @classmethod
    def from_module(cls, conv: nn.Module) -> ConvGeometry:
        """Read the geometry of an ``nn.ConvNd`` or ``nn.ConvTransposeNd`` module."""
        if not isinstance(conv, CONV_TYPES):
            raise TypeError(f"expected a convolution module, got {type(conv).__name__}")
        dims = len(conv.kernel_size)
        return cls(
            dims=dims,
            in_channels=conv.in_channels,
            out_channels=conv.out_channels,
            kernel_size=tuple(conv.kernel_size),
            stride=tuple(conv.stride),
            padding=conv.padding if isinstance(conv.padding, str) else tuple(conv.padding),
            dilation=tuple(conv.dilation),
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            transposed=bool(getattr(conv, "transposed", False)),
            output_padding=tuple(conv.output_padding) if getattr(conv, "transposed", False) else (),
        )

    @classmethod
    def from_call(
        cls,
        weight_shape: tuple[int, ...],
        *,
        bias: bool,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
    ) -> ConvGeometry:
        """Read the geometry of a functional ``F.convNd(x, weight, bias, stride, ...)`` call."""
        dims = len(weight_shape) - 2
        return cls(
            dims=dims,
            in_channels=int(weight_shape[1]) * groups,
            out_channels=int(weight_shape[0]),
            kernel_size=tuple(int(k) for k in weight_shape[2:]),
            stride=_tuple(stride, dims),
            padding=padding if isinstance(padding, str) else _tuple(padding, dims),
            dilation=_tuple(dilation, dims),
            groups=groups,
            bias=bias,
        )

    # -- derived facts ------------------------------------------------------------------
    @property
    def is_pointwise(self) -> bool:
        return all(k == 1 for k in self.kernel_size)

    @property
    def is_depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels

    def with_kernel(self, kernel_size: int | tuple[int, ...]) -> ConvGeometry:
        """The same convolution with another kernel size and the padding that keeps every output shape.

        Padding grows by ``dilation * (k_new - k_old) / 2`` per dimension, so the difference of
        kernel sizes must be even.
        """
        new = _tuple(kernel_size, self.dims)
        if new == self.kernel_size:
            return self
        if any((a - b) % 2 for a, b in zip(new, self.kernel_size)):
            raise ValueError(
                f"kernel_size {new} cannot replace {self.kernel_size} with the same output shape: "
                "the difference must be even (3<->5<->7)"
            )
        if self.padding == "same":
            padding: tuple[int, ...] | str = "same"
        else:
            base = (0,) * self.dims if self.padding == "valid" else self.padding
            padding = tuple(p + d * (a - b) // 2 for p, d, a, b in zip(base, self.dilation, new, self.kernel_size))
            if any(p < 0 for p in padding):
                raise ValueError(f"kernel_size {new} is too small for padding {self.padding}")
        return replace(self, kernel_size=new, padding=padding)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConvGeometry:
        data = dict(data)
        for key in ("kernel_size", "stride", "dilation", "output_padding"):
            data[key] = tuple(data.get(key, ()))
        if not isinstance(data["padding"], str):
            data["padding"] = tuple(data["padding"])
        return cls(**data)

    def describe(self) -> str:
        k = "x".join(map(str, self.kernel_size))
        extra = []
        if any(s != 1 for s in self.stride):
            extra.append("s" + "x".join(map(str, self.stride)))
        if any(d != 1 for d in self.dilation):
            extra.append("d" + "x".join(map(str, self.dilation)))
        if self.groups != 1:
            extra.append(f"g{self.groups}")
        kind = f"ConvTranspose{self.dims}d" if self.transposed else f"Conv{self.dims}d"
        return f"{kind} {self.in_channels}->{self.out_channels} k{k}" + ("".join(" " + e for e in extra))
