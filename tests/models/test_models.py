"""Tests of nas_sepconv.models: presets, Arch, build_network, model_from_name."""

from __future__ import annotations

import math
import sys
import textwrap

import pytest
import torch
import torch.fx
import torch.nn as nn

from nas_sepconv.blocks import KINDS, BlockSpec
from nas_sepconv.errors import UserInputError
from nas_sepconv.models import (
    FACTORIES,
    Arch,
    Layer,
    Stage,
    build_network,
    cifar_resnet18,
    make_divisible,
    mobilenet_v2_cifar,
    mobilenet_v2_cifar_arch,
    mobilenet_v3_small_arch,
    model_from_name,
    tiny_convnet,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def small_arch(spec: str = "ir_e2_k3", **changes) -> Arch:
    stages = (Stage(spec, 16, 2, 1), Stage(spec, 24, 2, 2))
    return Arch(stages=stages, stem_channels=16, **changes)


# -- presets ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_every_preset_builds_and_runs(name):
    factory = FACTORIES[name]
    size = 16 if name == "tiny_convnet" else 32
    channels = 1 if name == "tiny_convnet" else 3
    model = factory(num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7)


def test_mobilenet_v2_width_family():
    counts = []
    for alpha in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4):
        model = mobilenet_v2_cifar(width_mult=alpha)
        assert model.stem[0].out_channels == make_divisible(32 * alpha)
        assert model.classifier.out_features == 10
        counts.append(n_params(model))
    assert counts == sorted(counts)
    # the usual CIFAR MobileNetV2 (stride-1 stem) has 2.24 M parameters at 10 classes
    assert counts[3] == 2_236_682


def test_mobilenet_v3_small_arch():
    arch = mobilenet_v3_small_arch(num_classes=5)
    assert arch.act == "hswish" and arch.head_channels == 576
    assert any(BlockSpec.parse(s.spec).get("se_ratio") > 0 for s in arch.stages)
    model = build_network(arch).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    # the paper's expanded widths come out of the ratios
    mids = [layer.block.conv_dw.in_channels for stage in model.stages for layer in stage]
    assert mids == [16, 72, 88, 96, 240, 240, 120, 144, 288, 576, 576]


def test_cifar_resnet18_params_match_formula():
    # the well-known 11,173,962 of ResNet-18 for CIFAR-10
    assert n_params(cifar_resnet18()) == 11_173_962
    model = cifar_resnet18(num_classes=100, in_channels=1, width=16)
    assert model.conv1.in_channels == 1 and model.fc.out_features == 100
    assert isinstance(model.layer1[0].conv1, nn.Conv2d)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 100)


def test_cifar_resnet18_stem_stride_quarters_the_macs():
    import nas_sepconv as ns

    x = torch.zeros(1, 3, 32, 32)
    full, cheap = cifar_resnet18(width=32).eval(), cifar_resnet18(width=32, stem_stride=2).eval()
    assert n_params(full) == n_params(cheap)
    stem = 3 * 32 * 9
    # everything after the stem runs on 16×16 maps instead of 32×32 (the fc is the same)
    fc = 256 * 10
    assert ns.count_macs(cheap, x) - stem * 16 * 16 - fc == (ns.count_macs(full, x) - stem * 32 * 32 - fc) // 4
    with pytest.raises(UserInputError, match="stem_stride"):
        cifar_resnet18(stem_stride=0)


def test_tiny_convnet_params_match_formula():
    w, cin, classes = 32, 1, 10
    convs = [(cin, w), (w, 2 * w), (2 * w, 2 * w), (2 * w, 2 * w)]
    expected = sum(a * b * 9 + 2 * b for a, b in convs) + 2 * w * classes + classes
    model = tiny_convnet()
    assert n_params(model) == expected
    with torch.no_grad():
        assert model.eval()(torch.randn(3, 1, 16, 16)).shape == (3, 10)


# -- Arch ---------------------------------------------------------------------------------


def test_make_divisible():
    assert make_divisible(32 * 0.35) == 16  # never below 90 %: 11.2 -> 8 would be, so 16
    assert make_divisible(24 * 0.75) == 24  # 18 -> 16 < 16.2 -> 24
    assert make_divisible(64 * 0.5) == 32
    assert make_divisible(3) == 8


def test_arch_json_round_trip_and_summary():
    arch = small_arch("ir_e6_k5", width_mult=0.75, head_channels=64, act="hswish", dropout=0.1)
    again = Arch.from_json(arch.to_json())
    assert again == arch
    assert isinstance(again.stages[0], Stage)
    text = arch.summary()
    assert text == "w0.75 d1.0 hswish | 16:ir_e6_k5x2/s1 24:ir_e6_k5x2/s2 | head64"
    assert "\n" not in text


