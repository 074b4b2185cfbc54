"""optimize_for_inference: same outputs, BN folded, input untouched.  No timing assertions."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import nas_sepconv as ns
from nas_sepconv.blocks import DepthwiseSeparable, InvertedResidual, SpatialSeparable
from nas_sepconv.conversion import fold_batchnorm, optimize_for_inference
from nas_sepconv.models import cifar_resnet18

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so folding is really tested."""
    g = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def small() -> nn.Module:
    torch.manual_seed(0)
    return _randomise_bn(cifar_resnet18(width=16))


@pytest.fixture(scope="module", params=["none", "dwsep", "spatial_r0.25", "ir_e4"])
def model(request, small) -> nn.Module:
    if request.param == "none":
        return small
    return _randomise_bn(ns.convert(small, request.param, example_inputs=X[:1]))


def _bns(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("channels_last", [False, True])
def test_outputs_kept_and_bn_gone(model, channels_last):
    assert _bns(model) > 0
    before = _state(model)
    training = {n: m.training for n, m in model.named_modules()}
    fast = optimize_for_inference(model, X[:1], channels_last=channels_last)
    with torch.no_grad():
        ref, out = model(X), fast(X)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    assert _bns(fast) == 0
    assert fast is not model
    after = model.state_dict()  # the input model is unchanged
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {n: m.training for n, m in model.named_modules()} == training


def test_blocks_are_inlined_and_folded(model):
    fast = optimize_for_inference(model, X[:1], channels_last=False)
    assert not any(
        isinstance(m, (DepthwiseSeparable, SpatialSeparable, InvertedResidual, nn.Identity)) for m in fast.modules()
    )


def test_channels_last_weights():
    fast = optimize_for_inference(_randomise_bn(cifar_resnet18(width=8)), X[:1])
    convs = [m for m in fast.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)


def test_no_fold_keeps_bn():
    m = _randomise_bn(cifar_resnet18(width=8))
    fast = optimize_for_inference(m, X[:1], fold_bn=False, channels_last=True)
    assert _bns(fast) == _bns(m)
    with torch.no_grad():
        torch.testing.assert_close(fast(X), m(X), atol=1e-4, rtol=1e-4)


def test_training_input_gives_eval_result():
    m = _randomise_bn(cifar_resnet18(width=8)).train()
    fast = optimize_for_inference(m, X[:1])
    assert m.training and not fast.training
    with torch.no_grad():
        torch.testing.assert_close(fast(X), m.eval()(X), atol=1e-4, rtol=1e-4)


def test_shared_conv_is_not_folded():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(self.conv(x)) + self.conv(x)

    m = _randomise_bn(Shared())
    fast = fold_batchnorm(m)
    assert _bns(fast) == 1
    with torch.no_grad():
        torch.testing.assert_close(fast(X), m(X))


def test_conv_with_other_users_is_not_folded():
    class Branch(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) * y

    m = _randomise_bn(Branch())
    fast = fold_batchnorm(m)
    assert _bns(fast) == 1
    with torch.no_grad():
        torch.testing.assert_close(fast(X), m(X))


def test_untraceable_model_folds_sequential_pairs():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                return self.body(x)
            return self.body(-x)

    m = _randomise_bn(Untraceable())
    with pytest.warns(UserWarning, match="cannot be traced"):
        fast = optimize_for_inference(m, X[:1])
    assert _bns(fast) == 0
    with torch.no_grad():
        torch.testing.assert_close(fast(X), m(X), atol=1e-5, rtol=1e-5)


def test_compile_failure_is_a_clear_error(monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(RuntimeError, match="torch.compile .*failed.*C\\+\\+ compiler"):
        optimize_for_inference(cifar_resnet18(width=8), X[:1], compile=True)


@pytest.mark.slow
def test_compiled_outputs_kept(small):
    m = _randomise_bn(ns.convert(small, "dwsep", example_inputs=X[:1]))
    fast = optimize_for_inference(m, X[:1], compile=True)
    with torch.no_grad():
        torch.testing.assert_close(fast(X[:1]), m(X[:1]), atol=1e-4, rtol=1e-4)
