"""``search.mode: oneshot``: trials take their subnet's weights from a supernet trained once per
study, recalibrate BatchNorm, and say so in ``trials.csv``."""

from __future__ import annotations

import importlib
import json

import pandas as pd
import pytest
import yaml
from conftest import FAST_SPACE

import nas_sepconv as ns
from nas_sepconv.errors import UserInputError
from nas_sepconv.oneshot import MANIFEST, read_checkpoint
from nas_sepconv.results.modes import SEARCH_MODES
from nas_sepconv.search import load_space, parse_space
from nas_sepconv.search.inherited import SUPERNET_DIR


def _space(tmp_path, **search) -> str:
    spec = json.loads(json.dumps(FAST_SPACE))
    spec["search"].update(mode="oneshot", **search)
    path = tmp_path / "oneshot.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_oneshot_trials_inherit_weights_from_one_supernet(tmp_path):
    path = _space(tmp_path, supernet_epochs=2)
    out = tmp_path / "results"
    study = ns.search(path, trials=2, out=out, seed=0, threads=1)
    assert study.user_attrs["mode"] == "oneshot"
    folder = out / "tiny" / SUPERNET_DIR
    assert read_checkpoint(folder).epoch == 2
    trained_at = (folder / MANIFEST).stat().st_mtime_ns
    trials = pd.read_csv(out / "tiny" / "trials.csv")
    assert list(trials["accuracy_source"]) == ["inherited", "inherited"]
    assert (trials["epochs"] == 0).all() and trials["accuracy"].between(0, 1).all()
    assert (trials["macs"] > 0).all() and (trials["params"] > 0).all()
    ns.search(path, trials=3, out=out, seed=0, threads=1)  # resumed: the supernet is loaded, not trained again
    assert (folder / MANIFEST).stat().st_mtime_ns == trained_at
    assert len(pd.read_csv(out / "tiny" / "trials.csv")) == 3
    # the supernet's training counts in what the study spent (equal-compute comparisons)
    spent = study.user_attrs["supernet_compute"]
    frame = ns.results.load(out / "tiny")
    trials_spent = int(pd.to_numeric(frame["train_compute"]).sum())
    assert spent > 0 and frame.attrs["supernet_compute"] == spent
    train_images = json.loads((out / "tiny" / "meta.json").read_text())["data"]["train_images"]
    # 2 epochs of sandwich steps: the largest (>= every trial's MACs) thrice (it and 2 random ones) and the smallest
    assert spent >= 2 * train_images * 3 * int(frame["macs"].max())
    summary = ns.results.compare({"oneshot": frame})
    assert int(summary["train_compute"].iloc[0]) == trials_spent + spent


def test_the_supernet_trains_before_the_trials_on_the_study_s_own_split(tmp_path, monkeypatch):
    inherited = importlib.import_module("nas_sepconv.search.inherited")  # (ns.search is the function)

    seen = []
    train = inherited.train_supernet

    def recording(space, data, **kwargs):
        seen.append(data.val.y.clone())
        return train(space, data, **kwargs)

    monkeypatch.setattr(inherited, "train_supernet", recording)
    path = _space(tmp_path, supernet_epochs=1)
    study = ns.search(path, trials=1, out=tmp_path / "results", seed=3, threads=1)
    assert study.user_attrs["data_seed"] == 3
    # trained once (in the main process, before the trial loaded it) on the split the trials validate on
    assert len(seen) >= 1
    own = load_space(path).spec.data.load(seed=3).val.y
    other = load_space(path).spec.data.load(seed=0).val.y
    assert seen[0].tolist() == own.tolist() and own.tolist() != other.tolist()


def test_the_oneshot_mode_is_a_record_and_converts_at_the_base_width(tmp_path):
    assert SEARCH_MODES["oneshot"].accuracy_source == "inherited"
    assert {m.accuracy_source for n, m in SEARCH_MODES.items() if n != "oneshot"} == {"trained"}
    text = load_space("digits_convert").text + "\n"  # (its width_mult searches pruning: refused)
    with pytest.raises(UserInputError, match="convert.width_mult"):
        parse_space(text.replace("search:\n", "search:\n  mode: oneshot\n", 1))


def _finalised_study(tmp_path, trials=4, finalize=2, **search):
    path = _space(tmp_path, supernet_epochs=1, finalize_epochs=1, **search)
    out = tmp_path / "results"
    study = ns.search(path, trials=trials, out=out, seed=0, threads=1, finalize=finalize)
    return path, out / "tiny", study


