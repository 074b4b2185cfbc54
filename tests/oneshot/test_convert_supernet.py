"""The convert supernet: the original model at all-keep, a path's extracted model equal to the
supernet on that path (and a plain converted model), a killed training resumed to the same weights."""

from __future__ import annotations

import random

import pytest
import torch

import nas_sepconv as ns
from nas_sepconv.conversion import find_sites, plan_of
from nas_sepconv.data import calibration_batches, load_dataset
from nas_sepconv.errors import UserInputError
from nas_sepconv.oneshot import (
    ConvertPaths,
    ConvertSupernet,
    convert_supernet,
    extract_converted,
    read_checkpoint,
    train_convert_supernet,
)
from nas_sepconv.train import TrainConfig

SPECS = ["dwsep", "spatial_r0.5", "ir_e2"]


def _base() -> torch.nn.Module:
    torch.manual_seed(0)
    model = ns.model_from_name("nas_sepconv:tiny_convnet", width=8)
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _sites(model: torch.nn.Module) -> list[str]:
    sites, _, _ = find_sites(model, torch.zeros(1, 1, 16, 16))
    return [s.name for s in sites if s.geometry.in_channels > 1]


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", subset=200)


@pytest.fixture(scope="module")
def made(data):
    base = _base()
    sites = _sites(base)
    batches = calibration_batches(data, n=64, batch_size=32)
    supernet = convert_supernet(
        base, {s: SPECS for s in sites}, example_inputs=torch.zeros(1, 1, 16, 16), refit_batches=batches
    )
    return base, sites, supernet


def test_all_keep_is_the_original_model(made, data):
    base, sites, supernet = made
    assert sites and isinstance(supernet, ConvertSupernet)
    x = calibration_batches(data, n=16, batch_size=16)[0]
    supernet.set_path({})
    assert torch.equal(supernet(x), base(x))
    supernet.set_path({s: None for s in sites})
    assert torch.equal(supernet(x), base(x))


def test_an_extracted_path_is_a_plain_converted_model_with_the_supernets_outputs(made, data, tmp_path):
    base, sites, supernet = made
    x = calibration_batches(data, n=16, batch_size=16)[0]
    rng = random.Random(1)
    rules = {s: rng.choice([None, *SPECS]) for s in sites}
    rules[sites[0]] = "dwsep"
    supernet.eval().set_path(rules)
    expected = supernet(x)
    model = extract_converted(supernet, rules, example_inputs=torch.zeros(1, 1, 16, 16))
    assert not any("choices" in name for name, _ in model.named_modules())
    plan = plan_of(model)
    assert {e.name: str(e.spec) for e in plan.converted} == {k: v for k, v in rules.items() if v is not None}
    torch.testing.assert_close(model(x), expected)
    assert not torch.allclose(expected, base(x))  # a converted path is not the original


def test_refit_blocks_stay_close_to_the_original(made, data):
    base, sites, supernet = made
    x = calibration_batches(data, n=32, batch_size=32)[0]
    supernet.set_path({s: "dwsep" for s in sites})
    err = (supernet(x) - base(x)).norm() / base(x).norm()
    assert err < 0.5


def test_a_path_the_supernet_does_not_hold_is_refused(made):
    _, _, supernet = made
    with pytest.raises(UserInputError, match="rules"):
        supernet.set_path({"no.such.site": "dwsep"})


def _train(base, sites, data, folder, epochs, on_epoch=None):
    supernet = convert_supernet(base, {s: SPECS[:2] for s in sites}, example_inputs=torch.zeros(1, 1, 16, 16))
    paths = ConvertPaths({s: [None, *SPECS[:2]] for s in sites}, (16, 12))
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.01, seed=0)
    return train_convert_supernet(
        supernet,
        base,
        paths,
        data,
        out_dir=folder,
        identity={"model": "tiny"},
        config=cfg,
        epochs=epochs,
        on_epoch=on_epoch,
    )


def test_killed_training_resumes_to_the_same_weights(data, tmp_path):
    base = _base()
    sites = _sites(base)
    whole = _train(base, sites, data, tmp_path / "whole", None)

    def kill(epoch, loss):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(base, sites, data, tmp_path / "killed", None, on_epoch=kill)
    assert read_checkpoint(tmp_path / "killed").epoch == 1
    resumed = _train(base, sites, data, tmp_path / "killed", None)
    assert read_checkpoint(tmp_path / "killed").epoch == 2
    a, b = whole.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["model.classifier.weight"], base.classifier.weight)  # it trained


def test_a_checkpoint_of_another_supernet_is_refused(data, tmp_path):
    base = _base()
    sites = _sites(base)
    _train(base, sites, data, tmp_path / "s", 1)
    supernet = convert_supernet(base, {s: SPECS[:2] for s in sites}, example_inputs=torch.zeros(1, 1, 16, 16))
    with pytest.raises(UserInputError, match="out_dir"):
        train_convert_supernet(
            supernet,
            base,
            ConvertPaths({s: [None] for s in sites}),
            data,
            out_dir=tmp_path / "s",
            identity={"model": "tiny"},
            config=TrainConfig(epochs=1, batch_size=64, lr=0.01, seed=0),
        )


def test_making_and_training_a_supernet_leave_the_base_model_as_it_was(data, tmp_path):
    base = _base().train()  # (a model the caller goes on training, say)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    _train(base, _sites(base), data, tmp_path / "s", 1)
    assert all(m.training for m in base.modules())  # not put in eval mode by convert_supernet or the teacher
    after = base.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nor its BatchNorm statistics touched
