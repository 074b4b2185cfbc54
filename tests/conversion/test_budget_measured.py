"""Every latency budget honoured or refused: plan_for_budget measures the plan it chose and
re-plans or refuses when it measures above 1.1x the budget.  The measurement is faked
(latency_check.measure_plan monkeypatched): no test times anything."""

from __future__ import annotations

import pytest
import torch

import nas_sepconv as ns
import nas_sepconv.conversion.latency_check as lc
from nas_sepconv.errors import UserInputError
from tests.conversion.test_latency_budget import MODEL_MS, TIMES, Net

pytestmark = pytest.mark.usefixtures("one_thread")
X = torch.randn(1, 3, 12, 12)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    model = Net().eval()
    damage = ns.sensitivity(model, [torch.randn(8, 3, 12, 12)], candidates=["dwsep_m1", "dwsep_m2"], refit_sites=False)
    table = ns.latency_table(
        model,
        X,
        candidates=["dwsep_m1", "dwsep_m2"],
        repeats=1,
        warmup=0,
        threads=1,
        calibrate=0,
        cache_dir=tmp_path_factory.mktemp("lat"),
    )
    table.frame["latency_ms"] = [TIMES[(n, s)] for n, s in zip(table.frame["name"], table.frame["spec"])]
    table.model_ms = MODEL_MS
    return model, damage, table


@pytest.fixture
def measured(monkeypatch):
    """Fake measurements: each converted model measures ``slow`` x its predicted latency (the
    original MODEL_MS); the plans measured are recorded."""
    state = {"slow": 1.0, "plans": []}

    def fake(model, plan, example_inputs, table):
        state["plans"].append(plan)
        return MODEL_MS, table.predict(plan) * state["slow"]

    monkeypatch.setattr(lc, "measure_plan", fake)
    return state


def test_a_plan_within_its_budget_is_measured_once_and_noted(setup, measured):
    model, damage, table = setup
    plan = ns.plan_for_budget(model, damage, latency_ratio=0.8, latency_table=table, example_inputs=X)
    assert len(measured["plans"]) == 1
    (note,) = [n for n in plan.notes if n.startswith("measured:")]
    ratio = table.predict(plan) / MODEL_MS
    assert f"{ratio:.3f}x the original's {MODEL_MS:.3f} ms" in note and "eager, 1 threads" in note


def test_a_plan_measuring_above_the_budget_is_replanned_tighter(setup, measured):
    model, damage, table = setup
    first = ns.plan_for_budget(model, damage, latency_ratio=0.9, latency_table=table, example_inputs=X, measure=False)
    measured["slow"] = 1.3  # every plan measures 30 % slower than predicted: the first plan misses 1.1x
    plan = ns.plan_for_budget(model, damage, latency_ratio=0.9, latency_table=table, example_inputs=X)
    assert len(measured["plans"]) >= 2 and table.predict(plan) < table.predict(first)  # tightened
    assert table.predict(first) * 1.3 / MODEL_MS > 0.9 * 1.1 and table.predict(plan) * 1.3 / MODEL_MS <= 0.9 * 1.1
    assert any("measured plan(s)" in n for n in plan.notes)


def test_a_plan_measuring_well_under_the_budget_is_replanned_looser(setup, measured):
    """The table over-predicts (every plan measures 30 % faster): the first plan converts more
    than the budget needs, so a plan for a target loosened by the over-prediction is measured
    and, being within the tolerance, returned: it converts less."""
    model, damage, table = setup
    first = ns.plan_for_budget(model, damage, latency_ratio=0.9, latency_table=table, example_inputs=X, measure=False)
    measured["slow"] = 0.7
    plan = ns.plan_for_budget(model, damage, latency_ratio=0.9, latency_table=table, example_inputs=X)
    assert table.predict(first) * 0.7 / MODEL_MS < 0.9 * lc.UNDERSHOOT  # the first plan undershoots
    assert len(measured["plans"]) >= 2 and table.predict(plan) > table.predict(first)  # loosened
    assert table.predict(plan) * 0.7 / MODEL_MS <= 0.9 * lc.TOLERANCE  # and still within the budget
    assert len(plan.converted) <= len(first.converted)


def test_an_accurate_table_s_undershoot_is_not_replanned(setup, measured):
    """Measured as predicted, a plan under the budget is as close as the candidates get: a
    looser target would choose it again, so it is measured once."""
    model, damage, table = setup
    plan = ns.plan_for_budget(model, damage, latency_ratio=0.99, latency_table=table, example_inputs=X)
    assert table.predict(plan) / MODEL_MS < 0.99 * lc.UNDERSHOOT  # under, as close as the candidates get
    assert len(measured["plans"]) == 1


def test_a_budget_no_plan_meets_when_measured_is_refused_in_one_line(setup, measured):
    model, damage, table = setup
    measured["slow"] = 3.0  # nothing the candidates reach measures within 1.1x of 0.75
    with pytest.raises(UserInputError) as info:
        ns.plan_for_budget(model, damage, latency_ratio=0.75, latency_table=table, example_inputs=X)
    message = str(info.value)
    assert info.value.field == "latency_ratio" and "\n" not in message
    assert message.startswith("latency_ratio: 0.75 is not met: the best plan measured ") and "measure=False" in message
    assert 1 <= len(measured["plans"]) <= lc.ROUNDS


def test_a_milliseconds_budget_is_checked_in_milliseconds(setup, measured):
    model, damage, table = setup
    measured["slow"] = 2.0
    with pytest.raises(UserInputError, match=r"^latency_ms: 7 is not met: the best plan measured [\d.]+ ms"):
        ns.plan_for_budget(model, damage, latency_ms=7.0, latency_table=table, example_inputs=X)


def test_measure_false_only_predicts(setup, measured):
    model, damage, table = setup
    measured["slow"] = 5.0
    plan = ns.plan_for_budget(model, damage, latency_ratio=0.8, latency_table=table, example_inputs=X, measure=False)
    assert measured["plans"] == [] and not any(n.startswith("measured:") for n in plan.notes)


def test_a_macs_budget_is_never_measured(setup, measured):
    model, damage, table = setup
    ns.plan_for_budget(model, damage, macs_ratio=0.6, latency_table=table, example_inputs=X)
    assert measured["plans"] == []


def test_measure_plan_times_the_original_and_the_converted_model(setup):
    model, _, table = setup
    plan = ns.make_plan(model, "dwsep_m1", example_inputs=X)
    original, converted = lc.measure_plan(model, plan, X, table)
    assert original > 0 and converted > 0 and not model.training
