"""The heads of the stage builder: how the last feature map becomes one vector per image, before
the linear classifier.  :data:`HEADS` is the one table of them, read by :class:`~.arch.Arch`
(names, whether the input size is needed), by :func:`~.network.build_network` (the module) and
by the build search spaces (the names a space may list).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

__all__ = ["HEADS", "GlobalDepthwiseConv", "Head"]


class GlobalDepthwiseConv(nn.Module):
    """Global depthwise convolution (GDC): a depthwise convolution whose kernel is the whole
    final feature map (no padding, so the output is 1×1), then BatchNorm, no activation.

    S. Chen, Y. Liu, X. Gao and Z. Han, "MobileFaceNets: Efficient CNNs for Accurate Real-Time
    Face Verification on Mobile Devices" (CCBR 2018, arXiv:1804.07573), Table 1
    (``linear GDConv7x7``): unlike global average pooling, every position of the map gets its own
    learnt weight per channel.  The paper's following ``linear conv1x1`` is the network's linear
    classifier (on a 1×1 map a 1×1 convolution and a linear layer are the same operation, with
    the same weights and MACs).  The kernel is fixed when built, so the network takes only inputs
    whose final map has the size it was built for: another fails in the classifier (a larger
    map) or in this convolution (a smaller one).
    """

    def __init__(self, channels: int, kernel_size: tuple[int, int]):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size, groups=channels, bias=False)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


@dataclass(frozen=True)
class Head:
    """One head: ``build(channels, feature_size)`` returns the module that maps the
    ``(N, channels, H, W)`` feature map to ``(N, channels, 1, 1)``; ``needs_input_size``: whether
    it needs ``feature_size`` (the final map's ``(H, W)``, from :attr:`Arch.input_size`)."""

    name: str
    build: Callable[[int, tuple[int, int] | None], nn.Module]
    needs_input_size: bool
    doc: str


def _avgpool(channels: int, feature_size: tuple[int, int] | None) -> nn.Module:
    return nn.AdaptiveAvgPool2d(1)


def _gdc(channels: int, feature_size: tuple[int, int] | None) -> nn.Module:
    assert feature_size is not None  # Arch refuses a gdc head without input_size
    return GlobalDepthwiseConv(channels, feature_size)


#: The heads by name; the first is the default.
HEADS: dict[str, Head] = {
    h.name: h
    for h in (
        Head("avgpool", _avgpool, False, "global average pooling (MobileNetV1/V2/V3)"),
        Head("gdc", _gdc, True, "global depthwise convolution + BN (MobileFaceNets, Chen et al. 2018)"),
    )
}
