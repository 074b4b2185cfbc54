"""Models by name, the MobileNet-style stage builder (its heads) and the presets."""

from __future__ import annotations

from .arch import ARCH_ACTS, Arch, Stage, make_divisible
from .heads import HEADS, GlobalDepthwiseConv, Head
from .names import model_from_name, replace_first_conv
from .network import Layer, StageNet, build_network
from .presets import (
    FACTORIES,
    cifar_resnet18,
    mobilenet_v1,
    mobilenet_v1_arch,
    mobilenet_v2_cifar,
    mobilenet_v2_cifar_arch,
    mobilenet_v3_small_arch,
    mobilenet_v3_small_cifar,
    tiny_convnet,
)

__all__ = [
    "ARCH_ACTS",
    "Arch",
    "FACTORIES",
    "GlobalDepthwiseConv",
    "HEADS",
    "Head",
    "Layer",
    "Stage",
    "StageNet",
    "build_network",
    "cifar_resnet18",
    "make_divisible",
    "mobilenet_v1",
    "mobilenet_v1_arch",
    "mobilenet_v2_cifar",
    "mobilenet_v2_cifar_arch",
    "mobilenet_v3_small_arch",
    "mobilenet_v3_small_cifar",
    "model_from_name",
    "replace_first_conv",
    "tiny_convnet",
]
