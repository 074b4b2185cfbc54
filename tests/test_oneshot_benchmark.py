"""Smoke test of benchmarks/oneshot.py at toy size: a tiny build space on 300 digits, a supernet
of one epoch, four subnets finalised for one epoch each."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from conftest import FAST_SPACE, load_benchmark


@pytest.fixture(scope="module")
def bench():
    yield from load_benchmark("oneshot")


def test_the_configurations_are_spaces_in_oneshot_mode(bench, tmp_path):
    from pathlib import Path

    from nas_sepconv.search import load_space

    kinds = {}
    for name, config in bench.CONFIGS.items():
        space = load_space(bench.space_file(config, tmp_path / name, None))  # (no data is loaded)
        assert space.spec.search.mode == "oneshot" and space.spec.search.finalize_epochs
        kinds[name] = space.spec.kind
        if space.spec.kind == "convert" and space.spec.convert.weights:
            assert Path(space.spec.convert.weights).is_file()  # the committed base model
    assert kinds["digits"] == "build" and kinds["digits-convert"] == kinds["cifar10-convert"] == "convert"


@pytest.mark.slow
def test_a_toy_convert_run_writes_ranking_rows(bench, tmp_path):
    path = tmp_path / "conv.yaml"
    spec = {
        "name": "conv",
        "kind": "convert",
        "data": {"dataset": "digits", "subset": 300},
        "train": {"epochs": 1, "batch_size": 128},
        "convert": {
            "model": "nas_sepconv:tiny_convnet",
            "model_kwargs": {"width": 8},
            "base_epochs": 1,
            "choices": {"kind": ["keep", "dwsep", "spatial"], "rank": [0.5]},
            "calibration_images": 64,
        },
    }
    path.write_text(yaml.safe_dump(spec))
    config = bench.Config(str(path), {"search": {"supernet_epochs": 1, "finalize_epochs": 1}}, note="toy")
    rows = bench.run("conv", config, out=tmp_path, subnets=3, pool=12, command="toy")
    assert len(rows) == 3 and rows["macs"].is_monotonic_increasing
    assert rows[["inherited_accuracy", "finalized_accuracy"]].apply(lambda c: c.between(0, 1)).all().all()


def toy_config(bench, tmp_path):
    path = tmp_path / "tiny.yaml"
    spec = json.loads(json.dumps(FAST_SPACE))
    spec["build"]["stages"][0]["expand_ratio"] = [2, 4]
    path.write_text(yaml.safe_dump(spec))
    return bench.Config(str(path), {"search": {"supernet_epochs": 1, "finalize_epochs": 1}}, note="toy")


def never(*args, **kwargs):
    raise AssertionError("a measured subnet was measured again")


def test_a_toy_run_writes_ranking_rows_and_resumes(bench, tmp_path, monkeypatch):
    config = toy_config(bench, tmp_path)
    rows = bench.run("toy", config, out=tmp_path, subnets=4, pool=12, finalize_repeats=2, command="toy")
    assert len(rows) == 4 and rows["subnet"].is_unique
    assert rows["macs"].is_monotonic_increasing and rows["macs"].iloc[0] < rows["macs"].iloc[-1]
    accuracies = ["inherited_accuracy", "finalized_accuracy", "finalized_accuracy_r1", "finalized_accuracy_r2"]
    assert rows[accuracies].apply(lambda c: c.between(0, 1)).all().all()
    mean = (rows["finalized_accuracy_r1"] + rows["finalized_accuracy_r2"]) / 2
    assert rows["finalized_accuracy"].to_numpy() == pytest.approx(mean.to_numpy())
    report = (tmp_path / "toy" / "ranking.md").read_text()
    assert "Kendall tau" in report and "Command: `toy`" in report and "repeat 1 vs 2" in report

    monkeypatch.setattr(bench, "measure", never)
    monkeypatch.setattr(bench, "finalize_repeat", never)
    again = bench.run("toy", config, out=tmp_path, subnets=4, pool=12, finalize_repeats=2, command="toy")
    pd.testing.assert_frame_equal(again.reset_index(drop=True), rows.reset_index(drop=True))
    with pytest.raises(SystemExit, match="holds 2 finalisation repeats"):  # fewer repeats would mix means
        bench.run("toy", config, out=tmp_path, subnets=4, pool=12, finalize_repeats=1, command="toy")


def test_a_ranking_of_one_finalisation_resumes_measuring_only_the_second(bench, tmp_path, monkeypatch):
    config = toy_config(bench, tmp_path)
    one = bench.run("toy", config, out=tmp_path, subnets=3, pool=12, finalize_repeats=1, command="toy")
    csv = tmp_path / "toy" / "ranking.csv"
    old = pd.read_csv(csv).drop(columns=["finalized_accuracy_r1", "finalized_test_accuracy_r1"])
    old.to_csv(csv, index=False)  # as an earlier version wrote it: one finalisation, no repeat columns
    monkeypatch.setattr(bench, "measure", never)
    two = bench.run("toy", config, out=tmp_path, subnets=3, pool=12, finalize_repeats=2, command="toy")
    assert two["finalized_accuracy_r1"].tolist() == one["finalized_accuracy"].tolist()
    assert two["finalized_accuracy_r2"].notna().all()
    mean = (two["finalized_accuracy_r1"] + two["finalized_accuracy_r2"]) / 2
    assert two["finalized_accuracy"].to_numpy() == pytest.approx(mean.to_numpy())


def test_a_row_of_another_draw_or_finalisation_is_not_resumed(bench, tmp_path, monkeypatch):
    """A resumed row's missing repeats would be averaged with its measured ones: a row drawn by
    another seed, or finalised for other epochs, is refused in one line."""
    config = toy_config(bench, tmp_path)
    bench.run("toy", config, out=tmp_path, subnets=2, pool=12, finalize_repeats=1, command="toy")
    monkeypatch.setattr(bench, "measure", never)
    monkeypatch.setattr(bench, "finalize_repeat", never)
    csv = tmp_path / "toy" / "ranking.csv"
    rows = pd.read_csv(csv)
    rows.loc[0, "finalize_epochs"] = 7
    rows.to_csv(csv, index=False)
    with pytest.raises(SystemExit, match="finalize_epochs is 7, this run's 1: pass the same --finalize-epochs"):
        bench.run("toy", config, out=tmp_path, subnets=2, pool=12, finalize_repeats=2, command="toy")
    rows.loc[0, ["finalize_epochs", "arch"]] = [1, "another subnet"]
    rows.to_csv(csv, index=False)
    with pytest.raises(SystemExit, match="arch is 'another subnet'"):
        bench.run("toy", config, out=tmp_path, subnets=2, pool=12, finalize_repeats=2, command="toy")
    with pytest.raises(SystemExit, match="at least 1"):
        bench.run("toy", config, out=tmp_path, subnets=2, pool=12, finalize_repeats=0, command="toy")


def test_the_first_repeat_is_the_single_finalisation_of_before(bench, tmp_path):
    config = toy_config(bench, tmp_path)
    one = bench.run("toy", config, out=tmp_path / "a", subnets=2, pool=12, finalize_repeats=1, command="toy")
    two = bench.run("toy", config, out=tmp_path / "b", subnets=2, pool=12, finalize_repeats=2, command="toy")
    assert two["finalized_accuracy_r1"].tolist() == one["finalized_accuracy"].tolist()  # the same seed


def test_correlations_are_kendall_and_spearman(bench):
    rows = pd.DataFrame(
        {
            "inherited_accuracy": [0.1, 0.2, 0.3, 0.4],
            "finalized_accuracy": [0.5, 0.7, 0.6, 0.9],
            "macs": [40, 30, 20, 10],
        }
    )
    corr = bench.correlations(rows)
    assert corr["kendall_tau"] == pytest.approx(4 / 6)  # 5 concordant pairs, 1 discordant
    assert corr["spearman_rho"] == pytest.approx(0.8)
    assert corr["macs_kendall_tau"] == pytest.approx(-4 / 6)  # the reference: MACs alone
    assert corr["repeat_kendall_tau"] != corr["repeat_kendall_tau"]  # no repeats: no ceiling (NaN)
    assert all(v != v for v in bench.correlations(rows.head(2)).values())  # NaN below 3 subnets
    rows["finalized_accuracy_r1"] = [0.5, 0.7, 0.6, 0.9]
    rows["finalized_accuracy_r2"] = [0.6, 0.5, 0.7, 0.8]
    corr = bench.correlations(rows)
    assert corr["repeat_kendall_tau"] == pytest.approx(2 / 6)  # 4 concordant pairs, 2 discordant
    assert corr["kendall_tau_r1"] == pytest.approx(4 / 6)


def test_fixed_base_weights_keep_the_data_seed_they_were_trained_on(bench, tmp_path, monkeypatch):
    from nas_sepconv.search import TrialContext

    for name, config in bench.CONFIGS.items():  # committed weights name their data seed: ..._s<seed>.safetensors
        weights = config.overrides.get("convert", {}).get("weights")
        if weights:
            assert weights.endswith(f"_s{config.data_seed}.safetensors"), name
    seeds = []

    class Stop(Exception):
        pass

    def for_rebuild(cls, space, **kwargs):
        seeds.append(kwargs["data_seed"])
        raise Stop

    monkeypatch.setattr(TrialContext, "for_rebuild", classmethod(for_rebuild))
    for name in ("cifar10-convert", "digits"):
        with pytest.raises(Stop):
            bench.run(name, bench.CONFIGS[name], out=tmp_path, seed=1, data_root=str(tmp_path))
    assert seeds == [0, 1]  # the committed base was trained on seed 0's split; a build space's follows --seed
