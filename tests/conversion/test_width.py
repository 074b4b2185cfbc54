"""Tests of nas_sepconv.width: MobileNet's width multiplier through DepGraph pruning."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

pytest.importorskip("torch_pruning")

from nas_sepconv.conversion import apply_width_mult, find_classifier
from nas_sepconv.errors import UserInputError
from nas_sepconv.models import Arch, Stage, build_network, cifar_resnet18


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


class ConcatNet(nn.Module):
    """Two branches concatenated (Inception/DenseNet-like), then a conv, pool and a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.branch_a = nn.Sequential(nn.Conv2d(32, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.branch_b = nn.Sequential(nn.Conv2d(32, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.mix = nn.Sequential(
            nn.Conv2d(48 + 32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU()
        )
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.branch_a(x), self.branch_b(x), x], dim=1)  # dense-style: keeps its input
        return self.fc(self.mix(x).mean((2, 3)))


@pytest.fixture(scope="module")
def x32():
    torch.manual_seed(0)
    return torch.randn(2, 3, 32, 32)


def test_resnet18_half_width(x32):
    model = cifar_resnet18(width=16).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = apply_width_mult(model, 0.5, example_inputs=x32)
    # every conv halves (residual adds couple the channels; DepGraph keeps them consistent)
    assert conv_widths(pruned) == [c // 2 for c in conv_widths(model)]
    assert pruned.fc.in_features == model.fc.in_features // 2 and pruned.fc.out_features == 10
    ratio = n_params(pruned) / n_params(model)
    assert 0.2 < ratio < 0.32  # ~ width_mult ** 2
    # the input model is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    pruned.train()
    out = pruned(x32)
    assert out.shape == (2, 10)
    out.sum().backward()


def test_concat_model(x32):
    model = ConcatNet().eval()
    pruned = apply_width_mult(model, 0.5, example_inputs=x32)
    a, b, stem = pruned.branch_a[0].out_channels, pruned.branch_b[0].out_channels, pruned.stem[0].out_channels
    assert (stem, a, b) == (16, 16, 8)
    assert pruned.mix[0].in_channels == a + b + stem  # the concatenation is followed
    assert pruned.mix[0].out_channels == 32
    with torch.no_grad():
        assert pruned.eval()(x32).shape == (2, 10)


def test_inverted_residual_network(x32):
    # depthwise convolutions and identity shortcuts of a built MobileNet-style network
    arch = Arch(
        stages=(Stage("ir_e4_k3", 32, 2, 1), Stage("ir_e4_k3_se0.25", 48, 2, 2)), stem_channels=32, head_channels=64
    )
    model = build_network(arch).eval()
    pruned = apply_width_mult(model, 0.5, example_inputs=x32)
    assert pruned.stem[0].out_channels == 16
    assert pruned.head[0].out_channels == 32
    for layer in (m for stage in pruned.stages for m in stage):
        dw = layer.block.conv_dw
        assert dw.groups == dw.in_channels == dw.out_channels
    with torch.no_grad():
        assert pruned.eval()(x32).shape == (2, 10)


class ConvHead(nn.Module):
    """A fully convolutional classifier (SqueezeNet-style): the output layer is a 1x1 conv."""

    def __init__(self, num_classes: int = 7):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU()
        )
        self.classifier = nn.Conv2d(64, num_classes, 1)

    def forward(self, x):
        return self.classifier(self.features(x)).mean((2, 3))


def test_conv_classifier_kept(x32):
    model = ConvHead(7).eval()
    assert find_classifier(model, 7) is model.classifier
    pruned = apply_width_mult(model, 0.5, example_inputs=x32)
    assert pruned.classifier.out_channels == 7 and pruned.classifier.in_channels == 32
    assert conv_widths(pruned)[:2] == [16, 32]
    with torch.no_grad():
        assert pruned.eval()(x32).shape == (2, 7)


def test_round_to_and_small_layers(x32):
    model = cifar_resnet18(width=8).eval()
    # 8 * 0.35 rounds up to one multiple of 8: narrow layers are never pruned away
    pruned = apply_width_mult(model, 0.35, example_inputs=x32)
    assert min(conv_widths(pruned)) == 8
    assert all(c % 8 == 0 for c in conv_widths(pruned))
    exact = apply_width_mult(model, 0.5, example_inputs=x32, round_to=1)
    assert conv_widths(exact) == [c // 2 for c in conv_widths(model)]


def test_ignored_layers(x32):
    model = ConcatNet().eval()
    pruned = apply_width_mult(model, 0.5, example_inputs=x32, ignored_layers=[model.branch_a[0]])
    assert pruned.branch_a[0].out_channels == 32
    assert pruned.branch_b[0].out_channels == 8


def test_width_one_is_a_copy(x32):
    model = ConcatNet()
    same = apply_width_mult(model, 1.0, example_inputs=x32)
    assert same is not model and same.stem[0] is not model.stem[0]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values()))


def test_nothing_printed(x32, capsys):
    apply_width_mult(ConcatNet(), 0.75, example_inputs=x32)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


@pytest.mark.parametrize(
    "kwargs, field, match",
    [
        (dict(width_mult=1.4), "width_mult", "cannot be reached by pruning"),
        (dict(width_mult=1.4), "width_mult", r"mobilenet_v2_cifar\(width_mult=1.4\)"),
        (dict(width_mult=0.0), "width_mult", "> 0"),
        (dict(width_mult=-0.5), "width_mult", "> 0"),
        (dict(width_mult="half"), "width_mult", "expected a number"),
        (dict(width_mult=0.5, round_to=0), "round_to", "integer"),
        (dict(width_mult=0.5, ignored_layers=[nn.Conv2d(1, 1, 1)]), "ignored_layers", "not a sub-module"),
        (dict(width_mult=0.5, example_inputs=[1, 2]), "example_inputs", "tensor"),
    ],
)
def test_errors(x32, kwargs, field, match):
    kwargs = {"example_inputs": x32, **kwargs}
    width = kwargs.pop("width_mult")
    with pytest.raises(UserInputError, match=match) as info:
        apply_width_mult(ConcatNet(), width, **kwargs)
    assert info.value.field == field and "\n" not in str(info.value)
