"""Searched fronts against baselines: compare(baselines=...) with its hypervolume ratio on one
common reference, plot_fronts, write_comparison, load_baselines."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from nas_sepconv import results
from nas_sepconv.errors import UserInputError


def _frame(points: list[tuple[float, int]], *, objectives: list[str] | None = None, study: str = "s") -> pd.DataFrame:
    """A results frame of COMPLETE trials (accuracy, MACs)."""
    df = pd.DataFrame(
        {
            "number": np.arange(len(points)),
            "state": pd.Categorical(["COMPLETE"] * len(points), categories=list(results.STATES)),
            "accuracy": [a for a, _ in points],
            "macs": pd.array([m for _, m in points], dtype="Int64"),
        }
    )
    if objectives is not None:
        df.attrs.update(objectives=objectives, study=study)
    return df


# searched: (0.9, 1e3) and (0.7, 1e2); with the reference (0.5, 1e4), in accuracy x log10 MACs:
# 0.4 x 1 + 0.2 x 2 - 0.2 x 1 (the overlap) = 0.6.  Baselines: (0.8, 1e3) -> 0.3 x 1 = 0.3 (the
# best), (0.6, 1e2) -> 0.1 x 2 = 0.2.
SEARCHED = [(0.9, 1000), (0.7, 100), (0.6, 5000)]  # the last one dominated
MNV2 = [(0.8, 1000)]
MNV3 = [(0.6, 100)]


def test_compare_with_baselines_gives_the_exact_hypervolume_ratio():
    table = results.compare(
        {"searched": _frame(SEARCHED)},
        baselines={"mnv2": _frame(MNV2), "mnv3": _frame(MNV3)},
        reference={"accuracy": 0.5, "macs": 1e4},
    )
    assert table["name"].tolist() == ["searched", "mnv2", "mnv3"]
    assert table["baseline"].tolist() == [False, True, True]
    assert table["hypervolume_logmacs"].to_numpy() == pytest.approx([0.6, 0.3, 0.2], abs=1e-12)
    assert table["hypervolume_ratio"].to_numpy() == pytest.approx([2.0, 1.0, 2 / 3], abs=1e-12)
    assert table.attrs["best_baseline"] == "mnv2"
    assert table.attrs["hypervolume_column"] == "hypervolume_logmacs"


def test_the_default_reference_covers_the_baselines_too():
    """Worst accuracy 0.6 and worst log10 MACs 3.69897 (5000) over every study, pushed out by
    1% of the ranges (0.3 and 1.69897): the baselines' points count."""
    table = results.compare({"searched": _frame(SEARCHED)}, baselines={"mnv2": _frame(MNV2), "mnv3": _frame(MNV3)})
    ref = table.attrs["reference"]
    assert ref["accuracy"] == pytest.approx(0.6 - 0.003)
    assert ref["macs"] == pytest.approx(math.log10(5000) + 0.01 * (math.log10(5000) - 2))
    alone = results.compare({"mnv3": _frame(MNV3)})  # alone, mnv3 would set a different one
    assert alone.attrs["reference"] != ref
    for name, points in (("searched", SEARCHED), ("mnv2", MNV2)):
        hv = results.hypervolume(
            _frame(points).assign(macs=np.log10(_frame(points)["macs"].astype(float))),
            reference=[ref["accuracy"], ref["macs"]],
        )
        assert table.set_index("name").loc[name, "hypervolume_logmacs"] == pytest.approx(hv)
    best = table.set_index("name")["hypervolume_logmacs"]
    assert table.set_index("name").loc["searched", "hypervolume_ratio"] == pytest.approx(
        best["searched"] / best["mnv2"]
    )


def test_compare_without_baselines_has_no_ratio():
    table = results.compare({"a": _frame(SEARCHED), "b": _frame(MNV2)})
    assert not table["baseline"].any() and table["hypervolume_ratio"].isna().all()
    assert table.attrs["best_baseline"] is None


