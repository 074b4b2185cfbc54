"""Export the way deployment goes (issue 25, item 5): converted models captured with
``torch.export`` (``ns.export_program``) and written with torch's default ONNX exporter (dynamo),
their outputs matched in ONNX Runtime against the PyTorch model, at another batch size than the
example's (the batch dimension is dynamic)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import nas_sepconv as ns
from nas_sepconv.blocks import ConvGeometry, as_spec
from nas_sepconv.errors import UserInputError
from nas_sepconv.measure import onnx_session, run_onnx

pytestmark = pytest.mark.usefixtures("one_thread")


def _matches_everywhere(model: nn.Module, x: torch.Tensor, tmp_path, batch: int = 3) -> None:
    """``model`` through torch.export and through the dynamo ONNX exporter gives its own outputs."""
    model = model.eval()
    xb = torch.randn(batch, *x.shape[1:])
    with torch.no_grad():
        expected = model(xb)
    program = ns.export_program(model, x)
    assert isinstance(program, torch.export.ExportedProgram)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(xb), expected, rtol=1e-4, atol=1e-5)
    path = ns.to_onnx(model, x, tmp_path / "m.onnx")
    (y,) = run_onnx(onnx_session(path, threads=1), xb)
    np.testing.assert_allclose(y, expected.numpy(), rtol=1e-3, atol=1e-4)


class _EveryKind(nn.Module):
    """One block of every kind of ``ns.KINDS``, in a row, at 8 channels."""

    def __init__(self):
        super().__init__()
        g = ConvGeometry.conv3x3(8, 8)
        self.blocks = nn.Sequential(*(as_spec(kind).build(g) for kind in ns.KINDS))

    def forward(self, x):
        return self.blocks(x)


def test_a_converted_resnet_exports_with_torch_export_and_dynamo_onnx(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    base = ns.models.cifar_resnet18(width=8).eval()
    policy = {"layer1.*": "dwsep", "layer2.*": "spatial", "layer3.*": "dwsep_m2"}
    converted = ns.convert(base, policy, example_inputs=x)
    assert len(ns.plan_of(converted).converted) > 0
    _matches_everywhere(converted, x, tmp_path)


def test_every_block_kind_exports_with_torch_export_and_dynamo_onnx(tmp_path):
    torch.manual_seed(0)
    model = _EveryKind()
    assert len(model.blocks) == len(ns.KINDS)
    _matches_everywhere(model, torch.randn(1, 8, 8, 8), tmp_path)


def test_an_adaptive_pool_the_legacy_exporter_refuses_exports(tmp_path):
    """An adaptive pool 7x7 -> 3x3 (not a factor): the TorchScript exporter cannot express it,
    torch.export decomposes it into ATen operators ONNX has."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.AdaptiveAvgPool2d((3, 3)), nn.Flatten(), nn.Linear(72, 4))
    _matches_everywhere(model, torch.randn(1, 3, 7, 7), tmp_path)


def test_a_forward_that_fixes_the_batch_is_refused_in_one_line():
    class FixedBatch(nn.Module):
        def forward(self, x):
            return x.view(2, -1)  # the batch of the example torch.export is given, as a constant

    with pytest.raises(UserInputError, match="FixedBatch") as info:
        ns.export_program(FixedBatch(), torch.randn(1, 3, 4, 4))
    assert info.value.field == "model" and "fixes the batch size" in str(info.value) and "\n" not in str(info.value)


ZOO = [
    "resnet18",
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "regnet_y_400mf",
    "convnext_tiny",
    "densenet121",
    "shufflenet_v2_x0_5",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_every_converted_torchvision_classifier_exports(name, tmp_path):
    """The torchvision zoo (weights=None: nothing downloaded), converted with the default
    policy, at 64x64."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    base = torchvision.models.get_model(name, weights=None).eval()
    converted = ns.convert(base, "dwsep", example_inputs=x)
    _matches_everywhere(converted, x, tmp_path, batch=2)
