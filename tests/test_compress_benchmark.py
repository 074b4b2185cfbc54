"""benchmarks/compress.py (issue 25 item 2): the budget, winner, goal and resume logic, the
methods on a toy model, and the ``--quick`` run end to end (slow)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import load_benchmark  # tests/ is on sys.path


@pytest.fixture(scope="module")
def bench():
    yield from load_benchmark("compress")


@pytest.fixture(scope="module")
def report(bench):
    import compress_report  # on sys.path once the benchmark is loaded

    return compress_report


def test_budgets_parse_latency_and_macs_ratios(bench):
    assert bench.Budget.parse("lat0.5") == bench.Budget("latency", 0.5)
    assert bench.Budget.parse("latency0.35").name == "latency 0.35"
    assert bench.Budget.parse("macs0.5").name == "macs 0.5"
    for bad in ("speed0.5", "lat1.5", "macs0"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.Budget.parse(bad)


def test_a_budget_is_reached_within_its_tolerance_only(bench):
    assert bench.budget_reached(0.54, 0.5)  # within 1.1x
    assert not bench.budget_reached(0.56, 0.5)
    assert bench.budget_reached(0.5, 0.5, tolerance=1.0)
    assert not bench.budget_reached(0.501, 0.5, tolerance=1.0)


def test_the_uniform_plan_closest_under_the_budget(bench):
    ratios = {"dwsep_m1": 0.3, "dwsep_m2": 0.45, "dwsep_m4": 0.8}
    assert bench.closest_under(ratios, 0.5) == "dwsep_m2"
    assert bench.closest_under(ratios, 0.8) == "dwsep_m4"
    assert bench.closest_under(ratios, 0.2) is None


def test_resume_skips_done_rows_and_redoes_unavailable_ones(bench, tmp_path):
    csv = tmp_path / "compress.csv"
    assert bench.done_rows(csv).empty
    bench.append_row(csv, dict(seed=0, budget="latency 0.5", method=bench.PRUNING, status="unavailable"))
    bench.append_row(csv, dict(seed=0, budget="latency 0.5", method=bench.PRUNING, status="ok", test_accuracy=80.0))
    bench.append_row(csv, dict(seed=0, budget="latency 0.5", method=bench.MIXED, status="unavailable", note="x"))
    bench.append_row(csv, dict(seed=0, budget="latency 0.5", method=bench.UNIFORM, status="unreachable", note="y"))
    done = bench.done_rows(csv)
    assert len(done) == 3 and list(done.columns) == bench.COLUMNS  # the last row per key
    assert done.set_index("method").loc[bench.PRUNING, "status"] == "ok"
    jobs = [(s, "latency 0.5", m) for s in (0, 1) for m in (bench.PRUNING, bench.UNIFORM, bench.MIXED)]
    todo = bench.pending(jobs, done)
    assert todo == [(0, "latency 0.5", bench.MIXED)] + [j for j in jobs if j[0] == 1]


def _table(rows: list[tuple]) -> pd.DataFrame:
    cols = ["seed", "budget", "method", "status", "test_accuracy", "latency_ratio", "macs_ratio", "seconds_total"]
    return pd.DataFrame([dict(zip(cols, r)) for r in rows])


def test_winner_and_goal_met_when_the_mixed_plan_leads_by_a_point(report):
    rows = []
    for seed, shift in ((0, 0.0), (1, 0.4)):
        rows += [
            (seed, "latency 0.5", "pruning (DepGraph, magnitude)", "ok", 84.0 + shift, 0.5, 0.4, 10),
            (seed, "latency 0.5", "uniform conversion", "ok", 85.0 + shift, 0.45, 0.3, 10),
            (seed, "latency 0.5", "mixed plan", "ok", 86.5 + shift, 0.5, 0.35, 10),
            (seed, "latency 0.7", "uniform conversion", "ok", 87.0, 0.66, 0.5, 10),
            (seed, "latency 0.7", "mixed plan", "ok", 87.0, 0.7, 0.5, 10),
            (seed, "latency 0.7", "low-rank (spatial SVD)", "unreachable", np.nan, np.nan, np.nan, 1),
        ]
    table = _table(rows)
    assert report.winners(table) == {"latency 0.5": "mixed plan", "latency 0.7": "uniform conversion"}
    assert report.best_single(table, "latency 0.5") == ("uniform conversion", pytest.approx(85.2))
    met, lines = report.goal(table)
    assert met, lines
    assert "+1.50 points" in lines[0]
    assert "low-rank (spatial SVD) | — |" in report.table_text(table)  # the row that says why


def test_goal_not_met_below_the_margin_or_below_a_single_method(report):
    table = _table(
        [
            (0, "latency 0.5", "uniform conversion", "ok", 85.0, 0.45, 0.3, 10),
            (0, "latency 0.5", "mixed plan", "ok", 85.5, 0.5, 0.35, 10),
            (0, "latency 0.35", "pruning (DepGraph, magnitude)", "ok", 80.0, 0.3, 0.2, 10),
            (0, "latency 0.35", "mixed plan", "ok", 79.0, 0.33, 0.2, 10),
            (0, "macs 0.5", "uniform conversion", "ok", 86.0, 0.8, 0.45, 10),
            (0, "macs 0.5", "mixed plan", "unavailable", np.nan, np.nan, np.nan, 0),
        ]
    )
    met, lines = report.goal(table)
    assert not met
    assert "NOT met" in lines[0] and "a single method wins" in lines[1]
    assert "mixed plan did not reach" in lines[2]
    assert report.winners(table)["latency 0.35"] == "pruning (DepGraph, magnitude)"


def test_bootstrap_interval_of_paired_differences(report):
    same = [np.array([True, False, True, True])] * 2
    assert report.bootstrap_interval(same, same) == (0.0, 0.0, 0.0)
    rng = np.random.default_rng(0)
    single = [rng.random(2000) < 0.8 for _ in range(3)]
    mixed = [s | (rng.random(2000) < 0.25) for s in single]  # right wherever single is, and more
    mean, lo, hi = report.bootstrap_interval(mixed, single)
    assert 0 < lo < mean < hi and mean == pytest.approx(
        100 * np.mean([m.mean() - s.mean() for m, s in zip(mixed, single)])
    )


def test_a_row_that_cannot_reach_its_budget_says_so(bench, monkeypatch):
    def refuse(ctx, seed, budget):
        raise bench.Unreachable("below what pruning reaches")

    monkeypatch.setitem(bench.COMPRESSORS, bench.PRUNING, refuse)
    row = bench.run_row(None, 0, bench.Budget("latency", 0.35), bench.PRUNING)
    assert row["status"] == "unreachable" and row["note"] == "below what pruning reaches"


# -- the methods on a toy model (random weights) ----------------------------------------------


@pytest.fixture(scope="module")
def tiny(bench, tmp_path_factory):
    from nas_sepconv.data import load_dataset
    from nas_sepconv.models import cifar_resnet18

    cfg = dataclasses.replace(bench.Config(), **bench.QUICK)
    data = load_dataset("digits", subset=300, seed=0)
    torch.manual_seed(0)
    original = cifar_resnet18(num_classes=10, in_channels=1, width=cfg.width).eval()
    x = torch.zeros(1, *data.input_shape)
    ctx = bench.Context(
        cfg=cfg, data=data, original=original, x=x, log=lambda m: None, out=tmp_path_factory.mktemp("c")
    )
    import nas_sepconv as ns

    ctx.base_macs = ns.count_macs(original, x)
    return ctx


def test_pruning_and_uniform_conversion_reach_a_macs_budget(bench, tiny):
    import nas_sepconv as ns

    budget = bench.Budget("macs", 0.5)
    pruned = bench.compress_pruning(tiny, 0, budget)
    assert pruned.plan is None and ns.count_macs(pruned.model, tiny.x) <= 0.5 * tiny.base_macs
    uniform = bench.compress_uniform(tiny, 0, budget)
    assert uniform.plan is not None and "dwsep_m1" in uniform.note
    sites, specs = bench.site_counts(uniform.plan)
    assert sites.startswith("keep:") and "dwsep:" in sites
    assert len(specs.split()) == len(uniform.plan.entries)
    with pytest.raises(bench.Unreachable):
        bench.compress_uniform(tiny, 0, bench.Budget("macs", 0.1))


def test_each_planned_method_plans_from_its_own_candidates_of_the_saved_damage_table(bench, tiny):
    import json

    import nas_sepconv as ns

    cfg, seed = tiny.cfg, 5
    rows = []
    for spec in (*cfg.separable, *cfg.spatial):
        for e in ns.make_plan(tiny.original, spec, example_inputs=tiny.x).converted:
            cols = ("name", "calls", "macs_before", "macs_after", "params_before", "params_after")
            rows.append({**{c: getattr(e, c) for c in cols}, "spec": spec, "damage": 0.01})
    pd.DataFrame(rows).to_csv(tiny.out / f"sensitivity_s{seed}.csv", index=False)
    candidates = [*cfg.separable, *cfg.spatial, *cfg.prune_keeps]
    (tiny.out / f"sensitivity_s{seed}.json").write_text(json.dumps({"seconds": 7.0, "candidates": candidates}))
    assert tiny.seed_data(seed)["sensitivity_seconds"] == 7.0  # read back, not recomputed
    for compress, kind in ((bench.compress_lowrank, "spatial"), (bench.compress_planned, "dwsep")):
        c = compress(tiny, seed, bench.Budget("macs", 0.7))
        kinds = {e.spec.kind for e in c.plan.entries if e.spec is not None}
        assert kinds == {kind}, kinds
        assert ns.count_macs(c.model, tiny.x) <= 0.7 * tiny.base_macs
    with pytest.raises(bench.Unreachable):
        bench.compress_lowrank(tiny, seed, bench.Budget("macs", 0.05))


def test_uniform_plans_are_timed_with_the_original_in_onnx_runtime(bench, tiny):
    ratios = tiny.uniform_ratios("latency")
    assert list(ratios) == list(tiny.cfg.uniform) and all(r > 0 for r in ratios.values())
    ms, original_ms = bench.measured_ratio(tiny, tiny.cpu_original())
    assert ms > 0 and original_ms > 0


def test_pruning_to_a_latency_budget(bench, tiny):
    c = bench.compress_pruning(tiny, 0, bench.Budget("latency", 0.9))
    assert c.plan is None


def test_the_mixed_plan_chooses_among_pruning_and_separable_blocks(bench, tiny):
    c = bench.compress_mixed(tiny, 0, bench.Budget("macs", 0.5))
    assert c.plan is not None and set(c.plan.report()["spec"].astype(str)) - {"keep", "None"}


# -- the toy run end to end --------------------------------------------------------------------


@pytest.mark.slow
def test_quick_run_writes_every_row_and_the_report(bench, tmp_path):
    out = tmp_path / "out"
    assert bench.main(["--quick", "--reference-dir", str(tmp_path / "ref"), "--out", str(out)]) == 0
    table = pd.read_csv(out / "compress.csv")
    assert list(table.method) == list(bench.METHODS) and set(table.budget) == {"macs 0.5"}
    status = dict(zip(table.method, table.status))
    for method in (bench.PRUNING, bench.LOWRANK, bench.UNIFORM, bench.PLANNED):
        assert status[method] == "ok", table.set_index("method").loc[method, "note"]
    assert status[bench.MIXED] == "ok", table.set_index("method").loc[bench.MIXED, "note"]
    ok = table[table.status == "ok"]
    assert (ok.macs_ratio <= 0.5).all() and (ok.latency_ms > 0).all() and ok.test_accuracy.notna().all()
    assert ok.sites.str.contains("keep:").sum() >= 3  # the plans' site choices by kind
    assert len(list((out / "correct").glob("*.npy"))) == len(ok)
    md = (out / "compress.md").read_text()
    assert "## Winner per budget" in md and "NOT met" in md  # no latency 0.5 row in the toy run
    assert (out / "compress.png").is_file()
    jobs = [(0, "macs 0.5", m) for m in bench.METHODS]
    assert bench.pending(jobs, bench.done_rows(out / "compress.csv")) == []  # the same command resumes
    assert Path(out / "sensitivity_s0.csv").is_file()
