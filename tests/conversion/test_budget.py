"""Per-site sensitivity and plans for a MACs budget (nas_sepconv/budget.py)."""

from __future__ import annotations

import itertools
import random

import pandas as pd
import pytest
import torch
import torch.nn as nn
from conftest import ThreeConvNet  # noqa: E402  (tests/ is on sys.path)

import nas_sepconv as ns
from nas_sepconv.conversion.budget import SENSITIVITY_COLUMNS
from nas_sepconv.conversion.knapsack import choose, choose_apart
from nas_sepconv.errors import UserInputError

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: see conftest


Net = ThreeConvNet


@pytest.fixture(scope="module")
def net_and_batches():
    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():  # conv3 is already depthwise-separable: each input channel's slice has rank 1
        w = model.conv3.weight
        w.copy_(torch.randn(32, 32, 1, 1) * torch.randn(1, 32, 3, 3) / 10)
        model.fc.weight.mul_(30)  # confident logits, so that the KL sees the damage
    batches = [torch.randn(16, 3, 12, 12) for _ in range(2)]
    return model, batches


@pytest.fixture(scope="module")
def table(net_and_batches):
    model, batches = net_and_batches
    return ns.sensitivity(model, batches, candidates=["dwsep_m1", "dwsep_m2", "spatial_r0.25"], iterations=2)


def test_sensitivity_rows_and_columns(table):
    assert list(table.columns) == SENSITIVITY_COLUMNS
    # the stem (C_in=3) is not a site of the default policy; every candidate applies to each conv
    assert list(dict.fromkeys(table["name"])) == ["conv1", "conv2", "conv3"]
    assert len(table) == 9
    assert (table["macs_after"] < table["macs_before"]).all()
    assert (table["damage"] >= 0).all()


def test_exact_conversion_does_no_damage(table):
    """conv3's kernel is rank 1 per input channel, so dwsep_m1 reproduces it: no damage there."""
    m1 = table[table["spec"] == "dwsep_m1"].set_index("name")["damage"]
    assert m1["conv3"] < 1e-8
    assert m1["conv1"] > 1e-4 and m1["conv2"] > 1e-4


def test_sensitivity_mse_metric_and_model_unchanged(net_and_batches):
    model, batches = net_and_batches
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t = ns.sensitivity(model, batches, candidates=["dwsep_m1"], metric="mse", refit_sites=False)
    assert len(t) == 3 and (t["damage"] > 0).all()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_refit_lowers_the_damage(net_and_batches, table):
    model, batches = net_and_batches
    raw = ns.sensitivity(model, batches, candidates=["dwsep_m1"], refit_sites=False)
    refit = table[table["spec"] == "dwsep_m1"]
    assert (refit["damage"].to_numpy() <= raw["damage"].to_numpy() + 1e-9).all()


def test_plan_meets_the_budget_and_applies(net_and_batches, table):
    model, batches = net_and_batches
    x = batches[0][:1]
    base = ns.count_macs(model, x)
    for ratio in (0.3, 0.5, 0.8):
        plan = ns.plan_for_budget(model, table, macs_ratio=ratio, example_inputs=x)
        converted = ns.apply_plan(model, plan)
        assert ns.count_macs(converted, x) == plan.macs_after <= ratio * base
        assert converted(batches[0]).shape == (16, 10)
        assert any("plan_for_budget" in n for n in plan.notes)


def test_generous_budget_keeps_everything(net_and_batches, table):
    model, batches = net_and_batches
    plan = ns.plan_for_budget(model, table, macs_ratio=1.0, example_inputs=batches[0][:1])
    assert plan.converted == []


def test_tight_budget_uses_the_free_conversion_first(net_and_batches, table):
    model, batches = net_and_batches
    x = batches[0][:1]
    conv3 = table[(table["name"] == "conv3") & (table["spec"] == "dwsep_m1")].iloc[0]
    saving = (conv3.macs_before - conv3.macs_after) / ns.count_macs(model, x)
    plan = ns.plan_for_budget(model, table, macs_ratio=1 - saving, example_inputs=x)
    assert [(e.name, str(e.spec)) for e in plan.converted] == [("conv3", "dwsep_m1")]


