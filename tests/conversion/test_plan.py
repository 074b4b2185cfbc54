"""Plans: sites, policies, reports, JSON round trip, errors."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import nas_sepconv as ns


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Sequential(
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, groups=32),
            nn.Conv2d(32, 32, 1),
        )
        self.extra = nn.Parameter(torch.randn(32, 32, 3, 3) * 0.05)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.body(self.stem(x))
        x = F.conv2d(x, self.extra, padding=1)
        return self.head(x.mean((2, 3)))


def x():
    return torch.randn(1, 3, 16, 16)


def test_default_policy_reasons():
    plan = ns.make_plan(Small(), "dwsep", example_inputs=x())
    rep = plan.report().set_index("name")
    assert rep.loc["stem", "reason"].startswith("C_in=3")
    assert rep.loc["body.2", "reason"] == "already depthwise"
    assert rep.loc["body.3", "reason"] == "1x1 convolution"
    assert rep.loc["body.0", "spec"] == "dwsep"
    assert rep.loc["extra", "source"] == "functional" and rep.loc["extra", "spec"] == "dwsep"
    assert (rep.macs_after <= rep.macs_before).all()
    assert plan.traced


def test_plan_macs_match_the_converted_model():
    net = Small()
    plan = ns.make_plan(net, "dwsep", example_inputs=x())
    assert plan.model_macs == ns.count_macs(net, x())
    assert plan.macs_after == ns.count_macs(ns.apply_plan(net, plan), x())
    assert plan.params_after == ns.count_params(ns.apply_plan(net, plan))


def test_policy_mapping_and_rules():
    plan = ns.make_plan(Small(), {"body.0": "spatial_r0.5", "stem": "dwsep_m3"}, example_inputs=x())
    rep = plan.report().set_index("name")
    assert rep.loc["body.0", "spec"] == "spatial_r0.5"
    assert rep.loc["stem", "spec"] == "dwsep_m3"
    assert rep.loc["extra", "spec"] == "keep" and rep.loc["extra", "reason"] == "no rule names it"
    policy = ns.Policy(default=ns.BlockSpec("dwsep"), exclude=["body.*"], min_in_channels=1)
    rep = ns.make_plan(Small(), policy, example_inputs=x()).report().set_index("name")
    assert rep.loc["body.0", "reason"] == "excluded by policy" and rep.loc["stem", "spec"] == "dwsep"


def test_min_macs_saving_skips_small_savings():
    plan = ns.make_plan(Small(), ns.Policy(default="dwsep_m8", min_macs_saving=0.5), example_inputs=x())
    assert all("would not save" in e.reason for e in plan.entries if e.name in ("body.0", "extra"))


def test_json_round_trip_and_reapply_to_a_fresh_model():
    torch.manual_seed(1)
    net = Small()
    plan = ns.make_plan(net, "dwsep_m2", example_inputs=x())
    again = ns.Plan.from_json(plan.to_json())
    assert again.to_json() == plan.to_json()
    assert again.report().equals(plan.report())
    fresh = Small()
    out = ns.apply_plan(fresh, again)
    assert out(x()).shape == fresh(x()).shape


def test_shared_conv_called_twice_is_one_site():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            return self.c(torch.relu(self.c(x)))

    net = Twice()
    plan = ns.make_plan(net, "dwsep", example_inputs=torch.randn(1, 8, 8, 8))
    assert len(plan.entries) == 1 and plan.entries[0].calls == 2
    assert plan.macs_after == ns.count_macs(ns.apply_plan(net, plan), torch.randn(1, 8, 8, 8))


@pytest.mark.parametrize(
    "model, policy, inp, field",
    [
        (nn.Sequential(nn.Linear(4, 4)), "dwsep", torch.randn(1, 4), "model"),
        (Small(), "dwsepp", None, "spec"),
        (Small(), "dwsep_q2", None, "spec"),
        (Small(), {"layer9.*": "dwsep"}, None, "policy.rules"),
        (Small(), ns.Policy(exclude=["nothing*"]), None, "policy.exclude"),
        (Small(), "dwsep", torch.randn(1, 5, 16, 16), "input_size"),
        (Small(), 42, None, "policy"),
    ],
)
def test_bad_input_gives_a_clear_error(model, policy, inp, field):
    with pytest.raises(ns.UserInputError) as info:
        ns.make_plan(model, policy, example_inputs=x() if inp is None else inp)
    assert str(info.value).startswith(field)
    assert "\n" not in str(info.value)


def test_plan_from_bad_json():
    with pytest.raises(ns.UserInputError, match="plan"):
        ns.Plan.from_json("{not json")
    with pytest.raises(ns.UserInputError, match="plan"):
        ns.Plan.from_json('{"a": 1}')


def test_plan_for_another_model_is_refused():
    plan = ns.make_plan(Small(), "dwsep", example_inputs=x())
    other = nn.Sequential(nn.Conv2d(3, 8, 3))
    with pytest.raises(ns.UserInputError, match="no such convolution"):
        ns.apply_plan(other, plan)


def test_activation_after_follows_norms_and_additions():
    import torch.nn.functional as F

    from nas_sepconv.conversion.sites import activation_after, is_add, trace

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1, self.act = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()
            self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.conv3, self.conv4, self.pool = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1), nn.AvgPool2d(2)

        def forward(self, x):
            y = self.act(self.bn1(self.conv1(x)))
            y = self.act(self.bn2(self.conv2(y)) + x)  # residual sum, then the shared activation
            z = F.relu(self.conv3(y))  # functional activation: no module to name
            return self.pool(self.conv4(z)) + self.conv4(z).mean()  # conv4 runs twice

    gm = trace(Block())
    assert activation_after(gm, "conv1") == "act" and activation_after(gm, "conv2") == "act"
    assert activation_after(gm, "conv3") is None and activation_after(gm, "conv4") is None
    assert activation_after(gm, "missing") is None
    adds = [n for n in gm.graph.nodes if is_add(n)]
    assert len(adds) == 2


def test_default_spec_that_saves_no_macs_is_not_made_but_a_rule_is_kept_as_written():
    # spatial_r0.5 on a square 3x3 conv C->C: rank 1.5C, 2 * 3 * 1.5C * C = 9 C^2, as much as the conv
    net = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    inp = torch.randn(1, 8, 8, 8)
    plan = ns.make_plan(net, "spatial_r0.5", example_inputs=inp)
    assert not plan.converted and all("would not save MACs" in e.reason for e in plan.entries)
    assert plan.macs_after == plan.model_macs
    ruled = ns.make_plan(net, ns.Policy(rules={"0": "spatial_r0.5"}), example_inputs=inp).report().set_index("name")
    assert (
        ruled.loc["0", "spec"] == "spatial_r0.5" and ruled.loc["0", "macs_ratio"] == 1.0
    )  # the user's rule, as written
    assert ruled.loc["2", "spec"] == "dwsep"
    assert ns.make_plan(net, ns.Policy(default="spatial_r0.5", min_macs_saving=None), example_inputs=inp).converted


# -- issue 18.2: explicit requests are honoured; messages state the numbers --------------------


def test_an_explicit_rule_is_applied_even_where_it_costs_macs_and_the_report_says_so():
    # ir_e4 on a 64->128 3x3 stride-2 conv (ResNet's layer2.0.conv1): expand at full resolution
    net = nn.Sequential(nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1))
    inp = torch.randn(1, 64, 16, 16)
    plan = ns.make_plan(net, {"0": "ir_e4"}, example_inputs=inp)
    e = plan.entries[0]
    assert str(e.spec) == "ir_e4" and e.macs_after > e.macs_before
    cost = f"{(e.macs_after / e.macs_before - 1) * 100:.3g} %"
    assert (
        e.note
        == f"rule '0': ir_e4 costs {cost} more MACs than the conv ({e.macs_after:,} vs {e.macs_before:,} MACs); applied as written"
    )
    assert plan.report().set_index("name").loc["0", "note"] == e.note
    assert plan.macs_after == ns.count_macs(ns.apply_plan(net, plan), inp) > plan.model_macs
    # a rule wins over min_macs_saving too (the filter is the default's only)
    ruled = ns.make_plan(net, ns.Policy(rules={"0": "ir_e4"}, min_macs_saving=0.5), example_inputs=inp)
    assert str(ruled.entries[0].spec) == "ir_e4" and "costs" in ruled.entries[0].note
    assert ruled.entries[1].spec is not None and ruled.entries[1].note == ""


def test_a_default_spec_that_costs_macs_is_not_a_silent_no_op():
    net = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1))
    inp = torch.randn(1, 8, 8, 8)  # conv 8*8*9*64 = 36,864 MACs; dwsep_m9 8*9*9*64 + 72*8*64 = 78,336
    message = r"dwsep_m9 not made at 1 site\(s\).*0: saves -112 %, below min_macs_saving 0 % \(78,336 vs 36,864 MACs\).*min_macs_saving=None"
    with pytest.warns(ns.PlanWarning, match=message):
        same = ns.convert(net, ns.BlockSpec("dwsep", dw_mult=9), example_inputs=inp)
    assert type(getattr(same, "0")) is nn.Conv2d
    plan = ns.plan_of(same)
    assert (
        plan.entries[0].reason
        == "dwsep_m9 would not save MACs: saves -112 %, below min_macs_saving 0 % (78,336 vs 36,864 MACs)"
    )
    assert any(n.startswith("dwsep_m9 not made") for n in plan.notes)
    # the fix the warning names applies it; dw_mult=K² is full rank, so the block is exact
    full = ns.convert(net, ns.Policy(default="dwsep_m9", min_macs_saving=None), example_inputs=inp)
    assert type(getattr(full, "0")) is not nn.Conv2d
    with torch.no_grad():
        assert torch.allclose(full(inp), net(inp), atol=1e-5)


def test_min_macs_saving_message_states_the_numbers():
    net = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1))  # dwsep: 1/8 + 1/9 of the MACs, saves 76.4 %
    with pytest.warns(ns.PlanWarning, match="saves 76.4 %, below min_macs_saving 90 %"):
        plan = ns.make_plan(
            net, ns.Policy(default="dwsep", min_macs_saving=0.9), example_inputs=torch.randn(1, 8, 8, 8)
        )
    assert (
        plan.entries[0].reason
        == "dwsep would not save MACs: saves 76.4 %, below min_macs_saving 90 % (8,704 vs 36,864 MACs)"
    )
    assert plan.report().loc[0, "status"] == "kept"


def test_a_rule_whose_block_cannot_apply_is_warned_noted_and_counted():
    """A grouped block named for a depthwise conv cannot replace it: the site is kept, and the
    PlanWarning, the site's note and the summary say so."""
    message = (
        r"^1 site\(s\) kept against their rule, whose block cannot replace the conv: "
        r"body\.2: 'body\.2' names grouped_g4, which cannot replace this conv \(groups=4"
    )
    with pytest.warns(ns.PlanWarning, match=message):
        plan = ns.make_plan(Small(), {"body.2": "grouped_g4", "body.0": "dwsep"}, example_inputs=x())
    row = plan.report().set_index("name").loc["body.2"]
    assert row["status"] == "kept" and row["spec"] == "keep"
    assert row["note"].startswith("rule not applied: 'body.2' names grouped_g4, which cannot replace this conv")
    assert [e.name for e in plan.rules_not_applied] == ["body.2"]
    assert ", 1 kept as their rule's block does not apply: body.2;" in plan.summary()
    assert any(n.startswith("1 site(s) kept against their rule") for n in plan.notes)
    again = ns.Plan.from_json(plan.to_json())
    assert again.summary() == plan.summary()


def test_rules_that_apply_warn_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ns.PlanWarning)
        plan = ns.make_plan(Small(), {"body.0": "grouped_g4"}, example_inputs=x())
    assert not plan.rules_not_applied and "rule's block" not in plan.summary()
