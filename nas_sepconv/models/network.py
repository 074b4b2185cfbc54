"""The network of an :class:`~.arch.Arch`: :func:`build_network`, :class:`StageNet` and its
:class:`Layer`, with the conv-BN-act and weight-initialisation helpers the presets share.
Every block is read from the kind registry (:data:`nas_sepconv.blocks.KINDS`) through
``BlockSpec.build``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..blocks import BlockSpec, ConvGeometry, make_act
from ..errors import UserInputError
from .arch import Arch
from .heads import HEADS

__all__ = ["Layer", "StageNet", "build_network", "conv_bn_act", "init_weights"]


def _ends_linear(spec: BlockSpec) -> bool:
    """Whether a layer of this spec takes no activation after its norm.

    A kind that carries its own activation option (``act``: the inverted residual) ends with a
    linear projection, MobileNetV2's linear bottleneck; read from the registry, not the name."""
    return any(o.name == "act" for o in spec.info.options)


class Layer(nn.Module):
    """``act(norm(block(x)))``, plus ``x`` when ``residual`` (a stage with shortcuts, stride 1, C_in == C_out)."""

    def __init__(self, block: nn.Module, norm: nn.Module, act: nn.Module, residual: bool):
        super().__init__()
        self.block = block
        self.norm = norm
        self.act = act
        self.residual = bool(residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm(self.block(x)))
        if self.residual:  # a constant: fx traces one branch
            out = out + x
        return out


def conv_bn_act(cin: int, cout: int, kernel: int, stride: int, act: str) -> nn.Sequential:
    """Convolution (same padding, no bias), BatchNorm, then the activation ``act``."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        make_act(act),
    )


class StageNet(nn.Module):
    """The network of an :class:`Arch` (see :func:`build_network`); ``self.arch`` keeps it."""

    def __init__(self, arch: Arch):
        super().__init__()
        self.arch = arch
        cin = arch.channels(arch.stem_channels)
        self.stem = conv_bn_act(arch.in_channels, cin, 3, arch.stem_stride, arch.act)
        stages = []
        for i, stage in enumerate(arch.stages):
            spec = stage.spec
            cout = arch.channels(stage.out_channels)
            layers = []
            for j in range(arch.repeats(stage)):
                stride = stage.stride if j == 0 else 1
                g = ConvGeometry.conv3x3(cin, cout, stride)
                try:
                    block = spec.build(g)
                except UserInputError as exc:
                    raise UserInputError(f"arch.stages[{i}].spec", exc.problem, exc.fix) from None
                act = nn.Identity() if _ends_linear(spec) else make_act(arch.act)
                residual = stage.shortcut and stride == 1 and cin == cout
                layers.append(Layer(block, nn.BatchNorm2d(cout), act, residual=residual))
                cin = cout
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        if arch.head_channels > 0:
            head = arch.channels(arch.head_channels)
            self.head = conv_bn_act(cin, head, 1, 1, arch.act)
            cin = head
        else:
            self.head = nn.Identity()
        self.pool = HEADS[arch.head].build(cin, arch.feature_size())
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(arch.dropout) if arch.dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(cin, arch.num_classes)
        self.num_features = cin
        init_weights(self)
        for module in self.modules():
            if isinstance(module, Layer) and module.residual and isinstance(module.norm, nn.BatchNorm2d):
                nn.init.zeros_(module.norm.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.stages(self.stem(x)))
        return self.classifier(self.dropout(self.flatten(self.pool(x))))


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan-out) convolutions, unit BatchNorm, small-normal linear layers."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def build_network(arch: Arch) -> nn.Module:
    """Build the network of ``arch``.

    Stem 3×3 conv + BN + act; per stage ``ceil(repeats * depth_mult)`` layers of
    ``Layer(block, BatchNorm2d, act)`` (no activation after blocks that end linearly, e.g.
    inverted residuals; identity shortcut where stride is 1 and channels match, in stages whose
    ``shortcut`` is on); optional 1×1 head conv + BN + act; the head of ``arch.head`` (global
    average pool, or a global depthwise conv sized from ``arch.input_size``) as ``pool``,
    dropout, linear classifier.  Sub-modules are named ``stem``, ``stages.{i}.{j}.block`` /
    ``.norm``, ``head``, ``pool``, ``classifier``.  Blocks are built by ``BlockSpec.build`` from a
    3×3 geometry (the spec's ``kernel_size`` changes it).  Works for any input resolution (the
    ``gdc`` head: only at ``arch.input_size``) and traces with ``torch.fx``.
    """
    if not isinstance(arch, Arch):
        raise UserInputError("arch", f"expected an Arch, got {type(arch).__name__}", "build one with Arch(stages=...)")
    return StageNet(arch)
