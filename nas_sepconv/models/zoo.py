"""Models by name, and a MobileNet-style network built from stage specs.

:func:`model_from_name` turns the ``MODEL`` strings of the API and CLI into modules:

- ``torchvision:NAME``: ``torchvision.models.get_model(NAME, weights=None)`` (and
  ``weights_backbone=None`` for builders that take one), so nothing is downloaded;
- ``timm:NAME``: ``timm.create_model(NAME, pretrained=False)``;
- ``nas_sepconv:NAME``: one of :data:`FACTORIES`;
- ``package.module:factory``: the user's own function (or class), imported and called.

:class:`Arch` is a MobileNetV2/V3-style network as plain data (stages of one block spec each,
width and depth multipliers); :func:`build_network` builds it, reading every block from the
kind registry of :mod:`nas_sepconv.specs`.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Callable

import torch
import torch.nn as nn

from ..blocks import make_act
from ..errors import UserInputError
from ..blocks import ConvGeometry
from ..blocks import BlockSpec

__all__ = [
    "Arch",
    "Stage",
    "Layer",
    "StageNet",
    "build_network",
    "make_divisible",
    "model_from_name",
    "replace_first_conv",
    "mobilenet_v2_cifar_arch",
    "mobilenet_v2_cifar",
    "mobilenet_v3_small_arch",
    "mobilenet_v3_small_cifar",
    "cifar_resnet18",
    "tiny_convnet",
    "FACTORIES",
    "ARCH_ACTS",
]

ARCH_ACTS = ("relu", "relu6", "hswish")
#: The largest network an :class:`Arch` may describe (an Arch can come from a file): layers
#: after the depth multiplier, and channels of any layer after the width multiplier.
MAX_LAYERS = 1000
MAX_CHANNELS = 16384


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, not below 90 % of it (MobileNet)."""
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return int(new)


