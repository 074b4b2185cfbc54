"""Smoke test of benchmarks/fronts.py at toy size: the digits configuration with every space
overridden alike (200 images, one epoch, two trials, the two smallest alphas at 8x8)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import load_benchmark  # tests/ is on sys.path

TOY = {
    "data": {"subset": 200},
    "train": {"epochs": 1},
    "search": {"trials": 2},
    "build": {"width_mult": [0.35, 0.5], "resolution_mult": 0.5},
}


@pytest.fixture(scope="module")
def bench():
    yield from load_benchmark("fronts")


def test_the_configurations_compare_a_searched_space_with_both_families(bench):
    from nas_sepconv.search import load_space

    for name, config in bench.CONFIGS.items():
        assert len(config.baselines) == 2, name
        searched = load_space(config.searched).spec
        for baseline in config.baselines:
            spec = load_space(baseline).spec
            assert spec.train == searched.train and spec.data == searched.data
    assert bench.CONFIGS["cifar10-full"].device == "cuda" and not bench.CONFIGS["cifar10-full"].overrides


def test_searched_overrides_reach_the_searched_space_alone(bench, tmp_path):
    import dataclasses

    import yaml

    config = dataclasses.replace(
        bench.CONFIGS["digits"], overrides={"train": {"epochs": 3}}, searched_overrides={"search": {"trials": 7}}
    )
    files = bench.space_files(config, tmp_path, {})
    spaces = {name: yaml.safe_load(Path(path).read_text()) for name, path in files.items()}
    assert all(space["train"]["epochs"] == 3 for space in spaces.values())  # the recipe: every space alike
    assert spaces["default"]["search"]["trials"] == 7
    assert [spaces[b]["search"]["trials"] for b in config.baselines] == [6, 5]  # each alpha once, untouched
    cifar = bench.CONFIGS["cifar10"]
    assert cifar.multi_fidelity == {"min_epochs": 1, "eta": 2} and "search" not in cifar.overrides


def test_multi_fidelity_summary_finds_the_epochs_to_the_full_hypervolume(bench):
    rows = [
        (0, "s", 5, 0.1),
        (0, "s", 10, 0.3),
        (0, "s", 20, 0.4),  # the full search: 20 epochs, 0.4
        (0, "s_multifidelity", 2, 0.2),
        (0, "s_multifidelity", 8, 0.45),
        (0, "s_multifidelity", 30, 0.5),
        (1, "s", 10, 0.2),
        (1, "s_multifidelity", 9, 0.1),
    ]  # seed 1: never reached
    curves = pd.DataFrame(rows, columns=["seed", "study", "epochs_spent", "hypervolume"])
    mf = bench.multi_fidelity_summary(curves, "s").set_index("seed")
    assert mf.loc[0, "mf_epochs_to_full_hv"] == 8 and mf.loc[0, "epochs_ratio"] == 0.4 and mf.loc[0, "met"]
    assert mf.loc[0, "full_hv_at_half"] == 0.3 and mf.loc[0, "mf_hv_at_half"] == 0.45
    assert mf.loc[1, "mf_epochs_to_full_hv"] == "not reached" and not mf.loc[1, "met"]


@pytest.mark.slow  # three searches with their outputs: about 20 s
def test_toy_run_writes_the_tables_and_plots(bench, tmp_path, one_thread):
    table = bench.run(
        "digits",
        seeds=[0],
        out=tmp_path,
        threads=1,
        data_root=None,
        overrides=TOY,
        equal_compute=False,
        command="python benchmarks/fronts.py digits (toy)",
        log=lambda msg: None,
    )
    assert table["study"].tolist() == ["default", "mobilenetv2_width_digits", "mobilenetv3small_width_digits"]
    assert table["role"].tolist() == ["searched", "baseline", "baseline"] and (table["complete"] == 2).all()
    best = table[table["role"] == "baseline"]["hypervolume"].max()
    assert table["ratio"].iloc[0] == pytest.approx(table["hypervolume"].iloc[0] / best)
    assert table["epochs_spent"].tolist() == [2, 2, 2] and "ratio_floor" in table.columns
    for name in (
        "fronts.csv",
        "fronts.md",
        "fronts.png",
        "hv_by_epochs.csv",
        "seed0/comparison.csv",
        "seed0/comparison.png",
        "seed0/default/trials.csv",
        "spaces/mobilenetv2_width_digits.yaml",
    ):
        assert (tmp_path / name).is_file(), name
    assert not (tmp_path / "seed0" / "default" / "weights").exists()
    md = (tmp_path / "fronts.md").read_text()
    assert (
        "python benchmarks/fronts.py digits (toy)" in md and "Goal: the searched front's test-split hypervolume" in md
    )
    curve = pd.read_csv(tmp_path / "hv_by_epochs.csv")
    assert curve["epochs_spent"].tolist() == [1, 2] and curve["hypervolume"].is_monotonic_increasing
    # --report-only: the same tables from the folders, nothing run
    (tmp_path / "fronts.csv").unlink()
    again = bench.run(
        "digits",
        seeds=[0],
        out=tmp_path,
        threads=1,
        data_root=None,
        overrides=TOY,
        equal_compute=False,
        report_only=True,
        log=lambda msg: None,
    )
    pd.testing.assert_frame_equal(again.drop(columns="trials_min"), table.drop(columns="trials_min"))
    assert (tmp_path / "fronts.csv").is_file()
    with pytest.raises(SystemExit, match="--report-only: .*seed1/default has no trials.csv"):
        bench.run(
            "digits",
            seeds=[1],
            out=tmp_path,
            threads=1,
            data_root=None,
            overrides=TOY,
            report_only=True,
            log=lambda msg: None,
        )


@pytest.mark.slow  # four searches: about 30 s
def test_multi_fidelity_run_is_compared_on_epochs_spent(bench, tmp_path, one_thread):
    toy = {**TOY, "train": {"epochs": 2}, "search": {"trials": 2, "multi_fidelity": {"min_epochs": 1, "eta": 2}}}
    table = bench.run(
        "digits",
        seeds=[0],
        out=tmp_path,
        threads=1,
        data_root=None,
        overrides=toy,
        equal_compute=False,
        multi_fidelity=True,
        command="python benchmarks/fronts.py digits --multi-fidelity (toy)",
        log=lambda msg: None,
    )
    row = table[table["study"] == "default_multifidelity"].iloc[0]
    assert row["role"] == "searched (multi-fidelity)" and row["complete"] == 4  # twice the space's trials
    assert 4 <= row["epochs_spent"] < 8  # one epoch each at least, and some stopped at the first rung
    assert not (tmp_path / "seed0" / "default_multifidelity" / "weights").exists()
    mf = pd.read_csv(tmp_path / "multi_fidelity.csv")
    assert mf["seed"].tolist() == [0] and mf["full_epochs"].iloc[0] == 4  # the full search: 2 trials x 2 epochs
    assert mf["mf_epochs"].iloc[0] == row["epochs_spent"] and "met" in mf.columns
    assert (tmp_path / "hv_by_epochs.png").is_file() and "## The multi-fidelity mode" in (
        tmp_path / "fronts.md"
    ).read_text()


def test_within_budget_keeps_the_trial_that_crosses_the_budget(bench):
    df = pd.DataFrame({"number": [2, 0, 1, 3], "train_compute": [30, 10, None, 5]})
    df.attrs["study"] = "s"
    kept = bench.within_budget(df, 35)
    assert kept["number"].tolist() == [0, 1, 2] and kept.attrs["study"] == "s"  # 10, 10, 40: the third crosses
    assert bench.within_budget(df, 1000)["number"].tolist() == [0, 1, 2, 3]  # never reached: all of them
    assert bench.within_budget(df.drop(columns="train_compute"), 1)["number"].tolist() == [0, 1, 2, 3]


def test_equal_compute_baselines_are_random_search_and_alpha_by_resolution_grids(bench, tmp_path):
    import yaml

    config = bench.CONFIGS["cifar10"]
    spaces = bench.space_files(config, tmp_path, {})
    found = bench.equal_compute_spaces(config, spaces, tmp_path)
    assert found["mobilenetv3_cifar10_random"] == (spaces["mobilenetv3_cifar10"], "random", None)
    grid = found["mobilenetv2_width_cifar10_grid"]
    data = yaml.safe_load(Path(grid[0]).read_text())
    assert grid[1:] == ("grid", 12) and data["build"]["resolution_mult"] == [0.75, 1.0]  # 6 alphas x 2
    assert data["search"] == {**data["search"], "sampler": "grid", "trials": 12}
    assert found["mobilenetv3small_width_cifar10_grid"][2] == 10
    searched = yaml.safe_load(Path(spaces["mobilenetv3_cifar10"]).read_text())
    assert searched["data"]["subset"] * searched["data"]["val_fraction"] >= 1000  # validation: 1,000 images or more


@pytest.mark.slow  # about 8 searches at toy size: about a minute
def test_toy_run_with_equal_compute_baselines(bench, tmp_path, one_thread):
    table = bench.run(
        "digits",
        seeds=[0],
        out=tmp_path,
        threads=1,
        data_root=None,
        overrides=TOY,
        command="python benchmarks/fronts.py digits (toy, equal compute)",
        log=lambda msg: None,
    )
    studies = table.set_index("study")
    budget = studies.loc["default", "train_compute"]
    assert budget > 0 and studies.loc["default", "compute_share"] == 1.0
    for name in ("default_random", "mobilenetv2_width_digits_grid", "mobilenetv3small_width_digits_grid"):
        assert studies.loc[name, "role"] == "baseline"
        complete = studies.loc[name, "complete"]
        assert studies.loc[name, "compute_share"] >= 1.0 or complete == (
            6 if "v2" in name else 5
        )  # or the grid ran out
    for column in ("test_ratio", "test_ratio_low", "test_ratio_high", "test_ratio_unit", "test_ratio_chance"):
        assert pd.notna(studies.loc["default", column]), column
    md = (tmp_path / "fronts.md").read_text()
    assert "Protocol (issue 26)" in md and "test-split hypervolume" in md


@pytest.mark.slow  # a supernet and four searches at toy size: about 40 s
def test_toy_oneshot_run_is_compared_with_the_standalone_search(bench, tmp_path, one_thread):
    import dataclasses

    oneshot = {"search": {"trials": 4, "population_size": 2, "supernet_epochs": 1, "finalize_epochs": 1}}
    bench.CONFIGS["toy"] = dataclasses.replace(bench.CONFIGS["digits"], oneshot=oneshot)
    try:
        table = bench.run(
            "toy",
            seeds=[0],
            out=tmp_path,
            threads=1,
            data_root=None,
            overrides=TOY,
            equal_compute=False,
            oneshot=True,
            command="python benchmarks/fronts.py digits --oneshot (toy)",
            log=lambda msg: None,
        )
    finally:
        del bench.CONFIGS["toy"]
    row = table.set_index("study").loc["default_oneshot"]
    assert row["role"] == bench.ONESHOT_ROLE and row["complete"] == 4
    assert 1 <= row["front"] <= bench.ONESHOT_FINALIZE  # its front is the finalised trials'
    assert pd.notna(row["test_ratio_vs_searched"]) and pd.notna(row["test_ratio"])
    assert row["train_compute"] > 0  # the supernet's training and the finalisations count
    assert table.set_index("study")["test_ratio_vs_searched"].isna().sum() == len(table) - 1
    space = (tmp_path / "spaces" / "default_oneshot.yaml").read_text()
    assert "mode: oneshot" in space and "supernet_epochs: 1" in space
    trials = pd.read_csv(tmp_path / "seed0" / "default_oneshot" / "trials.csv")
    assert (trials["accuracy_source"] == "finalized").sum() >= 1
    md = (tmp_path / "fronts.md").read_text()
    assert "## The one-shot pipeline" in md and "test ratio over the stand-alone search >= 1.2" in md


def _frame(points: list[tuple[float, float, int]], compute: float) -> pd.DataFrame:
    """COMPLETE trials (validation accuracy, test accuracy on 400 images, MACs), each spending ``compute``."""
    import numpy as np

    from nas_sepconv.results.protocol import pack_correct

    n = 400
    return pd.DataFrame(
        {
            "number": range(len(points)),
            "state": "COMPLETE",
            "accuracy": [p[0] for p in points],
            "test_accuracy": [round(p[1] * n) / n for p in points],
            "test_correct": [pack_correct(np.roll(np.arange(n) < round(p[1] * n), i)) for i, p in enumerate(points)],
            "macs": [p[2] for p in points],
            "train_compute": compute,
            "duration_s": 1.0,
            "epochs": 1,
        }
    )


FRAMES = {  # the one-shot study first: the stand-alone search is found by name, not by insertion order
    "default_oneshot": ([(0.85, 0.84, 20_000), (0.7, 0.69, 2_000)], 10.0),
    "default": ([(0.9, 0.88, 50_000), (0.6, 0.6, 5_000)], 100.0),
    "fam": ([(0.3, 0.3, 1_000_000)], 50.0),  # pushes the common reference out
}
ROLES = {"default_oneshot": "searched (one-shot)", "default": "searched", "fam": "baseline"}


def _seed_rows(bench) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], dict[str, float]]:
    frames = {name: _frame(points, compute) for name, (points, compute) in FRAMES.items()}
    runs = {name: {"role": role} for name, role in ROLES.items()}
    reference = bench.reference_of(frames)
    rows = pd.DataFrame(bench.seed_rows(0, runs, frames, reference, standalone="default")).set_index("study")
    return rows, frames, reference


def test_compute_share_is_over_the_standalone_search(bench):
    assert ROLES["default_oneshot"] == bench.ONESHOT_ROLE
    rows, _, _ = _seed_rows(bench)
    assert rows["compute_share"].to_dict() == {"default_oneshot": 0.1, "default": 1.0, "fam": 0.25}  # of 2 x 100


def test_a_oneshot_study_is_scored_against_the_standalone_search_on_the_common_references(bench):
    import nas_sepconv as ns

    rows, frames, reference = _seed_rows(bench)
    table = ns.results.compare(frames, reference=reference).set_index("name")["test_hypervolume_logmacs"]
    expected = table["default_oneshot"] / table["default"]  # both on the references every other column uses
    assert rows.loc["default_oneshot", "test_ratio_vs_searched"] == pytest.approx(expected)
    assert rows["test_ratio_vs_searched"].isna().sum() == 2
