"""plan_for_budget under a latency budget (latency_ratio, latency_ms) from a latency table.  The
latencies are set by hand on a measured table, so the choices are deterministic."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import ThreeConvNet  # noqa: E402  (tests/ is on sys.path)

import nas_sepconv as ns
from nas_sepconv.errors import UserInputError

pytestmark = pytest.mark.usefixtures("one_thread")
X = torch.randn(1, 3, 12, 12)


Net = ThreeConvNet


# one call's latency (ms) per (site, block): conv2's blocks save MACs but cost time
TIMES = {
    ("stem", "keep"): 0.5,
    ("conv1", "keep"): 2.0,
    ("conv1", "dwsep_m1"): 0.5,
    ("conv1", "dwsep_m2"): 0.9,
    ("conv2", "keep"): 1.0,
    ("conv2", "dwsep_m1"): 1.3,
    ("conv2", "dwsep_m2"): 1.6,
    ("conv3", "keep"): 2.0,
    ("conv3", "dwsep_m1"): 1.2,
    ("conv3", "dwsep_m2"): 1.5,
}
MODEL_MS = 8.0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    model = Net().eval()
    batches = [torch.randn(8, 3, 12, 12)]
    damage = ns.sensitivity(model, batches, candidates=["dwsep_m1", "dwsep_m2"], refit_sites=False)
    table = ns.latency_table(
        model,
        X,
        candidates=["dwsep_m1", "dwsep_m2"],
        repeats=1,
        warmup=0,
        threads=1,
        calibrate=0,  # the injected times below are the whole truth
        cache_dir=tmp_path_factory.mktemp("lat"),
    )
    table.frame["latency_ms"] = [TIMES[(n, s)] for n, s in zip(table.frame["name"], table.frame["spec"])]
    table.model_ms = MODEL_MS
    return model, damage, table


def test_latency_budget_spends_on_sites_that_save_time(setup):
    model, damage, table = setup
    plan = ns.plan_for_budget(model, damage, latency_ratio=0.8, latency_table=table, example_inputs=X, measure=False)
    specs = {e.name: (str(e.spec) if e.spec else "keep") for e in plan.entries}
    assert specs["conv2"] == "keep"  # its blocks save MACs but cost time: never chosen
    assert table.predict(plan) <= 0.8 * MODEL_MS
    # the MACs-chosen plan of the same MACs saving converts conv2 (it saves MACs there)
    macs_plan = ns.plan_for_budget(model, damage, macs_ratio=0.25, example_inputs=X)
    assert {e.name for e in macs_plan.converted} >= {"conv2"}
    assert any(n.startswith("plan_for_budget: latency_ratio 0.8") and "predicted" in n for n in plan.notes)


def test_latency_ms_budget_and_the_report_columns(setup):
    model, damage, table = setup
    plan = ns.plan_for_budget(model, damage, latency_ms=6.0, latency_table=table, example_inputs=X, measure=False)
    assert table.predict(plan) <= 6.0
    report = plan.report().set_index("name")
    assert {"latency_before_ms", "latency_after_ms", "macs_before", "macs_after"} <= set(report.columns)
    for e in plan.entries:
        after = TIMES[(e.name, str(e.spec) if e.spec else "keep")]
        assert (
            report.loc[e.name, "latency_before_ms"] == TIMES[(e.name, "keep")]
            and report.loc[e.name, "latency_after_ms"] == after
        )


def test_a_generous_latency_budget_keeps_everything(setup):
    model, damage, table = setup
    plan = ns.plan_for_budget(model, damage, latency_ratio=1.0, latency_table=table, example_inputs=X, measure=False)
    assert not plan.converted


def test_macs_budget_with_a_table_reports_latency(setup):
    model, damage, table = setup
    plan = ns.plan_for_budget(model, damage, macs_ratio=0.6, latency_table=table, example_inputs=X, measure=False)
    assert "latency_after_ms" in plan.report().columns
    assert any(n.startswith("latency table: predicted") for n in plan.notes)


def test_missing_latency_entries_are_measured(setup, tmp_path):
    model, damage, _ = setup
    table = ns.latency_table(model, X, candidates=[], repeats=1, warmup=0, threads=1, cache_dir=tmp_path)
    assert set(table.frame["spec"]) == {"keep"}
    ns.plan_for_budget(model, damage, latency_ratio=1.0, latency_table=table, example_inputs=X, measure=False)
    assert {"dwsep_m1", "dwsep_m2"} <= set(table.frame["spec"])


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(), "budget"),
        (dict(macs_ratio=0.5, latency_ratio=0.5), "budget"),
        (dict(latency_ratio=0.5), "latency_table"),
        (dict(latency_ratio=1.5, use_table=True), "latency_ratio"),
        (dict(latency_ms=-1.0, use_table=True), "latency_ms"),
        (dict(latency_ratio=0.1, use_table=True), "latency_ratio"),  # below what the candidates reach
    ],
)
def test_bad_budgets(setup, kwargs, field):
    model, damage, table = setup
    if kwargs.pop("use_table", False):
        kwargs["latency_table"] = table
    with pytest.raises(UserInputError) as info:
        ns.plan_for_budget(model, damage, example_inputs=X, **kwargs)
    assert info.value.field == field


def _with(table, times=None, model_ms=None):
    """A copy of the measured table with some entries (or the whole model's time) replaced."""
    table = copy.deepcopy(table)
    for (name, spec), ms in (times or {}).items():
        table.frame.loc[(table.frame["name"] == name) & (table.frame["spec"] == spec), "latency_ms"] = ms
    if model_ms is not None:
        table.model_ms = model_ms
    return table


REMEASURE = r"; re-measure: delete the latency cache in .* and call ns\.latency_table again$"


@pytest.mark.parametrize("budget", [dict(latency_ratio=0.8), dict(latency_ms=6.0), dict(macs_ratio=0.5)])
def test_an_absurd_table_entry_never_yields_a_plan(setup, budget):
    """An entry of 1e300 ms (a tampered cache) would predict a negative latency: refused."""
    model, damage, table = setup
    bad = _with(table, {("conv1", "keep"): 1e300})
    message = (
        r"^latency_table: predicts -1e\+300 ms for this plan, which no model takes: its entries do not agree "
        r"with the whole model's measured 8 ms \(a stale or altered latency cache\)" + REMEASURE
    )
    with pytest.raises(UserInputError, match=message):
        ns.plan_for_budget(model, damage, latency_table=bad, example_inputs=X, **budget)


def test_entries_inconsistent_with_the_whole_model_refuse_to_predict(setup):
    """The sites alone take 5.5 ms by the table; a whole model measured at 1 ms makes a
    converted conv1 (2.0 -> 0.5 ms) predict -0.5 ms: refused, not a plan."""
    model, damage, table = setup
    bad = _with(table, model_ms=1.0)
    plan = ns.make_plan(model, {"conv1": "dwsep_m1"}, example_inputs=X)
    with pytest.raises(UserInputError, match=r"^latency_table: predicts -0\.5 ms for this plan" + ".*" + REMEASURE):
        bad.predict(plan)
    with pytest.raises(UserInputError, match=r"^latency_table: predicts -?\d"):
        ns.plan_for_budget(model, damage, latency_ratio=0.5, latency_table=bad, example_inputs=X, measure=False)
    nan = _with(table, {("conv1", "dwsep_m1"): float("nan")})
    with pytest.raises(UserInputError, match=r"^latency_table: predicts nan ms"):
        nan.predict(plan)
    assert table.predict(plan) == pytest.approx(MODEL_MS - 1.5)  # the table as measured still predicts