def test_arch_accepts_lists_and_mappings():
    arch = Arch(stages=[("dwsep", 16, 1, 1), {"spec": "keep", "out_channels": 24, "repeats": 1, "stride": 2}])
    assert arch.stages == (Stage("dwsep", 16, 1, 1), Stage("keep", 24, 1, 2))
    assert str(Stage(BlockSpec("dwsep", dw_mult=2), 16).spec) == "dwsep_m2"  # a BlockSpec; written as its string


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(stages=()), "arch.stages"),
        (
            dict(stages=(Stage("ir_e6", 16, 1, 1), Stage("ir_e6", 24, 1, 1), Stage("ir_e6", 32, 1, 0))),
            "arch.stages[2].stride",
        ),
        (dict(stages=(Stage("nonsense", 16, 1, 1),)), "arch.stages[0].spec"),
        (dict(stages=(Stage("keep", 0, 1, 1),)), "arch.stages[0].out_channels"),
        (dict(width_mult=0), "arch.width_mult"),
        (dict(depth_mult=-1.0), "arch.depth_mult"),
        (dict(act="gelu"), "arch.act"),
        (dict(dropout=1.0), "arch.dropout"),
        (dict(head_channels=-1), "arch.head_channels"),
    ],
)
def test_arch_validation_names_the_field(change, field):
    data = dict(stages=(Stage("keep", 16, 1, 1),))
    data.update(change)
    with pytest.raises(UserInputError) as info:
        Arch(**data)
    assert info.value.field == field
    assert str(info.value).startswith(field) and "\n" not in str(info.value)


def test_arch_from_json_errors():
    with pytest.raises(UserInputError, match="arch.colour"):
        Arch.from_dict({"stages": [["keep", 16, 1, 1]], "colour": "red"})
    with pytest.raises(UserInputError, match="JSON"):
        Arch.from_json("{not json")


def test_unbuildable_spec_names_the_stage():
    arch = Arch(stages=(Stage("keep", 16, 1, 1), Stage("grouped_g3", 32, 1, 1)))
    with pytest.raises(UserInputError) as info:
        build_network(arch)
    assert info.value.field == "arch.stages[1].spec"


# -- build_network --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_build_network_every_kind_runs_and_traces(kind):
    arch = small_arch(kind, head_channels=32)
    model = build_network(arch).eval()
    x = torch.randn(2, 3, 20, 20)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 10)
        gm = torch.fx.symbolic_trace(model)
        torch.testing.assert_close(gm(x), out)


def test_build_network_structure_and_names():
    arch = small_arch("ir_e2_k5", head_channels=40)
    model = build_network(arch)
    names = dict(model.named_modules())
    for name in ("stem", "stages.0.0.block", "stages.0.0.norm", "stages.1.1.block", "head", "classifier"):
        assert name in names
    first, down, last = model.stages[0][0], model.stages[1][0], model.stages[1][1]
    assert isinstance(first, Layer) and first.residual and not down.residual and last.residual
    # linear bottleneck: no activation after inverted residuals; zero-init residual norms
    assert isinstance(first.act, nn.Identity)
    assert torch.all(first.norm.weight == 0) and torch.all(down.norm.weight == 1)
    # the spec's kernel size is applied, shapes kept
    assert down.block.conv_dw.kernel_size == (5, 5) and down.block.conv_dw.stride == (2, 2)
    # other kinds get the arch activation
    relu_model = build_network(small_arch("dwsep", act="relu6"))
    assert isinstance(relu_model.stages[0][0].act, nn.ReLU6)


@pytest.mark.parametrize("size", [17, 32, 45])
def test_any_resolution(size):
    model = build_network(small_arch()).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 10)


@pytest.mark.parametrize(
    "depth_mult, expected", [(1.0, [2, 3]), (0.5, [1, 2]), (0.25, [1, 1]), (1.2, [3, 4]), (2.0, [4, 6])]
)
def test_depth_mult_rounds_up(depth_mult, expected):
    arch = Arch(stages=(Stage("dwsep", 16, 2, 1), Stage("dwsep", 24, 3, 2)), depth_mult=depth_mult)
    assert [arch.repeats(s) for s in arch.stages] == [math.ceil(n * depth_mult) or 1 for n in (2, 3)]
    model = build_network(arch)
    assert [len(stage) for stage in model.stages] == expected


def test_width_mult_scales_all_channels():
    arch = small_arch("dwsep", width_mult=0.5, head_channels=64)
    model = build_network(arch)
    assert model.stem[0].out_channels == 8
    assert model.stages[1][0].norm.num_features == make_divisible(24 * 0.5)
    assert model.head[0].out_channels == 32


