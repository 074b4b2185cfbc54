"""Issue 15: a trial over a hard budget (Optuna constraint > 0, or ``feasible`` False) is marked
in the frame and kept off the front, the hypervolume, the knee, the report table and the plot."""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
import pytest

from nas_sepconv import results

optuna.logging.set_verbosity(optuna.logging.WARNING)

# (accuracy, macs, how it is over budget): the two infeasible trials would dominate the front
TRIALS = [
    (0.80, 300, None),
    (0.90, 500, None),
    (0.70, 200, None),
    (0.99, 10, "constraint"),  # an Optuna constraint only (any Optuna study)
    (0.95, 20, "attr"),  # the search's own record: user attr feasible False
]


@pytest.fixture()
def frame() -> pd.DataFrame:
    study = optuna.create_study(study_name="budget", directions=["maximize", "minimize"])
    study.set_metric_names(["accuracy", "macs"])
    for accuracy, macs, over in TRIALS:
        trial = study.ask()
        trial.suggest_float("width_mult", 0.25, 1.0)
        trial.set_user_attr("accuracy", accuracy)
        trial.set_user_attr("macs", macs)
        trial.set_user_attr("arch", f"a{macs}")
        if over == "constraint":
            trial.set_constraint("max_macs", 5.0)
        elif over == "attr":
            trial.set_user_attr("feasible", False)
        study.tell(trial, [accuracy, macs])
    study.ask()  # left RUNNING: feasibility unknown
    return results.load(study)


def test_the_frame_has_a_feasible_column(frame):
    assert str(frame["feasible"].dtype) == "boolean"
    assert frame["feasible"].tolist()[:5] == [True, True, True, False, False]
    assert pd.isna(frame["feasible"].iloc[5])


def test_infeasible_trials_are_off_the_front_knee_and_hypervolume(frame):
    assert list(results.pareto_front(frame)["number"]) == [2, 0, 1]
    assert int(results.knee(frame)["number"]) in (0, 1, 2)
    feasible_only = frame[frame["feasible"].fillna(False)]
    reference = {"accuracy": 0.0, "macs": 1000}
    assert results.hypervolume(frame, reference=reference) == pytest.approx(
        results.hypervolume(feasible_only, reference=reference)
    )
    assert list(results.pareto_table(frame)["trial"]) == [2, 0, 1]


def test_the_plot_leaves_infeasible_trials_out_and_says_so(frame):
    ax = results.plot_pareto(frame)
    drawn = np.concatenate([c.get_offsets()[:, 0] for c in ax.collections if len(c.get_offsets())])
    assert not set(drawn) & {10.0, 20.0}
    labels = ax.get_legend_handles_labels()[1]
    assert any("over budget" in label and "2" in label for label in labels), labels
