"""Search-space files: bundled ones validate, bad fields are named, suggest() reads the registry."""

from __future__ import annotations

import optuna
import pytest
import torch

import nas_sepconv as ns
from nas_sepconv.io import build_from_recipe
from nas_sepconv.search.spaces import list_spaces, load_space, parse_space
from nas_sepconv.search.suggestion import suggest

BUNDLED = ["default", "digits_convert", "mobilenetv3_cifar10", "resnet18_convert_cifar10", "mobilenetv2_width_cifar10"]


def test_bundled_spaces_are_listed_and_valid():
    spaces = list_spaces()
    assert set(BUNDLED) <= set(spaces)
    for name in BUNDLED:
        assert load_space(name).name == name
        assert "(invalid)" not in spaces[name]


@pytest.mark.parametrize(
    "patch, field",
    [
        ("search:\n  sampler: cmaes\n", "search.sampler"),
        ("search:\n  trials: 0\n", "search.trials"),
        ("train:\n  epochs: -1\n", "train.epochs"),
        ("bogus: 1\n", "bogus"),
        ("search:\n  mode: scalarised\n", "search"),
    ],
)
def test_bad_fields_are_named(patch, field):
    base = "name: t\nkind: build\nbuild:\n  stages:\n    - {out_channels: 8, kind: [dwsep]}\n"
    with pytest.raises(ns.UserInputError) as info:
        parse_space(base + patch)
    assert str(info.value).startswith(field)


def test_option_not_taken_by_the_chosen_kinds_is_refused():
    text = "name: t\nkind: build\nbuild:\n  stages:\n    - {out_channels: 8, kind: [inverted_residual], rank: [0.5]}\n"
    with pytest.raises(ns.UserInputError, match=r"build\.stages\[0\].*rank"):
        parse_space(text)


def test_unknown_kind_in_choices_is_refused():
    text = "name: t\nkind: build\nbuild:\n  stages:\n    - {out_channels: 8, kind: [dwsep, mbconv2]}\n"
    with pytest.raises(ns.UserInputError, match="mbconv2"):
        parse_space(text)


def test_suggest_only_asks_options_of_the_chosen_kind():
    space = load_space("default")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(12):
        trial = study.ask()
        candidate = suggest(space, trial, input_shape=(1, 16, 16), num_classes=10)
        for stage, spec in candidate.spec_by_param.items():
            kind = ns.BlockSpec.parse(spec).kind
            taken = {o.name for o in ns.KINDS[kind].options}
            asked = {k.split(".", 1)[1] for k in trial.params if k.startswith(stage + ".")} - {"kind"}
            assert asked <= taken, (spec, asked)
        study.tell(trial, 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_built_candidates_match_the_profiler(seed):
    space = load_space("default")
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask()
    candidate = suggest(space, trial, input_shape=(1, 16, 16), num_classes=10)
    model = build_from_recipe(candidate.recipe)
    x = torch.randn(2, 1, candidate.resolution, candidate.resolution)
    assert model(x).shape == (2, 10)
    arch = ns.models.Arch.from_json(candidate.recipe.arch) if hasattr(ns, "models") else None
    from nas_sepconv.models import Arch, build_network

    again = build_network(Arch.from_json(candidate.recipe.arch))
    assert ns.count_macs(again, x[:1]) == ns.count_macs(model, x[:1]) > 0
