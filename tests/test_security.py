"""What an attacker who writes a model file or a results folder can make us do: nothing.

Each test plants a payload that would leave a marker file if it ran (a shell command, an
import, an unpickle) and checks that loading refuses it with one :class:`UserInputError` and
that the marker was never written.  The fuzz tests feed random recipes to the loader.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml
from conftest import FAST_SPACE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import nas_sepconv as ns
from nas_sepconv.cli import app
from nas_sepconv.errors import UserInputError
from nas_sepconv.io import MAX_PARAMS, build_from_recipe, load_model, save_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))


def _plant(path: Path, recipe: dict) -> Path:
    """A model file carrying ``recipe`` as its metadata (``save_model`` adds ``format``)."""
    return save_model(path, _tiny_model(), recipe)


def _raw_recipe_file(path: Path, text: str) -> Path:
    """A safetensors file whose recipe metadata is exactly ``text`` (invalid JSON, a list ...)."""
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(path), metadata={"nas_sepconv": text})
    return path


def _shell_recipe(marker: Path) -> dict:
    return {
        "kind": "converted",
        "model": "os:system",
        "model_kwargs": {"command": f"touch {marker}"},
        "width_mult": 1.0,
        "input_size": [1, 8, 8],
    }


def _one_line(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- 1. a file cannot run a shell command ------------------------------------------------------


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    """A real results folder holding one finished trial (with saved weights)."""
    root = tmp_path_factory.mktemp("security_results")
    space = root / "tiny.yaml"
    space.write_text(yaml.safe_dump(FAST_SPACE))
    ns.search(str(space), trials=1, out=root / "results", heartbeat=0)
    folder = root / "results" / "tiny"
    assert (folder / "weights" / "trial_0.safetensors").is_file()
    return folder


def test_export_of_a_results_folder_never_runs_a_planted_command(results_dir, tmp_path):
    marker = tmp_path / "pwned"
    weights = results_dir / "weights" / "trial_0.safetensors"
    original = weights.read_bytes()
    try:
        _plant(weights, _shell_recipe(marker))
        result = CliRunner().invoke(
            app, ["export", str(results_dir), "--trial", "0", "--out", str(tmp_path / "x.safetensors")]
        )
        assert result.exit_code == 2, result.output
        assert "recipe.model" in _one_line(result)
        assert not marker.exists(), "the planted command ran"
        assert not (tmp_path / "x.safetensors").exists()
    finally:
        weights.write_bytes(original)


def test_load_model_refuses_any_callable_outside_the_registries(tmp_path):
    marker = tmp_path / "pwned"
    path = _plant(tmp_path / "evil.safetensors", _shell_recipe(marker))
    harmless = _plant(tmp_path / "getcwd.safetensors", {"kind": "converted", "model": "os:getcwd"})
    for allow in (None, False, (), "mypkg.models:make"):
        with pytest.raises(UserInputError, match=r"^recipe\.model"):
            load_model(path, allow_import=allow)
        with pytest.raises(UserInputError, match=r"^recipe\.model: the file asks to import and call 'os:getcwd'"):
            load_model(harmless, allow_import=allow)
    with pytest.raises(UserInputError, match=r"^allow_import: True would let the file import"):
        load_model(path, allow_import=True)
    assert not marker.exists()
    result = CliRunner().invoke(app, ["profile", "--model", str(path), "--input-size", "1,8,8"])
    assert result.exit_code == 2 and "recipe.model" in _one_line(result)
    assert not marker.exists()


def test_an_exact_vouched_name_is_the_only_way_in(tmp_path, monkeypatch):
    name = f"vouched_factory_{id(tmp_path)}"
    marker = tmp_path / "imported"
    (tmp_path / f"{name}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('x')\n"
        "import torch.nn as nn\n"
        "def make(num_classes=10, in_channels=1):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = _plant(
        tmp_path / "m.safetensors",
        {"kind": "converted", "model": f"{name}:make", "model_kwargs": {}, "width_mult": 1.0, "input_size": [1, 8, 8]},
    )
    with pytest.raises(UserInputError, match=r"^recipe\.model"):
        load_model(path, allow_import=[f"{name}:other", "os:system"])
    assert not marker.exists() and name not in sys.modules
    model = load_model(path, allow_import=[f"{name}:make"])
    assert marker.exists() and isinstance(model, nn.Module)


def test_a_stored_space_naming_a_user_module_needs_allow_import(results_dir, tmp_path):
    """Re-training a trial reads the space stored in the study: it came from the folder, so a
    ``package.module:factory`` (or a torchvision data set, whose loader unpickles) in it is
    refused unless the user names it."""
    import shutil

    import optuna

    from nas_sepconv.export import export_trial

    folder = tmp_path / "tampered"
    shutil.copytree(results_dir, folder)
    (folder / "meta.json").write_text(json.dumps({"storage": f"sqlite:///{folder / 'study.db'}", "study": "tiny"}))
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{folder / 'study.db'}")
    for data, named in (({"dataset": "torchvision:CIFAR100", "root": str(tmp_path)}, "torchvision:CIFAR100"),):
        study.set_user_attr("space_yaml", yaml.safe_dump({**FAST_SPACE, "data": data}))
        with pytest.raises(UserInputError, match=rf"^allow_import: .*{named}"):
            export_trial(folder, 0, out=tmp_path / "x.safetensors")
        with pytest.raises(UserInputError) as info:  # vouched for: it goes on, to the (absent) files
            export_trial(folder, 0, out=tmp_path / "x.safetensors", allow_import=[named])
        assert not str(info.value).startswith("allow_import")
    convert = {k: v for k, v in FAST_SPACE.items() if k != "build"}
    convert.update(kind="convert", convert={"model": "evil_factory_module:make"})
    study.set_user_attr("space_yaml", yaml.safe_dump(convert))
    with pytest.raises(UserInputError, match=r"^allow_import: .*convert\.model 'evil_factory_module:make'"):
        export_trial(folder, 0, out=tmp_path / "x.safetensors")
    assert "evil_factory_module" not in sys.modules


# -- 2. a recipe cannot make a model zoo read or fetch a file ----------------------------------


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"checkpoint_path": "/tmp/evil.pth"}, "recipe.model_kwargs.checkpoint_path"),
        ({"pretrained": True}, "recipe.model_kwargs.pretrained"),
        ({"pretrained_cfg_overlay": {"file": "/tmp/evil.pth"}}, "recipe.model_kwargs.pretrained_cfg_overlay"),
        ({"weights": "IMAGENET1K_V1"}, "recipe.model_kwargs.weights"),
        ({"weights_backbone": "DEFAULT"}, "recipe.model_kwargs.weights_backbone"),
        ({"model_dir": "/tmp"}, "recipe.model_kwargs.model_dir"),
        ({"norm": "/tmp/evil.pth"}, "recipe.model_kwargs.norm"),
        ({"act": "https://example.invalid/x"}, "recipe.model_kwargs.act"),
        ({"block": {"nested": 1}}, "recipe.model_kwargs.block"),
        ({"width": 1e7}, "recipe.model_kwargs.width"),
        ({"width": float("nan")}, "recipe.model_kwargs.width"),
        ({"layers": list(range(100))}, "recipe.model_kwargs.layers"),
    ],
)
def test_recipe_kwargs_that_read_fetch_or_explode_are_refused(kwargs, field, tmp_path, monkeypatch):
    def no_load(*args, **kw):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_load)
    path = _plant(
        tmp_path / "m.safetensors",
        {
            "kind": "converted",
            "model": "timm:resnet18",
            "model_kwargs": kwargs,
            "width_mult": 1.0,
            "input_size": [3, 8, 8],
        },
    )
    with pytest.raises(UserInputError) as info:
        load_model(path)
    assert str(info.value).startswith(field), str(info.value)


def test_the_minimum_torch_loads_weights_only_by_default():
    """pyproject asks for a torch whose ``torch.load`` is the safe, weights-only unpickler."""
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"torch>=2.6"' in text
    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    assert (major, minor) >= (2, 6)


# -- 3. sizes from files are bounded -----------------------------------------------------------


@pytest.mark.parametrize(
    "recipe, field",
    [
        ({"kind": "converted", "model": "nas_sepconv:cifar_resnet18", "model_kwargs": {"width": 1_000_000}}, "recipe"),
        (
            {
                "kind": "converted",
                "model": "nas_sepconv:tiny_convnet",
                "model_kwargs": {"num_classes": 1_000_000, "width": 100_000},
            },
            "recipe",
        ),
        (
            {
                "kind": "built",
                "arch": json.dumps(
                    {"stages": [{"spec": "dwsep", "out_channels": 8, "repeats": 1, "stride": 1}], "depth_mult": 1e9}
                ),
            },
            "arch",
        ),
        (
            {
                "kind": "built",
                "arch": json.dumps({"stages": [{"spec": "dwsep", "out_channels": 8, "repeats": 10**9, "stride": 1}]}),
            },
            "arch",
        ),
        (
            {
                "kind": "built",
                "arch": json.dumps({"stages": [{"spec": "dwsep", "out_channels": 10**7, "repeats": 1, "stride": 1}]}),
            },
            "arch",
        ),
        (
            {"kind": "converted", "model": "nas_sepconv:tiny_convnet", "input_size": [3, 100000, 100000]},
            "recipe.input_size",
        ),
        (
            {"kind": "converted", "model": "nas_sepconv:tiny_convnet", "width_mult": 1e9, "input_size": [1, 8, 8]},
            "recipe.width_mult",
        ),
    ],
)
def test_sizes_from_a_file_are_refused_quickly_and_without_memory(recipe, field, tmp_path):
    import resource

    path = _plant(tmp_path / "big.safetensors", recipe)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(UserInputError) as info:
        load_model(path)
    assert str(info.value).startswith(field), str(info.value)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 1024, f"loading grew the process by {grown_mb:.0f} MB before refusing"
    # structural, not a speed test: a refusal must not build the model first (1e9 layers would
    # take hours); a minute allows for any machine
    assert time.perf_counter() - started < 60


def test_the_size_budget_is_stated_and_can_be_raised(tmp_path):
    recipe = {
        "kind": "converted",
        "model": "nas_sepconv:tiny_convnet",
        "model_kwargs": {"width": 64},
        "width_mult": 1.0,
        "input_size": [1, 8, 8],
    }
    path = save_model(tmp_path / "m.safetensors", ns.model_from_name("nas_sepconv:tiny_convnet", width=64), recipe)
    with pytest.raises(UserInputError, match=r"more than 1,000 parameters"):
        load_model(path, max_params=1000)
    assert ns.count_params(load_model(path)) == ns.count_params(
        ns.model_from_name("nas_sepconv:tiny_convnet", width=64)
    )
    assert MAX_PARAMS >= 10**8


# -- malformed recipes: one line naming the field ----------------------------------------------


@pytest.mark.parametrize(
    "text, field",
    [
        ("{not json", "recipe"),
        ("[1, 2, 3]", "recipe"),
        (json.dumps({"format": 1, "kind": "converted"}), "recipe.model"),
        (json.dumps({"format": 1, "kind": "converted", "model": 7}), "recipe.model"),
        (json.dumps({"format": 1, "kind": "mystery"}), "recipe.kind"),
        (json.dumps({"format": 2, "kind": "built"}), "recipe.format"),
        (json.dumps({"format": 1, "kind": "built"}), "recipe.arch"),
        (json.dumps({"format": 1, "kind": "built", "arch": "{}", "colour": 1}), "recipe.colour"),
        (
            json.dumps({"format": 1, "kind": "converted", "model": "nas_sepconv:tiny_convnet", "model_kwargs": [1]}),
            "recipe.model_kwargs",
        ),
        (
            json.dumps({"format": 1, "kind": "converted", "model": "nas_sepconv:tiny_convnet", "plan": "{junk"}),
            "recipe.plan",
        ),
        (
            json.dumps({"format": 1, "kind": "converted", "model": "nas_sepconv:tiny_convnet", "width_mult": 0.5}),
            "recipe.input_size",
        ),
    ],
)
def test_malformed_recipes_get_one_line(text, field, tmp_path):
    path = _raw_recipe_file(tmp_path / "m.safetensors", text)
    with pytest.raises(UserInputError) as info:
        load_model(path)
    message = str(info.value)
    assert message.startswith(field) and "\n" not in message, message
    result = CliRunner().invoke(app, ["profile", "--model", str(path), "--input-size", "1,8,8"])
    assert result.exit_code == 2 and field in _one_line(result)


def test_load_model_device_is_checked_first(tmp_path):
    path = _plant(tmp_path / "m.safetensors", {"kind": "converted", "model": "nas_sepconv:tiny_convnet"})
    with pytest.raises(UserInputError, match=r"^device: 'tpu' is not"):
        load_model(path, device="tpu")


def test_export_device_is_checked_before_anything_runs(results_dir, tmp_path):
    result = CliRunner().invoke(
        app, ["export", str(results_dir), "--trial", "0", "--device", "tpu", "--out", str(tmp_path / "x.safetensors")]
    )
    assert result.exit_code == 2 and "--device" in _one_line(result)


# -- fuzzing: random recipes -------------------------------------------------------------------

_names = st.sampled_from(
    [
        "nas_sepconv:tiny_convnet",
        "nas_sepconv:nope",
        "torchvision:squeezenet1_1",
        "torchvision:nope",
        "timm:resnet18",
        "os:system",
        "subprocess:run",
        "builtins:eval",
        "importlib:import_module",
        "torch:load",
        "pickle:loads",
        "a.b:c",
        ":",
        "x",
    ]
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["/etc/passwd", "https://x.invalid/w.pth", "../x", "relu", "bn"]),
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_kwargs = st.dictionaries(
    st.sampled_from(
        [
            "num_classes",
            "in_channels",
            "width",
            "checkpoint_path",
            "pretrained",
            "weights",
            "command",
            "args",
            "x",
            "stem_stride",
        ]
    ),
    _json,
    max_size=4,
)
_recipes = st.one_of(
    st.fixed_dictionaries(
        {"kind": st.just("converted"), "model": _names},
        optional={
            "model_kwargs": _kwargs | _json,
            "width_mult": _scalars,
            "input_size": st.lists(st.integers(-2, 10**6), max_size=5) | _json,
            "plan": st.text(max_size=30) | _json,
            "rules": _json,
        },
    ),
    st.fixed_dictionaries({"kind": st.just("built"), "arch": st.text(max_size=30) | _json.map(json.dumps) | _json}),
    _json,
)


def test_a_line_break_in_a_recipe_key_stays_on_the_error_line(tmp_path):
    """Found by the fuzz test below: an arch whose key is a line break made a two-line error."""
    path = _raw_recipe_file(
        tmp_path / "m.safetensors", json.dumps({"format": 1, "kind": "built", "arch": '{"\\n": null}'})
    )
    with pytest.raises(UserInputError, match=r"^arch\.\\n: unknown field; Arch takes ") as info:
        load_model(path)
    assert "\n" not in str(info.value) and info.value.field == "arch.\n"


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(recipe=_recipes)
def test_random_recipes_give_a_model_or_one_user_input_error_and_import_nothing(recipe, tmp_path):
    import torchvision  # noqa: F401 - imported by the registry lookups: not a file's choice

    path = tmp_path / "fuzz.safetensors"
    if isinstance(recipe, dict):
        _raw_recipe_file(path, json.dumps({"format": 1, **recipe}, allow_nan=True))
    else:
        _raw_recipe_file(path, json.dumps(recipe, allow_nan=True))
    before = set(sys.modules)
    try:
        model = load_model(path, max_params=5_000_000)
    except UserInputError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(model, nn.Module)
    new = {
        m
        for m in set(sys.modules) - before
        if not m.startswith(("torchvision", "torch", "nas_sepconv", "PIL", "numpy", "scipy", "sympy"))
    }
    assert not new, f"loading imported {sorted(new)}"


@settings(max_examples=60, deadline=None)
@given(recipe=_recipes)
def test_build_from_recipe_alone_raises_only_user_input_errors(recipe):
    try:
        build_from_recipe(recipe if isinstance(recipe, dict) else {"kind": recipe}, max_params=5_000_000)
    except UserInputError:
        pass


# -- tampered results folders and nested JSON (issue 28, family 4) ------------------------------

DEEP = "[" * 100_000 + "]" * 100_000
TINY_RECIPE = {"format": 1, "kind": "converted", "model": "nas_sepconv:tiny_convnet"}


@pytest.mark.parametrize(
    "text, field",
    [
        (DEEP, "recipe"),
        (json.dumps({"format": 1, "kind": "built", "arch": DEEP}), "recipe.arch"),
        (json.dumps({**TINY_RECIPE, "plan": DEEP}), "recipe.plan"),
        (json.dumps({**TINY_RECIPE, "rules": {"conv1": [["dwsep"]]}}), "recipe.rules"),
    ],
)
def test_a_recipe_nested_100000_deep_is_one_line(text, field, tmp_path):
    path = _raw_recipe_file(tmp_path / "m.safetensors", text)
    with pytest.raises(UserInputError) as info:
        load_model(path)
    assert str(info.value).startswith(f"{field}: "), str(info.value)
    result = CliRunner().invoke(app, ["profile", "--model", str(path), "--input-size", "1,8,8"])
    assert result.exit_code == 2 and _one_line(result).startswith(f"error: {field}: ")


def test_a_plan_or_arch_nested_100000_deep_is_one_line():
    from nas_sepconv.models import Arch

    with pytest.raises(UserInputError, match=r"^plan: the plan nests deeper than"):
        ns.Plan.from_json(DEEP)
    with pytest.raises(UserInputError, match=r"^arch: the arch nests deeper than"):
        Arch.from_json('{"stages":' * 100_000 + "1" + "}" * 100_000)


@pytest.fixture(scope="module")
def ranged_results(tmp_path_factory) -> Path:
    """A results folder of one finished trial whose ``resolution_mult`` was drawn from a range."""
    root = tmp_path_factory.mktemp("ranged_results")
    space = root / "tiny.yaml"
    ranged = {**FAST_SPACE["build"], "resolution_mult": {"low": 0.75, "high": 1.0}}
    space.write_text(yaml.safe_dump({**FAST_SPACE, "build": ranged}))
    ns.search(str(space), trials=1, out=root / "results", heartbeat=0)
    return root / "results" / "tiny"


def _tampered(results: Path, tmp_path: Path, *statements: tuple[str, tuple]) -> Path:
    """A copy of ``results`` whose database had ``statements`` run on it (SQL: Optuna will not
    change a finished trial); ``:trial`` stands for the id of trial 0."""
    import shutil
    import sqlite3

    folder = tmp_path / "tampered"
    shutil.copytree(results, folder)
    (folder / "meta.json").write_text(json.dumps({"storage": f"sqlite:///{folder / 'study.db'}", "study": "tiny"}))
    with sqlite3.connect(folder / "study.db") as db:
        trial = db.execute("SELECT trial_id FROM trials WHERE number = 0").fetchone()[0]
        for sql, args in statements:
            db.execute(sql.replace(":trial", str(trial)), args)
    return folder


def _set_trial_attr(key: str, value_json: str | None) -> list[tuple[str, tuple]]:
    statements = [("DELETE FROM trial_user_attributes WHERE trial_id = :trial AND key = ?", (key,))]
    if value_json is not None:
        insert = "INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (:trial, ?, ?)"
        statements.append((insert, (key, value_json)))
    return statements


def _built_recipe(arch_text: str) -> str:
    return json.dumps(json.dumps({"kind": "built", "arch": arch_text, "input_size": [1, 8, 8]}))


@pytest.mark.parametrize(
    "statements, field",
    [
        (_set_trial_attr("threads", "-5"), "threads"),
        (_set_trial_attr("seed", str(2**70)), "seed"),
        (_set_trial_attr("resolution", str(10**6)), "resolution"),
        (_set_trial_attr("resolution", "9"), "resolution"),  # in bounds, but not the side its parameters give
        (_set_trial_attr("arch_json", json.dumps("{nope")), "arch_json"),
        (_set_trial_attr("arch_json", None), "arch_json"),
        (_set_trial_attr("arch_json", json.dumps(DEEP)), "arch_json"),
        (_set_trial_attr("arch_json", _built_recipe(DEEP)), "recipe.arch"),
        (_set_trial_attr("x", DEEP), "source"),  # a value Optuna itself cannot decode
        (
            [
                (
                    "UPDATE trial_params SET param_value = 1e6 WHERE trial_id = :trial AND param_name = 'resolution_mult'",
                    (),
                )
            ],
            "resolution_mult",
        ),
        ([("DELETE FROM study_user_attributes WHERE key = 'space_yaml'", ())], "space_yaml"),
    ],
    ids=[
        "threads",
        "seed",
        "resolution",
        "resolution-mismatch",
        "arch_json-not-json",
        "arch_json-missing",
        "arch_json-deep",
        "arch-deep",
        "attr-deep",
        "param-out-of-range",
        "space_yaml-missing",
    ],
)
def test_export_refuses_a_tampered_folder_in_one_line_before_any_work(ranged_results, tmp_path, statements, field):
    folder = _tampered(ranged_results, tmp_path, *statements)
    out = tmp_path / "x.safetensors"
    result = CliRunner().invoke(app, ["export", str(folder), "--trial", "0", "--out", str(out)])
    assert result.exit_code == 2, result.output
    line = _one_line(result)
    assert line.startswith(f"error: {field}: ") and str(folder) in line, line
    assert not out.exists()


def test_export_writes_the_recipe_it_validated_not_the_folders_text(ranged_results, tmp_path):
    from safetensors import safe_open

    from nas_sepconv.models import Arch

    stored = ns.results.load(ranged_results).loc[0, "arch_json"]
    recipe = json.loads(stored)
    arch = json.loads(recipe["arch"])
    planted = json.dumps(dict(reversed(list(arch.items()))), indent=7)  # the same arch, other text
    replanted = json.dumps(json.dumps({**recipe, "arch": planted}))
    folder = _tampered(ranged_results, tmp_path, *_set_trial_attr("arch_json", replanted))
    out = tmp_path / "x.safetensors"
    result = CliRunner().invoke(app, ["export", str(folder), "--trial", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    with safe_open(str(out), framework="pt") as f:
        written = json.loads(f.metadata()["nas_sepconv"])
    assert written["arch"] == Arch.from_json(planted).to_json() != planted
    assert isinstance(load_model(out), nn.Module)