def test_sensitive_site_gets_the_better_block():
    """A synthetic table: conv1 is very sensitive to dwsep_m1; the allocator spends there."""
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(1, 3, 12, 12)
    plan = ns.make_plan(model, "dwsep_m1", example_inputs=x)
    rows = []
    for e in plan.converted:
        for spec, damage in (("dwsep_m1", 10.0 if e.name == "conv1" else 0.1), ("dwsep_m4", 0.05)):
            p = ns.make_plan(model, {e.name: spec}, example_inputs=x)
            f = next(f for f in p.entries if f.name == e.name)
            rows.append(
                dict(
                    name=e.name,
                    spec=spec,
                    calls=1,
                    macs_before=f.macs_before,
                    macs_after=f.macs_after,
                    params_before=f.params_before,
                    params_after=f.params_after,
                    damage=damage,
                )
            )
    table = pd.DataFrame(rows)
    m1_all = ns.make_plan(model, "dwsep_m1", example_inputs=x)
    ratio = (m1_all.macs_after + 0.5 * (m1_all.model_macs - m1_all.macs_after)) / m1_all.model_macs
    plan = ns.plan_for_budget(model, table, macs_ratio=ratio, example_inputs=x)
    chosen = {e.name: str(e.spec) for e in plan.converted}
    assert plan.macs_after <= ratio * plan.model_macs
    assert chosen.get("conv1") != "dwsep_m1"  # kept or dwsep_m4
    assert "dwsep_m1" in chosen.values()  # the budget is spent where it hurts less


def test_choose_is_optimal_against_brute_force():
    rng = random.Random(0)
    for _ in range(40):
        groups = [
            [(0, 0.0)] + [(rng.randint(1, 100), rng.random()) for _ in range(rng.randint(1, 3))]
            for _ in range(rng.randint(1, 4))
        ]
        required = rng.randint(0, sum(max(s for s, _ in g) for g in groups))
        picked = choose(groups, required, resolution=10_000)  # every saving is a whole number of steps
        feasible = [
            c
            for c in itertools.product(*(range(len(g)) for g in groups))
            if sum(g[j][0] for g, j in zip(groups, c)) >= required
        ]
        best = min(sum(g[j][1] for g, j in zip(groups, c)) for c in feasible)
        assert picked is not None
        assert sum(g[j][0] for g, j in zip(groups, picked)) >= required
        assert sum(g[j][1] for g, j in zip(groups, picked)) == pytest.approx(best)


def test_choose_apart_never_takes_both_sides_of_an_exclusion():
    # group 0's option 1 and group 1's option 1 together would be cheapest; they exclude each other
    groups = [[(0, 0.0), (6, 0.1)], [(0, 0.0), (6, 0.2), (5, 0.5)], [(0, 0.0), (6, 1.0)]]
    assert choose(groups, 12, resolution=12) == [1, 1, 0]
    apart = choose_apart(groups, 12, exclusions=[(0, frozenset({1}), 1, frozenset({1, 2}))], resolution=12)
    assert apart == [1, 0, 1]  # damage 1.1, against 1.2 for [0, 1, 1]
    assert choose_apart(groups, 12, exclusions=[], resolution=12) == [1, 1, 0]
    # brute force over random exclusions: feasible and optimal among the choices that respect them
    rng = random.Random(1)
    for _ in range(30):
        groups = [[(0, 0.0)] + [(rng.randint(1, 50), rng.random()) for _ in range(2)] for _ in range(4)]
        exclusions = [(0, frozenset({1, 2}), 1, frozenset({1})), (2, frozenset({2}), 3, frozenset({1, 2}))]
        required = rng.randint(0, 100)
        ok = [
            c
            for c in itertools.product(*(range(3) for _ in groups))
            if sum(g[j][0] for g, j in zip(groups, c)) >= required
            and not any(c[a] in sa and c[b] in sb for a, sa, b, sb in exclusions)
        ]
        picked = choose_apart(groups, required, exclusions=exclusions, resolution=10_000)
        if picked is None:
            continue  # (the greedy split of a clash can miss a feasible choice; never a wrong one)
        assert not any(picked[a] in sa and picked[b] in sb for a, sa, b, sb in exclusions)
        assert sum(g[j][0] for g, j in zip(groups, picked)) >= required and ok


def test_choose_reports_infeasible():
    assert choose([[(0, 0.0), (5, 1.0)], [(0, 0.0), (3, 1.0)]], 9) is None


def test_rounding_never_breaks_the_budget():
    # savings that are not whole steps are rounded down: the plan may save more, never less
    groups = [[(0, 0.0), (7, 1.0)], [(0, 0.0), (7, 1.0)], [(0, 0.0), (7, 0.5)]]
    picked = choose(groups, 14, resolution=3)
    assert sum(g[j][0] for g, j in zip(groups, picked)) >= 14


