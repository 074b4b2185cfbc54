"""The recipe record: an Arch and a Plan travel as objects, and are stored as JSON text inside
the recipe's JSON (the format results folders and model files have always had)."""

from __future__ import annotations

import json

import pytest
import torch

import nas_sepconv as ns
from nas_sepconv.errors import UserInputError
from nas_sepconv.io import load_model, read_recipe, save_model
from nas_sepconv.models import Arch, Stage, build_network
from nas_sepconv.recipe import Recipe

#: A built recipe as a results folder of the previous version stored it (a trial's arch_json).
OLD_BUILT = {
    "kind": "built",
    "arch": '{"stages": [{"spec": "ir_e6_k5", "out_channels": 16, "repeats": 1, "stride": 1, "shortcut": true}], '
    '"stem_channels": 8, "stem_stride": 1, "head_channels": 0, "num_classes": 10, "in_channels": 1, '
    '"width_mult": 1.0, "depth_mult": 1.0, "act": "relu", "dropout": 0.0, "head": "avgpool", "input_size": 16}',
    "input_size": [1, 16, 16],
}


def test_a_stored_built_recipe_reads_as_an_arch_and_writes_the_same_text():
    recipe = Recipe.from_dict(json.loads(json.dumps(OLD_BUILT)))
    assert isinstance(recipe.arch, Arch) and isinstance(recipe.arch.stages[0].spec, ns.BlockSpec)
    assert recipe.to_dict() == OLD_BUILT


def test_a_saved_converted_model_reads_its_plan_as_a_plan(tmp_path):
    net = ns.model_from_name("nas_sepconv:tiny_convnet", width=8)
    x = torch.randn(1, 1, 16, 16)
    plan = ns.make_plan(net, "dwsep", example_inputs=x)
    converted = ns.apply_plan(net, plan, init="random")
    recipe = Recipe(kind="converted", model="nas_sepconv:tiny_convnet", model_kwargs={"width": 8}, plan=plan)
    path = save_model(tmp_path / "m.safetensors", converted, recipe)
    again = read_recipe(path)
    assert isinstance(again.plan, ns.Plan) and again.plan.to_json() == plan.to_json()
    assert again.to_dict()["plan"] == plan.to_json(indent=None)  # stored as text, as before
    assert again == Recipe.from_dict(json.loads(json.dumps(recipe.to_dict())))
    torch.testing.assert_close(load_model(path)(x), converted.eval()(x))


def test_a_recipe_takes_an_arch_or_its_text():
    arch = Arch(stages=(Stage("dwsep", 16),), in_channels=1)
    assert Recipe(kind="built", arch=arch.to_json()) == Recipe(kind="built", arch=arch)
    assert build_network(Recipe(kind="built", arch=arch).arch) is not None


@pytest.mark.parametrize(
    "data, field",
    [
        ({"kind": "built", "arch": {"stages": [["dwsep", 16, 1, 1]]}}, "recipe.arch"),  # the stored form is text
        ({"kind": "built", "arch": "[1, 2]"}, "recipe.arch"),
        ({"kind": "built", "arch": '{"stages": [["nonsense", 16, 1, 1]]}'}, "arch.stages[0].spec"),
        ({"kind": "converted", "model": "nas_sepconv:tiny_convnet", "plan": '{"format": 0}'}, "plan"),
    ],
)
def test_a_bad_embedded_arch_or_plan_names_its_field(data, field):
    with pytest.raises(UserInputError) as info:
        Recipe.from_dict(data)
    assert info.value.field == field


def test_an_empty_plan_text_is_no_plan():
    data = {"kind": "converted", "model": "nas_sepconv:tiny_convnet", "plan": ""}
    assert Recipe.from_dict(data).plan is None
