"""A block choice's walk from a build space to the built module: the space file is read once,
the candidate's specs and Arch travel as objects, and the Arch is written once, as its trial's
``arch_json`` (DESIGN.md: strings at the edges only)."""

from __future__ import annotations

import json
from collections import Counter

import optuna
import pytest

from nas_sepconv.blocks import BlockSpec
from nas_sepconv.io import build_from_recipe
from nas_sepconv.models import Arch
from nas_sepconv.recipe import Recipe
from nas_sepconv.search.spaces import load_space
from nas_sepconv.search.suggestion import suggest


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Counts the parses of a spec string and the JSON round trips of an Arch."""
    counts: Counter = Counter()
    parse, from_json, to_json = BlockSpec.parse.__func__, Arch.from_json.__func__, Arch.to_json

    def counted_parse(cls: type, text: object) -> BlockSpec:
        if isinstance(text, str):
            counts["BlockSpec.parse", text] += 1
        return parse(cls, text)

    def counted_from_json(cls: type, text: str) -> Arch:
        counts["Arch.from_json"] += 1
        return from_json(cls, text)

    def counted_to_json(self: Arch, **kwargs: object) -> str:
        counts["Arch.to_json"] += 1
        return to_json(self, **kwargs)

    monkeypatch.setattr(BlockSpec, "parse", classmethod(counted_parse))
    monkeypatch.setattr(Arch, "from_json", classmethod(counted_from_json))
    monkeypatch.setattr(Arch, "to_json", counted_to_json)
    return counts


@pytest.mark.parametrize("seed", [0, 1])
def test_a_built_candidate_is_parsed_once_and_written_once(calls, seed):
    space = load_space("mobilenetv2_width_digits")  # a build space: kinds and options, no spec strings
    assert space.kind == "build"
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask()
    candidate = suggest(space, trial, input_shape=(1, 16, 16), num_classes=10)
    model = build_from_recipe(candidate.recipe)
    assert isinstance(candidate.recipe.arch, Arch)
    assert all(isinstance(stage.spec, BlockSpec) for stage in candidate.recipe.arch.stages)
    assert model.arch is candidate.recipe.arch  # no Arch -> JSON -> Arch inside the process
    assert not [key for key in calls if key[0] == "BlockSpec.parse"]  # the space holds no spec strings
    assert calls["Arch.from_json"] == 0 and calls["Arch.to_json"] == 0
    written = json.dumps(candidate.recipe.to_dict())  # the trial's arch_json: the one serialisation
    assert calls["Arch.to_json"] == 1 and calls["Arch.from_json"] == 0
    assert Recipe.from_dict(json.loads(written)).arch == candidate.recipe.arch


def test_a_spec_string_is_parsed_once_where_it_enters(calls):
    arch = Arch(stages=[("ir_e6_k5", 16, 2, 1), {"spec": "dwsep_m2", "out_channels": 24, "stride": 2}])
    arch.summary()
    build_from_recipe(Recipe(kind="built", arch=arch))
    assert calls[("BlockSpec.parse", "ir_e6_k5")] == 1 and calls[("BlockSpec.parse", "dwsep_m2")] == 1
    assert calls["Arch.from_json"] == 0 and calls["Arch.to_json"] == 0
