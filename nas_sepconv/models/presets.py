"""The presets: MobileNetV1 (ImageNet, as the paper drew it), the CIFAR MobileNetV2 and
MobileNetV3-Small archs and networks, ResNet-18 for 32×32 inputs, a tiny CNN for 16×16 digits,
and :data:`FACTORIES` (their names for ``nas_sepconv:NAME``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from ..errors import UserInputError
from .arch import Arch, Stage, is_int, is_number
from .network import build_network, conv_bn_act, init_weights

__all__ = [
    "FACTORIES",
    "cifar_resnet18",
    "mobilenet_v1",
    "mobilenet_v1_arch",
    "mobilenet_v2_cifar",
    "mobilenet_v2_cifar_arch",
    "mobilenet_v3_small_arch",
    "mobilenet_v3_small_cifar",
    "tiny_convnet",
]


def mobilenet_v1_arch(
    width_mult: float = 1.0,
    resolution_mult: float = 1.0,
    num_classes: int = 1000,
    in_channels: int = 3,
    *,
    input_size: int | None = None,
    head: str = "avgpool",
) -> Arch:
    """MobileNetV1 (A. Howard et al., "MobileNets: Efficient Convolutional Neural Networks for
    Mobile Vision Applications", arXiv:1704.04861, 2017), Table 1: a 3×3 stride-2 conv to 32
    channels, 13 depthwise-separable layers (BN + ReLU after the depthwise and after the
    pointwise conv: ``dwsep_bn_relu``, no shortcuts), global average pooling, a linear classifier.

    ``width_mult`` is the paper's α (channels rounded by :func:`make_divisible`, which for the
    paper's α of 1, 0.75, 0.5 and 0.25 gives exactly α·channels); ``resolution_mult`` its ρ, the
    input side being ``round(224·ρ)`` (or ``input_size``, which replaces ρ).  At 224×224 the
    network has 569 M MACs and 4.2 M parameters (Table 4).  ``head="gdc"`` swaps the average
    pooling for a global depthwise convolution sized for that input (see :data:`HEADS`).
    """
    if not is_number(resolution_mult) or not math.isfinite(resolution_mult) or resolution_mult <= 0:
        raise UserInputError("resolution_mult", f"expected a number > 0, got {resolution_mult!r}")
    if input_size is not None and resolution_mult != 1.0:
        raise UserInputError(
            "input_size", "given together with resolution_mult", "give one of them: input_size is 224·resolution_mult"
        )
    side = max(1, round(224 * resolution_mult)) if input_size is None else input_size
    table = [
        (64, 1, 1),
        (128, 1, 2),
        (128, 1, 1),
        (256, 1, 2),
        (256, 1, 1),
        (512, 1, 2),
        (512, 5, 1),
        (1024, 1, 2),
        (1024, 1, 1),
    ]
    stages = tuple(Stage("dwsep_bn_relu", c, n, s, shortcut=False) for c, n, s in table)  # channels, repeats, stride
    return Arch(
        stages=stages,
        stem_channels=32,
        stem_stride=2,
        num_classes=num_classes,
        in_channels=in_channels,
        width_mult=width_mult,
        act="relu",
        head=head,
        input_size=side,
    )


def mobilenet_v1(
    width_mult: float = 1.0,
    resolution_mult: float = 1.0,
    num_classes: int = 1000,
    in_channels: int = 3,
    *,
    input_size: int | None = None,
    head: str = "avgpool",
) -> nn.Module:
    """MobileNetV1 (Howard et al., 2017): the network of :func:`mobilenet_v1_arch`."""
    return build_network(
        mobilenet_v1_arch(width_mult, resolution_mult, num_classes, in_channels, input_size=input_size, head=head)
    )


def mobilenet_v2_cifar_arch(width_mult: float = 1.0, num_classes: int = 10, in_channels: int = 3) -> Arch:
    """MobileNetV2 (Sandler et al., CVPR 2018) for 32×32 inputs.

    The paper's stage table; the first two downsamplings (the stem and the 24-channel stage)
    have stride 1 instead of 2, as is usual for CIFAR, so a 32×32 input ends at 4×4.
    """
    table = [  # expand_ratio, channels, repeats, stride
        (1, 16, 1, 1),
        (6, 24, 2, 1),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]
    stages = tuple(Stage(f"ir_e{t}_k3_relu6", c, n, s) for t, c, n, s in table)
    return Arch(
        stages=stages,
        stem_channels=32,
        stem_stride=1,
        head_channels=1280,
        num_classes=num_classes,
        in_channels=in_channels,
        width_mult=width_mult,
        act="relu6",
        dropout=0.2,
    )


def mobilenet_v2_cifar(width_mult: float = 1.0, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """MobileNetV2 for 32×32 inputs (see :func:`mobilenet_v2_cifar_arch`); α in {0.35 … 1.4}."""
    return build_network(mobilenet_v2_cifar_arch(width_mult, num_classes, in_channels))


def mobilenet_v3_small_arch(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> Arch:
    """MobileNetV3-Small-like (Howard et al., ICCV 2019) for 32×32 inputs.

    The paper's table (kernel, expansion, SE, h-swish) with the expansion written as a ratio;
    stem and first stage at stride 1 for CIFAR; no hidden 1024-wide linear layer before the
    classifier.
    """
    stages = (
        Stage("ir_e1_k3_se0.25_relu", 16, 1, 1),
        Stage("ir_e4.5_k3_relu", 24, 1, 2),
        Stage("ir_e3.67_k3_relu", 24, 1, 1),
        Stage("ir_e4_k5_se0.25_hswish", 40, 1, 2),
        Stage("ir_e6_k5_se0.25_hswish", 40, 2, 1),
        Stage("ir_e3_k5_se0.25_hswish", 48, 2, 1),
        Stage("ir_e6_k5_se0.25_hswish", 96, 3, 2),
    )
    return Arch(
        stages=stages,
        stem_channels=16,
        stem_stride=1,
        head_channels=576,
        num_classes=num_classes,
        in_channels=in_channels,
        width_mult=width_mult,
        act="hswish",
        dropout=0.2,
    )


def mobilenet_v3_small_cifar(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> nn.Module:
    """The network of :func:`mobilenet_v3_small_arch`."""
    return build_network(mobilenet_v3_small_arch(num_classes, in_channels, width_mult))


class BasicBlock(nn.Module):
    """ResNet basic block (He et al., CVPR 2016): two 3×3 convs, projection shortcut if needed."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32×32 inputs: 3×3 stem (stride 1 by default, 2 for a 4× cheaper network on
    16×16 maps), no max-pool, four stages of basic blocks."""

    def __init__(
        self,
        blocks: tuple[int, ...] = (2, 2, 2, 2),
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
        stem_stride: int = 1,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=stem_stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        cin = width
        layers = []
        for i, n in enumerate(blocks):
            cout = width * 2**i
            layer = []
            for j in range(n):
                layer.append(BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
            layers.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.pool(x)))


def _check_positive(**values: Any) -> None:
    for name, value in values.items():
        if not is_int(value) or value < 1:
            raise UserInputError(name, f"expected an integer >= 1, got {value!r}")


def cifar_resnet18(num_classes: int = 10, in_channels: int = 3, width: int = 64, *, stem_stride: int = 1) -> nn.Module:
    """ResNet-18 for 32×32 inputs (He et al., 2016, "Deep Residual Learning for Image
    Recognition"): BasicBlocks [2, 2, 2, 2], widths ``width·(1, 2, 4, 8)``; ``stem_stride=2``
    runs the stages on 16×16 maps (a quarter of the MACs at the same width)."""
    _check_positive(num_classes=num_classes, in_channels=in_channels, width=width, stem_stride=stem_stride)
    return CifarResNet(
        (2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels, width=width, stem_stride=stem_stride
    )


class TinyConvNet(nn.Module):
    """A small plain CNN (for 16×16 digits): four 3×3 conv/BN/ReLU, two at stride 2, pool, linear."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *conv_bn_act(in_channels, w, 3, 1, "relu"),
            *conv_bn_act(w, 2 * w, 3, 2, "relu"),
            *conv_bn_act(2 * w, 2 * w, 3, 1, "relu"),
            *conv_bn_act(2 * w, 2 * w, 3, 2, "relu"),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(2 * w, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


def tiny_convnet(num_classes: int = 10, in_channels: int = 1, width: int = 32) -> nn.Module:
    """See :class:`TinyConvNet`."""
    _check_positive(num_classes=num_classes, in_channels=in_channels, width=width)
    return TinyConvNet(num_classes, in_channels, width)


FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "cifar_resnet18": cifar_resnet18,
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v2_cifar": mobilenet_v2_cifar,
    "mobilenet_v3_small_cifar": mobilenet_v3_small_cifar,
    "tiny_convnet": tiny_convnet,
}
