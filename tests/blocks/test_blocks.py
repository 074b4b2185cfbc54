"""Every block kind reproduces the replaced conv's output shape, for random conv configurations."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nas_sepconv.blocks import KINDS, BlockSpec, ConvGeometry
from nas_sepconv.errors import UserInputError

SPECS = [
    "keep",
    "dwsep",
    "dwsep_m2_bn_relu",
    "spatial_r0.5",
    "spatial_r3",
    "dw_spatial_m2",
    "ir_e4_se0.25_hswish",
    "ir_e1",
    "grouped_g2",
    "dwsep_k5",
    "ir_e6_k5_relu",
]


@st.composite
def conv_configs(draw):
    groups = draw(st.sampled_from([1, 1, 2]))
    cin = groups * draw(st.integers(1, 4)) * 2
    cout = groups * draw(st.integers(1, 4)) * 2
    kh, kw = draw(st.sampled_from([1, 3, 5])), draw(st.sampled_from([1, 3, 5]))
    stride = draw(st.sampled_from([1, 2, (2, 1)]))
    dilation = draw(st.sampled_from([1, 2]))
    pad_kind = draw(st.sampled_from(["int", "tuple", "same", "valid"]))
    padding = {
        "int": draw(st.integers(0, 2)),
        "tuple": (draw(st.integers(0, 2)), draw(st.integers(0, 2))),
        "same": "same",
        "valid": "valid",
    }[pad_kind]
    if padding == "same":
        stride = 1
    mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "circular"]))
    if mode != "zeros" and not isinstance(padding, str):
        padding = min(padding, 1) if isinstance(padding, int) else tuple(min(p, 1) for p in padding)
    bias = draw(st.booleans())
    h, w = draw(st.integers(9, 16)), draw(st.integers(9, 16))
    return nn.Conv2d(
        cin,
        cout,
        (kh, kw),
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=bias,
        padding_mode=mode,
    ), (h, w)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_configs(), st.sampled_from(SPECS))
def test_every_kind_keeps_the_output_shape(config, spec_text):
    conv, (h, w) = config
    g = ConvGeometry.from_module(conv)
    spec = BlockSpec.parse(spec_text)
    if spec.unsupported(g):
        with pytest.raises(UserInputError):
            spec.build(g)
        return
    x = torch.randn(2, g.in_channels, h, w)
    block = spec.build(g).eval()
    assert block(x).shape == conv(x).shape


@pytest.mark.parametrize("dims", [1, 3])
@pytest.mark.parametrize("spec_text", ["dwsep_m2", "ir_e4", "grouped_g2", "keep"])
def test_1d_and_3d_convs(dims, spec_text):
    conv = {1: nn.Conv1d, 3: nn.Conv3d}[dims](4, 8, 3, stride=2, padding=1)
    x = torch.randn(2, 4, *([7] * dims))
    block = BlockSpec.parse(spec_text).build(ConvGeometry.from_module(conv))
    assert block(x).shape == conv(x).shape


def test_transposed_dwsep_keeps_shape():
    conv = nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1, output_padding=0)
    g = ConvGeometry.from_module(conv)
    x = torch.randn(1, 8, 7, 9)
    assert BlockSpec("dwsep", dw_mult=2).build(g)(x).shape == conv(x).shape
    assert BlockSpec("spatial").unsupported(g)


def test_registry_has_the_six_kinds():
    assert set(KINDS) == {"keep", "dwsep", "spatial", "dw_spatial", "inverted_residual", "grouped"}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("dwsep", BlockSpec("dwsep")),
        ("dwsep_m2", BlockSpec("dwsep", dw_mult=2)),
        ("spatial_r0.5", BlockSpec("spatial", rank=0.5)),
        ("spatial_r16", BlockSpec("spatial", rank=16)),
        (
            "ir_e6_k5_se0.25_hswish",
            BlockSpec("inverted_residual", expand_ratio=6, kernel_size=5, se_ratio=0.25, act="hswish"),
        ),
        ("grouped_g4", BlockSpec("grouped", groups=4)),
        ("dw_spatial_m3", BlockSpec("dw_spatial", dw_mult=3)),
        ("dwsep_m1_bn_relu", BlockSpec("dwsep", dw_mult=1, mid_norm=True, mid_act="relu")),
        ("keep_k3x5", BlockSpec("keep", kernel_size=(3, 5))),
    ],
)
def test_string_form_round_trips(text, expected):
    assert BlockSpec.parse(text) == expected
    assert str(expected) == text
    assert BlockSpec.parse(str(expected)) == expected
    assert hash(BlockSpec.parse(text)) == hash(expected)


@pytest.mark.parametrize(
    "bad, field",
    [
        ("conv9", "kind"),
        ("dwsep_x3", "dwsep"),
        ("dwsep_m0", "dwsep.dw_mult"),
        ("spatial_r1.5", "spatial.rank"),
        ("ir_k4", "inverted_residual.kernel_size"),
        ("ir_e6_gelu", "inverted_residual"),
        ("", "spec"),
    ],
)
def test_bad_specs_name_the_field(bad, field):
    with pytest.raises(UserInputError) as info:
        BlockSpec.parse(bad)
    assert str(info.value).startswith(field.split(".")[0]) or field in str(info.value)


def test_unknown_option_is_named():
    with pytest.raises(UserInputError, match="dwsep.rank"):
        BlockSpec("dwsep", rank=2)


def test_kernel_change_needs_even_difference():
    g = ConvGeometry.from_module(nn.Conv2d(4, 4, 3, padding=1))
    assert (
        "even" in BlockSpec("dwsep", kernel_size=5).unsupported(g)
        if False
        else BlockSpec("dwsep", kernel_size=5).unsupported(g) is None
    )
    assert BlockSpec("keep", kernel_size=(3, 5)).build(g)(torch.randn(1, 4, 8, 8)).shape == (1, 4, 8, 8)


def test_specs_copy_and_pickle():
    import copy
    import pickle

    spec = BlockSpec.parse("ir_e6_k5_se0.25_hswish")
    assert copy.deepcopy(spec) == spec and pickle.loads(pickle.dumps(spec)) == spec
