"""The rewriter: shapes kept, input untouched, training, jit.trace, torch.export, fallback."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import nas_sepconv as ns
from nas_sepconv.models import cifar_resnet18, tiny_convnet

torchvision = pytest.importorskip("torchvision")

# A representative subset in the default run; every classification model under -m slow.
FAST_MODELS = [
    "resnet18",
    "mobilenet_v3_small",
    "squeezenet1_1",
    "regnet_x_400mf",
    "googlenet",
    "efficientnet_b0",
    "convnext_tiny",
    "vgg11",
]


def _classification_models():
    return torchvision.models.list_models(module=torchvision.models)


def _check_model(name, size=64):
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    if name.startswith(("vit", "swin", "maxvit")) or name in ("inception_v3",):
        size = {"inception_v3": 299}.get(name, 224)
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    x = torch.randn(1, 3, size, size)
    plan = ns.make_plan(model, "dwsep", example_inputs=x)
    converted = ns.apply_plan(model, plan)
    with torch.no_grad():
        assert converted(x).shape == model(x).shape
    macs_after = ns.count_macs(converted, x)
    assert macs_after <= ns.count_macs(model, x)
    assert macs_after == plan.macs_after


@pytest.mark.parametrize("name", FAST_MODELS)
def test_torchvision_models_convert(name):
    _check_model(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", _classification_models() if torchvision else [])
def test_every_torchvision_classifier_converts(name):
    _check_model(name)


@pytest.mark.parametrize(
    "builder",
    [pytest.param("fcn_resnet50", marks=pytest.mark.slow), "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"],
)
def test_segmentation_models_with_dilated_convs(builder):
    model = torchvision.models.get_model(builder, weights=None, weights_backbone=None, num_classes=5).eval()
    x = torch.randn(1, 3, 64, 64)
    plan = ns.make_plan(model, "dwsep", example_inputs=x)
    converted = ns.apply_plan(model, plan)
    with torch.no_grad():
        assert converted(x)["out"].shape == model(x)["out"].shape
    if builder != "lraspp_mobilenet_v3_large":  # dilated backbones (and ASPP)
        assert any(e.converted and max(e.geometry.dilation) > 1 for e in plan.entries)


def test_input_model_is_not_mutated_unless_inplace():
    model = tiny_convnet()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 1, 16, 16)
    converted = ns.convert(model, "dwsep", example_inputs=x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert converted is not model
    assert type(model).__name__ != "GraphModule"


@pytest.mark.parametrize("spec", ["dwsep", "spatial_r0.25", "dw_spatial", "ir_e4", "grouped_g2", "dwsep_k5"])
def test_converted_model_trains(spec):
    model = cifar_resnet18(width=16)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    converted = ns.convert(model, spec, example_inputs=x).train()
    opt = torch.optim.SGD(converted.parameters(), lr=0.01)
    loss = nn.functional.cross_entropy(converted(x), y)
    loss.backward()
    assert all(p.grad is not None for p in converted.parameters() if p.requires_grad)
    opt.step()
    assert torch.isfinite(converted(x)).all()


def test_jit_trace_and_torch_export():
    model = cifar_resnet18(width=16).eval()
    x = torch.randn(1, 3, 32, 32)
    converted = ns.convert(model, "dwsep", example_inputs=x).eval()
    with torch.no_grad():
        ref = converted(x)
        traced = torch.jit.trace(converted, x)
        assert torch.allclose(traced(x), ref, atol=1e-5)
    exported = torch.export.export(converted, (x,))
    with torch.no_grad():
        assert torch.allclose(exported.module()(x), ref, atol=1e-5)


def test_untraceable_model_falls_back_to_module_swap():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(8, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 8, 3, padding=1)
            self.alias = self.a  # the same conv registered twice

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace this
                x = self.a(x)
            return self.b(self.alias(x))

    model = DataDependent()
    x = torch.ones(1, 8, 8, 8)
    plan = ns.make_plan(model, "dwsep", example_inputs=x)
    assert not plan.traced and "tracing failed" in plan.notes[0]
    assert [e.calls for e in plan.entries] == [2, 1]
    converted = ns.apply_plan(model, plan)
    assert converted.a is converted.alias
    assert isinstance(converted.a, nn.Module) and not isinstance(converted.a, nn.Conv2d)
    assert converted(x).shape == model(x).shape


def test_functional_conv_called_twice_gets_one_block():
    class Func(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(8, 8, 3, 3) * 0.1)

        def forward(self, x):
            x = nn.functional.conv2d(x, self.weight, padding=1)
            return nn.functional.conv2d(torch.relu(x), self.weight, padding=1)

    model = Func()
    x = torch.randn(1, 8, 8, 8)
    converted = ns.convert(model, ns.Policy(default="dwsep_m9", min_macs_saving=None), example_inputs=x)
    blocks = [m for m in converted.modules() if type(m).__name__ == "DepthwiseSeparable"]
    assert len(blocks) == 1
    with torch.no_grad():
        assert torch.allclose(converted(x), model(x), atol=1e-4)


def test_full_rank_svd_conversion_reproduces_the_model():
    model = cifar_resnet18(width=8).eval()
    x = torch.randn(2, 3, 32, 32)
    plan = ns.make_plan(model, ns.Policy(default="dwsep_m9", min_macs_saving=None), example_inputs=x)
    assert len(plan.converted) == 16
    converted = ns.apply_plan(model, plan, init="svd").eval()
    with torch.no_grad():
        assert torch.allclose(converted(x), model(x), atol=1e-3, rtol=1e-3)


def test_bad_init_is_refused():
    model = tiny_convnet()
    with pytest.raises(ns.UserInputError, match="init"):
        ns.convert(model, "dwsep", example_inputs=torch.randn(1, 1, 16, 16), init="zeros")


def test_converted_model_deepcopies_and_pickles():
    import pickle

    model = tiny_convnet()
    x = torch.randn(1, 1, 16, 16)
    converted = ns.convert(model, "dwsep", example_inputs=x).eval()
    clone = copy.deepcopy(converted)
    assert torch.equal(clone(x), converted(x))
    assert ns.plan_of(clone).to_json() == ns.plan_of(converted).to_json()
    again = pickle.loads(pickle.dumps(converted))
    assert torch.equal(again(x), converted(x))
