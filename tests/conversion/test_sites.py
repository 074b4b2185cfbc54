"""Sites (issue 18.1): every conv module is in the plan, reached or not; several example inputs;
convs run under torch.no_grad() are detected and keep not training after conversion."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import nas_sepconv as ns
from nas_sepconv.conversion.sites import dropped_grad_regions, trace


class Branchy(nn.Module):
    """Untraceable: which of c2, c3 runs depends on the data."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(8, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.c3 = nn.Conv2d(16, 24, 3, padding=1)

    def forward(self, x):
        x = self.c1(x)
        return self.c2(x) if x.sum() > 0 else self.c3(x)


def branchy():
    torch.manual_seed(0)
    net = Branchy().eval()
    with torch.no_grad():  # c1 keeps the sign of the input: +1 takes c2, -1 takes c3
        net.c1.weight.fill_(0.01)
        net.c1.bias.zero_()
    return net


POS, NEG = torch.ones(1, 8, 8, 8), -torch.ones(1, 8, 8, 8)


def test_a_site_no_input_reaches_is_listed_reported_and_warned():
    net = branchy()
    with pytest.warns(ns.PlanWarning, match=r"1 conv site\(s\) not reached by the example inputs, kept: c3"):
        plan = ns.make_plan(net, "dwsep", example_inputs=POS)
    assert not plan.traced and [e.name for e in plan.entries] == ["c1", "c2", "c3"]
    rep = plan.report().set_index("name")
    assert rep.loc["c3", "status"] == "not reached" and rep.loc["c3", "reason"] == "not reached by the example inputs"
    assert rep.loc["c3", "spec"] == "keep" and rep.loc["c3", "macs_before"] == 0
    assert rep.loc["c2", "status"] == "converted"
    assert "2/3 conv sites converted, 1 not reached by the example inputs: c3" in plan.summary()
    assert any("not reached" in n for n in plan.notes)
    converted = ns.apply_plan(net, plan)
    assert type(converted.c3) is nn.Conv2d and type(converted.c2) is not nn.Conv2d


def test_a_rule_naming_an_unreached_site_says_it_was_not_applied():
    with pytest.warns(ns.PlanWarning):
        plan = ns.make_plan(branchy(), {"c3": "dwsep"}, example_inputs=POS)
    assert (
        plan.report().set_index("name").loc["c3", "reason"]
        == "not reached by the example inputs (rule 'c3' not applied)"
    )


def test_several_example_inputs_reach_every_branch():
    net = branchy()
    plan = ns.make_plan(net, "dwsep", example_inputs=ns.ExampleInputs(POS, NEG))
    assert [e.status for e in plan.entries] == ["converted"] * 3 and not plan.not_reached
    c3 = next(e for e in plan.entries if e.name == "c3")
    assert c3.input_shape == (1, 16, 8, 8) and c3.output_shape == (1, 24, 8, 8)
    assert c3.calls == 0  # totals are the first input's: only the second reaches c3
    converted = ns.apply_plan(net, plan)
    assert plan.macs_after == ns.count_macs(converted, POS)
    assert plan.model_macs == ns.count_macs(net, POS)
    with torch.no_grad():
        assert converted(NEG).shape == (1, 24, 8, 8) and type(converted.c3) is not nn.Conv2d


def test_example_inputs_are_never_confused_with_the_arguments_of_one_call():
    class TwoArgs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    x = torch.randn(1, 8, 6, 6)
    one_call = ns.make_plan(TwoArgs(), "dwsep", example_inputs=(x, x))
    assert one_call.input_shapes == [(1, 8, 6, 6), (1, 8, 6, 6)] and len(one_call.converted) == 2
    two_calls = ns.make_plan(
        TwoArgs(), "dwsep", example_inputs=ns.ExampleInputs((x, x), (x[:, :, :4, :4], x[:, :, :4, :4]))
    )
    assert two_calls.input_shapes == one_call.input_shapes
    with pytest.raises(ns.UserInputError, match="example_inputs"):
        ns.ExampleInputs()
    with pytest.raises(ns.UserInputError, match="example_inputs"):
        ns.ExampleInputs(ns.ExampleInputs(x))


class NoGradTraced(nn.Module):
    """Traceable, but torch.fx drops the no_grad region: its graph would train c1 and bn."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        with torch.no_grad():
            x = self.bn(self.c1(x))
        return self.c2(x)


class NoGradBranchy(Branchy):
    """Untraceable, with c1 under no_grad."""

    def forward(self, x):
        with torch.no_grad():
            x = self.c1(x)
        return self.c2(x) if x.sum() > 0 else self.c3(x)


def _trains(model: nn.Module, x: torch.Tensor) -> dict[str, bool]:
    """Which top-level modules' parameters get a gradient from one backward."""
    model.train()
    model.zero_grad(set_to_none=True)
    model(x).square().mean().backward()
    trains: dict[str, bool] = {}
    for n, p in model.named_parameters():
        top = n.split(".")[0]
        trains[top] = trains.get(top, False) or p.grad is not None
    return trains


def test_fx_drops_no_grad_regions_and_we_see_it():
    gm = trace(NoGradTraced())
    assert dropped_grad_regions(gm) == ["c1", "bn"]
    assert _trains(gm, POS)["c1"]  # what a graph rewrite would silently do
    assert dropped_grad_regions(trace(nn.Sequential(nn.Conv2d(8, 8, 3), nn.ReLU()))) == []


