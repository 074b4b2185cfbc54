"""Short real searches on the embedded data: complete, resume, outputs, frame, export."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from conftest import TINY  # noqa: E402  (tests/ is on sys.path; the tiny space is shared)

import nas_sepconv as ns
from nas_sepconv.export import export_trial, rebuild_trial
from nas_sepconv.io import load_model


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def test_search_completes_resumes_and_writes_outputs(tiny, tmp_path):
    out = tmp_path / "results"
    study = ns.search(tiny, trials=3, out=out, seed=1)
    folder = out / "tiny"
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 3
    for name in ("trials.csv", "pareto.csv", "pareto.png", "meta.json", "study.db"):
        assert (folder / name).is_file(), name
    assert study.metric_names == ["accuracy", "macs"]
    front = pd.read_csv(folder / "pareto.csv")
    assert len(list((folder / "pareto").glob("trial_*.json"))) == len(front)
    assert len(list((folder / "weights").glob("trial_*.safetensors"))) == len(front)

    again = ns.search(tiny, trials=5, out=out, seed=1)  # the same study, resumed with more trials
    assert len(again.trials) == 5 and again.study_name == "tiny"
    assert len(pd.read_csv(folder / "trials.csv")) == 5


def test_loaded_frame_has_documented_columns_and_dtypes(tiny, tmp_path):
    ns.search(tiny, trials=3, out=tmp_path)
    df = ns.results.load(tmp_path / "tiny")
    for column in (
        "number",
        "state",
        "accuracy",
        "macs",
        "params",
        "test_accuracy",
        "arch",
        "arch_json",
        "duration_s",
        "fail_reason",
        "width_mult",
        "stage0.kind",
    ):
        assert column in df.columns, column
    assert df["number"].dtype == "int64"
    assert str(df["macs"].dtype) == "Int64" and str(df["params"].dtype) == "Int64"
    assert df["accuracy"].dtype == "float64"
    assert isinstance(df["state"].dtype, pd.CategoricalDtype) and isinstance(
        df["stage0.kind"].dtype, pd.CategoricalDtype
    )
    front = ns.results.pareto_front(df)
    assert 1 <= len(front) <= 3
    assert ns.results.hypervolume(df, reference={"accuracy": 0.0, "macs": float(df["macs"].max()) * 1.1}) > 0


def test_recorded_macs_match_the_profiler_and_export_reproduces_accuracy(tiny, tmp_path):
    ns.search(tiny, trials=3, out=tmp_path)
    folder = tmp_path / "tiny"
    df = ns.results.load(folder)
    best = ns.results.pareto_front(df).iloc[0]
    number = int(best["number"])
    out_file = tmp_path / "m.safetensors"
    info = export_trial(folder, number, out=out_file)
    assert info["how"] == "loaded saved weights"
    assert info["accuracy"] == pytest.approx(best["accuracy"], abs=1e-9)
    model = load_model(out_file)
    x = torch.randn(1, *info["input_size"])
    assert ns.count_macs(model, x) == best["macs"]
    # a trial whose weights were not kept is re-trained from its parameters and seed
    (folder / "weights" / f"trial_{number}.safetensors").unlink()
    _, again = rebuild_trial(folder, number)
    assert again["how"].startswith("re-trained")
    assert again["accuracy"] == best["accuracy"]  # seeded and deterministic on the CPU: exactly


def test_convert_space_search_on_digits(tmp_path):
    text = (Path(__file__).resolve().parents[2] / "search_spaces" / "digits_convert.yaml").read_text()
    text = (
        text.replace("base_epochs: 8", "base_epochs: 2")
        .replace("trials: 12", "trials: 2")
        .replace("epochs: 6", "epochs: 2")
    )
    path = tmp_path / "dc.yaml"
    path.write_text(text)
    study = ns.search(path, trials=2, out=tmp_path / "r")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2, [t.user_attrs.get("fail_reason") for t in study.trials]
    assert (tmp_path / "r" / "digits_convert" / "base.safetensors").is_file()
    for t in done:
        recipe = json.loads(t.user_attrs["arch_json"])
        model = ns.io.build_from_recipe(recipe, allow_import=False) if hasattr(ns, "io") else None
        from nas_sepconv.io import build_from_recipe

        model = build_from_recipe(recipe)
        assert ns.count_macs(model, torch.randn(1, *recipe["input_size"])) == t.user_attrs["macs"]


def test_convert_candidates_distill_with_feature_hints(tmp_path, monkeypatch):
    import importlib

    candidates = importlib.import_module(
        "nas_sepconv.search.candidates"
    )  # the search looks fit up there (ns.search is the function)

    text = (Path(__file__).resolve().parents[2] / "search_spaces" / "digits_convert.yaml").read_text()
    text = (
        text.replace("base_epochs: 8", "base_epochs: 1")
        .replace("epochs: 6", "epochs: 1")
        .replace("kind: [keep, dwsep, spatial, inverted_residual]", "kind: [dwsep, spatial]")
        .replace("    expand_ratio: [4]\n", "")
        .replace("width_mult: [0.5, 1.0]", "width_mult: 1.0")
    )
    seen = []
    real_fit = candidates.fit

    def spy(model, data, **kwargs):
        if kwargs.get("teacher") is not None:
            seen.append((list(kwargs.get("features", ())), kwargs.get("feature_weight")))
        return real_fit(model, data, **kwargs)

    monkeypatch.setattr(candidates, "fit", spy)
    for weight in (10.0, 0.0):
        path = tmp_path / f"dc{weight:g}.yaml"
        path.write_text(text.replace("finetune_lr: 0.02", f"finetune_lr: 0.02\n  feature_weight: {weight}"))
        study = ns.search(path, trials=1, out=tmp_path / f"r{weight:g}")
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]
    # tiny_convnet: features.3 -> .4 (bn) -> .5 (relu), and so on for each converted conv
    assert seen[0][0] and all(name.startswith("features.") for name in seen[0][0]) and seen[0][1] == 10.0
    assert seen[1] == ([], 0.0)


def test_scalarised_mode_records_both_objectives(tmp_path):
    text = TINY.replace(
        "search: {trials: 3, sampler: nsga2, population_size: 4}",
        "search: {trials: 4, mode: scalarised, target_macs: 200000, pruner: median}",
    )
    path = tmp_path / "s.yaml"
    path.write_text(text)
    study = ns.search(path, trials=4, out=tmp_path / "r")
    assert study.metric_names == ["reward"]
    df = ns.results.load(tmp_path / "r" / "tiny")
    finished = df[df["state"].isin(["COMPLETE", "PRUNED"])]
    assert len(finished) == 4
    assert finished["accuracy"].notna().all() and finished["macs"].notna().all()
    complete = df[df["state"] == "COMPLETE"]
    expected = complete["accuracy"] * (complete["macs"].astype(float) / 200000) ** -0.07
    assert (complete["reward"] - expected).abs().max() < 1e-9


def test_budget_constraint_skips_training_of_oversized_candidates(tmp_path):
    text = TINY.replace(
        "search: {trials: 3, sampler: nsga2, population_size: 4}",
        "search: {trials: 3, sampler: nsga2, population_size: 4, max_macs: 1}",
    )
    path = tmp_path / "b.yaml"
    path.write_text(text)
    study = ns.search(path, trials=3, out=tmp_path / "r")
    for t in study.trials:
        assert t.user_attrs["feasible"] is False and t.user_attrs["epochs"] == 0
        assert t.user_attrs["constraints"]["max_macs"] > 0


def test_infeasible_trials_are_never_on_the_front(tmp_path):
    df = pd.DataFrame(
        {
            "number": [0, 1, 2],
            "state": ["COMPLETE"] * 3,
            "accuracy": [0.0, 0.9, 0.8],
            "macs": [10, 500, 300],
            "feasible": [False, True, True],
        }
    )
    front = ns.results.pareto_front(df)
    assert list(front["number"]) == [2, 1]


def test_resume_refuses_a_changed_space_but_not_a_changed_trial_count(tiny, tmp_path):
    ns.search(tiny, trials=1, out=tmp_path)
    tiny.write_text(TINY.replace("trials: 3", "trials: 9"))
    assert len(ns.search(tiny, trials=2, out=tmp_path).trials) == 2
    tiny.write_text(TINY.replace("epochs: 2", "epochs: 3"))
    with pytest.raises(ns.UserInputError, match=r"^study: "):
        ns.search(tiny, trials=3, out=tmp_path)
