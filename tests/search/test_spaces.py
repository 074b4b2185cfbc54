"""Search-space files: bundled ones validate, bad fields are named, suggest() reads the registry."""

from __future__ import annotations

import optuna
import pytest
import torch

import nas_sepconv as ns
from nas_sepconv.io import build_from_recipe
from nas_sepconv.search.spaces import list_spaces, load_space, parse_space
from nas_sepconv.search.suggestion import suggest

BUNDLED = [
    "default",
    "digits_convert",
    "mobilenetv3_cifar10",
    "resnet18_convert_cifar10",
    "mobilenetv2_width_cifar10",
    "mobilenetv2_width_digits",
    "mobilenetv3small_width_digits",
    "mobilenetv3small_width_cifar10",
]


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

    from nas_sepconv.models import build_network

    again = build_network(candidate.recipe.arch)
    assert ns.count_macs(again, x[:1]) == ns.count_macs(model, x[:1]) > 0


def test_bundled_spaces_name_no_folder_outside_the_package():
    for name in BUNDLED:
        space = load_space(name)
        assert "../" not in space.text and "shared" not in space.text
        assert space.spec.data.root is None  # CIFAR-10: the per-user folder (nas_sepconv.data.default_data_root)


def test_relative_paths_of_a_space_file_are_read_from_its_folder(tmp_path, monkeypatch):
    folder = tmp_path / "spaces"
    folder.mkdir()
    (folder / "s.yaml").write_text(
        "name: s\nkind: convert\ndata: {dataset: cifar10, root: tree}\n"
        "convert: {model: 'nas_sepconv:tiny_convnet', weights: w/base.safetensors}\n"
    )
    (folder / "f.yaml").write_text(
        "name: f\nkind: convert\ndata: {dataset: 'imagefolder:imgs', root: null}\nconvert: {model: 'nas_sepconv:tiny_convnet', weights: /abs/w.pt}\n"
    )
    monkeypatch.chdir(tmp_path)
    space = load_space(folder / "s.yaml")
    assert space.spec.data.root == str(folder / "tree")
    assert space.spec.convert.weights == str(folder / "w" / "base.safetensors")
    assert "root: tree" in space.text  # the text (stored in the study) is kept as written
    other = load_space(folder / "f.yaml")
    assert other.spec.data.dataset == f"imagefolder:{folder / 'imgs'}" and other.spec.convert.weights == "/abs/w.pt"
    assert parse_space((folder / "s.yaml").read_text()).spec.data.root == "tree"  # text alone: no folder to read from


HEAD_SPACE = (
    "name: h\nkind: build\nbuild:\n  stem_channels: 8\n  head: [avgpool, gdc]\n  resolution_mult: [0.5, 1.0]\n  stages:\n"
    "    - {out_channels: 8, kind: dwsep, shortcut: [true, false]}\n    - {out_channels: 16, stride: 2, kind: dwsep, shortcut: false}\n"
)