def test_a_baseline_of_zero_hypervolume_gives_an_infinite_ratio():
    table = results.compare(
        {"s": _frame(SEARCHED)}, baselines={"b": _frame([(0.1, 10**6)])}, reference={"accuracy": 0.5, "macs": 1e4}
    )
    assert table["hypervolume_ratio"].tolist()[0] == math.inf and math.isnan(table["hypervolume_ratio"].tolist()[1])


def test_compare_refuses_mismatched_objectives_and_clashing_names():
    searched = _frame(SEARCHED, objectives=["accuracy", "macs"])
    other = _frame(MNV2, objectives=["accuracy", "macs", "params"], study="b")
    with pytest.raises(UserInputError, match=r"searched \['accuracy', 'macs', 'params'\]") as info:
        results.compare({"s": searched}, baselines={"b": other})
    assert info.value.field == "baselines"
    with pytest.raises(UserInputError, match="both a study and a baseline"):
        results.compare({"s": searched}, baselines={"s": searched})
    with pytest.raises(UserInputError) as info:
        results.compare({"s": searched}, baselines={"b": _frame(MNV2).drop(columns="macs")})
    assert "macs" in str(info.value)


def test_plot_fronts_draws_one_labelled_line_per_study():
    ax = results.plot_fronts({"searched": _frame(SEARCHED)}, baselines={"mnv2": _frame(MNV2), "mnv3": _frame(MNV3)})
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["searched (2 on the front)", "mnv2 (1 on the front)", "mnv3 (1 on the front)"]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert lines["searched (2 on the front)"].get_linestyle() == "-"
    assert lines["mnv2 (1 on the front)"].get_linestyle() == "--"
    assert len({line.get_color() for line in lines.values()}) == 3
    assert ax.get_xscale() == "log" and ax.get_ylabel() == "Validation accuracy (%)"
    assert max(lines["searched (2 on the front)"].get_ydata()) == pytest.approx(90.0)  # in %
    with pytest.raises(UserInputError, match="mnv2"):
        results.plot_fronts({"searched": _frame(SEARCHED)}, baselines={"mnv2": _frame(MNV2).drop(columns="accuracy")})


def test_write_comparison_writes_the_table_and_the_plot(tmp_path):
    table, paths = results.write_comparison(
        {"searched": _frame(SEARCHED)}, tmp_path / "out", baselines={"mnv2": _frame(MNV2), "mnv3": _frame(MNV3)}
    )
    assert set(paths) == {"comparison", "plot"} and paths["plot"].stat().st_size > 1000
    written = pd.read_csv(paths["comparison"])
    assert written["name"].tolist() == ["searched", "mnv2", "mnv3"]
    assert written["hypervolume_ratio"].to_numpy() == pytest.approx(table["hypervolume_ratio"].to_numpy())
    assert written["reference_macs"].iloc[0] == pytest.approx(10 ** table.attrs["reference"]["macs"])
    shown = results.comparison_table(table)
    assert list(shown.columns) == [
        "study",
        "role",
        "complete",
        "front",
        "best accuracy %",
        "min MACs (M)",
        "test ratio",
        "90% interval",
        "val ratio",
        "train TMACs",
    ]
    assert shown["role"].tolist() == ["searched", "baseline", "baseline"]
    assert results.reference_line(table).startswith("reference point: accuracy 59.70%, MACs 0.005")


def test_write_comparison_writes_nothing_when_the_objectives_differ(tmp_path):
    with pytest.raises(UserInputError) as info:
        results.write_comparison(
            {"s": _frame(SEARCHED, objectives=["accuracy", "macs"])},
            tmp_path / "out",
            baselines={"b": _frame(MNV2, objectives=["reward"])},
            field="--baseline",
        )
    assert info.value.field == "--baseline"
    assert not (tmp_path / "out").exists()


def test_load_baselines_names_the_folder_that_holds_no_study(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="empty is not a results folder") as info:
        results.load_baselines([tmp_path / "empty"], field="--baseline")
    assert info.value.field == "--baseline"
    with pytest.raises(UserInputError, match="is not a folder"):
        results.load_baselines([tmp_path / "missing"])
