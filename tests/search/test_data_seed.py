"""Each seed validates on its own split (issue 26): the study's seed holds out the validation
images (the test split stays the same), a rebuilt trial uses its study's split, and every trial
records what it spent (``train_compute``) and which test images it got right (``test_correct``)."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import TINY

import nas_sepconv as ns
from nas_sepconv.export import rebuild_trial
from nas_sepconv.results.protocol import unpack_correct
from nas_sepconv.search import load_space
from nas_sepconv.search.candidates import TrialContext

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    space = yaml.safe_load(TINY)
    space["train"]["epochs"] = 1
    path.write_text(yaml.safe_dump(space))
    return path


def test_two_seeds_hold_out_different_validation_splits_and_share_the_test_split(tiny, tmp_path):
    space = load_space(str(tiny))
    data = [TrialContext.for_rebuild(space, device="cpu", out_dir=tmp_path, data_seed=s).data for s in (0, 1)]
    assert len(data[0].val) == len(data[1].val) and not torch.equal(data[0].val.x, data[1].val.x)
    assert torch.equal(data[0].test.x, data[1].test.x) and torch.equal(data[0].test.y, data[1].test.y)
    again = TrialContext.for_rebuild(space, device="cpu", out_dir=tmp_path, data_seed=1).data
    assert torch.equal(again.val.x, data[1].val.x)


def test_a_search_validates_on_its_seeds_split_and_a_rebuilt_trial_uses_it(tiny, tmp_path):
    study = ns.search(str(tiny), trials=1, seed=7, out=tmp_path / "r", heartbeat=0, threads=1)
    assert study.user_attrs["data_seed"] == 7 and study.user_attrs["num_classes"] == 10
    trial = study.get_trials()[0]
    space = load_space(str(tiny))
    ctx = TrialContext.for_rebuild(space, device="cpu", out_dir=tmp_path / "r" / "tiny", data_seed=7)
    attrs = trial.user_attrs
    assert attrs["train_compute"] == attrs["epochs"] * len(ctx.data.train) * attrs["macs"] > 0
    correct = unpack_correct(attrs["test_correct"])
    assert len(correct) == len(ctx.data.test) and correct.mean() == pytest.approx(attrs["test_accuracy"])
    (tmp_path / "r" / "tiny" / "weights" / "trial_0.safetensors").unlink()  # re-trained, on the study's split
    _, info = rebuild_trial(tmp_path / "r" / "tiny", 0)
    assert info["accuracy"] == info["recorded_accuracy"]
    df = ns.results.load(tmp_path / "r" / "tiny")
    assert df.attrs["num_classes"] == 10 and df["train_compute"].iloc[0] == attrs["train_compute"]


def test_a_study_that_recorded_no_data_seed_reads_as_seed_0_the_split_it_was_made_on():
    from nas_sepconv.results.stored import data_seed_of

    assert data_seed_of({}, source="here") == 0 and data_seed_of({"data_seed": 4}, source="here") == 4
