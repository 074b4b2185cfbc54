"""Tests of channel pruning as a per-site candidate (prune_r<keep>) in budgeted plans beside the
separable kinds: nas_sepconv.conversion.channel_pruning, mixed_latency, and their use in
sensitivity, plan_for_budget, apply_plan and refit."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("torch_pruning")

import nas_sepconv as ns
from nas_sepconv.conversion import Plan, PruneSpec, make_mixed_plan, prune_sites
from nas_sepconv.conversion.mixed_latency import predict_mixed
from nas_sepconv.errors import UserInputError
from nas_sepconv.models import cifar_resnet18

X = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
CANDIDATES = ["dwsep_m2", "spatial_r0.25", "prune_r0.5"]
#: one of every choice: keep (the rest), prune, dwsep, spatial; layer1.0.conv1 is pruned's producer
CHOICES = {"layer1.0.conv2": "prune_r0.5", "layer1.0.conv1": "dwsep_m2", "layer3.0.conv1": "spatial_r0.25"}


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return cifar_resnet18(width=8).eval()


def calibration(n: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, 16, 16, generator=generator) for _ in range(n)]


@pytest.fixture(scope="module")
def table():
    return ns.sensitivity(model(), calibration(), candidates=CANDIDATES, iterations=1)


def test_prune_candidates_are_offered_only_at_local_sites(table):
    sites = prune_sites(model(), X)
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert sites == {f"{b}.conv2": f"{b}.conv1" for b in blocks}  # conv1's inputs meet a residual add
    pruned_rows = table[table["spec"] == "prune_r0.5"]
    assert set(pruned_rows["name"]) == set(sites)
    assert set(table[table["spec"] == "dwsep_m2"]["name"]) > set(sites)  # separable rows everywhere


def test_a_prune_row_counts_the_producers_saving(table):
    row = table[(table["name"] == "layer1.0.conv2") & (table["spec"] == "prune_r0.5")].iloc[0]
    conv = 8 * 8 * 9 * 16 * 16  # one 3x3 conv of layer1, 8 -> 8 channels on 16x16
    assert row.macs_before == 2 * conv and row.macs_after == conv
    assert row.params_after < row.params_before and math.isfinite(row.damage)


def test_a_mixed_plan_applies_with_exact_macs_and_the_original_output_shape():
    net = model()
    plan = make_mixed_plan(net, CHOICES, example_inputs=X)
    converted = ns.apply_plan(net, plan)
    assert ns.count_macs(converted, X) == plan.macs_after < plan.model_macs == ns.count_macs(net, X)
    assert converted(X).shape == net(X).shape
    report = plan.report().set_index("name")
    assert report.loc["layer1.0.conv2", "spec"] == "prune_r0.5"
    assert report.loc["layer1.0.conv2", "status"] == "pruned"
    assert report.loc["layer1.0.conv2", "compressor"] == "channel pruning"
    assert report.loc["layer1.0.conv1", "spec"] == "dwsep_m2"
    assert report.loc["layer3.0.conv1", "compressor"] == "low-rank (spatial SVD)"
    assert report.loc["layer2.0.conv1", "spec"] == "keep"
    assert "1 pruned: layer1.0.conv2" in plan.summary()
    saved = ((report["macs_before"] - report["macs_after"]) * report["calls"]).sum()
    assert saved == plan.model_macs - plan.macs_after  # the narrowed producer's rows show their saving


def test_a_mixed_plan_round_trips_through_json_and_applies_to_a_fresh_model():
    plan = make_mixed_plan(model(), CHOICES, example_inputs=X)
    again = Plan.from_json(plan.to_json())
    converted = ns.apply_plan(model(), again)
    assert ns.count_macs(converted, X) == plan.macs_after
    assert [e.pruned_channels for e in again.pruned] == [e.pruned_channels for e in plan.pruned]


def test_refit_re_solves_the_pruned_site_and_its_narrowed_producer():
    net = model()
    plan = make_mixed_plan(net, CHOICES, example_inputs=X)
    converted = ns.apply_plan(net, plan)
    report = ns.refit(converted, net, calibration(2), plan=plan).set_index("name")
    for name in ("layer1.0.conv2", "layer1.0.conv1"):
        assert report.loc[name, "refit_applied"]
        assert report.loc[name, "rel_output_error_after"] <= report.loc[name, "rel_output_error_before"]


def test_fidelity_of_a_mixed_plan_compares_the_narrowed_producer_on_its_kept_channels():
    net = model()
    plan = make_mixed_plan(net, CHOICES, example_inputs=X)
    report = ns.fidelity(ns.apply_plan(net, plan), net, calibration(), plan=plan).set_index("name")
    assert set(report.index) == {"layer1.0.conv1", "layer3.0.conv1"}  # the converted sites
    assert math.isnan(report.loc["layer1.0.conv1", "rel_weight_error"])
    assert math.isfinite(report.loc["layer1.0.conv1", "rel_output_error_local"])


def test_a_macs_budget_plan_with_mixed_candidates_is_exact(table):
    net = model()
    plan = ns.plan_for_budget(net, table, macs_ratio=0.5, example_inputs=X)
    converted = ns.apply_plan(net, plan)
    assert ns.count_macs(converted, X) == plan.macs_after <= 0.5 * plan.model_macs
    assert converted(X).shape == net(X).shape
    assert set(plan.report()["spec"]) <= {"keep", *CANDIDATES}


def test_the_budget_picks_pruning_where_it_is_cheapest_in_damage(table):
    rigged = table.copy()
    rigged["damage"] = [1e-9 if spec == "prune_r0.5" else 1.0 for spec in rigged["spec"]]
    plan = ns.plan_for_budget(model(), rigged, macs_ratio=0.8, example_inputs=X)
    assert plan.pruned and not plan.converted
    assert ns.count_macs(ns.apply_plan(model(), plan), X) == plan.macs_after <= 0.8 * plan.model_macs


@pytest.mark.slow
def test_a_latency_budget_plan_times_the_prune_candidates(table, tmp_path):
    net = model()
    latency = ns.latency_table(
        net, X, candidates=["dwsep_m2", "spatial_r0.25"], repeats=2, warmup=1, threads=1, cache_dir=tmp_path
    )
    free = table[table["name"].str.startswith(("layer1.0.", "layer4.1."))].copy()  # two blocks: a short test
    free["damage"] = [0.0 if spec == "prune_r0.5" else 1.0 for spec in free["spec"]]
    plan = ns.plan_for_budget(net, free, latency_ms=2 * latency.model_ms, latency_table=latency, example_inputs=X)
    assert any("@" in spec for spec in latency.frame["spec"])  # narrowed layers were timed
    assert "latency_before_ms" in plan.report().columns
    assert any("predicted" in note for note in plan.notes)
    assert ns.count_macs(ns.apply_plan(net, plan), X) == plan.macs_after
    mixed = make_mixed_plan(net, CHOICES, example_inputs=X)
    assert math.isfinite(predict_mixed(latency, mixed)) and predict_mixed(latency, mixed) > 0
    assert latency.predict(mixed) == predict_mixed(latency, mixed)  # the table prices pruned plans itself


def test_a_pruned_and_converted_model_is_refused_by_save_model_even_as_a_copy(tmp_path):
    import copy

    from nas_sepconv.io import Recipe, save_model

    converted = ns.apply_plan(model(), make_mixed_plan(model(), CHOICES, example_inputs=X))
    recipe = Recipe(kind="converted", model="nas_sepconv:cifar_resnet18", input_size=(3, 16, 16))
    with pytest.raises(UserInputError, match="^model: a channel-pruned model"):
        save_model(tmp_path / "m.safetensors", copy.deepcopy(converted), recipe)


@pytest.mark.parametrize("text", ["prune_r1.5", "prune_r0", "prune_rx", "prune_r"])
def test_a_bad_prune_candidate_is_refused(text):
    with pytest.raises(UserInputError) as info:
        PruneSpec.parse(text)
    assert info.value.field == "candidates"


def test_pruning_a_site_that_is_not_local_is_refused():
    with pytest.raises(UserInputError, match="no prune site") as info:
        make_mixed_plan(model(), {"layer1.0.conv1": "prune_r0.5"}, example_inputs=X)
    assert info.value.field == "plan"


def test_prune_spec_string_form():
    assert str(PruneSpec.parse("prune_r0.5")) == "prune_r0.5" and PruneSpec(0.25).channels(8) == 2


def test_predict_mixed_calibrates_converted_sites_as_predict_does(tmp_path, monkeypatch):
    net = model()
    latency = ns.latency_table(
        net, X, candidates=["dwsep_m2"], repeats=2, warmup=1, threads=1, calibrate=0, cache_dir=tmp_path
    )
    monkeypatch.setattr(type(latency), "scales", property(lambda self: {"*": 2.0}))
    plan = ns.make_plan(net, {"layer1.0.conv1": "dwsep_m2", "layer3.0.conv1": "dwsep_m2"}, example_inputs=X)
    assert predict_mixed(latency, plan) == pytest.approx(latency.predict(plan))
