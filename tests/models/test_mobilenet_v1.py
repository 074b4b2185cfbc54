"""MobileNetV1 (Howard et al., arXiv:1704.04861) as the paper drew it: its Table 1 structure and
the MACs and parameters of its Tables 4, 6 and 7, counted by ns.count_macs / ns.count_params."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import nas_sepconv as ns
from nas_sepconv.blocks import DepthwiseSeparable
from nas_sepconv.errors import UserInputError
from nas_sepconv.io import load_model, save_model
from nas_sepconv.models import FACTORIES, Layer, Stage, build_network, mobilenet_v1, mobilenet_v1_arch, model_from_name
from nas_sepconv.recipe import Recipe


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# (alpha, input side, the paper's million MACs, the paper's million parameters, our exact MACs)
PAPER = [
    (1.0, 224, 569, 4.2, 568_740_352),  # Table 4 (and the first rows of Tables 6 and 7)
    (0.75, 224, 325, 2.6, 325_400_448),  # Table 6
    (0.5, 224, 149, 1.3, 149_497_088),
    (0.25, 224, 41, 0.47, 41_030_272),
    (1.0, 192, 418, 4.2, 418_121_728),  # Table 7
    (1.0, 160, 290, 4.2, 290_675_200),
    (1.0, 128, 186, 4.2, 186_400_768),
]


@pytest.mark.parametrize("alpha, side, paper_macs, paper_params, exact", PAPER)
def test_macs_and_params_match_the_paper(alpha, side, paper_macs, paper_params, exact):
    model = mobilenet_v1(width_mult=alpha, input_size=side).eval()
    macs = ns.count_macs(model, torch.zeros(1, 3, side, side))
    # conv and linear weights, bias excluded (the DESIGN contract), the 1000-way FC included
    assert macs == exact
    assert abs(macs / 1e6 - paper_macs) <= 0.005 * paper_macs
    # all parameters (BatchNorm's included), to the paper's precision
    digits = 2 if paper_params < 1 else 1
    assert round(ns.count_params(model) / 1e6, digits) == paper_params


def test_resolution_mult_is_the_papers_rho():
    for rho, side in ((1.0, 224), (6 / 7, 192), (5 / 7, 160), (4 / 7, 128)):
        assert mobilenet_v1_arch(resolution_mult=rho) == mobilenet_v1_arch(input_size=side)
        assert mobilenet_v1_arch(resolution_mult=rho).input_size == side


def test_the_papers_table_1():
    arch = mobilenet_v1_arch()
    assert arch.act == "relu" and arch.head == "avgpool" and arch.head_channels == 0 and arch.num_classes == 1000
    assert arch.feature_size() == (7, 7)
    model = mobilenet_v1()
    assert model.stem[0].stride == (2, 2) and model.stem[0].out_channels == 32
    layers = [layer for stage in model.stages for layer in stage]
    assert len(layers) == 13
    widths = [layer.norm.num_features for layer in layers]
    assert widths == [64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]
    strides = [layer.block.conv_dw.stride[0] for layer in layers]
    assert strides == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    for layer in layers:
        # BN + ReLU after the depthwise and after the pointwise conv; no shortcut anywhere
        assert isinstance(layer, Layer) and not layer.residual
        assert isinstance(layer.block, DepthwiseSeparable)
        assert isinstance(layer.block.norm_dw, nn.BatchNorm2d) and isinstance(layer.block.act_dw, nn.ReLU)
        assert isinstance(layer.act, nn.ReLU)
    assert isinstance(model.pool, nn.AdaptiveAvgPool2d)
    assert model.classifier.in_features == 1024 and model.classifier.out_features == 1000


def test_no_shortcut_changes_the_output():
    # the same weights with shortcuts (where shapes allow: one 128, one 256, five 512, one 1024)
    # compute something else: MobileNetV1's layers are plain
    plain = mobilenet_v1(width_mult=0.25, num_classes=10).eval()
    arch = plain.arch.replace(
        stages=tuple(Stage(s.spec, s.out_channels, s.repeats, s.stride, True) for s in plain.arch.stages)
    )
    skip = build_network(arch).eval()
    assert sum(layer.residual for stage in skip.stages for layer in stage) == 8
    skip.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(plain(x), skip(x))


def test_by_name_and_loaded_without_allow_import(tmp_path):
    assert "mobilenet_v1" in FACTORIES
    model = model_from_name(
        "nas_sepconv:mobilenet_v1", num_classes=10, in_channels=1, width_mult=0.25, input_size=64, head="gdc"
    )
    assert model.stem[0].in_channels == 1 and model.classifier.out_features == 10
    assert model.pool.conv.kernel_size == (2, 2)
    kwargs = {"width_mult": 0.25, "input_size": 64, "head": "gdc", "num_classes": 10, "in_channels": 1}
    recipe = Recipe(kind="converted", model="nas_sepconv:mobilenet_v1", model_kwargs=kwargs, input_size=(1, 64, 64))
    model = model_from_name("nas_sepconv:mobilenet_v1", **kwargs).eval()
    path = save_model(tmp_path / "m.safetensors", model, recipe)
    again = load_model(path)  # a registry model: no allow_import
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(resolution_mult=0), "resolution_mult"),
        (dict(resolution_mult=float("nan")), "resolution_mult"),
        (dict(resolution_mult=0.5, input_size=112), "input_size"),
        (dict(input_size=0), "arch.input_size"),
        (dict(head="maxpool"), "arch.head"),
        (dict(width_mult=-1), "arch.width_mult"),
    ],
)
def test_bad_options_name_the_field(kwargs, field):
    with pytest.raises(UserInputError) as info:
        mobilenet_v1_arch(**kwargs)
    assert info.value.field == field
