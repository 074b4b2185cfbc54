"""Trials the multi-fidelity mode stopped early (``stopped_early``): their own columns in the
frame, and off the front, the hypervolume, the knee, the report table and the front of the plot
by default (``include_stopped=True``: all), drawn apart in the plot."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest

from nas_sepconv import results

optuna.logging.set_verbosity(optuna.logging.WARNING)

# (accuracy, macs, rung results): rungs at epochs 1 and 3 of a 9-epoch budget
TRIALS = [
    (0.80, 300, [(1, 0.5, True), (3, 0.7, True), (9, 0.80, None)]),
    (0.90, 500, [(1, 0.6, True), (3, 0.8, True), (9, 0.90, None)]),
    (0.70, 200, [(1, 0.4, True), (3, 0.6, True), (9, 0.70, None)]),
    (0.95, 100, [(1, 0.7, True), (3, 0.95, False)]),  # stopped at epoch 3: would dominate the front
    (0.85, 50, [(1, 0.85, False)]),  # stopped at epoch 1
]


@pytest.fixture()
def frame() -> pd.DataFrame:
    study = optuna.create_study(study_name="mf", directions=["maximize", "minimize"])
    study.set_metric_names(["accuracy", "macs"])
    study.set_user_attr("multi_fidelity", {"min_epochs": 1, "eta": 3, "rungs": [1, 3, 9]})
    for accuracy, macs, rungs in TRIALS:
        trial = study.ask()
        trial.suggest_float("width_mult", 0.25, 1.0)
        entries = [
            {"epoch": e, "accuracy": a, "macs": macs, **({} if p is None else {"promoted": p, "population": 3})}
            for e, a, p in rungs
        ]
        for key, value in {
            "accuracy": accuracy,
            "macs": macs,
            "epochs": rungs[-1][0],
            "epochs_trained": rungs[-1][0],
            "stopped_early": rungs[-1][2] is False,
            "rung_results": entries,
        }.items():
            trial.set_user_attr(key, value)
        study.tell(trial, [accuracy, macs])
    study.ask()  # left RUNNING
    return results.load(study)


def test_the_frame_has_the_rung_columns(frame):
    assert str(frame["stopped_early"].dtype) == "boolean" and str(frame["epochs_trained"].dtype) == "Int64"
    assert frame["stopped_early"].tolist()[:5] == [False, False, False, True, True] and pd.isna(
        frame["stopped_early"].iloc[5]
    )
    assert frame["epochs_trained"].tolist()[:5] == [9, 9, 9, 3, 1]
    assert int(frame["epochs_trained"].sum()) == 31  # the epochs the study spent
    assert frame["rung"].tolist()[:5] == [2, 2, 2, 1, 0]
    assert frame["accuracy_epoch_1"].tolist()[:5] == [0.5, 0.6, 0.4, 0.7, 0.85]
    assert frame["accuracy_epoch_3"].tolist()[:4] == [0.7, 0.8, 0.6, 0.95] and pd.isna(
        frame["accuracy_epoch_3"].iloc[4]
    )
    assert frame["accuracy_epoch_9"].notna().sum() == 3
    assert frame.attrs["multi_fidelity"]["rungs"] == [1, 3, 9]
    assert "rung_results" not in frame.columns


def test_a_study_without_the_mode_has_epochs_trained_and_no_stopped_trial():
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_metric_names(["accuracy", "macs"])
    for epochs in (5, 0):
        trial = study.ask()
        trial.set_user_attr("epochs", epochs)
        study.tell(trial, [0.5, 100])
    df = results.load(study)
    assert df["epochs_trained"].tolist() == [5, 0] and df["stopped_early"].tolist() == [False, False]
    assert "rung" not in df.columns


def test_stopped_trials_are_off_the_front_knee_hypervolume_and_table(frame):
    assert list(results.pareto_front(frame)["number"]) == [2, 0, 1]
    assert list(results.pareto_front(frame, include_stopped=True)["number"]) == [4, 3]
    assert int(results.knee(frame)["number"]) in (0, 1, 2)
    assert int(results.knee(frame, include_stopped=True)["number"]) in (3, 4)
    full = frame[frame["stopped_early"] == False]  # noqa: E712
    reference = {"accuracy": 0.0, "macs": 1000}
    assert results.hypervolume(frame, reference=reference) == pytest.approx(
        results.hypervolume(full, reference=reference)
    )
    assert results.hypervolume(frame, reference=reference, include_stopped=True) > results.hypervolume(
        frame, reference=reference
    )
    assert list(results.pareto_table(frame)["trial"]) == [2, 0, 1]


def test_the_plot_draws_stopped_trials_apart_from_the_front(frame):
    ax = results.plot_pareto(frame)
    labels = ax.get_legend_handles_labels()[1]
    assert "Pareto front (3)" in labels and "stopped early, at their last rung (2)" in labels
    without = frame.drop(columns=["stopped_early"])  # a frame of any other study: all taken
    assert "Pareto front (2)" in results.plot_pareto(without).get_legend_handles_labels()[1]
