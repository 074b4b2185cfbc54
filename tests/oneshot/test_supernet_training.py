"""Sandwich-rule training of a supernet, its checkpoints and resumption, and BatchNorm
recalibration of an inherited subnet."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
import torch
import torch.nn as nn

from nas_sepconv.data import calibration_batches, load_dataset
from nas_sepconv.errors import UserInputError
from nas_sepconv.oneshot import (
    MANIFEST,
    Supernet,
    extract,
    inherited_subnet,
    load_supernet,
    read_checkpoint,
    train_supernet,
)
from nas_sepconv.oneshot.supernet import resize
from nas_sepconv.search import load_space
from nas_sepconv.search.supernet_space import supernet_space
from nas_sepconv.train import TrainConfig


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", subset=192, val_fraction=0.25)


@pytest.fixture(scope="module")
def space():
    return supernet_space(load_space("default"), input_shape=(1, 16, 16), num_classes=10)


CFG = TrainConfig(epochs=2, batch_size=72, lr=0.05, seed=3)


class Killed(Exception):
    """Stands for the process being killed after an epoch's checkpoint."""


def _kill_after_first(epoch: int, loss: float) -> None:
    if epoch == 1:
        raise Killed


def test_a_resumed_run_ends_with_the_weights_of_an_unbroken_one(space, data, tmp_path):
    space = replace(space, widths=(0.5,))  # small and quick; still every kind, depth and side
    straight = train_supernet(space, data, out_dir=tmp_path / "a", config=CFG, random_subnets=1)
    with pytest.raises(Killed):
        train_supernet(space, data, out_dir=tmp_path / "b", config=CFG, random_subnets=1, on_epoch=_kill_after_first)
    assert read_checkpoint(tmp_path / "b").epoch == 1
    resumed = train_supernet(space, data, out_dir=tmp_path / "b", config=CFG, random_subnets=1)
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], v) for k, v in Supernet(space).state_dict().items())  # it trained
    saved = read_checkpoint(tmp_path / "b")
    assert saved.epoch == 2 and len(saved.history) == 2
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["epoch2.pt", "epoch2.safetensors", MANIFEST]
    # the optimizer state loads with weights_only (no code), the weights from safetensors
    assert set(torch.load(tmp_path / "b" / "epoch2.pt", weights_only=True)) == {"optimizer", "scheduler", "scaler"}
    loaded = load_supernet(tmp_path / "b", space)
    assert all(torch.equal(loaded.state_dict()[k], b[k]) for k in b)
    again = train_supernet(
        space, data, out_dir=tmp_path / "b", config=CFG, random_subnets=1
    )  # finished: nothing to train
    assert all(torch.equal(again.state_dict()[k], b[k]) for k in b)


def test_a_checkpoint_of_another_space_or_settings_is_refused(space, data, tmp_path):
    small = replace_space(space)
    train_supernet(small, data, out_dir=tmp_path, config=TrainConfig(epochs=1, batch_size=96), random_subnets=0)
    with pytest.raises(UserInputError, match="another space"):
        train_supernet(space, data, out_dir=tmp_path, config=TrainConfig(epochs=1, batch_size=96), random_subnets=0)
    with pytest.raises(UserInputError, match="other settings"):
        train_supernet(small, data, out_dir=tmp_path, config=TrainConfig(epochs=1, batch_size=96), random_subnets=1)
    with pytest.raises(UserInputError, match="other settings"):  # another sampling of the random subnets
        cfg = TrainConfig(epochs=1, batch_size=96)
        train_supernet(small, data, out_dir=tmp_path, config=cfg, random_subnets=0, sampling="fair")
    with pytest.raises(UserInputError, match="another space"):
        load_supernet(tmp_path, space)
    (tmp_path / MANIFEST).write_text(json.dumps({"epoch": 1}))
    with pytest.raises(UserInputError, match="not a supernet checkpoint"):
        read_checkpoint(tmp_path)


def replace_space(space):
    """The space with only its smallest width and depth."""
    return replace(space, widths=(min(space.widths),), depths=(min(space.depths),))


def test_bad_arguments_are_refused(space, data, tmp_path):
    with pytest.raises(UserInputError, match="random_subnets"):
        train_supernet(space, data, out_dir=tmp_path, random_subnets=-1)
    with pytest.raises(UserInputError, match="Dataset"):
        train_supernet(space, [(torch.zeros(1), torch.zeros(1))], out_dir=tmp_path)
    with pytest.raises(UserInputError, match="train.epochs"):
        train_supernet(space, data, out_dir=tmp_path, epochs=0)
    with pytest.raises(UserInputError, match="fair"):  # the error lists the samplings
        train_supernet(space, data, out_dir=tmp_path, sampling="strict")


def test_fair_sampling_trains_and_is_recorded(space, data, tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=96)
    net = train_supernet(replace_space(space), data, out_dir=tmp_path, config=cfg, random_subnets=2, sampling="fair")
    assert read_checkpoint(tmp_path).settings["sampling"] == "fair"
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_training_shows_its_progress(space, data, tmp_path, capsys):
    cfg = TrainConfig(epochs=1, batch_size=96)
    train_supernet(replace_space(space), data, out_dir=tmp_path, config=cfg, random_subnets=0, progress=True)
    assert "supernet: 1/1 epochs" in capsys.readouterr().err


def test_an_inherited_subnet_gets_its_own_batchnorm_statistics(space, data):
    torch.manual_seed(0)
    supernet = Supernet(space).eval()
    for m in supernet.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(5.0)  # statistics that fit no subnet
    arch = space.sample(random.Random(1))
    model = inherited_subnet(supernet, arch, data, images=96, batch_size=32, seed=4)
    assert not model.training
    inherited = extract(supernet, arch)
    assert torch.equal(inherited.stem[1].running_mean, torch.full_like(inherited.stem[1].running_mean, 5.0))
    # the stem's statistics are the mean and variance of its convolution over those images
    batches = [resize(x, arch.input_size) for x in calibration_batches(data, n=96, batch_size=32, seed=4)]
    with torch.no_grad():
        conv = torch.cat([model.stem[0](x) for x in batches])
    torch.testing.assert_close(model.stem[1].running_mean, conv.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    with pytest.raises(UserInputError, match="images"):
        inherited_subnet(supernet, arch, data, images=0)