def test_finalize_trains_the_front_alone_and_every_reader_sees_it(tmp_path):
    from nas_sepconv.search.finalization import front_to_finalize

    path, folder, study = _finalised_study(tmp_path)
    raw = study.get_trials()
    chosen = front_to_finalize(raw, 2)
    assert 1 <= len(chosen) <= 2
    trials = pd.read_csv(folder / "trials.csv").set_index("number")
    done = trials[trials["accuracy_source"] == "finalized"]
    assert sorted(done.index) == sorted(chosen)
    assert (trials.drop(index=chosen)["accuracy_source"] == "inherited").all()
    for number in chosen:
        row, inherited = done.loc[number], next(t for t in raw if t.number == number).user_attrs
        assert row["inherited_accuracy"] == pytest.approx(inherited["accuracy"])
        assert row["epochs"] == 1 and row["finalized_from"] == "inherited"
        assert row["train_compute"] > inherited["train_compute"]  # the finalisation's training is counted
        # the weights file holds the finalised subnet: measured now, it gives the recorded accuracy
        model = ns.load_model(folder / "weights" / f"trial_{number}.safetensors")
        data = load_space(path).spec.data.load(seed=0)
        res = int(row["resolution"])
        assert ns.train.evaluate(model, data.val, data=data, resolution=res) == pytest.approx(row["accuracy"])
    front = pd.read_csv(folder / "pareto.csv").set_index("number")
    for number in set(front.index) & set(chosen):  # the front shown is the finalised one
        assert front.loc[number, "accuracy"] == pytest.approx(done.loc[number, "accuracy"])
    df = ns.results.load(folder)
    assert set(df.loc[df["accuracy_source"] == "finalized", "number"]) == set(chosen)


def test_finalize_resumes_without_training_a_finalised_trial_again(tmp_path):
    path, folder, study = _finalised_study(tmp_path, trials=3, finalize=1)
    (number,) = [int(k.split(":")[1]) for k in study.user_attrs if k.startswith("finalized:")]
    weights = folder / "weights" / f"trial_{number}.safetensors"
    written = weights.stat().st_mtime_ns
    again = ns.search(path, trials=3, out=folder.parent, seed=0, threads=1, finalize=1)
    assert weights.stat().st_mtime_ns == written  # not trained again
    assert again.user_attrs[f"finalized:{number}"] == study.user_attrs[f"finalized:{number}"]


def test_finalize_from_scratch_is_recorded(tmp_path):
    _, folder, _ = _finalised_study(tmp_path, trials=2, finalize=1, finalize_from="scratch")
    trials = pd.read_csv(folder / "trials.csv")
    assert list(trials.loc[trials["accuracy_source"] == "finalized", "finalized_from"]) == ["scratch"]


def test_front_to_finalize_spreads_over_the_front():
    import optuna

    from nas_sepconv.search.finalization import front_to_finalize

    def trial(number, accuracy, macs, **attrs):
        return optuna.trial.create_trial(
            values=[accuracy, macs], user_attrs={"accuracy": accuracy, "macs": macs, **attrs}
        )

    trials = [trial(i, 0.5 + 0.1 * i, 100 * (i + 1)) for i in range(5)]
    for i, t in enumerate(trials):
        t.number = i
    dominated = trial(5, 0.1, 1000)
    dominated.number = 5
    infeasible = trial(6, 0.99, 1, feasible=False)
    infeasible.number = 6
    everything = [*trials, dominated, infeasible]
    assert front_to_finalize(everything, 3) == [0, 2, 4]
    assert front_to_finalize(everything, 8) == [0, 1, 2, 3, 4]
    assert front_to_finalize([], 2) == []
    # trials finalised before count towards k: a re-run with a larger k adds only the difference
    assert front_to_finalize(everything, 3, finalized=[1]) == [1, 0, 4]
    assert front_to_finalize(everything, 2, finalized=[1, 3, 5]) == [1, 3, 5]


def test_finalize_needs_a_oneshot_study_and_a_positive_count(tmp_path):
    spec = json.loads(json.dumps(FAST_SPACE))
    path = tmp_path / "pareto.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(UserInputError, match="finalize"):
        ns.search(str(path), trials=1, out=tmp_path / "r", finalize=2)
    with pytest.raises(UserInputError, match="finalize"):
        ns.search(_space(tmp_path), trials=1, out=tmp_path / "r", finalize=0)
    assert not (tmp_path / "r" / "tiny").exists()


def test_a_finalisation_that_cannot_write_its_weights_is_a_storage_error_and_retried(tmp_path, monkeypatch):
    from nas_sepconv.errors import StorageError
    from nas_sepconv.search import finalization

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    path = _space(tmp_path, supernet_epochs=1, finalize_epochs=1)
    out = tmp_path / "results"
    monkeypatch.setattr(finalization, "save_model", full_disk)
    with pytest.raises(StorageError, match="No space left on device"):
        ns.search(path, trials=2, out=out, seed=0, threads=1, finalize=1)
    monkeypatch.undo()
    study = ns.search(path, trials=2, out=out, seed=0, threads=1, finalize=1)  # the same command finishes it
    assert sum(k.startswith("finalized:") for k in study.user_attrs) == 1