# -- architecture as data ------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Stage:
    """``repeats`` layers of one block spec; the first has ``stride``, the others stride 1."""

    spec: str
    out_channels: int
    repeats: int = 1
    stride: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.spec, BlockSpec):  # keep the string form (JSON, summary)
            object.__setattr__(self, "spec", str(self.spec))

    def check(self, where: str = "stage") -> None:
        """Raise :class:`UserInputError` naming ``where.<field>`` if a field is invalid."""
        try:
            BlockSpec.parse(self.spec)
        except UserInputError as exc:
            raise UserInputError(f"{where}.spec", exc.problem, exc.fix) from None
        for name, low, high in (("out_channels", 1, MAX_CHANNELS), ("repeats", 1, MAX_LAYERS), ("stride", 1, 64)):
            value = getattr(self, name)
            if not _is_int(value) or not low <= value <= high:
                raise UserInputError(f"{where}.{name}", f"expected an integer in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class Arch:
    """A MobileNetV2/V3-style network: stem, stages of block specs, optional 1×1 head, classifier.

    ``width_mult`` (MobileNet α) scales every channel count (stem, stages, head) with
    :func:`make_divisible` rounding; ``depth_mult`` scales the repeats per stage (rounded up, at
    least one).  ``act`` is the activation of the stem, the head and of layers whose block does
    not end linearly.  ``head_channels == 0`` means no head convolution.
    """

    stages: tuple[Stage, ...]
    stem_channels: int = 16
    stem_stride: int = 1
    head_channels: int = 0
    num_classes: int = 10
    in_channels: int = 3
    width_mult: float = 1.0
    depth_mult: float = 1.0
    act: str = "relu"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        stages = self.stages
        if isinstance(stages, Stage) or not isinstance(stages, (list, tuple)) or not stages:
            raise UserInputError("arch.stages", f"expected a non-empty list of stages, got {stages!r}")
        converted = []
        for i, stage in enumerate(stages):
            where = f"arch.stages[{i}]"
            if isinstance(stage, dict):
                stage = _from_mapping(Stage, stage, where)
            elif isinstance(stage, (list, tuple)) and not isinstance(stage, Stage):
                if len(stage) != 4:
                    raise UserInputError(where, f"expected (spec, out_channels, repeats, stride), got {stage!r}")
                stage = Stage(*stage)
            if not isinstance(stage, Stage):
                raise UserInputError(where, f"expected a Stage, got {type(stage).__name__}")
            stage.check(where)
            converted.append(stage)
        object.__setattr__(self, "stages", tuple(converted))
        for name, low in (("stem_channels", 1), ("stem_stride", 1), ("head_channels", 0), ("num_classes", 1), ("in_channels", 1)):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise UserInputError(f"arch.{name}", f"expected an integer >= {low}, got {value!r}")
        for name in ("width_mult", "depth_mult"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value <= 0:
                raise UserInputError(f"arch.{name}", f"expected a number > 0, got {value!r}")
        self._check_size()
        if self.act not in ARCH_ACTS:
            raise UserInputError("arch.act", f"unknown activation {self.act!r}", f"use one of {list(ARCH_ACTS)}")
        if not _is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise UserInputError("arch.dropout", f"expected a number in [0, 1), got {self.dropout!r}")

    def _check_size(self) -> None:
        """At most :data:`MAX_LAYERS` layers and :data:`MAX_CHANNELS` channels per layer."""
        layers = sum(self.repeats(s) for s in self.stages)
        if layers > MAX_LAYERS:
            raise UserInputError("arch.depth_mult", f"{layers:,} layers after depth_mult {self.depth_mult:g} (at most {MAX_LAYERS})", "use fewer repeats or a smaller depth_mult")
        widest = max(self.channels(c) for c in (self.stem_channels, self.head_channels, *(s.out_channels for s in self.stages)))
        if widest > MAX_CHANNELS or self.stem_channels > MAX_CHANNELS or self.head_channels > MAX_CHANNELS or self.in_channels > MAX_CHANNELS:
            raise UserInputError("arch.width_mult", f"a layer of {widest:,} channels after width_mult {self.width_mult:g} (at most {MAX_CHANNELS})", "use fewer channels or a smaller width_mult")

    # -- derived --------------------------------------------------------------------------
    def channels(self, value: int) -> int:
        """A channel count after the width multiplier."""
        return make_divisible(value * self.width_mult, 8)

    def repeats(self, stage: Stage) -> int:
        """The number of layers of a stage after the depth multiplier."""
        return max(1, math.ceil(stage.repeats * self.depth_mult))

    def summary(self) -> str:
        """One line, e.g. ``w0.75 d1.0 | 16:ir_e6_k3x2/s1 24:ir_e4_k5x3/s2``."""
        stages = " ".join(
            f"{s.out_channels}:{BlockSpec.parse(s.spec)}x{s.repeats}/s{s.stride}" for s in self.stages
        )
        head = f" | head{self.head_channels}" if self.head_channels else ""
        return f"w{float(self.width_mult)} d{float(self.depth_mult)} | {stages}{head}"

    # -- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stages"] = [asdict(s) for s in self.stages]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Arch":
        return _from_mapping(cls, data, "arch")

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> "Arch":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserInputError("arch", f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, dict):
            raise UserInputError("arch", f"expected a JSON object, got {type(data).__name__}")
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> "Arch":
        return replace(self, **changes)


def _from_mapping(cls: type, data: dict[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserInputError(f"{where}.{unknown[0]}", "unknown field", f"{cls.__name__} takes {sorted(known)}")
    try:
        return cls(**data)
    except TypeError as exc:  # a required field is missing
        raise UserInputError(where, str(exc).split(".__init__() ")[-1], f"{cls.__name__} takes {sorted(known)}") from None


# -- the network ---------------------------------------------------------------------------


def _ends_linear(spec: BlockSpec) -> bool:
    """Whether a layer of this spec takes no activation after its norm.

    A kind that carries its own activation option (``act``: the inverted residual) ends with a
    linear projection, MobileNetV2's linear bottleneck; read from the registry, not the name."""
    return any(o.name == "act" for o in spec.info.options)


class Layer(nn.Module):
    """``act(norm(block(x)))``, plus ``x`` when ``residual`` (stride 1 and C_in == C_out)."""

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


def _conv_bn_act(cin: int, cout: int, kernel: int, stride: int, act: str) -> nn.Sequential:
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
        self.stem = _conv_bn_act(arch.in_channels, cin, 3, arch.stem_stride, arch.act)
        stages = []
        for i, stage in enumerate(arch.stages):
            spec = BlockSpec.parse(stage.spec)
            cout = arch.channels(stage.out_channels)
            layers = []
            for j in range(arch.repeats(stage)):
                stride = stage.stride if j == 0 else 1
                g = ConvGeometry(
                    dims=2, in_channels=cin, out_channels=cout, kernel_size=(3, 3), stride=(stride, stride),
                    padding=(1, 1), dilation=(1, 1), groups=1, bias=False,
                )
                try:
                    block = spec.build(g)
                except UserInputError as exc:
                    raise UserInputError(f"arch.stages[{i}].spec", exc.problem, exc.fix) from None
                act = nn.Identity() if _ends_linear(spec) else make_act(arch.act)
                layers.append(Layer(block, nn.BatchNorm2d(cout), act, residual=stride == 1 and cin == cout))
                cin = cout
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        if arch.head_channels > 0:
            head = arch.channels(arch.head_channels)
            self.head = _conv_bn_act(cin, head, 1, 1, arch.act)
            cin = head
        else:
            self.head = nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(arch.dropout) if arch.dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(cin, arch.num_classes)
        self.num_features = cin
        _init_weights(self)
        for module in self.modules():
            if isinstance(module, Layer) and module.residual and isinstance(module.norm, nn.BatchNorm2d):
                nn.init.zeros_(module.norm.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.stages(self.stem(x)))
        return self.classifier(self.dropout(self.flatten(self.pool(x))))


def _init_weights(model: nn.Module) -> None:
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
    inverted residuals; identity shortcut where stride is 1 and channels match); optional 1×1
    head conv + BN + act; global average pool, dropout, linear classifier.  Sub-modules are named
    ``stem``, ``stages.{i}.{j}.block`` / ``.norm``, ``head``, ``classifier``.  Blocks are built by
    ``BlockSpec.build`` from a 3×3 geometry (the spec's ``kernel_size`` changes it).  Works for
    any input resolution and traces with ``torch.fx``.
    """
    if not isinstance(arch, Arch):
        raise UserInputError("arch", f"expected an Arch, got {type(arch).__name__}", "build one with Arch(stages=...)")
    return StageNet(arch)


# -- presets -------------------------------------------------------------------------------


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
        stages=stages, stem_channels=32, stem_stride=1, head_channels=1280, num_classes=num_classes,
        in_channels=in_channels, width_mult=width_mult, act="relu6", dropout=0.2,
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
        stages=stages, stem_channels=16, stem_stride=1, head_channels=576, num_classes=num_classes,
        in_channels=in_channels, width_mult=width_mult, act="hswish", dropout=0.2,
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

    def __init__(self, blocks: tuple[int, ...] = (2, 2, 2, 2), *, num_classes: int = 10, in_channels: int = 3,
                 width: int = 64, stem_stride: int = 1):
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
        if not _is_int(value) or value < 1:
            raise UserInputError(name, f"expected an integer >= 1, got {value!r}")


def cifar_resnet18(num_classes: int = 10, in_channels: int = 3, width: int = 64, *, stem_stride: int = 1) -> nn.Module:
    """ResNet-18 for 32×32 inputs (He et al., 2016, "Deep Residual Learning for Image
    Recognition"): BasicBlocks [2, 2, 2, 2], widths ``width·(1, 2, 4, 8)``; ``stem_stride=2``
    runs the stages on 16×16 maps (a quarter of the MACs at the same width)."""
    _check_positive(num_classes=num_classes, in_channels=in_channels, width=width, stem_stride=stem_stride)
    return CifarResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels, width=width, stem_stride=stem_stride)


class TinyConvNet(nn.Module):
    """A small plain CNN (for 16×16 digits): four 3×3 conv/BN/ReLU, two at stride 2, pool, linear."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv_bn_act(in_channels, w, 3, 1, "relu"),
            *_conv_bn_act(w, 2 * w, 3, 2, "relu"),
            *_conv_bn_act(2 * w, 2 * w, 3, 1, "relu"),
            *_conv_bn_act(2 * w, 2 * w, 3, 2, "relu"),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(2 * w, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


def tiny_convnet(num_classes: int = 10, in_channels: int = 1, width: int = 32) -> nn.Module:
    """See :class:`TinyConvNet`."""
    _check_positive(num_classes=num_classes, in_channels=in_channels, width=width)
    return TinyConvNet(num_classes, in_channels, width)


FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "cifar_resnet18": cifar_resnet18,
    "mobilenet_v2_cifar": mobilenet_v2_cifar,
    "mobilenet_v3_small_cifar": mobilenet_v3_small_cifar,
    "tiny_convnet": tiny_convnet,
}


# -- models by name ------------------------------------------------------------------------

_PREFIX_HELP = "use torchvision:NAME, timm:NAME, nas_sepconv:NAME or package.module:factory"


def _did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def replace_first_conv(model: nn.Module, in_channels: int) -> nn.Module:
    """Swap the model's first ``nn.Conv2d`` (in module order) for one reading ``in_channels``
    channels, with the same other geometry; freshly initialised.  Changes ``model`` in place."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_channels:
                return model
            if module.groups != 1 and in_channels % module.groups:
                raise UserInputError(
                    "in_channels", f"{in_channels} is not divisible by the groups={module.groups} of the first conv {name!r}"
                )
            new = nn.Conv2d(
                in_channels, module.out_channels, module.kernel_size, stride=module.stride, padding=module.padding,
                dilation=module.dilation, groups=module.groups, bias=module.bias is not None,
                padding_mode=module.padding_mode,
            ).to(device=module.weight.device, dtype=module.weight.dtype)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, new)
            return model
    raise UserInputError("in_channels", "the model has no nn.Conv2d whose input channels could be changed", "leave in_channels unset")


def _accepts(fn: Callable, name: str, *, via_var_keyword: bool) -> bool:
    """Whether ``fn`` takes the keyword ``name`` (or any keyword, when ``via_var_keyword``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or (via_var_keyword and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()))


def _call_factory(
    fn: Callable, label: str, kwargs: dict[str, Any], num_classes: int | None, in_channels: int | None
) -> nn.Module:
    """Call a model factory with ``kwargs`` (+ num_classes / in_channels where it takes them);
    swap the first conv when it takes no ``in_channels``."""
    kwargs = dict(kwargs)
    if num_classes is not None:
        if not _accepts(fn, "num_classes", via_var_keyword=True):
            raise UserInputError("num_classes", f"{label} takes no num_classes argument", "leave num_classes unset or change the factory")
        kwargs["num_classes"] = num_classes
    swap = False
    if in_channels is not None:
        # only a declared parameter: torchvision's **kwargs would take it and then fail
        if _accepts(fn, "in_channels", via_var_keyword=False) and "in_channels" not in kwargs:
            kwargs["in_channels"] = in_channels
        else:
            swap = True
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as exc:
        raise UserInputError("model", f"{label} does not take these arguments ({_one_line(exc)})", f"check the arguments of {label}") from None
    except ValueError:  # no signature to check (a builtin): let the call decide
        pass
    model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise UserInputError("model", f"{label} returned {type(model).__name__}, not a torch.nn.Module", "make the factory return the model")
    if swap:
        replace_first_conv(model, in_channels)
    return model


def _torchvision_model(name: str, kwargs: dict[str, Any], num_classes: int | None, in_channels: int | None) -> nn.Module:
    try:
        import torchvision.models as tvm
    except ImportError:
        raise UserInputError("model", "torchvision is not installed", "pip install torchvision (or pip install 'nas-sepconv[vision]')") from None
    names = tvm.list_models()
    if name not in names:
        raise UserInputError("model", f"torchvision has no model {name!r}{_did_you_mean(name, names)}", "see torchvision.models.list_models()")
    builder = tvm.get_model_builder(name)
    params = inspect.signature(builder).parameters
    kwargs = {"weights": None, **kwargs}
    if "weights_backbone" in params:
        kwargs.setdefault("weights_backbone", None)
    if kwargs.get("weights") is not None or kwargs.get("weights_backbone") is not None:
        raise UserInputError("model", "pretrained weights are never downloaded", "leave weights and weights_backbone unset, and load a state_dict yourself")
    return _call_factory(builder, f"torchvision:{name}", kwargs, num_classes, in_channels)


def _timm_model(name: str, kwargs: dict[str, Any], num_classes: int | None, in_channels: int | None) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise UserInputError("model", f"timm:{name} needs timm, which is not installed", "pip install timm (or pip install 'nas-sepconv[timm]')") from None
    names = timm.list_models()
    if name not in names:
        raise UserInputError("model", f"timm has no model {name!r}{_did_you_mean(name, names)}", "see timm.list_models()")
    if kwargs.get("pretrained"):
        raise UserInputError("model", "pretrained weights are never downloaded", "leave pretrained unset")
    kwargs = {**kwargs, "pretrained": False}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_channels is not None:
        kwargs["in_chans"] = in_channels
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as exc:
        raise UserInputError("model", f"timm:{name} does not take these arguments ({_one_line(exc)})", "check the model's arguments") from None


def _own_model(name: str, kwargs: dict[str, Any], num_classes: int | None, in_channels: int | None) -> nn.Module:
    if name not in FACTORIES:
        raise UserInputError("model", f"nas_sepconv has no model {name!r}{_did_you_mean(name, list(FACTORIES))}", f"use one of {sorted(FACTORIES)}")
    return _call_factory(FACTORIES[name], f"nas_sepconv:{name}", kwargs, num_classes, in_channels)


def _user_model(module_name: str, attr: str, kwargs: dict[str, Any], num_classes: int | None, in_channels: int | None) -> nn.Module:
    label = f"{module_name}:{attr}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise UserInputError("model", f"module {module_name!r} not found", "check the spelling and that its folder is on PYTHONPATH") from None
        raise UserInputError("model", f"importing {module_name!r} failed: {_one_line(exc)}", "install what the module imports") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
        raise UserInputError("model", f"importing {module_name!r} failed: {_one_line(exc)}", "fix the module") from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            available = [n for n in dir(module) if not n.startswith("_")]
            raise UserInputError("model", f"module {module_name!r} has no attribute {attr!r}{_did_you_mean(part, available)}", "name a factory function or class defined in that module")
        target = getattr(target, part)
    if not callable(target):
        raise UserInputError("model", f"{label} is a {type(target).__name__}, not callable", "name a function or class that returns an nn.Module")
    return _call_factory(target, label, kwargs, num_classes, in_channels)


_SOURCES: dict[str, Callable[[str, dict, int | None, int | None], nn.Module]] = {
    "torchvision": _torchvision_model,
    "timm": _timm_model,
    "nas_sepconv": _own_model,
}


def model_from_name(name: str, *, num_classes: int | None = None, in_channels: int | None = None, **kwargs: Any) -> nn.Module:
    """A freshly initialised model from a ``source:name`` string; nothing is downloaded.

    ``torchvision:resnet18``, ``timm:efficientnet_b0``, ``nas_sepconv:cifar_resnet18`` or
    ``package.module:factory`` (imported and called with ``kwargs``).  ``num_classes`` is passed
    to the builder; ``in_channels`` too when the builder takes it, otherwise the first
    ``nn.Conv2d`` is replaced by one with that many input channels.
    """
    if not isinstance(name, str) or ":" not in name:
        hint = ""
        if isinstance(name, str) and name in FACTORIES:
            hint = f" (did you mean nas_sepconv:{name}?)"
        elif isinstance(name, str):
            try:
                import torchvision.models as tvm

                if name in tvm.list_models():
                    hint = f" (did you mean torchvision:{name}?)"
            except ImportError:
                pass
        raise UserInputError("model", f"{name!r} names no source{hint}", _PREFIX_HELP)
    for value, label in ((num_classes, "num_classes"), (in_channels, "in_channels")):
        if value is not None and (not _is_int(value) or value < 1):
            raise UserInputError(label, f"expected an integer >= 1, got {value!r}")
    source, _, rest = name.strip().partition(":")
    source, rest = source.strip(), rest.strip()
    if not source or not rest:
        raise UserInputError("model", f"{name!r} has an empty part", _PREFIX_HELP)
    if source in _SOURCES:
        return _SOURCES[source](rest, kwargs, num_classes, in_channels)
    if not all(part.isidentifier() for part in source.split(".")) or not all(p.isidentifier() for p in rest.split(".")):
        raise UserInputError("model", f"{name!r} is not package.module:factory", _PREFIX_HELP)
    return _user_model(source, rest, kwargs, num_classes, in_channels)