@pytest.mark.parametrize("make", [NoGradTraced, NoGradBranchy])
def test_no_grad_conv_is_reported_and_its_block_does_not_train(make):
    torch.manual_seed(0)
    net = make()
    with pytest.warns(ns.PlanWarning, match=r"run under torch.no_grad\(\) in .*: c1"):
        plan = ns.make_plan(net, "dwsep", example_inputs=POS)
    assert not plan.traced  # swapped in place: the model's own forward keeps its no_grad region
    rep = plan.report().set_index("name")
    assert not rep.loc["c1", "grad_enabled"] and rep.loc["c2", "grad_enabled"]
    assert rep.loc["c1", "status"] == "converted"
    assert "1 under torch.no_grad(): c1" in plan.summary()
    converted = ns.apply_plan(net, plan)
    assert type(converted.c1) is not nn.Conv2d
    original, after = _trains(net, POS), _trains(converted, POS)
    assert after == original and not after["c1"] and after.get("bn", False) is False


def test_a_frozen_conv_gives_a_frozen_block():
    net = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    net[0].requires_grad_(False)
    converted = ns.convert(net, "dwsep", example_inputs=POS)
    trains = {n.split(".")[0]: p.requires_grad for n, p in converted.named_parameters()}
    assert trains == {"0": False, "2": True}


def test_functional_conv_of_an_untraceable_model_is_named_in_the_notes():
    class Functional(Branchy):
        def __init__(self):
            super().__init__()
            self.extra = nn.Parameter(torch.randn(16, 16, 3, 3))

        def forward(self, x):
            x = F.conv2d(self.c1(x), self.extra, padding=1)
            return self.c2(x) if x.sum() > 0 else self.c3(x)

    plan = ns.make_plan(Functional(), "dwsep", example_inputs=ns.ExampleInputs(POS, NEG))
    assert any(n.startswith("extra: functional convolution; left as is") for n in plan.notes)


def test_traced_plan_lists_a_conv_module_forward_never_calls():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            return self.used(x)

    with pytest.warns(ns.PlanWarning, match="spare"):
        plan = ns.make_plan(Unused(), "dwsep", example_inputs=POS)
    assert plan.traced and [e.status for e in plan.entries] == ["converted", "not reached"]
    assert plan.macs_after == ns.count_macs(ns.apply_plan(Unused(), plan), POS)
    again = ns.Plan.from_json(plan.to_json())
    assert again.report().equals(plan.report())


class Plain(nn.Module):
    """Traceable: every input runs the same graph."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(8, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        return self.c2(self.c1(x))


@pytest.mark.parametrize("make", [Plain, branchy], ids=["traced", "untraced"])
@pytest.mark.parametrize("position", [0, 1])
def test_an_example_input_the_model_cannot_run_is_named_not_dropped(make, position):
    """ExampleInputs(x_8ch, x_3ch): the 3-channel input is refused by its position, whether it
    comes first or second and whether the model traces (one graph for all) or not."""
    items = [POS, torch.randn(1, 3, 8, 8)]
    if position == 0:
        items.reverse()
    with pytest.raises(
        ns.UserInputError,
        match=rf"^example_inputs: ExampleInputs item {position + 1} of 2: "
        r"\w+ expects 8 input channel\(s\) .*got 3; use input size 8,8,8",
    ):
        ns.make_plan(make(), "dwsep", example_inputs=ns.ExampleInputs(*items))


def test_one_example_input_that_fails_keeps_its_plain_message():
    with pytest.raises(ns.UserInputError, match=r"^input_size: Plain expects 8 input channel\(s\)"):
        ns.make_plan(Plain(), "dwsep", example_inputs=torch.randn(1, 3, 8, 8))


def test_a_huge_example_input_is_refused_before_it_runs(monkeypatch):
    """Its activations are estimated on the meta device (nothing allocated): the forward never runs."""
    wide = nn.Sequential(nn.Conv2d(3, 1024, 1), nn.ReLU(), nn.Conv2d(1024, 8, 3, padding=1))
    ran = []
    wide.register_forward_pre_hook(lambda m, a: ran.append(a[0].device.type))
    x = torch.empty(1, 3, 1100, 1100)  # 14.5 MB; 1024 channels of it are 5 GB
    message = (
        r"^example_inputs: an input of shape \(1, 3, 1100, 1100\) needs about [\d.]+ GiB of activations "
        r"per example \(estimated\), above the budget of 4\.0 GiB; "
    )
    with pytest.raises(ns.UserInputError, match=message):
        ns.make_plan(wide, "dwsep", example_inputs=x)
    assert "cpu" not in ran  # only the estimate's forward ran, on the meta device
    with pytest.raises(ns.UserInputError, match=r"^example_inputs: ExampleInputs item 2 of 2: an input of shape"):
        ns.make_plan(wide, "dwsep", example_inputs=ns.ExampleInputs(torch.randn(1, 3, 8, 8), x))


def test_a_huge_input_size_is_refused_before_it_is_allocated():
    message = (
        r"^input_size: \(3, 100000, 100000\) is 111\.8 GiB for the input alone, "
        r"above the budget of 4\.0 GiB; use a smaller input size, e\.g\. 3,224,224$"
    )
    with pytest.raises(ns.UserInputError, match=message):
        ns.make_plan(Plain(), "dwsep", example_inputs=(3, 100_000, 100_000))


def test_an_example_input_of_batch_zero_is_refused():
    with pytest.raises(
        ns.UserInputError,
        match=r"^example_inputs: an input of shape \(0, 8, 8, 8\) holds no example; "
        r"give inputs of batch 1 or more",
    ):
        ns.make_plan(Plain(), "dwsep", example_inputs=torch.randn(0, 8, 8, 8))