def test_bad_inputs(net_and_batches, table):
    model, batches = net_and_batches
    x = batches[0][:1]
    with pytest.raises(UserInputError, match="macs_ratio") as info:
        ns.plan_for_budget(model, table, macs_ratio=0.01, example_inputs=x)  # below what dwsep_m1 reaches
    # dwsep_m1 was tried: the fix names what was tried instead of suggesting it again
    assert (
        info.value.fix
        == "raise macs_ratio, or add cheaper candidates than dwsep_m1, dwsep_m2, spatial_r0.25 to ns.sensitivity"
    )
    with pytest.raises(UserInputError, match=r"add cheaper candidates \(e.g. dwsep_m1\)"):
        ns.plan_for_budget(model, table[table["spec"] == "dwsep_m2"], macs_ratio=0.01, example_inputs=x)
    with pytest.raises(UserInputError, match="macs_ratio"):
        ns.plan_for_budget(model, table, macs_ratio=1.5, example_inputs=x)
    with pytest.raises(UserInputError, match="resolution"):
        ns.plan_for_budget(model, table, macs_ratio=0.5, example_inputs=x, resolution=0)
    with pytest.raises(UserInputError, match="table"):
        ns.plan_for_budget(model, table.drop(columns="damage"), macs_ratio=0.5, example_inputs=x)
    with pytest.raises(UserInputError, match="table"):
        ns.plan_for_budget(model, table.assign(name="nowhere"), macs_ratio=0.5, example_inputs=x)
    with pytest.raises(UserInputError, match="candidates"):
        ns.sensitivity(model, batches, candidates="dwsep_m1")
    with pytest.raises(UserInputError, match="metric"):
        ns.sensitivity(model, batches, metric="l1")
    with pytest.raises(UserInputError, match="spec"):
        ns.sensitivity(model, batches, candidates=["nonsense_m1"])


class DenseNet(nn.Module):
    """A segmentation-style model: per-pixel class scores in a dict, as torchvision's segmentation models return."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 5, 1)

    def forward(self, x):
        return {"out": self.head(torch.relu(self.body(torch.relu(self.stem(x)))))}


def test_sensitivity_on_dense_dict_outputs(capsys):
    torch.manual_seed(0)
    model = DenseNet().eval()
    batches = [torch.randn(4, 3, 10, 10)]
    table = ns.sensitivity(model, batches, candidates=["dwsep_m1", "dwsep_m2"], iterations=1, progress=True)
    assert list(table["name"]) == ["body", "body"]  # the stem (C_in=3) and the 1x1 head are not sites
    damage = table.set_index("spec")["damage"]
    assert damage["dwsep_m1"] >= damage["dwsep_m2"] > 0  # KL per pixel over the 5 classes
    err = capsys.readouterr().err  # stderr is not a terminal here: plain lines, done/total
    assert "sensitivity: 2/2 conversions" in err and "\x1b" not in err, err
    plan = ns.plan_for_budget(model, table, macs_ratio=0.6, example_inputs=batches[0][:1])
    assert [e.name for e in plan.converted] == ["body"]


def test_sensitivity_on_held_out_batches(net_and_batches):
    """Refit on two images leaves little error on those two and more on others: eval_batches
    measures the damage where the refit was not fit (what the plan should budget for)."""
    model, batches = net_and_batches
    few = [batches[0][:2]]
    kwargs = dict(candidates=["dwsep_m2"], iterations=2, metric="mse")
    on_fit = ns.sensitivity(model, few, **kwargs).set_index("name")["damage"]
    same = ns.sensitivity(model, few, eval_batches=few, **kwargs).set_index("name")["damage"]
    held = ns.sensitivity(model, few, eval_batches=batches[1:], **kwargs).set_index("name")["damage"]
    assert list(held.index) == ["conv1", "conv2", "conv3"]
    pd.testing.assert_series_equal(on_fit, same)
    assert held["conv2"] > 2 * on_fit["conv2"]
    assert held["conv3"] < 1e-8  # exact at any data: conv3 is separable


def test_a_plan_still_over_budget_after_the_re_solves_is_refused(net_and_batches, table, monkeypatch):
    from nas_sepconv.conversion import budget

    model, batches = net_and_batches
    monkeypatch.setattr(budget, "choose_apart", lambda groups, *a, **k: [0] * len(groups))  # always keeps all
    with pytest.raises(UserInputError, match=r"^macs_ratio: the budget is not kept: .* reaches \d+ MACs against"):
        ns.plan_for_budget(model, table, macs_ratio=0.5, example_inputs=batches[0][:1])