def test_head_and_shortcut_are_searched_when_listed():
    space = parse_space(HEAD_SPACE)
    x_side = 16
    seen = set()
    for head, shortcut, rho in (("gdc", False, 0.5), ("avgpool", True, 1.0), ("gdc", True, 1.0)):
        trial = optuna.trial.FixedTrial({"head": head, "stage0.shortcut": shortcut, "resolution_mult": rho})
        candidate = suggest(space, trial, input_shape=(1, x_side, x_side), num_classes=10)
        model = build_from_recipe(candidate.recipe).eval()
        assert model.arch.head == head and model.arch.input_size == candidate.resolution == int(x_side * rho)
        assert [s.shortcut for s in model.arch.stages] == [shortcut, False]
        assert model.stages[0][0].residual is shortcut
        with torch.no_grad():
            assert model(torch.randn(2, 1, candidate.resolution, candidate.resolution)).shape == (2, 10)
        if head == "gdc":  # the kernel is the trial's final feature map
            assert model.pool.conv.kernel_size == (candidate.resolution // 2,) * 2
            assert candidate.summary.endswith("| gdc")
        seen.add(type(model.pool).__name__)
    assert seen == {"GlobalDepthwiseConv", "AdaptiveAvgPool2d"}


def test_fixed_head_and_shortcut_add_no_parameter():
    # the bundled spaces list neither: their trials ask for the same parameters as before
    space = load_space("default")
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    candidate = suggest(space, trial, input_shape=(1, 16, 16), num_classes=10)
    assert not {k for k in trial.params if k == "head" or k.endswith(".shortcut")}
    arch = build_from_recipe(candidate.recipe).arch
    assert arch.head == "avgpool" and all(s.shortcut for s in arch.stages)


@pytest.mark.parametrize(
    "patch, field",
    [
        ("  head: maxpool\n", "build.head"),
        ("  head: [avgpool, max]\n", "build.head"),
        ("  head: {low: 0, high: 1}\n", "build.head"),
    ],
)
def test_bad_head_is_named(patch, field):
    text = "name: t\nkind: build\nbuild:\n" + patch + "  stages:\n    - {out_channels: 8, kind: [dwsep]}\n"
    with pytest.raises(ns.UserInputError) as info:
        parse_space(text)
    assert str(info.value).startswith(field)


@pytest.mark.parametrize("value", ["maybe", "[true, 1]", "{low: 0, high: 1}"])
def test_bad_shortcut_is_named(value):
    text = "name: t\nkind: build\nbuild:\n  stages:\n    - {out_channels: 8, kind: [dwsep], shortcut: " + value + "}\n"
    with pytest.raises(ns.UserInputError) as info:
        parse_space(text)
    assert str(info.value).startswith("build.stages[0].shortcut"), str(info.value)


# a boolean in a number field (YAML's ``epochs: true``) was taken as 1 by pydantic
@pytest.mark.parametrize(
    "patch, field",
    [
        ("train:\n  epochs: true\n", "train.epochs"),
        ("train:\n  batch_size: true\n", "train.batch_size"),
        ("train:\n  lr: true\n", "train.lr"),
        ("search:\n  trials: true\n", "search.trials"),
        ("search:\n  max_failures: false\n", "search.max_failures"),
        ("data:\n  subset: true\n", "data.subset"),
        ("search:\n  multi_fidelity: {min_epochs: true}\n", "search.multi_fidelity.min_epochs"),
        ("build:\n  stem_channels: true\n  stages:\n    - {out_channels: 8, kind: [dwsep]}\n", "build.stem_channels"),
        ("build:\n  stages:\n    - {out_channels: true, kind: [dwsep]}\n", "build.stages[0].out_channels"),
        (
            "build:\n  width_mult: {low: true, high: 1.0}\n  stages:\n    - {out_channels: 8, kind: [dwsep]}\n",
            "build.width_mult.low",
        ),
    ],
)
def test_a_boolean_is_not_a_number(patch, field):
    base = "name: t\nkind: build\n"
    if "build:" not in patch:
        base += "build:\n  stages:\n    - {out_channels: 8, kind: [dwsep]}\n"
    with pytest.raises(ns.UserInputError, match=r"expected a number, got (true|false)") as info:
        parse_space(base + patch)
    assert str(info.value).startswith(field), str(info.value)


def test_true_and_false_stay_booleans_where_a_boolean_is_asked():
    text = "name: t\nkind: build\ntrain: {amp: false, channels_last: true}\n"
    text += "build:\n  stages:\n    - {out_channels: 8, kind: [dwsep], shortcut: false}\n"
    spec = parse_space(text).spec
    assert spec.train.amp is False and spec.train.channels_last is True


@pytest.mark.parametrize(
    "patch, field",
    [
        ("train:\n  lr: 1.0e+308\n", "train.lr"),
        ("train:\n  lr: 11\n", "train.lr"),
    ],
)
def test_a_learning_rate_past_the_limit_is_refused(patch, field):
    base = "name: t\nkind: build\nbuild:\n  stages:\n    - {out_channels: 8, kind: [dwsep]}\n"
    with pytest.raises(ns.UserInputError, match="the largest learning rate") as info:
        parse_space(base + patch)
    assert str(info.value).startswith(field)
    assert parse_space(base + "train:\n  lr: 10\n").spec.train.lr == 10


def test_a_finetune_learning_rate_past_the_limit_is_refused():
    text = load_space("digits_convert").text.replace("finetune_lr: 0.02", "finetune_lr: 1.0e+308")
    with pytest.raises(ns.UserInputError, match=r"^convert\.finetune_lr"):
        parse_space(text)


@pytest.mark.parametrize("step", ["1.0e-300", "1.0e-7", "5.0e-324"])
def test_a_range_step_that_gives_too_many_values_is_refused(step):
    text = "name: t\nkind: build\nbuild:\n  width_mult: {low: 0.5, high: 1.0, step: " + step + "}\n"
    text += "  stages:\n    - {out_channels: 8, kind: [dwsep]}\n"
    with pytest.raises(ns.UserInputError, match=r"^build\.width_mult\.step: .* gives more than 1,000,000 values"):
        parse_space(text)
    fine = text.replace(step, "0.25")
    assert parse_space(fine).spec.build.width_mult.step == 0.25
