"""Tests of nas_sepconv.conversion.pruning: global DepGraph channel pruning to a MACs budget."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

pytest.importorskip("torch_pruning")

import nas_sepconv as ns
from nas_sepconv.conversion import PRUNING_IMPORTANCES, is_pruned, prune
from nas_sepconv.conversion.pruning import PRUNE_STEPS
from nas_sepconv.errors import UserInputError
from nas_sepconv.io import Recipe, save_model
from nas_sepconv.models import cifar_resnet18, tiny_convnet
from nas_sepconv.train import TrainConfig, fit

#: A step of the schedule removes under 2 % of the original MACs on these models.
TOLERANCE = 0.05


def tiny() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return tiny_convnet(), torch.randn(2, 1, 16, 16)


def batches(x: torch.Tensor, n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(x.shape, generator=generator), torch.randint(0, 10, (x.shape[0],))) for _ in range(n)]


@pytest.mark.parametrize("ratio", [0.5, 0.25])
def test_tiny_convnet_reaches_the_macs_ratio_and_keeps_outputs(ratio):
    model, x = tiny()
    before = ns.count_macs(model, x)
    pruned = prune(model, x, macs_ratio=ratio)
    reached = ns.count_macs(pruned, x) / before
    assert ratio - TOLERANCE <= reached <= ratio
    assert pruned(x).shape == model(x).shape
    assert ns.count_params(pruned) < ns.count_params(model)
    assert ns.count_macs(model, x) == before  # the original is untouched


def test_resnet_residual_dependencies_stay_consistent():
    torch.manual_seed(0)
    model, x = cifar_resnet18(width=8), torch.randn(2, 3, 32, 32)
    pruned = prune(model, x, macs_ratio=0.5)
    reached = ns.count_macs(pruned, x) / ns.count_macs(model, x)
    assert 0.5 - TOLERANCE <= reached <= 0.5
    assert pruned.eval()(x).shape == (2, 10)
    block = pruned.layer1[0]  # the addition needs conv2's outputs to match the stem's
    assert block.conv2.out_channels == pruned.conv1.out_channels == pruned.bn1.num_features


def test_the_ranking_is_global_so_layers_lose_different_fractions():
    model, x = tiny()
    pruned = prune(model, x, macs_ratio=0.5)
    kept = [p.out_channels / o.out_channels for p, o in zip(convs(pruned), convs(model), strict=True)]
    assert len({round(k, 3) for k in kept}) > 1


def convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_the_classifier_outputs_are_never_pruned():
    model, x = tiny()
    pruned = prune(model, x, macs_ratio=0.3)
    assert pruned.classifier.out_features == model.classifier.out_features == 10
    assert pruned.classifier.in_features < model.classifier.in_features


def test_ignored_layers_keep_their_output_channels():
    model, x = tiny()
    pruned = prune(model, x, macs_ratio=0.5, ignored=[model.features[0]])
    assert pruned.features[0].out_channels == model.features[0].out_channels


def test_round_to_keeps_multiples():
    model, x = tiny()
    pruned = prune(model, x, macs_ratio=0.5, round_to=4)
    assert all(c.out_channels % 4 == 0 for c in convs(pruned)[1:])


@pytest.mark.parametrize("importance", sorted(PRUNING_IMPORTANCES))
def test_every_importance_prunes_to_the_budget(importance):
    model, x = tiny()
    data = batches(x) if PRUNING_IMPORTANCES[importance].needs_data else None
    pruned = prune(model, x, macs_ratio=0.5, importance=importance, data=data)
    assert ns.count_macs(pruned, x) <= 0.5 * ns.count_macs(model, x)
    assert all(p.grad is None for p in pruned.parameters())


def test_taylor_and_magnitude_rank_differently():
    model, x = tiny()
    by_magnitude = prune(model, x, macs_ratio=0.5)
    by_taylor = prune(model, x, macs_ratio=0.5, importance="taylor", data=batches(x))
    assert [c.out_channels for c in convs(by_magnitude)] != [c.out_channels for c in convs(by_taylor)]


@pytest.mark.parametrize("ratio", [0, -0.5, 1, 1.5, float("nan"), True, "0.5"])
def test_a_bad_ratio_is_one_line_naming_macs_ratio(ratio):
    model, x = tiny()
    with pytest.raises(UserInputError) as info:
        prune(model, x, macs_ratio=ratio)
    assert info.value.field == "macs_ratio" and "\n" not in str(info.value)


def test_an_unreachable_ratio_says_what_was_reached():
    model, x = tiny()
    with pytest.raises(UserInputError, match=r"macs_ratio: 0.001 cannot be reached: pruning stopped at") as info:
        prune(model, x, macs_ratio=0.001)
    assert "\n" not in str(info.value)
    assert PRUNE_STEPS > 1


def test_an_unknown_importance_lists_the_table():
    model, x = tiny()
    with pytest.raises(UserInputError, match="importance: unknown pruning importance 'l1'") as info:
        prune(model, x, macs_ratio=0.5, importance="l1")
    assert all(name in str(info.value) for name in PRUNING_IMPORTANCES)


def test_taylor_without_data_names_data():
    model, x = tiny()
    with pytest.raises(UserInputError) as info:
        prune(model, x, macs_ratio=0.5, importance="taylor")
    assert info.value.field == "data" and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"round_to": 0}, "round_to"),
        ({"ignored": [nn.Conv2d(1, 1, 1)]}, "ignored"),
        ({"importance": "taylor", "data": [1, 2]}, "data"),
    ],
)
def test_other_bad_arguments_name_their_parameter(kwargs, field):
    model, x = tiny()
    with pytest.raises(UserInputError) as info:
        prune(model, x, macs_ratio=0.5, **kwargs)
    assert info.value.field == field


def test_a_pruned_model_fine_tunes_for_a_step():
    model, x = tiny()
    pruned = prune(model, x, macs_ratio=0.5)
    before = [p.detach().clone() for p in pruned.parameters()]
    config = TrainConfig(epochs=1, batch_size=2, lr=0.01, warmup_epochs=0.0)
    fit(pruned, batches(x, 1), steps_per_epoch=1, config=config)
    assert any(not torch.equal(a, b) for a, b in zip(before, pruned.parameters(), strict=True))
    assert pruned(x).shape == (2, 10)


def test_save_model_refuses_a_pruned_model_in_one_line(tmp_path):
    model, x = tiny()
    pruned = prune(model, x, macs_ratio=0.5)
    assert is_pruned(pruned) and not is_pruned(model)
    recipe = Recipe(kind="converted", model="nas_sepconv:tiny_convnet", input_size=(1, 16, 16))
    with pytest.raises(UserInputError, match="^model: a channel-pruned model .*ONNX") as info:
        save_model(tmp_path / "m.safetensors", pruned, recipe)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "m.safetensors").exists()


def test_save_model_refuses_a_deepcopy_of_a_pruned_model(tmp_path):
    model, x = tiny()
    twin = copy.deepcopy(prune(model, x, macs_ratio=0.5))
    assert is_pruned(twin)
    recipe = Recipe(kind="converted", model="nas_sepconv:tiny_convnet", input_size=(1, 16, 16))
    with pytest.raises(UserInputError, match="^model: a channel-pruned model"):
        save_model(tmp_path / "m.safetensors", twin, recipe)


def small_latency_table(model: nn.Module, x: torch.Tensor, tmp_path) -> ns.LatencyTable:
    return ns.latency_table(model, x, candidates=["dwsep_m1"], repeats=3, warmup=1, threads=1, cache_dir=tmp_path)


@pytest.mark.slow
def test_prune_to_a_latency_ratio_reaches_it_or_says_what_it_reached(tmp_path):
    torch.manual_seed(0)
    model, x = cifar_resnet18(width=8), torch.randn(2, 3, 16, 16)
    table = small_latency_table(model, x, tmp_path)
    try:
        pruned = prune(model, x, latency_ratio=0.7, latency_table=table)
    except UserInputError as error:  # the measured latency (a busy machine's) did not fall far enough
        assert error.field == "latency_ratio" and "of the original measured latency" in str(error)
        assert "\n" not in str(error)
    else:
        assert is_pruned(pruned) and pruned(x).shape == model(x).shape
        assert ns.count_macs(pruned, x) < ns.count_macs(model, x)


def test_an_unreachable_latency_ratio_is_refused_in_one_line(tmp_path):
    model, x = tiny()
    with pytest.raises(UserInputError, match=r"^latency_ratio: 0.001 cannot be reached: pruning stopped at") as info:
        prune(model, x, latency_ratio=0.001, latency_table=small_latency_table(model, x, tmp_path))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({}, "budget"),
        ({"macs_ratio": 0.5, "latency_ratio": 0.5}, "budget"),
        ({"latency_ratio": 0.5}, "latency_table"),
        ({"latency_ratio": 1.5}, "latency_ratio"),
    ],
)
def test_prune_takes_exactly_one_budget(kwargs, field):
    model, x = tiny()
    with pytest.raises(UserInputError) as info:
        prune(model, x, **kwargs)
    assert info.value.field == field


def test_ns_exports_prune():
    assert ns.prune is prune and "prune" in ns.__all__


def test_a_pruned_model_exports_to_onnx_as_the_refusal_says(tmp_path):
    pytest.importorskip("onnxruntime")
    from nas_sepconv.measure import onnx_session, run_onnx, to_onnx

    model, x = tiny()
    pruned = prune(model, x[:1], macs_ratio=0.5).eval()
    path = to_onnx(pruned, x[:1], tmp_path / "m.onnx")
    (outputs,) = run_onnx(onnx_session(path), x[:1])
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(outputs), pruned(x[:1]), rtol=1e-4, atol=1e-5)


def test_each_latency_check_times_the_original_beside_the_pruned_model(monkeypatch, tmp_path):
    from nas_sepconv.conversion import pruning

    model, x = tiny()
    full = ns.count_macs(model, x)
    calls = []

    def timed(modules, settings, progress=False):  # latency in proportion to MACs
        calls.append([ns.count_macs(m, inputs[0]) for m, inputs in modules])
        return [{"median_ms": ns.count_macs(m, inputs[0]) / 1e6} for m, inputs in modules]

    monkeypatch.setattr(pruning, "time_modules", timed, raising=False)
    pruned = prune(model, x, latency_ratio=0.5, latency_table=small_latency_table(model, x, tmp_path))
    assert calls and all(len(pair) == 2 and pair[0] == full for pair in calls)  # the original each time
    assert calls[-1][1] <= 0.5 * full and ns.count_macs(pruned, x) == calls[-1][1]
