"""A model trained here on the embedded data keeps its predictions through conversion."""

from __future__ import annotations

import pytest
import torch

import nas_sepconv as ns
from nas_sepconv.data import calibration_batches, load_dataset
from nas_sepconv.models import tiny_convnet
from nas_sepconv.train import TrainConfig, evaluate, fit, reestimate_batchnorm


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    data = load_dataset("digits", seed=0)
    model = tiny_convnet(width=32)
    fit(model, data, config=TrainConfig(epochs=4, batch_size=64, lr=0.1, seed=0))
    return model.eval(), data


def _agreement(a, b, data) -> float:
    x = (data.test.x - torch.tensor(data.mean).view(1, -1, 1, 1)) / torch.tensor(data.std).view(1, -1, 1, 1)
    with torch.no_grad():
        return (a(x).argmax(1) == b(x).argmax(1)).float().mean().item()


@pytest.mark.parametrize("spec", ["dwsep_m2", "spatial_r0.25"])
def test_converted_predictions_agree_with_the_original(trained, spec):
    model, data = trained
    x = torch.randn(1, 1, 16, 16)
    converted = ns.convert(model, spec, example_inputs=x).eval()
    batches = calibration_batches(data, n=256, batch_size=64)
    ns.refit(converted, model, batches)
    reestimate_batchnorm(converted, batches)
    assert ns.count_macs(converted, x) < ns.count_macs(model, x)
    assert _agreement(converted, model, data) >= 0.9
    original_acc = evaluate(model, data.test, data=data)
    assert evaluate(converted, data.test, data=data) >= original_acc - 0.05


def test_closed_form_beats_random_init_with_no_training(trained):
    model, data = trained
    x = torch.randn(1, 1, 16, 16)
    svd = ns.convert(model, "dwsep_m4", example_inputs=x, init="svd").eval()
    random = ns.convert(model, "dwsep_m4", example_inputs=x, init="random").eval()
    assert _agreement(svd, model, data) > _agreement(random, model, data) + 0.2
