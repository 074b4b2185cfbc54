"""The stage builder's options: shortcuts per stage, the head table (global average pooling or
MobileFaceNets' global depthwise convolution) and the activation in the summary."""

from __future__ import annotations

import json

import pytest
import torch
import torch.fx
import torch.nn as nn

import nas_sepconv as ns
from nas_sepconv.errors import UserInputError
from nas_sepconv.models import ARCH_ACTS, HEADS, Arch, GlobalDepthwiseConv, Stage, build_network


def arch(**changes) -> Arch:
    data = dict(stages=(Stage("dwsep", 16, 2, 1), Stage("dwsep", 24, 2, 2)), stem_channels=16)
    return Arch(**{**data, **changes})


# -- shortcuts --------------------------------------------------------------------------------


def test_shortcut_defaults_to_today_and_can_be_switched_off():
    assert Stage("dwsep", 16).shortcut is True
    residual = [layer.residual for stage in build_network(arch()).stages for layer in stage]
    assert residual == [True, True, False, True]
    plain = arch(stages=(Stage("dwsep", 16, 2, 1, False), Stage("dwsep", 24, 2, 2)))
    residual = [layer.residual for stage in build_network(plain).stages for layer in stage]
    assert residual == [False, False, False, True]
    # a layer without shortcut keeps its BatchNorm at one (only residual branches start at zero)
    assert torch.all(build_network(plain).stages[0][1].norm.weight == 1)


def test_shortcut_round_trips_and_old_json_keeps_shortcuts():
    a = arch(stages=[("dwsep", 16, 1, 1, False), {"spec": "dwsep", "out_channels": 24, "shortcut": True}])
    assert [s.shortcut for s in a.stages] == [False, True]
    assert Arch.from_json(a.to_json()) == a
    old = json.loads(a.to_json())
    for stage in old["stages"]:
        del stage["shortcut"]
    del old["head"], old["input_size"]
    assert all(s.shortcut for s in Arch.from_dict(old).stages)


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_bad_shortcut_names_the_field(value):
    with pytest.raises(UserInputError) as info:
        arch(stages=(Stage("dwsep", 16), Stage("dwsep", 24, 1, 1, value)))
    assert info.value.field == "arch.stages[1].shortcut"


# -- heads ------------------------------------------------------------------------------------


def test_heads_table():
    assert list(HEADS) == ["avgpool", "gdc"]
    assert not HEADS["avgpool"].needs_input_size and HEADS["gdc"].needs_input_size
    assert isinstance(build_network(arch()).pool, nn.AdaptiveAvgPool2d)


@pytest.mark.parametrize("side, feature", [(32, 16), (33, 17), (7, 4), ((20, 31), (10, 16))])
def test_gdc_kernel_is_the_final_feature_map(side, feature):
    a = arch(head="gdc", input_size=side, head_channels=32)
    feature = feature if isinstance(feature, tuple) else (feature, feature)
    assert a.feature_size() == feature
    model = build_network(a).eval()
    assert isinstance(model.pool, GlobalDepthwiseConv)
    conv = model.pool.conv
    assert conv.kernel_size == feature and conv.groups == conv.in_channels == conv.out_channels == 32
    assert conv.padding == (0, 0) and conv.bias is None and isinstance(model.pool.norm, nn.BatchNorm2d)
    h, w = (side, side) if isinstance(side, int) else side
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 10)
        torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), out)


def test_gdc_macs_and_params():
    avg = build_network(arch(input_size=32)).eval()
    gdc = build_network(arch(head="gdc", input_size=32)).eval()
    x = torch.zeros(1, 3, 32, 32)
    # one weight per channel and position of the 16×16×24 map, applied once; BN adds 2 per channel
    assert ns.count_macs(gdc, x) - ns.count_macs(avg, x) == 24 * 16 * 16
    assert ns.count_params(gdc) - ns.count_params(avg) == 24 * 16 * 16 + 2 * 24


def test_gdc_is_not_average_pooling():
    gdc = build_network(arch(head="gdc", input_size=16)).eval()
    with torch.no_grad():
        features = torch.randn(1, 24, 8, 8)
        assert not torch.allclose(gdc.pool(features).flatten(), features.mean((2, 3)).flatten(), atol=1e-3)


def test_gdc_refuses_another_input_size():
    model = build_network(arch(head="gdc", input_size=32)).eval()
    with torch.no_grad(), pytest.raises(RuntimeError):
        model(torch.randn(1, 3, 64, 64))


def test_head_round_trips():
    a = arch(head="gdc", input_size=(20, 31))
    again = Arch.from_json(a.to_json())
    assert again == a and again.input_size == (20, 31)


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(head="maxpool"), "arch.head"),
        (dict(head=None), "arch.head"),
        (dict(head="gdc"), "arch.input_size"),
        (dict(input_size=0), "arch.input_size"),
        (dict(input_size=10**6), "arch.input_size"),
        (dict(input_size=True), "arch.input_size"),
        (dict(input_size=(8, 8, 8)), "arch.input_size"),
        (dict(input_size="32"), "arch.input_size"),
    ],
)
def test_bad_head_names_the_field(changes, field):
    with pytest.raises(UserInputError) as info:
        arch(**changes)
    assert info.value.field == field
    assert "\n" not in str(info.value)


# -- summary ----------------------------------------------------------------------------------


@pytest.mark.parametrize("act", ARCH_ACTS)
def test_summary_names_the_activation(act):
    assert arch(act=act).summary().split(" | ")[0].split() == ["w1.0", "d1.0", act]


def test_summary_marks_plain_stages_and_the_head():
    a = arch(
        stages=(Stage("dwsep", 16, 2, 1, False), Stage("dwsep", 24, 2, 2)), head="gdc", input_size=32, head_channels=64
    )
    assert a.summary() == "w1.0 d1.0 relu | 16:dwsepx2/s1/noskip 24:dwsepx2/s2 | head64 gdc"
    assert arch().summary() == "w1.0 d1.0 relu | 16:dwsepx2/s1 24:dwsepx2/s2"


def test_a_huge_gdc_kernel_from_a_file_is_refused_before_it_is_allocated():
    from nas_sepconv.io import build_from_recipe
    from nas_sepconv.recipe import Recipe

    huge = Arch(stages=(Stage("keep", 4096, 1, 1),), stem_channels=8, head="gdc", input_size=8192)
    with pytest.raises(UserInputError, match="would have"):
        build_from_recipe(Recipe(kind="built", arch=huge.to_json()))
