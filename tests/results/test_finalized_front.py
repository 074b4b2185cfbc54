"""A one-shot study of which only some trials were finalised: its front is the finalised
trials' (an inherited accuracy and one trained alone are not on one scale), and the report says
which trials were left out."""

from __future__ import annotations

import pandas as pd

from nas_sepconv import results


def _frame(sources: list[str]) -> pd.DataFrame:
    # trial 3 would dominate everything with its (inherited) accuracy
    return pd.DataFrame(
        {
            "number": range(len(sources)),
            "state": ["COMPLETE"] * len(sources),
            "accuracy": [0.80, 0.90, 0.70, 0.99][: len(sources)],
            "macs": [300, 500, 200, 50][: len(sources)],
            "accuracy_source": sources,
        }
    )


def test_a_partly_finalised_study_has_the_finalised_trials_front():
    df = _frame(["finalized", "finalized", "inherited", "inherited"])
    assert sorted(results.pareto_front(df)["number"]) == [0, 1]
    assert list(results.pareto_front(df, mask=True)) == [True, True, False, False]
    assert results.finalized_line(df) == (
        "front of the 2 finalised trials; 2 trials with inherited accuracy are left out of it "
        "(their accuracy_source in trials.csv)"
    )


def test_an_unfinalised_or_wholly_finalised_study_is_as_before():
    inherited = _frame(["inherited"] * 4)
    assert sorted(results.pareto_front(inherited)["number"]) == [3]
    assert results.finalized_line(inherited) is None
    trained = _frame(["trained"] * 4)
    assert sorted(results.pareto_front(trained)["number"]) == [3]
    assert results.finalized_line(trained) is None
    assert results.finalized_line(_frame(["finalized"] * 4)) is None
    assert results.finalized_line(trained.drop(columns="accuracy_source")) is None