def test_mobilenet_v2_arch_is_the_preset():
    arch = mobilenet_v2_cifar_arch(0.75)
    assert n_params(build_network(arch)) == n_params(mobilenet_v2_cifar(0.75))
    assert arch.stem_stride == 1 and [s.stride for s in arch.stages][:2] == [1, 1]


# -- model_from_name ------------------------------------------------------------------------


def test_torchvision_resnet18():
    model = model_from_name("torchvision:resnet18", num_classes=10)
    assert model.fc.out_features == 10


def test_torchvision_in_channels_swaps_first_conv():
    model = model_from_name("torchvision:resnet18", num_classes=10, in_channels=1).eval()
    assert model.conv1.in_channels == 1 and model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 10)


def test_torchvision_segmentation_offline():
    model = model_from_name("torchvision:lraspp_mobilenet_v3_large", num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64))["out"].shape == (1, 3, 64, 64)


def test_torchvision_weights_refused():
    with pytest.raises(UserInputError, match="never downloaded"):
        model_from_name("torchvision:resnet18", weights="DEFAULT")


def test_own_factories():
    model = model_from_name("nas_sepconv:mobilenet_v2_cifar", num_classes=100, width_mult=0.5)
    assert model.classifier.out_features == 100
    model = model_from_name("nas_sepconv:cifar_resnet18", in_channels=1, width=8)
    assert model.conv1.in_channels == 1


def test_timm_when_installed():
    pytest.importorskip("timm")
    model = model_from_name("timm:resnet18", num_classes=10, in_channels=1)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 10)


def test_timm_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(UserInputError, match="pip install timm"):
        model_from_name("timm:resnet18")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_models_pkg").mkdir()
    (tmp_path / "my_models_pkg" / "__init__.py").write_text("")
    (tmp_path / "my_models_pkg" / "nets.py").write_text(
        textwrap.dedent(
            """
            import torch.nn as nn

            def small(num_classes=10, hidden=8):
                return nn.Sequential(nn.Conv2d(3, hidden, 3, padding=1), nn.ReLU(),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(hidden, num_classes))

            def fixed_head():
                return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())

            def not_a_model():
                return 42

            NUMBER = 3

            class Net(nn.Module):
                def __init__(self, num_classes=10, in_channels=3):
                    super().__init__()
                    self.conv = nn.Conv2d(in_channels, 8, 3)
                    self.fc = nn.Linear(8, num_classes)
                def forward(self, x):
                    return self.fc(self.conv(x).mean((2, 3)))
            """
        )
    )
    (tmp_path / "broken_models_mod.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_models_pkg.nets"


def test_user_factory(user_module):
    model = model_from_name(f"{user_module}:small", num_classes=5, hidden=4)
    assert model[-1].out_features == 5 and model[0].out_channels == 4
    model = model_from_name(f"{user_module}:small", in_channels=1)  # no such argument: swapped
    assert model[0].in_channels == 1
    net = model_from_name(f"{user_module}:Net", num_classes=3, in_channels=2)
    assert net.conv.in_channels == 2 and net.fc.out_features == 3


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("torchvision:resnet81", {}, "did you mean resnet18"),
        ("torchvision:resnet81", {}, r"torchvision.models.list_models\(\)"),
        ("nas_sepconv:cifar_resnet", {}, "did you mean cifar_resnet18"),
        ("resnet18", {}, "did you mean torchvision:resnet18"),
        ("no_such_module_xyz:f", {}, "module 'no_such_module_xyz' not found"),
        ("broken_models_mod:f", {}, "importing 'broken_models_mod' failed: ModuleNotFoundError"),
        ("{mod}:missing", {}, "has no attribute 'missing'"),
        ("{mod}:NUMBER", {}, "not callable"),
        ("{mod}:not_a_model", {}, "returned int, not a torch.nn.Module"),
        ("{mod}:small", {"colour": 1}, "does not take these arguments"),
        ("{mod}:fixed_head", {"num_classes": 3}, "takes no num_classes"),
        ("nas_sepconv:", {}, "empty part"),
        ("torchvision:resnet18", {"num_classes": 0}, "num_classes"),
    ],
)
def test_model_from_name_errors(user_module, name, kwargs, match):
    with pytest.raises(UserInputError, match=match) as info:
        model_from_name(name.format(mod=user_module), **kwargs)
    assert "\n" not in str(info.value)


def test_mobilenet_v3_small_traces():  # squeeze-excite and h-swish under torch.fx
    model = build_network(mobilenet_v3_small_arch()).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), model(x))
