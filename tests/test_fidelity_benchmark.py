"""Smoke test of benchmarks/fidelity.py at toy size (embedded digits, no ../shared)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from conftest import load_benchmark  # tests/ is on sys.path

from nas_sepconv.data import load_dataset


@pytest.fixture(scope="module")
def bench():
    yield from load_benchmark("fidelity")


def test_run_benchmark_toy(bench, tmp_path, one_thread):
    data = load_dataset("digits", subset=400)
    cfg = bench.BenchConfig(
        width=4,
        epochs=1,
        dw_mults=(1,),
        spatial_ranks=(0.25,),
        calib=64,
        test_subset=100,
        distill_lrs=(0.01, 0.05),
        feature_weight=10.0,
        feature_lrs=(0.05,),
    )
    result = bench.run_benchmark(data, cfg, tmp_path, log=lambda msg: None)
    table = result.table

    assert list(table.columns) == bench.COLUMNS
    assert table.method.iloc[0] == bench.ORIGINAL and table.macs_ratio.iloc[0] == 1.0
    dw = table[table.conversion == "dwsep_m1"]
    assert list(dw.method) == list(bench.METHODS)
    # spatial has no training rows, and no joint refit to ablate
    assert list(table[table.conversion == "spatial_r0.25"].method) == [
        m for m in bench.NO_GRADIENT if m != bench.REFIT_LAST
    ]
    assert (dw.macs_ratio < 0.5).all() and dw.macs_ratio.nunique() == 1
    assert table.test_accuracy.between(0, 100).all()
    assert math.isclose(result.original_accuracy, table.test_accuracy.iloc[0])
    # two distillation lrs: both tried, one kept, chosen on the validation split
    chosen = [(r["method"], r["lr"], r["chosen"]) for r in result.meta["selections"]]
    assert [(m, lr) for m, lr, _ in chosen] == [
        (bench.RANDOM_FT, 0.05),
        (bench.DISTILL, 0.01),
        (bench.DISTILL, 0.05),
        (bench.FEATURE_DISTILL, 0.05),
    ]
    assert sum(c for m, _, c in chosen if m == bench.DISTILL) >= 1
    assert result.test_images == 100
    # refit never raises a site's error on the calibration data
    sites = result.refit_sites
    assert set(sites.conversion) == {"dwsep_m1", "spatial_r0.25"}
    assert (sites.rel_output_error_after <= sites.rel_output_error_before + 1e-9).all()
    # the reference is cached and reused
    assert not result.cached and any(tmp_path.glob("original_*.safetensors"))
    again = bench.run_benchmark(
        data,
        bench.BenchConfig(width=4, epochs=1, dw_mults=(), spatial_ranks=(), calib=64, test_subset=100),
        tmp_path,
        log=lambda msg: None,
    )
    assert again.cached and math.isclose(again.original_accuracy, result.original_accuracy)

    bench.write_outputs(
        result,
        cfg,
        tmp_path,
        command="python benchmarks/fidelity.py --data digits",
        dataset_label="digits",
        machine="test",
        threads=1,
        subset=400,
    )
    for name in ("fidelity.csv", "fidelity.md", "fidelity.png", "refit_sites.csv"):
        assert (tmp_path / name).is_file(), name
    assert len(pd.read_csv(tmp_path / "fidelity.csv")) == len(table)
    md = (tmp_path / "fidelity.md").read_text()
    assert "python benchmarks/fidelity.py --data digits" in md and "Targets" in md
    assert "best validation accuracy" in md and "(chosen)" in md and 'features=\\"converted\\"' not in md
    assert 'distill(features="converted", feature_weight=10)' in md
    lines = bench.targets(table, result.original_accuracy)
    assert sum("Cheapest conversion above 1/4" in line for line in lines) == (table.macs_ratio > 0.25).iloc[1:].any()


def test_cli_arguments(bench):
    args = bench.parse_args(
        [
            "--data",
            "x",
            "--dw-mults",
            "1,2",
            "--spatial-ranks",
            "",
            "--distill-lr",
            "0.02,0.05",
            "--budgets",
            "0.25,0.142",
        ]
    )
    assert args.dw_mults == (1, 2) and args.spatial_ranks == () and args.distill_lr == (0.02, 0.05)
    assert (
        args.budgets == (0.25, 0.142)
        and args.budgets == bench.parse_args(["--data", "x", "--budgets", "0.25,0.142"]).budgets
    )
    assert args.sensitivity_held_out == 0
    assert bench.parse_args(["--data", "x", "--sensitivity-held-out", "1024"]).sensitivity_held_out == 1024


def test_budget_rows(bench, tmp_path, one_thread, monkeypatch):
    data = load_dataset("digits", subset=400)
    cfg = bench.BenchConfig(
        width=8,
        epochs=1,
        dw_mults=(),
        spatial_ranks=(),
        budgets=(0.6,),
        budget_candidates=("dwsep_m1", "spatial_r0.25"),
        calib=64,
        test_subset=100,
        sensitivity_held_out=32,
        reference_dir=str(tmp_path / "ref"),
    )
    sensitivity, held_out = bench.ns.sensitivity, []

    def spy(model, batches, **options):  # records the images the damage is measured on
        held_out.append(sum(len(b) for b in options["eval_batches"]))
        return sensitivity(model, batches, **options)

    monkeypatch.setattr(bench.ns, "sensitivity", spy)
    result = bench.run_benchmark(data, cfg, tmp_path / "out", log=lambda msg: None)
    assert held_out == [32]
    table = result.table
    rows = table[table.conversion == "budget_0.6"]
    assert list(rows.method) == [m for m in bench.METHODS if m not in (bench.REFIT_LAST, bench.FEATURE_DISTILL)]
    assert (rows.family == "budget").all() and (rows.macs_ratio <= 0.6).all()
    sens, plans = result.meta["sensitivity"], result.meta["budget_plans"]
    assert set(sens.spec) == {"dwsep_m1", "spatial_r0.25"} and (sens.damage >= 0).all()
    assert set(plans.conversion) == {"budget_0.6"} and (plans.spec != "keep").any()
    assert any((tmp_path / "ref").glob("original_*.safetensors"))  # the reference is cached apart from the outputs
    bench.write_outputs(
        result,
        cfg,
        tmp_path / "out",
        command="python benchmarks/fidelity.py --budgets 0.6",
        dataset_label="digits",
        machine="test",
        threads=1,
        subset=400,
    )
    for name in ("sensitivity.csv", "budget_plans.csv", "fidelity.md"):
        assert (tmp_path / "out" / name).is_file(), name
    md = (tmp_path / "out" / "fidelity.md").read_text()
    assert "Budget plans" in md and "32 held-out validation images" in md


def test_targets_seventh_line(bench):
    def row(conversion, method, ratio, delta):
        return dict(
            conversion=conversion,
            family=conversion.split("_")[0],
            param=1.0,
            method=method,
            train_epochs=1,
            calib_images=512,
            test_accuracy=70 + delta,
            delta_points=delta,
            macs=1,
            macs_ratio=ratio,
            params=1,
            seconds=1.0,
        )

    original = dict(row(bench.ORIGINAL, bench.ORIGINAL, 1.0, 0.0), family=bench.ORIGINAL)
    table = pd.DataFrame(
        [original, row("dwsep_m1", bench.DISTILL, 0.142, -5.0), row("budget_0.142", bench.DISTILL, 0.140, -4.0)]
    )
    lines = bench.targets(table, 70.0)
    seventh = [i for i, line in enumerate(lines) if "1/7" in line and line.startswith("- ")]
    assert len(seventh) == 1
    assert "NOT met" in lines[seventh[0]] and "Best: budget_0.142" in lines[seventh[0]]
    assert "dwsep_m1 SVD + refit + distillation: 65.00%" in lines[seventh[0] + 1]
    met = bench.targets(table.assign(delta_points=table.delta_points.clip(lower=-0.5)), 70.0)
    assert any("within 1 point: met" in line and "1/7" in line for line in met)
    wide = pd.DataFrame([original, row("dwsep_m1", bench.DISTILL, 0.2, -0.5)])
    assert any("> 1/7 for this width" in line for line in bench.targets(wide, 70.0))


def test_train_conversions_and_feature_row_only(bench, tmp_path, one_thread):
    data = load_dataset("digits", subset=300)
    cfg = bench.BenchConfig(
        width=4,
        epochs=1,
        dw_mults=(1, 2),
        spatial_ranks=(),
        calib=32,
        test_subset=60,
        feature_weight=5.0,
        logit_distill=False,
        train_conversions=("dwsep_m2",),
        finetune_epochs=2,
    )
    result = bench.run_benchmark(data, cfg, tmp_path, log=lambda msg: None)
    table = result.table
    assert bench.RANDOM_FT not in set(table[table.conversion == "dwsep_m1"].method)
    m2 = set(table[table.conversion == "dwsep_m2"].method)
    assert {bench.RANDOM_FT, bench.FEATURE_DISTILL} <= m2 and bench.DISTILL not in m2
    bench.write_outputs(
        result,
        cfg,
        tmp_path,
        command="python benchmarks/fidelity.py --no-logit-distill",
        dataset_label="digits",
        machine="test",
        threads=1,
        subset=300,
    )
    md = (tmp_path / "fidelity.md").read_text()
    # the set-up describes the rows the run made, and the warm-up it used (a fifth of the run)
    assert (
        "`SVD + refit + distillation`:" not in md
        and "`SVD + refit + feature distillation`: the refit model, 2 epochs" in md
    )
    assert "one-cycle with 0.4 epoch warm-up" in md
    args = bench.parse_args(
        [
            "--data",
            "x",
            "--feature-weight",
            "10",
            "--feature-lr",
            "0.05,0.1",
            "--no-logit-distill",
            "--train-conversions",
            "dwsep_m1,budget_0.142",
        ]
    )
    assert args.feature_weight == 10 and args.feature_lr == (0.05, 0.1) and args.no_logit_distill
    assert args.train_conversions == "dwsep_m1,budget_0.142"


def test_every_call_gets_the_device(bench, tmp_path, one_thread, monkeypatch, capsys):
    """``--device``: each library call that runs a model is told where (their default is the
    CPU, so a call left without it would silently move the work back there).  And with
    ``progress=True`` (as ``main`` runs it) each long call shows its progress: plain lines with
    done/total on a stderr that is not a terminal (issue 19)."""
    data = load_dataset("digits", subset=300)
    cfg = bench.BenchConfig(
        width=4,
        epochs=1,
        dw_mults=(1,),
        spatial_ranks=(),
        budgets=(0.6,),
        budget_candidates=("dwsep_m1",),
        calib=32,
        test_subset=60,
        feature_weight=5.0,
        device="cpu",
    )
    seen, progress = [], []

    def spy(owner, name):
        real = getattr(owner, name)

        def call(*args, **options):
            seen.append((name, options.get("device")))
            progress.append((name, options.get("progress")))
            return real(*args, **options)

        monkeypatch.setattr(owner, name, call)

    for name in ("fit", "distill", "evaluate", "reestimate_batchnorm"):
        spy(bench, name)
    for name in ("refit", "sensitivity"):
        spy(bench.ns, name)
    bench.run_benchmark(data, cfg, tmp_path, log=lambda msg: None, progress=True)
    assert {name for name, _ in seen} == {"fit", "distill", "evaluate", "reestimate_batchnorm", "refit", "sensitivity"}
    long_calls = [shown for name, shown in progress if name in ("fit", "distill", "refit", "sensitivity")]
    assert long_calls and all(long_calls), progress
    err = capsys.readouterr().err
    for line in ("train: 1/1 epochs", "sensitivity: ", "refit: "):
        assert line in err, err
    assert all(torch.device(device) == torch.device("cpu") for _, device in seen if device is not None)
    assert [name for name, device in seen if device is None] == []
    assert bench.parse_args(["--data", "x", "--device", "cuda:1"]).device == "cuda:1"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_run_benchmark_on_cuda(bench, tmp_path):
    data = load_dataset("digits", subset=300)
    cfg = bench.BenchConfig(
        width=4,
        epochs=1,
        dw_mults=(1,),
        spatial_ranks=(),
        budgets=(0.6,),
        budget_candidates=("dwsep_m1",),
        calib=32,
        test_subset=60,
        feature_weight=5.0,
        device="cuda",
    )
    result = bench.run_benchmark(data, cfg, tmp_path, log=lambda msg: None)
    assert result.table.test_accuracy.between(0, 100).all()
    assert any(tmp_path.glob("original_*.safetensors"))
    bench.write_outputs(
        result,
        cfg,
        tmp_path,
        command="python benchmarks/fidelity.py --device cuda",
        dataset_label="digits",
        machine="test",
        threads=1,
        subset=400,
    )
    assert "device cuda (" in (tmp_path / "fidelity.md").read_text()
