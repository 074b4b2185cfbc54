"""Tests of nas_sepconv.results: Pareto front, hypervolume, knee, load, plots, outputs."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from nas_sepconv import results
from nas_sepconv.errors import UserInputError
from nas_sepconv.results import plot as plot_mod

optuna.logging.set_verbosity(optuna.logging.WARNING)


# ------------------------------------------------------------------ helpers


def _brute_force_front(values: np.ndarray, directions: list[str]) -> np.ndarray:
    """O(n^2) Python reference: True where no other row dominates."""
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    losses = values * sign
    n = len(losses)
    keep = []
    for i in range(n):
        dominated = False
        for j in range(n):
            if all(losses[j] <= losses[i]) and any(losses[j] < losses[i]):
                dominated = True
                break
        keep.append(not dominated)
    return np.array(keep, dtype=bool)


def _random_frame(rng: np.random.Generator, n: int, k: int) -> tuple[pd.DataFrame, list[str]]:
    """Small integer grid (many ties), exact duplicates, some non-COMPLETE and NaN rows."""
    values = rng.integers(0, 6, size=(n, k)).astype(float)
    dup = rng.choice(n, size=n // 5, replace=False)
    values[dup] = values[rng.choice(n, size=len(dup))]
    cols = [f"o{i}" for i in range(k)]
    df = pd.DataFrame(values, columns=cols, index=rng.permutation(n) + 100)
    states = rng.choice(["COMPLETE", "COMPLETE", "COMPLETE", "FAIL", "RUNNING"], size=n)
    df["state"] = pd.Categorical(states, categories=list(results.STATES))
    nan_rows = rng.choice(n, size=3, replace=False)
    df.iloc[nan_rows, 0] = np.nan
    directions = list(rng.choice(["maximize", "minimize"], size=k))
    return df, directions


def _optuna_hv(points: np.ndarray, ref: np.ndarray) -> float:
    from optuna._hypervolume import compute_hypervolume

    inside = (points < ref).all(axis=1)
    return float(compute_hypervolume(points[inside], ref))


# ------------------------------------------------------------------ pareto_front


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("seed", range(6))
def test_pareto_mask_matches_brute_force(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    df, directions = _random_frame(rng, 60, k)
    objectives = [f"o{i}" for i in range(k)]
    mask = results.pareto_front(df, objectives=objectives, directions=directions, mask=True)
    assert mask.dtype == bool and mask.index.equals(df.index)

    eligible = (df["state"] == "COMPLETE") & df[objectives].notna().all(axis=1)
    expected = pd.Series(False, index=df.index)
    sub = df.loc[eligible, objectives].to_numpy()
    expected[eligible] = _brute_force_front(sub, directions)
    pd.testing.assert_series_equal(mask, expected, check_names=False)

    front = results.pareto_front(df, objectives=objectives, directions=directions)
    assert set(front.index) == set(df.index[mask])
    first_min = directions.index("minimize") if "minimize" in directions else None
    if first_min is not None:
        assert front[objectives[first_min]].is_monotonic_increasing


def test_pareto_ties_all_kept_and_defaults() -> None:
    df = pd.DataFrame(
        {
            "accuracy": [0.9, 0.9, 0.8, 0.7, 0.95],
            "macs": [100, 100, 50, 60, 400],
            "state": ["COMPLETE", "COMPLETE", "COMPLETE", "COMPLETE", "FAIL"],
        }
    )
    mask = results.pareto_front(df, mask=True)  # known directions: max accuracy, min macs
    assert mask.tolist() == [True, True, True, False, False]
    front = results.pareto_front(df)
    assert front["macs"].tolist() == [50, 100, 100]


def test_pareto_bad_input() -> None:
    df = pd.DataFrame({"accuracy": [0.5], "macs": [1]})
    with pytest.raises(UserInputError, match="objectives"):
        results.pareto_front(df, objectives=("accuracy", "flops"))
    with pytest.raises(UserInputError, match="directions"):
        results.pareto_front(df, directions=("up", "down"))
    with pytest.raises(UserInputError, match="directions"):
        results.pareto_front(df.rename(columns={"macs": "cost"}), objectives=("accuracy", "cost"))


# ------------------------------------------------------------------ hypervolume


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_hypervolume_matches_optuna(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    n = 40
    values = rng.random((n, k))
    values[5] = values[3]  # exact duplicate
    directions = ["maximize"] + ["minimize"] * (k - 1)
    cols = [f"o{i}" for i in range(k)]
    df = pd.DataFrame(values, columns=cols)
    ref = [0.2] + [0.9] * (k - 1)  # some points fall outside the reference box
    hv = results.hypervolume(df, reference=ref, objectives=cols, directions=directions)

    sign = np.array([-1.0] + [1.0] * (k - 1))
    expected = _optuna_hv(values * sign, np.array(ref) * sign)
    assert hv > 0
    assert hv == pytest.approx(expected, rel=1e-10)
    by_name = results.hypervolume(df, reference=dict(zip(cols, ref)), objectives=cols, directions=directions)
    assert by_name == pytest.approx(hv)


def test_hypervolume_units_and_reference() -> None:
    df = pd.DataFrame({"accuracy": [0.9, 0.8], "macs": [200, 100]})
    # boxes: (0.9-0.5)*(300-200) + (0.8-0.5)*(200-100) = 40 + 30
    assert results.hypervolume(df, reference={"accuracy": 0.5, "macs": 300}) == pytest.approx(70)
    assert results.hypervolume(df, reference=(0.95, 300)) == 0.0  # nothing beats the reference
    with pytest.raises(UserInputError, match="reference"):
        results.hypervolume(df, reference=(0.5,))


# ------------------------------------------------------------------ knee


def test_knee_convex_front() -> None:
    # accuracy climbs steeply until 10 MMACs, then flattens: the elbow is trial 3.
    macs = [1e6, 2e6, 5e6, 1e7, 2e7, 5e7, 1e8]
    acc = [0.30, 0.55, 0.75, 0.88, 0.895, 0.90, 0.905]
    df = pd.DataFrame({"number": range(7), "accuracy": acc, "macs": macs, "state": ["COMPLETE"] * 7})
    df = pd.concat(
        [df, pd.DataFrame({"number": [7], "accuracy": [0.5], "macs": [9e7], "state": ["COMPLETE"]})], ignore_index=True
    )
    row = results.knee(df)
    assert isinstance(row, pd.Series)
    assert row["number"] == 3 and row.name == 3

    # a plain convex front in linear units: elbow at (1, 1)
    df2 = pd.DataFrame({"a": [0, 1, 4], "b": [4, 1, 0]})
    row = results.knee(df2, objectives=("a", "b"), directions=("minimize", "minimize"))
    assert row.name == 1

    # three objectives: closest to the ideal point
    df3 = pd.DataFrame({"a": [0, 1, 10], "b": [10, 1, 0], "c": [0, 1, 10]})
    row = results.knee(df3, objectives=("a", "b", "c"), directions=("minimize",) * 3)
    assert row.name == 1


def test_knee_empty_raises() -> None:
    df = pd.DataFrame({"accuracy": [np.nan], "macs": [1], "state": ["COMPLETE"]})
    with pytest.raises(UserInputError):
        results.knee(df)


# ------------------------------------------------------------------ load


KINDS = ["ir_e6_k3", "ir_e3_k5", "dwsep", "keep"]


def _fill_study(study: optuna.Study, seed: int, n_complete: int = 8) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n_complete):
        trial = study.ask()
        width = trial.suggest_float("width_mult", 0.25, 1.0)
        trial.suggest_categorical("resolution_mult", [0.5, 0.75, 1.0])
        trial.suggest_int("kernel_size", 3, 7, step=2)
        kind = trial.suggest_categorical("stage2.kind", KINDS)
        if kind.startswith("ir"):
            trial.suggest_int("stage2.expand_ratio", 1, 6)
        acc = float(0.4 + 0.5 * width + 0.02 * rng.random())
        macs = int(1e6 * width**2 * (1 + i)) + i
        trial.set_user_attr("accuracy", acc)
        trial.set_user_attr("test_accuracy", acc - 0.01)
        trial.set_user_attr("macs", macs)
        trial.set_user_attr("params", int(1e5 * width) + i)
        trial.set_user_attr("arch", f"w{width:.2f}-{kind}")
        trial.set_user_attr("arch_json", json.dumps({"width_mult": width, "kind": kind}))
        trial.set_user_attr("wall_time_s", 1.5 + i)
        trial.set_user_attr("epochs", 3)
        if study.user_attrs.get("mode") == "scalarised":
            study.tell(trial, acc * (macs / 5e6) ** -0.07)
        else:
            study.tell(trial, [acc, macs])
    failed = study.ask()
    failed.suggest_float("width_mult", 0.25, 1.0)
    failed.set_user_attr("fail_reason", "TrainingDiverged: loss is nan")
    study.tell(failed, state=TrialState.FAIL)
    study.ask()  # left RUNNING


@pytest.fixture()
def sqlite_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(
        study_name="pareto-a",
        storage=url,
        directions=["maximize", "minimize"],
        sampler=optuna.samplers.RandomSampler(seed=0),
    )  # seeded: some trials draw an "ir" kind
    study.set_metric_names(["accuracy", "macs"])
    study.set_user_attr("mode", "pareto")
    study.set_user_attr("space", "tiny")
    _fill_study(study, seed=0)
    results_dir = tmp_path / "results" / "pareto-a"
    results_dir.mkdir(parents=True)
    (results_dir / "meta.json").write_text(json.dumps({"storage": url, "study": "pareto-a"}))
    return url, results_dir


def test_load_columns_and_dtypes(sqlite_study) -> None:
    url, results_dir = sqlite_study
    df = results.load(url)
    assert len(df) == 10
    assert df["number"].dtype == np.int64
    assert isinstance(df["state"].dtype, pd.CategoricalDtype)
    assert list(df["state"].cat.categories) == list(results.STATES)
    assert df["state"].value_counts()[["COMPLETE", "FAIL", "RUNNING"]].tolist() == [8, 1, 1]
    for column in ("macs", "params", "epochs"):
        assert df[column].dtype == "Int64", column
    for column in ("accuracy", "test_accuracy", "duration_s", "wall_time_s", "width_mult", "resolution_mult"):
        assert df[column].dtype == np.float64, column
    assert df["kernel_size"].dtype == "Int64"
    assert df["stage2.expand_ratio"].dtype == "Int64"
    assert isinstance(df["stage2.kind"].dtype, pd.CategoricalDtype)
    assert list(df["stage2.kind"].cat.categories) == KINDS
    assert "latency_ms" not in df.columns
    for column in ("arch", "arch_json", "datetime_start", "datetime_complete", "fail_reason"):
        assert column in df.columns

    complete = df[df["state"] == "COMPLETE"]
    assert complete["macs"].notna().all() and complete["fail_reason"].isna().all()
    running = df[df["state"] == "RUNNING"].iloc[0]
    assert pd.isna(running["accuracy"]) and pd.isna(running["macs"])
    assert pd.isna(running["duration_s"])
    failed = df[df["state"] == "FAIL"].iloc[0]
    assert failed["fail_reason"] == "TrainingDiverged: loss is nan"
    assert pd.isna(failed["macs"])

    assert df.attrs["study"] == "pareto-a"
    assert df.attrs["mode"] == "pareto"
    assert df.attrs["directions"]["accuracy"] == "maximize"
    assert df.attrs["directions"]["macs"] == "minimize"
    assert df.attrs["space"] == "tiny"
    assert "stage2.kind" in df.attrs["params"]

    by_dir = results.load(results_dir)
    pd.testing.assert_frame_equal(df, by_dir)
    by_study = results.load(optuna.load_study(study_name="pareto-a", storage=url))
    pd.testing.assert_frame_equal(df, by_study)
    # A running study's frame feeds the front code directly.
    assert results.pareto_front(df, mask=True)[df["state"] != "COMPLETE"].sum() == 0


def test_load_ambiguous_and_missing(sqlite_study, tmp_path) -> None:
    url, _ = sqlite_study
    other = optuna.create_study(study_name="pareto-b", storage=url, directions=["maximize", "minimize"])
    other.set_metric_names(["accuracy", "macs"])
    with pytest.raises(UserInputError, match="pareto-a.*pareto-b"):
        results.load(url)
    assert len(results.load(url, study="pareto-b")) == 0
    with pytest.raises(UserInputError, match="pareto-a"):
        results.load(url, study="nope")
    with pytest.raises(UserInputError, match="source"):
        results.load(tmp_path / "nowhere")
    with pytest.raises(UserInputError, match="storage"):
        results.load(f"sqlite:///{tmp_path / 'missing.db'}")
    assert not (tmp_path / "missing.db").exists()


def test_load_scalarised_and_journal(tmp_path) -> None:
    from optuna.storages.journal import JournalFileBackend

    path = tmp_path / "journal.log"
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    study = optuna.create_study(
        study_name="mnas", storage=storage, direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1)
    )
    study.set_metric_names(["reward"])
    study.set_user_attr("mode", "scalarised")
    _fill_study(study, seed=1, n_complete=5)
    df = results.load(path)
    assert df.attrs["mode"] == "scalarised"
    assert df.attrs["directions"]["reward"] == "maximize"
    assert {"reward", "accuracy", "macs", "params"} <= set(df.columns)
    assert df["macs"].dtype == "Int64" and df["reward"].dtype == np.float64
    assert df.loc[df["state"] == "COMPLETE", "accuracy"].notna().all()
    assert len(results.pareto_front(df)) >= 1


# ------------------------------------------------------------------ plots, outputs, compare


def test_plot_pareto_data_and_axes(sqlite_study) -> None:
    df = results.load(sqlite_study[0])
    data = plot_mod._pareto_plot_data(df, x="macs", y="accuracy", baselines=None, annotate_knee=True)
    assert data.main.drawstyle == "steps-post" and data.x_log
    assert np.all(np.diff(data.main.x_front) >= 0)
    assert data.main.y_all.max() > 1  # percent
    baseline = df.assign(accuracy=df["accuracy"] - 0.05)
    ax = results.plot_pareto(df, baselines={"random": baseline})
    assert ax.get_xscale() == "log"
    assert ax.get_xlabel() == "MACs (multiply-accumulates, log scale)"
    labels = ax.get_legend_handles_labels()[1]
    assert "random" in labels and any(label.startswith("Pareto front") for label in labels)


def test_write_outputs_roundtrip(sqlite_study, tmp_path) -> None:
    df = results.load(sqlite_study[0])
    paths = results.write_outputs(df, tmp_path / "out")
    assert set(paths) == {"trials", "pareto", "plot"}
    trials = pd.read_csv(paths["trials"])
    assert len(trials) == len(df)
    pareto = pd.read_csv(paths["pareto"])
    front = results.pareto_front(df)
    assert pareto["number"].tolist() == front["number"].tolist()
    assert list(pareto.columns[:5]) == ["number", "accuracy", "test_accuracy", "macs", "params"]
    assert "stage2.kind" in pareto.columns and "arch" in pareto.columns
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in paths["plot"].parent.iterdir() if p.name.endswith(".tmp")]
    # A frame read back from CSV still works (directions from the known names).
    assert results.pareto_front(trials)["number"].tolist() == front["number"].tolist()

    table = results.pareto_table(df)
    assert list(table.columns) == ["trial", "accuracy %", "test accuracy %", "MACs (M)", "params (M)", "arch"]
    assert len(table) == len(front)


def test_compare(sqlite_study, tmp_path) -> None:
    df_a = results.load(sqlite_study[0])
    url_b = f"sqlite:///{tmp_path / 'b.db'}"
    study_b = optuna.create_study(
        study_name="pareto-b",
        storage=url_b,
        directions=["maximize", "minimize"],
        sampler=optuna.samplers.RandomSampler(seed=5),
    )
    study_b.set_metric_names(["accuracy", "macs"])
    _fill_study(study_b, seed=5, n_complete=4)
    df_b = results.load(url_b)
    table = results.compare({"a": df_a, "b": df_b})
    assert table["name"].tolist() == ["a", "b"]
    assert table["n_trials"].tolist() == [10, 6]
    assert table["n_complete"].tolist() == [8, 4]
    assert (table["hypervolume_logmacs"] > 0).all()
    assert table["min_macs"].dtype == "Int64"
    assert (table["front_size"] >= 1).all()
    for _, row in table.iterrows():
        assert not math.isnan(row["knee_accuracy"])


def test_objectives_table() -> None:
    assert list(results.OBJECTIVES) == ["accuracy", "macs", "params", "latency_ms", "reward"]
    for name, record in results.OBJECTIVES.items():
        assert isinstance(record, results.Objective) and record.name == name
        assert record.direction in ("maximize", "minimize") and record.label and record.measured_by
        assert results.objective(name) is record
    assert [n for n, o in results.OBJECTIVES.items() if o.searchable] == ["accuracy", "macs", "params", "latency_ms"]
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'direction'"):
        results.OBJECTIVES["macs"].direction = "maximize"  # type: ignore[misc]


def test_unknown_objective_lists_the_table() -> None:
    with pytest.raises(UserInputError) as info:
        results.objective("flops")
    message = str(info.value)
    assert message.startswith("search.objectives:") and "'flops'" in message
    assert ", ".join(results.OBJECTIVES) in message


def test_column_facts_come_from_the_objectives_table() -> None:
    for name, record in results.OBJECTIVES.items():
        assert results.KNOWN_DIRECTIONS[name] == record.direction
        assert (name in results.LOG_SCALE_COLUMNS) == record.log_axis
    assert results.KNOWN_DIRECTIONS["test_accuracy"] == "maximize"
    assert set(results.KNOWN_DIRECTIONS) == set(results.OBJECTIVES) | {"test_accuracy"}
    assert results.LOG_SCALE_COLUMNS == ("macs", "params", "latency_ms")
