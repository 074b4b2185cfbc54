"""The comparison protocol (issue 26): the front chosen on validation and scored on the test
split, the bootstrap interval over the test images, normalised axes, the chance reference and
the compute spent (``ns.results.compare``, ``ns.results.bootstrap_ratios``)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import nas_sepconv as ns
from nas_sepconv.errors import UserInputError
from nas_sepconv.results.protocol import pack_correct, unpack_correct

N_TEST = 400


def correct_vector(accuracy: float, *, offset: int = 0) -> np.ndarray:
    """N_TEST booleans, the first ``accuracy`` share right (rotated by ``offset``)."""
    bits = np.arange(N_TEST) < round(accuracy * N_TEST)
    return np.roll(bits, offset)


def frame(points: list[tuple[float, float, int]], *, correct: bool = True, **columns) -> pd.DataFrame:
    """A results frame of COMPLETE trials (validation accuracy, test accuracy, MACs)."""
    df = pd.DataFrame(
        {
            "number": range(len(points)),
            "state": "COMPLETE",
            "accuracy": [p[0] for p in points],
            "test_accuracy": [correct_vector(p[1]).mean() for p in points],
            "macs": [p[2] for p in points],
            **columns,
        }
    )
    if correct:
        df["test_correct"] = [pack_correct(correct_vector(p[1])) for p in points]
    return df


FAMILY = [(0.6, 0.55, 10_000), (0.8, 0.75, 100_000), (0.9, 0.85, 1_000_000)]


def test_packed_correctness_round_trips_and_refuses_malformed_text():
    bits = np.random.default_rng(0).random(1001) < 0.3
    text = pack_correct(bits)
    assert text.startswith("1001:") and len(text) < 200
    assert np.array_equal(unpack_correct(text), bits)
    for bad in (None, math.nan, "", "12", "x:AAAA", "9:AA", "3:@@@@", "-1:"):
        assert unpack_correct(bad) is None, bad


def test_identical_studies_have_ratio_one_and_a_tight_interval():
    table = ns.results.compare({"a": frame(FAMILY)}, baselines={"b": frame(FAMILY)}, resamples=200)
    row = table.set_index("name").loc["a"]
    assert row["test_hypervolume_ratio"] == pytest.approx(1.0)
    assert row["test_ratio_low"] == pytest.approx(1.0) and row["test_ratio_high"] == pytest.approx(1.0)
    assert row["test_ratio_unit"] == pytest.approx(1.0) and row["hypervolume_ratio"] == pytest.approx(1.0)


def test_a_dominated_study_scores_below_one_with_its_interval():
    worse = [(a, t - 0.1, m) for a, t, m in FAMILY]  # right on a subset of the family's images
    table = ns.results.compare({"worse": frame(worse)}, baselines={"family": frame(FAMILY)}, resamples=300)
    row = table.set_index("name").loc["worse"]
    assert row["test_hypervolume_ratio"] < 1
    assert row["test_ratio_low"] <= row["test_hypervolume_ratio"] <= row["test_ratio_high"] <= 1.0
    assert row["test_ratio_low"] < row["test_ratio_high"]
    again = ns.results.compare({"worse": frame(worse)}, baselines={"family": frame(FAMILY)}, resamples=300)
    assert again["test_ratio_low"].iloc[0] == row["test_ratio_low"]  # seeded
    assert table.attrs["interval"] == 0.9


def test_the_front_is_chosen_on_validation_and_scored_on_test():
    # trial 1 is best on test but dominated on validation: it must not count
    study = frame([(0.9, 0.5, 100_000), (0.8, 0.95, 100_000)])
    table = ns.results.compare({"s": study}, baselines={"b": frame(FAMILY)}, resamples=10)
    ref = table.attrs["test_reference"]
    only_first = pd.DataFrame({"accuracy": [0.5], "macs": [100_000], "state": "COMPLETE"})
    logged = only_first.assign(macs=np.log10(only_first["macs"]))
    expected = ns.results.hypervolume(logged, reference=[ref["accuracy"], math.log10(ref["macs"])])
    assert table.set_index("name").loc["s", "test_hypervolume_logmacs"] == pytest.approx(expected)
    # the test reference: the worst test accuracy of every front point, pushed out by 1% of the range
    assert ref["accuracy"] == pytest.approx(0.5 - 0.01 * (0.85 - 0.5))


def test_normalised_axes_and_the_chance_reference_give_the_unit_box_ratios():
    study, family = frame([(0.9, 0.9, 10_000)]), frame([(0.6, 0.6, 10_000), (0.9, 0.8, 1_000_000)])
    table = ns.results.compare({"s": study}, baselines={"f": family}, chance=0.1, resamples=10).set_index("name")
    # unit box: accuracy 0.6..0.9 -> (0.9 - a) / 0.3, log MACs 4..6 -> (x - 4) / 2; reference (1, 1)
    assert table.loc["s", "test_hypervolume_unit"] == pytest.approx(1.0)  # the ideal corner
    family_unit = (1 - 0) * (1 - 0) * 0  # its points: (1, 0) and (1/3, 1): no volume before the reference
    assert table.loc["f", "test_hypervolume_unit"] == pytest.approx(family_unit)
    assert table.loc["s", "test_ratio_unit"] == math.inf
    # chance: the accuracy reference at 0.1, i.e. (0.9 - 0.1) / 0.3 = 8/3 on the unit axis
    s_hv, f_hv = (8 / 3) * 1, (8 / 3 - 1) * 1 + 0  # family: (1, 0) -> 5/3 x 1; (1/3, 1) -> nothing
    assert table.loc["s", "test_ratio_chance"] == pytest.approx(s_hv / f_hv)


def test_the_chance_level_comes_from_the_frames_classes():
    study, family = frame(FAMILY), frame(FAMILY)
    study.attrs["num_classes"] = 10
    table = ns.results.compare({"s": study}, baselines={"f": family}, resamples=10)
    assert table["test_ratio_chance"].tolist() == pytest.approx([1.0, 1.0])
    no_classes = ns.results.compare({"s": frame(FAMILY)}, baselines={"f": family}, resamples=10)
    assert no_classes["test_ratio_chance"].isna().all()


def test_old_studies_without_per_image_correctness_get_na_intervals_not_errors():
    old = frame(FAMILY, correct=False)
    table = ns.results.compare({"new": frame(FAMILY)}, baselines={"old": old}, resamples=10)
    assert table["test_ratio_low"].isna().all() and table["test_ratio_high"].isna().all()  # a baseline lacks it
    assert table["test_hypervolume_ratio"].iloc[0] == pytest.approx(1.0)  # the ratio itself needs none
    no_test = frame(FAMILY, correct=False).drop(columns="test_accuracy")
    table = ns.results.compare({"untested": no_test}, baselines={"new": frame(FAMILY)}, resamples=10)
    assert math.isnan(table["test_hypervolume_ratio"].iloc[0]) and table["train_compute"].isna().all()


def test_a_study_without_correctness_beside_complete_ones_is_na_alone():
    table = ns.results.compare(
        {"old": frame(FAMILY, correct=False), "new": frame(FAMILY)}, baselines={"f": frame(FAMILY)}, resamples=10
    ).set_index("name")
    assert math.isnan(table.loc["old", "test_ratio_low"]) and table.loc["new", "test_ratio_low"] == pytest.approx(1)


def test_compare_sums_the_compute_each_study_spent():
    spent = frame(FAMILY, train_compute=[10, 20, 30], wall_time_s=[1.5, 2.0, 0.5])
    table = ns.results.compare({"s": spent}, baselines={"f": frame(FAMILY)}, resamples=10)
    assert table["train_compute"].tolist()[0] == 60 and table["wall_time_s"].tolist()[0] == pytest.approx(4.0)
    assert pd.isna(table["train_compute"].iloc[1]) and table["train_compute"].dtype == "Int64"


def test_bootstrap_ratios_is_public_and_checks_its_arguments():
    frames = {"s": frame(FAMILY), "f": frame(FAMILY)}
    out = ns.results.bootstrap_ratios(frames, baselines=["f"], resamples=20, seed=3)
    assert out["name"].tolist() == ["s", "f"] and out["ratio_low"].tolist() == pytest.approx([1.0, 1.0])
    with pytest.raises(UserInputError) as err:
        ns.results.bootstrap_ratios(frames, baselines=["f"], resamples=0)
    assert err.value.field == "resamples"
    with pytest.raises(UserInputError) as err:
        ns.results.compare({"s": frame(FAMILY)}, baselines={"f": frame(FAMILY)}, level=1.5)
    assert err.value.field == "level"
