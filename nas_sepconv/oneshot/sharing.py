"""How the choices of a build space share the supernet's weights: the table :data:`SHARING`,
one record per block option, and the two operations every part reads from it: the weight key of
a block spec (:func:`weight_key`: the choices that keep their own weights) and the largest spec
of a group of specs sharing one set of weights (:func:`largest_spec`).  :func:`slice_to` cuts a
subnet's tensor out of the supernet's.

The sharing follows Once-for-All (Cai et al., ICLR 2020) and BigNAS (Yu et al., ECCV 2020):
a smaller kernel is the centre of the largest one, fewer channels are the first channels, a
shallower stage runs its first blocks.  Choices whose weights cannot be nested (the block
kind, squeeze-excite on or off, a depthwise multiplier, a group count) keep a weight set of
their own per value, as the candidate operations of a single-path one-shot supernet do (SPOS,
Guo et al., ECCV 2020).  Activations have no weights: every choice runs on the same ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..blocks import BlockSpec, ConvGeometry, resolve_rank
from ..errors import UserInputError

__all__ = ["SHARING", "Sharing", "largest_spec", "slice_to", "weight_key"]


def _largest_kernel(values: list[Any], g: ConvGeometry) -> tuple[int, int]:
    sides = [g.kernel_size if v is None else (v, v) if isinstance(v, int) else tuple(v) for v in values]
    return (max(s[0] for s in sides), max(s[1] for s in sides))


def _largest_rank(values: list[Any], g: ConvGeometry) -> int:
    return max(resolve_rank(g, v) for v in values)


def _largest(values: list[Any], g: ConvGeometry) -> Any:
    return max(values)


@dataclass(frozen=True)
class Sharing:
    """How one block option shares weights.

    ``own``: the part of a value that keeps weights of its own (``None``: none does);
    ``largest``: the value the supernet holds, given every value of a weight group and the
    group's geometry (``None``: the option has no weights, any value runs on the same ones)."""

    option: str
    own: Callable[[Any], Any] | None
    largest: Callable[[list[Any], ConvGeometry], Any] | None
    doc: str


#: Every block option's sharing, by option name.  An option that is not listed (a new kind's)
#: keeps weights of its own per value: safe, if not frugal.
SHARING: dict[str, Sharing] = {
    s.option: s
    for s in (
        Sharing("kernel_size", None, _largest_kernel, "the centre of the largest kernel (OFA's kernel sharing)"),
        Sharing("expand_ratio", None, _largest, "the first expanded channels"),
        Sharing("rank", None, _largest_rank, "the first channels of the rank"),
        Sharing("se_ratio", lambda v: v > 0, _largest, "SE on/off: own weights; the squeeze: the first channels"),
        Sharing("act", None, None, "no weights"),
        Sharing("mid_act", None, None, "no weights"),
    )
}


def _own_part(name: str, value: Any) -> Any:
    sharing = SHARING.get(name)
    if sharing is None:
        return value
    return None if sharing.own is None else sharing.own(value)


def weight_key(spec: BlockSpec) -> str:
    """The name of the weight set that ``spec`` runs on: its kind and the parts of its options
    that keep weights of their own (``inverted_residual__se_ratio_True``); a module name."""
    parts = [spec.kind]
    for name, value in spec.resolved().items():
        own = _own_part(name, value)
        if own is not None:
            parts.append(f"{name}_{own}")
    return "__".join(parts).replace(".", "p").replace(" ", "").replace(",", "x").replace("(", "").replace(")", "")


def largest_spec(specs: list[BlockSpec], g: ConvGeometry) -> BlockSpec:
    """The spec whose block holds the weights of every one of ``specs`` (one weight key) at
    geometry ``g``: each shared option at its largest value."""
    if len({weight_key(s) for s in specs}) != 1:
        raise ValueError(f"specs of different weight sets: {[str(s) for s in specs]}")
    options = dict(specs[0].resolved())
    kernel = SHARING["kernel_size"].largest([s.resolved()["kernel_size"] for s in specs], g)  # type: ignore[misc]
    g_kernel = g.with_kernel(kernel)
    for name in options:
        sharing = SHARING.get(name)
        if sharing is not None and sharing.largest is not None:
            options[name] = sharing.largest([s.resolved()[name] for s in specs], g_kernel)
    if "kernel_size" in options:
        options["kernel_size"] = kernel if kernel[0] != kernel[1] else kernel[0]
    return BlockSpec(specs[0].kind, **options)


def slice_to(source: Tensor, shape: tuple[int, ...], name: str) -> Tensor:
    """The part of ``source`` that a subnet's tensor of ``shape`` is: the first entries of every
    dimension, the centre of a convolution kernel's spatial ones (a view: gradients and
    BatchNorm updates reach the supernet)."""
    shape = tuple(shape)
    if tuple(source.shape) == shape:
        return source
    if source.dim() != len(shape) or any(t > s for s, t in zip(source.shape, shape)):
        raise UserInputError(
            "arch",
            f"{name} needs a tensor of {shape}, the supernet holds {tuple(source.shape)}",
            "draw the arch from the space the supernet was built for",
        )
    index = []
    for d, (s, t) in enumerate(zip(source.shape, shape)):
        start = (s - t) // 2 if source.dim() == 4 and d >= 2 else 0
        index.append(slice(start, start + t))
    return source[tuple(index)]
