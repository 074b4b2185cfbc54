"""The baseline spaces (hand-designed width families run like a search) and the grid sampler
that runs them: each alpha once, the recipe of the space they are compared with."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import yaml

import nas_sepconv as ns
from nas_sepconv.models import Arch, mobilenet_v2_cifar_arch, mobilenet_v3_small_arch
from nas_sepconv.search import SAMPLERS, grid_of
from nas_sepconv.search.samplers import make_sampler
from nas_sepconv.search.spaces import load_space, parse_space
from nas_sepconv.search.suggestion import suggest

pytestmark = pytest.mark.usefixtures("one_thread")

#: baseline space -> the searched space it is compared with (same data, recipe, objectives)
BASELINES = {
    "mobilenetv2_width_digits": "default",
    "mobilenetv3small_width_digits": "default",
    "mobilenetv2_width_cifar10": "mobilenetv3_cifar10",
    "mobilenetv3small_width_cifar10": "mobilenetv3_cifar10",
}
V2_ALPHAS = [0.35, 0.5, 0.75, 1.0, 1.3, 1.4]
V3_ALPHAS = [0.35, 0.5, 0.75, 1.0, 1.25]


@pytest.mark.parametrize("baseline, searched", BASELINES.items())
def test_baselines_mirror_the_data_recipe_and_objectives_of_their_space(baseline, searched):
    b, s = load_space(baseline).spec, load_space(searched).spec
    assert b.data == s.data
    assert b.train == s.train
    assert b.search.objectives == s.search.objectives and b.search.mode == s.search.mode
    assert b.description.startswith("Baseline - ")
    # one trial per alpha, drawn by the grid
    assert b.search.sampler == "grid" and b.search.trials == len(b.build.width_mult)


def _arch(space_name: str, alpha: float, input_shape: tuple[int, int, int]) -> Arch:
    trial = optuna.trial.FixedTrial({"width_mult": alpha})
    candidate = suggest(load_space(space_name), trial, input_shape=input_shape, num_classes=10)
    assert candidate.resolution == input_shape[-1]
    return candidate.recipe.arch


def _canonical(arch: Arch) -> Arch:
    """The arch with its block specs written the one way (``ir_e6_relu6`` = ``ir_e6_k3_relu6``),
    without the input side a built candidate records (the presets leave it unset)."""
    stages = tuple(dataclasses.replace(s, spec=str(ns.BlockSpec.parse(s.spec))) for s in arch.stages)
    return arch.replace(stages=stages, width_mult=float(arch.width_mult), input_size=None)


def _without_third_downsampling(arch: Arch) -> Arch:
    """The CIFAR arch with its last stride-2 stage at stride 1 (the digits baselines' strides)."""
    last = max(i for i, s in enumerate(arch.stages) if s.stride == 2)
    stages = tuple(dataclasses.replace(s, stride=1) if i == last else s for i, s in enumerate(arch.stages))
    return arch.replace(stages=stages)


@pytest.mark.parametrize("alpha", V2_ALPHAS)
def test_the_mobilenetv2_spaces_build_the_preset(alpha):
    preset = mobilenet_v2_cifar_arch(alpha, 10, 3)
    assert _canonical(_arch("mobilenetv2_width_cifar10", alpha, (3, 32, 32))) == _canonical(preset)
    digits = _without_third_downsampling(mobilenet_v2_cifar_arch(alpha, 10, 1))
    assert _canonical(_arch("mobilenetv2_width_digits", alpha, (1, 16, 16))) == _canonical(digits)


@pytest.mark.parametrize("alpha", V3_ALPHAS)
def test_the_mobilenetv3_small_spaces_build_the_preset(alpha):
    preset = mobilenet_v3_small_arch(10, 3, alpha)
    assert _canonical(_arch("mobilenetv3small_width_cifar10", alpha, (3, 32, 32))) == _canonical(preset)
    digits = _without_third_downsampling(mobilenet_v3_small_arch(10, 1, alpha))
    assert _canonical(_arch("mobilenetv3small_width_digits", alpha, (1, 16, 16))) == _canonical(digits)


@pytest.mark.parametrize("name", ["mobilenetv2_width_digits", "mobilenetv3small_width_digits", "default"])
def test_digits_baselines_downsample_16_to_4_as_the_default_space(name):
    b = load_space(name).spec.build
    total = b.stem_stride
    for stage in b.stages:
        total *= stage.stride
    assert total == 4


@pytest.mark.parametrize(
    "name, alphas", [("mobilenetv2_width_digits", V2_ALPHAS), ("mobilenetv3small_width_cifar10", V3_ALPHAS)]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_the_grid_draws_each_alpha_once(name, alphas, seed):
    space = load_space(name)
    assert grid_of(space) == {"width_mult": alphas}
    study = optuna.create_study(sampler=make_sampler("grid", seed, space))
    seen = []
    for _ in range(len(alphas)):
        trial = study.ask()
        seen.append(_arch_width(space, trial))
        study.tell(trial, 0.0)
    assert sorted(seen) == alphas


def _arch_width(space, trial) -> float:
    candidate = suggest(space, trial, input_shape=(1, 16, 16), num_classes=10)
    return candidate.recipe.arch.width_mult


def test_the_grid_is_shared_by_processes_of_other_seeds():
    """Two workers (samplers of different seeds) on one study still draw each point once."""
    space = load_space("mobilenetv2_width_digits")
    study = optuna.create_study()
    samplers = [make_sampler("grid", 0, space), make_sampler("grid", 12345, space)]
    seen = []
    for i in range(len(V2_ALPHAS)):
        study.sampler = samplers[i % 2]
        trial = study.ask()
        seen.append(_arch_width(space, trial))
        study.tell(trial, 0.0)
    assert sorted(seen) == V2_ALPHAS


def test_the_grid_enumerates_every_list_of_a_fixed_kind_stage():
    text = """name: g
kind: build
search: {trials: 4, sampler: grid}
build:
  stages:
    - {out_channels: 8, kind: inverted_residual, expand_ratio: [2, 4], kernel_size: 3}
  width_mult: [0.5, 1.0]
"""
    space = parse_space(text)
    assert grid_of(space) == {"stage0.expand_ratio": [2, 4], "width_mult": [0.5, 1.0]}
    assert isinstance(make_sampler("grid", 0, space), optuna.samplers.GridSampler)
    assert "grid" in SAMPLERS


@pytest.mark.parametrize(
    "space, field, words",
    [
        ("default", "search.sampler", "one kind per stage"),
        ("digits_convert", "search.sampler", "build spaces only"),
    ],
)
def test_the_grid_refuses_spaces_it_cannot_enumerate(space, field, words):
    with pytest.raises(ns.UserInputError, match=words) as info:
        make_sampler("grid", 0, load_space(space))
    assert info.value.field == field


def test_the_grid_refuses_a_range_and_more_trials_than_points():
    base = "name: g\nkind: build\nbuild:\n  stages:\n    - {out_channels: 8, kind: dwsep}\n"
    with pytest.raises(ns.UserInputError, match="width_mult is a range"):
        make_sampler(
            "grid", 0, parse_space(base + "  width_mult: {low: 0.5, high: 1.0}\nsearch: {sampler: grid, trials: 2}\n")
        )
    with pytest.raises(ns.UserInputError, match="grid has 2 points") as info:
        make_sampler("grid", 0, parse_space(base + "  width_mult: [0.5, 1.0]\nsearch: {sampler: grid, trials: 3}\n"))
    assert info.value.field == "search.trials"


def test_a_grid_search_refuses_more_trials_than_points_before_creating_anything(tmp_path):
    from typer.testing import CliRunner

    from nas_sepconv.cli import app

    result = CliRunner().invoke(
        app, ["search", "--space", "mobilenetv3small_width_digits", "--trials", "6", "--out", str(tmp_path / "r")]
    )
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0] == (
        "error: --trials: 6 trials, but the grid of space 'mobilenetv3small_width_digits' has 5 points; "
        "give --trials 5 or fewer (each point once)"
    )
    assert not (tmp_path / "r").exists()
    with pytest.raises(ns.UserInputError, match="grid of space 'mobilenetv2_width_digits' has 6 points") as info:
        ns.search("mobilenetv2_width_digits", trials=7, out=tmp_path / "r")
    assert info.value.field == "trials" and not (tmp_path / "r").exists()


@pytest.mark.parametrize("name", ["mobilenetv2_width_digits", "mobilenetv3small_width_digits"])
def test_digits_baselines_run_end_to_end(name, tmp_path):
    """The bundled file with a tiny budget (300 images, one epoch, the two smallest alphas):
    every trial completes, each alpha once."""
    data = yaml.safe_load(load_space(name).text)
    data["data"]["subset"] = 300
    data["train"]["epochs"] = 1
    data["build"]["width_mult"] = [0.35, 0.5]
    data["search"]["trials"] = 2
    data["build"]["resolution_mult"] = 0.5  # 8x8 inputs: a quarter of the MACs
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    study = ns.search(str(path), out=tmp_path / "results", heartbeat=0, threads=1)
    df = ns.results.load(tmp_path / "results" / name)
    assert list(df["state"]) == ["COMPLETE", "COMPLETE"]
    assert sorted(df["width_mult"]) == [0.35, 0.5]
    assert study.study_name == name
