"""The CLI: convert (and load back what --out saved), profile, spaces, search, report, export."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import TINY
from typer.testing import CliRunner

import nas_sepconv as ns
from nas_sepconv.cli import app
from nas_sepconv.models import tiny_convnet

runner = CliRunner()


def test_convert_prints_the_report_and_saves_a_loadable_model(tmp_path):
    out = tmp_path / "r18.safetensors"
    result = runner.invoke(
        app,
        [
            "convert",
            "--model",
            "nas_sepconv:cifar_resnet18",
            "--to",
            "dwsep_m2",
            "--input-size",
            "3,32,32",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "layer1.0.conv1" in result.output and "conv sites converted" in result.output
    model = ns.load_model(out)
    x = torch.randn(2, 3, 32, 32)
    original = ns.model_from_name("nas_sepconv:cifar_resnet18").eval()
    plan = ns.make_plan(original, "dwsep_m2", example_inputs=x[:1])
    assert model(x).shape == (2, 10)
    assert ns.count_macs(model, x[:1]) == plan.macs_after
    assert sum(type(m).__name__ == "DepthwiseSeparable" for m in model.modules()) == len(plan.converted)


def test_convert_table_shows_each_sites_macs_ratio():
    result = runner.invoke(
        app, ["convert", "--model", "nas_sepconv:tiny_convnet", "--to", "dwsep", "--input-size", "1,16,16"]
    )
    assert result.exit_code == 0, result.output
    assert "macs_ratio" in result.output
    plan = ns.make_plan(tiny_convnet(), "dwsep", example_inputs=torch.randn(1, 1, 16, 16))
    assert plan.converted
    for e in plan.converted:  # the MobileNet paper's 1/C_out + 1/K² for a depthwise-separable block
        seeds = 1 / e.geometry.out_channels + 1 / (e.geometry.kernel_size[0] * e.geometry.kernel_size[1])
        row = next(line for line in result.output.splitlines() if f" {e.name} " in line)
        assert f"{seeds:.4g}" in row
    # a spec that would cost MACs is not made, and the CLI says why, with the numbers, once
    result = runner.invoke(
        app, ["convert", "--model", "nas_sepconv:tiny_convnet", "--to", "dwsep_m9", "--input-size", "1,16,16"]
    )
    assert result.exit_code == 0, result.output
    assert "note: dwsep_m9 not made at 3 site(s)" in result.output and "saves -" in result.output
    assert "PlanWarning" not in result.output


def test_saved_weights_round_trip_exactly(tmp_path):
    net = tiny_convnet().eval()
    x = torch.randn(1, 1, 16, 16)
    converted = ns.convert(net, "spatial_r0.25", example_inputs=x).eval()
    plan = ns.plan_of(converted)
    recipe = dict(
        kind="converted",
        model="nas_sepconv:tiny_convnet",
        model_kwargs={},
        width_mult=1.0,
        input_size=[1, 16, 16],
        plan=plan.to_json(),
    )
    path = ns.save_model(tmp_path / "m.safetensors", converted, recipe)
    loaded = ns.load_model(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), converted(x))


def test_profile_prints_layers_and_totals():
    result = runner.invoke(app, ["profile", "--model", "nas_sepconv:tiny_convnet", "--input-size", "1,16,16"])
    assert result.exit_code == 0, result.output
    macs = ns.count_macs(tiny_convnet(), torch.randn(1, 1, 16, 16))
    assert f"total MACs {macs:,}" in result.output


def test_profile_latency_in_each_runtime():
    for runtime in ("eager", "onnxruntime"):
        result = runner.invoke(
            app,
            [
                "profile",
                "--model",
                "nas_sepconv:tiny_convnet",
                "--input-size",
                "1,16,16",
                "--latency",
                "--threads",
                "1",
                "--runtime",
                runtime,
            ],
        )
        assert result.exit_code == 0, result.output
        assert f"latency ({runtime}, batch 1, 1 threads): median" in result.output
    result = runner.invoke(
        app,
        ["profile", "--model", "nas_sepconv:tiny_convnet", "--input-size", "1,16,16", "--latency", "--runtime", "tvm"],
    )
    assert result.exit_code == 2 and "--runtime" in result.stderr and "onnxruntime" in result.stderr


def test_convert_to_onnx_matches_pytorch(tmp_path):
    import numpy as np
    import onnxruntime

    outs = {}
    for suffix in ("onnx", "safetensors"):  # the same seeded model, written both ways
        outs[suffix] = tmp_path / f"m.{suffix}"
        torch.manual_seed(0)
        result = runner.invoke(
            app,
            [
                "convert",
                "--model",
                "nas_sepconv:tiny_convnet",
                "--to",
                "dwsep",
                "--input-size",
                "1,16,16",
                "--out",
                str(outs[suffix]),
            ],
        )
        assert result.exit_code == 0, result.output
    x = torch.randn(2, 1, 16, 16)
    (y,) = onnxruntime.InferenceSession(str(outs["onnx"]), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()}
    )
    with torch.no_grad():
        np.testing.assert_allclose(y, ns.load_model(outs["safetensors"]).eval()(x).numpy(), rtol=1e-4, atol=1e-5)


def test_spaces_lists_bundled_spaces():
    result = runner.invoke(app, ["spaces"])
    assert result.exit_code == 0 and "default" in result.output and "mobilenetv2_width_cifar10" in result.output


def test_search_report_export_from_the_cli(tmp_path):
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY)
    out = tmp_path / "results"
    result = runner.invoke(app, ["search", "--space", str(space), "--trials", "2", "--out", str(out), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "Pareto front of tiny" in result.output
    folder = out / "tiny"
    result = runner.invoke(app, ["report", str(folder)])
    assert result.exit_code == 0 and "Pareto front" in result.output
    number = int(pd.read_csv(folder / "pareto.csv")["number"].iloc[0])
    target = tmp_path / "best.safetensors"
    result = runner.invoke(app, ["export", str(folder), "--trial", str(number), "--out", str(target)])
    assert result.exit_code == 0, result.output
    assert ns.load_model(target)(torch.randn(1, 1, 16, 16)).shape == (1, 10)
    storage = f"sqlite:///{folder / 'study.db'}"
    result = runner.invoke(app, ["report", "--storage", storage, "--study", "tiny", "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0 and (tmp_path / "rep" / "pareto.png").is_file()


def test_bad_spec_exits_2_with_one_line_and_no_traceback():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nas_sepconv.cli",
            "convert",
            "--model",
            "nas_sepconv:tiny_convnet",
            "--to",
            "dwsepp",
            "--input-size",
            "1,16,16",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: spec") and "Traceback" not in proc.stderr


# -- issue 15: an exported built model keeps its input size; messages keep their brackets ------


@pytest.fixture(scope="module")
def low_resolution_results(tmp_path_factory):
    """A results folder of one trial of a build space run at 12x12 (resolution_mult 0.75 on the
    16x16 digits)."""
    import yaml
    from conftest import FAST_SPACE

    root = tmp_path_factory.mktemp("low_res")
    space = dict(FAST_SPACE, name="lowres", search={"trials": 1, "sampler": "random"})
    space["build"] = dict(FAST_SPACE["build"], resolution_mult=[0.75])
    path = root / "lowres.yaml"
    path.write_text(yaml.safe_dump(space))
    study = ns.search(str(path), trials=1, out=root / "results", heartbeat=0)
    (trial,) = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert trial.user_attrs["resolution"] == 12
    return root / "results" / "lowres", trial


def test_exported_built_model_reproduces_the_trials_macs(low_resolution_results, tmp_path):
    from nas_sepconv.io import read_recipe

    folder, trial = low_resolution_results
    target = tmp_path / "t.safetensors"
    result = runner.invoke(app, ["export", str(folder), "--trial", str(trial.number), "--out", str(target)])
    assert result.exit_code == 0, result.output
    recipe = read_recipe(target)
    assert recipe.kind == "built" and recipe.input_size == (1, 12, 12)
    model = ns.load_model(target)
    assert ns.count_macs(model, torch.randn(1, *recipe.input_size)) == trial.user_attrs["macs"]
    result = runner.invoke(app, ["profile", "--model", str(target)])  # --input-size: the recipe's
    assert result.exit_code == 0, result.output
    assert f"total MACs {trial.user_attrs['macs']:,}" in result.output
    # the trial's saved weights (what export loaded) state it too
    assert read_recipe(folder / "weights" / f"trial_{trial.number}.safetensors").input_size == (1, 12, 12)


def test_onnx_hint_reaches_stderr_with_its_brackets(low_resolution_results, tmp_path, monkeypatch):
    folder, trial = low_resolution_results
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx fails, as when it is not installed
    result = runner.invoke(
        app, ["export", str(folder), "--trial", str(trial.number), "--out", str(tmp_path / "t.onnx")]
    )
    assert result.exit_code == 2, result.output
    assert "pip install 'nas-sepconv[onnx]'" in result.stderr, result.stderr
    assert not (tmp_path / "t.onnx").exists()


def test_exported_onnx_trial_matches_its_pytorch_weights(low_resolution_results, tmp_path):
    import numpy as np
    import onnxruntime

    folder, trial = low_resolution_results
    target = tmp_path / "t.onnx"
    result = runner.invoke(app, ["export", str(folder), "--trial", str(trial.number), "--out", str(target)])
    assert result.exit_code == 0, result.output
    model = ns.load_model(folder / "weights" / f"trial_{trial.number}.safetensors").eval()
    x = torch.randn(3, 1, 12, 12)
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(y, model(x).numpy(), rtol=1e-4, atol=1e-5)
    assert [o.name for o in session.get_outputs()] == ["logits"]


def test_vision_hint_reaches_stderr_with_its_brackets(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    result = runner.invoke(app, ["profile", "--model", "torchvision:resnet18", "--input-size", "3,32,32"])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: model: torchvision is not installed"), result.stderr
    assert "pip install 'nas-sepconv[vision]'" in lines[0]


# -- issue 15: where a space's data is: the per-user folder, --data-root, the space file's folder


def _fake_cifar_tree(root, classes=("ant", "bee"), n_train=8, n_test=2):
    """A tiny CIFAR-10-shaped ImageFolder tree (32x32 RGB PNGs)."""
    from PIL import Image

    for split, n in (("train", n_train), ("test", n_test)):
        for c, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (32, 32), (20 * i, 100 * c, 7)).save(root / split / cls / f"{i:03d}.png")
    return root


def _cifar_space(**data):
    import yaml
    from conftest import FAST_SPACE

    space = dict(FAST_SPACE, name="c10", search={"trials": 1, "sampler": "random"})
    space["data"] = {"dataset": "cifar10", "val_fraction": 0.25, **data}
    return yaml.safe_dump(space)


def test_bundled_cifar_space_without_data_says_how_to_fill_the_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(
        app, ["search", "--space", "mobilenetv3_cifar10", "--trials", "1", "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    default = ns.data.default_data_root("cifar10")
    assert lines[0].startswith("error: data.root:") and str(default) in lines[0]
    assert "cifar-10-batches-py" in lines[0] and "ImageFolder" in lines[0] and "--data-root" in lines[0]
    assert "shared" not in lines[0] and not (tmp_path / "out").exists()


def test_data_root_flag_is_used(tmp_path, monkeypatch):
    tree = _fake_cifar_tree(tmp_path / "tree")
    (tmp_path / "space.yaml").write_text(_cifar_space(root="not_here"))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["search", "--space", "space.yaml", "--out", "out", "--data-root", str(tree)])
    assert result.exit_code == 0, result.output
    df = pd.read_csv(tmp_path / "out" / "c10" / "trials.csv")
    assert list(df["state"]) == ["COMPLETE"]
    # and it overrides a bundled space's data.root: a wrong one is named by the flag
    result = runner.invoke(app, ["search", "--space", "mobilenetv3_cifar10", "--out", "out2", "--data-root", "nowhere"])
    assert result.exit_code == 2 and result.stderr.startswith("error: --data-root:"), result.stderr


def test_export_re_trains_on_the_data_root_the_search_was_given(tmp_path, monkeypatch):
    import shutil

    tree = _fake_cifar_tree(tmp_path / "tree")
    (tmp_path / "space.yaml").write_text(_cifar_space(root="not_here"))
    monkeypatch.chdir(tmp_path)
    assert (
        runner.invoke(app, ["search", "--space", "space.yaml", "--out", "out", "--data-root", str(tree)]).exit_code == 0
    )
    shutil.rmtree(tmp_path / "out" / "c10" / "weights")  # export must re-train, so it needs the data
    result = runner.invoke(app, ["export", "out/c10", "--trial", "0", "--out", "m.safetensors"])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: dataset.root: not_here"), (
        result.stderr
    )
    assert "give --data-root PATH" in lines[0] and not (tmp_path / "m.safetensors").exists()
    result = runner.invoke(
        app, ["export", "out/c10", "--trial", "0", "--out", "m.safetensors", "--data-root", str(tree)]
    )
    assert result.exit_code == 0, result.output
    assert "re-trained" in result.stdout and (tmp_path / "m.safetensors").is_file()
    recorded = float(pd.read_csv(tmp_path / "out" / "c10" / "trials.csv")["accuracy"].iloc[0])
    assert f"accuracy {recorded:.4f} (recorded {recorded:.4f})" in result.stdout  # the same run again


def test_relative_data_root_is_read_from_the_space_files_folder(tmp_path, monkeypatch):
    folder = tmp_path / "spaces"
    _fake_cifar_tree(folder / "tree")
    (folder / "c10.yaml").write_text(_cifar_space(root="tree"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = runner.invoke(app, ["search", "--space", str(folder / "c10.yaml"), "--out", "out"])
    assert result.exit_code == 0, result.output
    assert list(pd.read_csv(elsewhere / "out" / "c10" / "trials.csv")["state"]) == ["COMPLETE"]


# -- issue 19: the search shows its progress when stderr is a pipe, in lines that fit -----------


def test_search_into_a_pipe_prints_periodic_progress_lines(tmp_path):
    import os
    import re

    import yaml
    from conftest import FAST_SPACE

    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(FAST_SPACE))
    env = dict(
        os.environ,
        NAS_SEPCONV_PROGRESS_INTERVAL="0.2",
        PYTHONPATH=os.pathsep.join(p for p in (str(Path(ns.__file__).parents[1]), os.environ.get("PYTHONPATH")) if p),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "nas_sepconv.cli", "search", "--space", "tiny.yaml", "--out", "out"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    progress = [ln for ln in lines if re.match(r"search: [0-2]/2 trials", ln)]
    assert len(progress) >= 2 and progress == lines, proc.stderr  # periodic lines, nothing else
    assert progress[-1].startswith("search: 2/2 trials") and "took" in progress[-1] and "front 2 | best" in progress[-1]
    assert all(len(ln) <= 120 for ln in lines) and "\x1b" not in proc.stderr


def test_the_search_status_line_fits_120_columns_and_cuts_the_architecture_at_a_token():
    import io

    from rich.console import Console

    from nas_sepconv.cli.search import status_line
    from nas_sepconv.progress import Progress
    from nas_sepconv.search import SearchStatus

    arch = "r32 w0.75 d1.0 | " + " ".join(f"{c}:ir_e6_k5_se0.25_hswishx3/s2" for c in (16, 24, 40, 80, 112, 160))
    status = SearchStatus(
        target=40, done=7, failed=1, running=2, front_size=4, best_accuracy=0.8123, last=f"#9 COMPLETE {arch}"
    )
    info = status_line(status)
    bar = Progress(
        "search", unit="trials", console=Console(file=io.StringIO(), width=200), resume=True
    )  # the CLI's, off a terminal
    bar.update(7, total=40, info=info)
    line = bar.line()
    full = f"search: 7/40 trials, elapsed 0s | {info}"
    assert len(line) <= 120 and line.endswith("..."), line
    head = line[: -len("...")]
    assert (
        full.startswith(head) and full[len(head)] == " " and "2 running, 1 failed" in head and "#9 COMPLETE r32" in head
    ), line


# -- issue 19 ---------------------------------------------------------------------------------


def test_debug_prints_the_traceback_and_keeps_the_status():
    """--debug ("Show tracebacks") shows the traceback on the real stderr, then the same error
    line, and exits with the same status (2: bad input)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nas_sepconv.cli",
            "--debug",
            "convert",
            "--model",
            "torchvision:resnet18",
            "--input-size",
            "3,x",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr and "parse_input_size" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --input-size: '3,x' is not a size")


def _commands():
    import typer

    group = typer.main.get_command(app)
    return group, {name: group.get_command(None, name) for name in group.list_commands(None)}


def test_every_option_has_help_and_a_meaningful_placeholder():
    """Every option of every command says what it is for, and --help shows placeholders such as
    N, URL, DIR, NAME|PATH, never typer's <bool> / <str>."""
    group, commands = _commands()
    assert set(commands) >= {"convert", "profile", "spaces", "search", "report", "export"}
    for name, command in [("", group), *commands.items()]:
        for param in command.params:
            assert (param.help or "").strip(), f"{name} {param.opts or param.name}: no help text"
        result = runner.invoke(app, [*([name] if name else []), "--help"])
        assert result.exit_code == 0, result.output
        for placeholder in ("<bool>", "<str>", "<int>", "<float>"):
            assert placeholder not in result.output, f"{name} --help shows {placeholder}:\n{result.output}"
    search_help = runner.invoke(app, ["search", "--help"]).output
    for shown in ("NAME|PATH", "URL", "DIR"):
        assert shown in search_help


# -- issue 15: report --baseline compares the front with hand-designed families -----------------


@pytest.fixture(scope="module")
def searched_and_baseline(tmp_path_factory):
    """Results folders of a tiny searched space, of a tiny width family run by the grid sampler
    (the shape of the bundled baselines), and of a space with one more objective."""
    import yaml
    from conftest import FAST_SPACE

    root = tmp_path_factory.mktemp("baselines")
    family = dict(
        FAST_SPACE, name="tinyfamily", description="Baseline - a width family", search={"trials": 2, "sampler": "grid"}
    )
    family["build"] = dict(
        FAST_SPACE["build"], stages=[dict(FAST_SPACE["build"]["stages"][0], kind="inverted_residual")]
    )
    params = dict(
        FAST_SPACE,
        name="tinyparams",
        search={"trials": 1, "sampler": "random", "objectives": ["accuracy", "macs", "params"]},
    )
    for space in (FAST_SPACE, family, params):
        path = root / f"{space['name']}.yaml"
        path.write_text(yaml.safe_dump(space))
        ns.search(str(path), out=root / "results", heartbeat=0, threads=1)
    return {name: root / "results" / name for name in ("tiny", "tinyfamily", "tinyparams")}


def test_report_with_baselines_prints_the_hypervolumes_and_writes_the_comparison(searched_and_baseline):
    folders = searched_and_baseline
    assert sorted(pd.read_csv(folders["tinyfamily"] / "trials.csv")["width_mult"]) == [0.5, 1.0]  # the grid: each once
    result = runner.invoke(
        app,
        [
            "report",
            str(folders["tiny"]),
            "--baseline",
            str(folders["tinyfamily"]),
            "--baseline",
            str(folders["tinyfamily"]),
        ],
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Pareto front of tiny" in out and "Hypervolumes over the best baseline's (tinyfamily)" in out
    assert "searched" in out and "baseline" in out and f"tinyfamily ({folders['tinyfamily']})" in out.replace("\n", "")
    assert "reference point: accuracy" in out and "test ratio" in out and "val ratio" in out
    assert "headline (test ratio" in out and "90% interval" in out
    assert f"wrote {folders['tiny'] / 'comparison.csv'}" in out and f"wrote {folders['tiny'] / 'comparison.png'}" in out
    table = pd.read_csv(folders["tiny"] / "comparison.csv")
    assert table["name"].tolist()[:2] == ["tiny", "tinyfamily"] and table["baseline"].tolist() == [False, True, True]
    assert table["hypervolume_ratio"].tolist()[1] == pytest.approx(1.0)
    expected = ns.results.compare(
        {"tiny": ns.results.load(folders["tiny"])}, baselines={"tinyfamily": ns.results.load(folders["tinyfamily"])}
    )
    assert table["hypervolume_ratio"].iloc[0] == pytest.approx(expected["hypervolume_ratio"].iloc[0])
    for column in ("test_hypervolume_ratio", "test_ratio_low", "test_ratio_high", "train_compute"):  # both ratios
        assert table[column].iloc[0] == pytest.approx(expected[column].iloc[0]), column
    assert (
        table["test_ratio_low"].iloc[0] <= table["test_hypervolume_ratio"].iloc[0] <= table["test_ratio_high"].iloc[0]
    )
    assert (folders["tiny"] / "comparison.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "which, words", [("empty", "is not a results folder"), ("tinyparams", "searched ['accuracy', 'macs', 'params']")]
)
def test_report_with_a_bad_baseline_exits_2_with_one_line(searched_and_baseline, tmp_path, which, words):
    folders = dict(searched_and_baseline, empty=tmp_path / "empty")
    folders["empty"].mkdir()
    out = tmp_path / "rep"
    result = runner.invoke(app, ["report", str(folders["tiny"]), "--baseline", str(folders[which]), "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --baseline: ") and words in lines[0], result.stderr
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_the_grid_sampler_on_a_space_it_cannot_enumerate_exits_2_before_anything_is_written(tmp_path):
    result = runner.invoke(app, ["search", "--sampler", "grid", "--trials", "1", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: search.sampler: grid takes one kind per stage"), (
        result.stderr
    )
    assert not (tmp_path / "out").exists()


# -- issue 28: writes that follow links or leave halves; what ONNX cannot export; export checks --


def _one_error_line(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize("suffix", ["onnx", "safetensors"])
def test_convert_out_replaces_a_link_and_never_writes_its_target(tmp_path, suffix):
    target = tmp_path / "precious.txt"
    target.write_text("not yours to overwrite")
    link = tmp_path / f"m.{suffix}"
    link.symlink_to(target)
    result = runner.invoke(
        app, ["convert", "--model", "nas_sepconv:tiny_convnet", "--input-size", "1,16,16", "--out", str(link)]
    )
    assert result.exit_code == 0, result.output
    assert target.read_text() == "not yours to overwrite" and not link.is_symlink() and link.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, link.name])  # no temporary file left


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE/SIGXFSZ semantics are Linux's here")
@pytest.mark.parametrize("suffix", ["onnx", "safetensors"])
def test_a_full_disk_in_convert_and_export_is_one_line_exit_1_and_the_old_file_stays(
    low_resolution_results, tmp_path, suffix
):
    """``ulimit -f`` below the model's size: the write fails.  One line, status 1 (a fault, not
    the input), and the file that was there is whole: no truncated file, no stub."""
    import os
    import resource
    import signal

    def disk_full() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit raise EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))

    folder, trial = low_resolution_results
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
    )
    commands = {
        "convert": ["convert", "--model", "nas_sepconv:tiny_convnet", "--input-size", "1,16,16"],
        "export": ["export", str(folder), "--trial", str(trial.number)],
    }
    for name, args in commands.items():
        out = tmp_path / f"{name}.{suffix}"
        out.write_bytes(b"the good file of yesterday")
        proc = subprocess.run(
            [sys.executable, "-m", "nas_sepconv.cli", *args, "--out", str(out)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            preexec_fn=disk_full,
        )
        assert proc.returncode == 1, proc.stderr[-3000:]
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: cannot write {out} (File too large)"), proc.stderr[
            -3000:
        ]
        assert out.read_bytes() == b"the good file of yesterday"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"convert.{suffix}", f"export.{suffix}"]


_ODD_MODELS = """
import torch.nn as nn


class Pool3(nn.Module):  # an adaptive pool to 3x3 of a 7x7 map: ONNX cannot express it
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d((3, 3))
        self.fc = nn.Linear(72, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).flatten(1))


class Branchy(nn.Module):  # a branch on a tensor's values
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        y = self.conv(x)
        if y.mean() > 0:
            y = y * 2
        return self.fc(y.mean((2, 3)))


class Volume(nn.Module):  # a Conv3d model
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv3d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3, 4)))
"""


@pytest.mark.parametrize(
    "args, words",
    [
        (
            ["convert", "--model", "odd_models_28:Branchy", "--out", "m.onnx"],
            "model: Branchy's forward branches on a tensor's values at odd_models_28.py:",
        ),
        (
            ["profile", "--model", "odd_models_28:Pool3", "--latency", "--runtime", "onnxruntime"],
            "use another runtime (eager, ",
        ),
        (
            ["profile", "--model", "odd_models_28:Branchy", "--latency", "--runtime", "onnxruntime"],
            "(at odd_models_28.py:24)",
        ),
        (
            [
                "profile",
                "--model",
                "odd_models_28:Volume",
                "--input-size",
                "3,4,6,6",
                "--latency",
                "--runtime",
                "channels_last",
            ],
            "runtime: channels_last stores 4-D weights",
        ),
    ],
    ids=["convert-branch", "profile-pool", "profile-branch", "channels-last-conv3d"],
)
def test_models_a_runtime_cannot_take_are_one_line_exit_2(tmp_path, monkeypatch, args, words):
    (tmp_path / "odd_models_28.py").write_text(_ODD_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    size = [] if "--input-size" in args else ["--input-size", "3,7,7"]
    result = runner.invoke(app, [*args, *size, "--threads", "1"] if args[0] == "profile" else [*args, *size])
    assert result.exit_code == 2, result.output
    assert words in _one_error_line(result)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".py" and p.name != "__pycache__") == []


def _copy_of(folder: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(folder, tmp_path / "copy" / folder.name))


def test_export_refuses_saved_weights_that_are_not_the_trials(low_resolution_results, tmp_path):
    """Weights replaced in the results folder (here by a model of another class count): export
    would write a file load_model refuses ("does not match its recipe"); it refuses, naming the file."""
    import dataclasses

    from nas_sepconv.io import read_recipe, save_model
    from nas_sepconv.models import build_network

    folder, trial = low_resolution_results
    folder = _copy_of(folder, tmp_path)
    weights = folder / "weights" / f"trial_{trial.number}.safetensors"
    recipe = read_recipe(weights)
    arch = dataclasses.replace(recipe.arch, num_classes=3)
    save_model(weights, build_network(arch), dataclasses.replace(recipe, arch=arch.to_json()))
    for suffix in ("safetensors", "onnx"):
        out = tmp_path / f"m.{suffix}"
        result = runner.invoke(app, ["export", str(folder), "--trial", str(trial.number), "--out", str(out)])
        assert result.exit_code == 2, result.output
        line = _one_error_line(result)
        assert (
            line.startswith(f"error: --trial: {weights} does not hold trial {trial.number}'s model (classifier.")
            and "delete it" in line
        )
        assert not out.exists()


def test_export_refuses_a_data_root_of_another_class_count(tmp_path, monkeypatch):
    import shutil

    two, three = _fake_cifar_tree(tmp_path / "two"), _fake_cifar_tree(tmp_path / "three", classes=("ant", "bee", "cat"))
    (tmp_path / "space.yaml").write_text(_cifar_space(root="not_here"))
    monkeypatch.chdir(tmp_path)
    assert (
        runner.invoke(app, ["search", "--space", "space.yaml", "--out", "out", "--data-root", str(two)]).exit_code == 0
    )
    for weights in ("saved", "re-trained"):
        if weights == "re-trained":
            shutil.rmtree(tmp_path / "out" / "c10" / "weights")
        result = runner.invoke(
            app, ["export", "out/c10", "--trial", "0", "--out", "m.safetensors", "--data-root", str(three)]
        )
        assert result.exit_code == 2, result.output
        line = _one_error_line(result)
        assert line.startswith(
            "error: --data-root: the data set has 3 classes of 3-channel images, trial 0 was trained on 2"
        ), line
        assert not (tmp_path / "m.safetensors").exists()
    result = runner.invoke(
        app, ["export", "out/c10", "--trial", "0", "--out", "m.safetensors", "--data-root", str(two)]
    )
    assert result.exit_code == 0, result.output
    assert ns.load_model(tmp_path / "m.safetensors")(torch.randn(1, 3, 32, 32)).shape == (1, 2)


def test_a_disk_io_error_reading_the_storage_is_a_fault(searched_and_baseline, monkeypatch):
    import sqlite3

    import optuna
    import sqlalchemy.exc

    def failing(*args, **kwargs):
        raise sqlalchemy.exc.OperationalError("SELECT", {}, sqlite3.OperationalError("disk I/O error"))

    monkeypatch.setattr(optuna.storages, "RDBStorage", failing)
    url = f"sqlite:///{searched_and_baseline['tiny'] / 'study.db'}"
    result = runner.invoke(app, ["report", "--storage", url, "--study", "tiny"])
    assert result.exit_code == 1, (result.output, result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "disk I/O error" in lines[0] and "free disk space" in lines[0], result.stderr


def _report_on_a_full_disk(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``nas-sepconv report ARGS`` where no file can grow past 1 byte (RLIMIT_FSIZE): a full disk."""
    import os
    import resource
    import signal

    def full() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit raise EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (1, 1))

    paths = (str(Path(ns.__file__).parents[1]), os.environ.get("PYTHONPATH"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
    # matplotlib's font cache, built beforehand
    subprocess.run([sys.executable, "-c", "import matplotlib.font_manager"], env=env, check=True)
    command = [sys.executable, "-m", "nas_sepconv.cli", "report", *args]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=300, preexec_fn=full)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE/SIGXFSZ semantics are Linux's here")
def test_report_on_a_full_disk_is_one_line_exit_1_and_leaves_every_file_whole(searched_and_baseline, tmp_path):
    folder = searched_and_baseline["tiny"]
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix in (".csv", ".png")}
    baseline = searched_and_baseline["tinyfamily"]
    with_baseline = [str(folder), "--baseline", str(baseline), "--out", str(tmp_path / "rep")]
    for args in ([str(folder)], with_baseline):
        proc = _report_on_a_full_disk(args, tmp_path)
        assert proc.returncode == 1, proc.stderr[-3000:]
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert lines[0].startswith("error: cannot write "), lines[0]
        assert "(File too large); free disk space, then run the same command again" in lines[0]
        assert "wrote" not in proc.stdout
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix in (".csv", ".png")} == before  # as they were
    assert not [p for p in (*folder.rglob("*"), *tmp_path.rglob("*")) if p.name.endswith(".tmp")]
    assert not (tmp_path / "rep").exists() or not any((tmp_path / "rep").iterdir())


# -- issue 28: seeds and study names --------------------------------------------------------------
@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_a_seed_outside_0_to_2_32_is_one_line_exit_2(tmp_path, seed):
    result = runner.invoke(app, ["search", "--seed", seed, "--trials", "1", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, (result.output, result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --seed: must be an integer from 0 to 4294967295"), lines
    assert not (tmp_path / "out").exists()
    with pytest.raises(ns.UserInputError, match=r"^seed: "):
        ns.search(seed=int(seed), trials=1, out=tmp_path / "out")


def test_a_study_name_too_long_for_a_folder_is_one_line_exit_2(tmp_path):
    import yaml
    from conftest import FAST_SPACE

    result = runner.invoke(app, ["search", "--study", "s" * 256, "--trials", "1", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, (result.output, result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --study: the study name"), result.stderr
    assert "256 bytes, more than a folder name takes (255)" in lines[0]
    space = tmp_path / "long.yaml"
    space.write_text(yaml.safe_dump(dict(FAST_SPACE, name="é" * 128)))  # 256 bytes in UTF-8
    result = runner.invoke(app, ["search", "--space", str(space), "--trials", "1", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, (result.output, result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: space: the study name"), result.stderr
    assert "with --study NAME" in lines[0]
    assert not (tmp_path / "out").exists()


def test_library_errors_name_parameters_and_the_cli_names_their_flags():
    """One table (cli.common.FLAGS) turns the parameters a library error names into flags: the
    field at the start, and ``name=VALUE`` / ``name=`` in its text, for the flags the command
    has; other names stay."""
    from nas_sepconv.cli.common import FLAGS, with_flags

    assert FLAGS["data_root"] == "--data-root" and FLAGS["multi_fidelity"] == "--multi-fidelity"
    error = ns.UserInputError("trials", "6 trials, but the grid has 5 points", "give trials=5 or fewer")
    assert with_flags(str(error)) == "--trials: 6 trials, but the grid has 5 points; give --trials 5 or fewer"
    error = ns.UserInputError("study", "exists with other objectives", "use another study=, or leave storage= out")
    assert (
        with_flags(str(error)) == "--study: exists with other objectives; use another --study, or leave --storage out"
    )
    kept = "convert.model: space.trials: 3 and my_seed=1; give data.root"
    assert with_flags(kept) == kept
    stored = "threads: trial 0 records -5; use threads=1"  # export has no --threads: a field of the folder
    assert with_flags(stored, flags={"--trial", "--out"}) == stored
    assert with_flags("trial: no trial 9; give trial=0", flags={"--trial"}) == "--trial: no trial 9; give --trial 0"


def test_a_search_over_its_memory_budget_streams_and_gives_the_same_trial(tmp_path, monkeypatch):
    """The same search held in memory and streamed (a budget below the data set's size): it says
    which path it took, records it and the peak memory in meta.json, and the trial is the same."""
    import json

    monkeypatch.setenv("NAS_SEPCONV_CACHE", str(tmp_path / "cache"))
    tree = _fake_cifar_tree(tmp_path / "tree")
    (tmp_path / "space.yaml").write_text(_cifar_space(root=str(tree)))
    monkeypatch.chdir(tmp_path)
    rows = {}
    for name, flags in (("held", []), ("streamed", ["--memory-budget", "0.00001"])):
        result = runner.invoke(app, ["search", "--space", "space.yaml", "--out", name, "--threads", "1", *flags])
        assert result.exit_code == 0, result.output
        assert f"| data 61.4 kB {'in memory' if name == 'held' else 'streamed'} |" in result.stderr
        meta = json.loads((tmp_path / name / "c10" / "meta.json").read_text())
        assert meta["data"]["streamed"] is (name == "streamed") and meta["peak_memory_bytes"] > 0
        assert "peak memory" in result.stderr
        rows[name] = pd.read_csv(tmp_path / name / "c10" / "trials.csv").iloc[0]
    for column in ("accuracy", "test_accuracy", "macs", "arch"):
        assert rows["held"][column] == rows["streamed"][column], column


def test_stream_flag_on_a_data_set_held_in_memory_is_one_line_exit_2(tmp_path):
    result = runner.invoke(app, ["search", "--trials", "1", "--out", str(tmp_path / "o"), "--stream"])
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: data.stream: digits is held in memory; only image folders stream"), lines[0]
    result = runner.invoke(app, ["search", "--trials", "1", "--out", str(tmp_path / "o"), "--memory-budget", "-1"])
    assert result.exit_code == 2 and result.stderr.startswith("error: --memory-budget: must be a number of GB"), (
        result.stderr
    )


@pytest.fixture(scope="module")
def finalized_results(tmp_path_factory):
    """A one-shot results folder whose front candidate was finalised by ``search --finalize 1``."""
    import yaml
    from conftest import FAST_SPACE

    root = tmp_path_factory.mktemp("finalized")
    space = dict(FAST_SPACE, name="fin", search={"trials": 2, "sampler": "random", "mode": "oneshot"})
    space["search"].update(supernet_epochs=1, finalize_epochs=1)
    path = root / "fin.yaml"
    path.write_text(yaml.safe_dump(space))
    out = root / "results"
    result = runner.invoke(
        app, ["search", "--space", str(path), "--out", str(out), "--threads", "1", "--finalize", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "finalize: 1/1 trials" in result.stderr, result.stderr  # its progress, like the search's
    assert "supernet: 1/1 epochs" in result.stderr, result.stderr  # trained before the trials, shown
    trials = pd.read_csv(out / "fin" / "trials.csv")
    (number,) = trials.loc[trials["accuracy_source"] == "finalized", "number"]
    return out / "fin", int(number)


def test_export_of_a_finalized_trial_is_a_plain_model(finalized_results, tmp_path):
    import numpy as np
    import onnxruntime

    folder, number = finalized_results
    target = tmp_path / "fin.safetensors"
    result = runner.invoke(app, ["export", str(folder), "--trial", str(number), "--out", str(target)])
    assert result.exit_code == 0, result.output
    model = ns.load_model(target).eval()
    assert not any(type(m).__module__.startswith("nas_sepconv.oneshot") for m in model.modules())
    saved = ns.load_model(folder / "weights" / f"trial_{number}.safetensors").eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), saved(x), rtol=0, atol=0)
    info = ns.export.rebuild_trial(folder, number)[1]
    assert info["how"] == "loaded saved weights"
    assert info["accuracy"] == pytest.approx(info["recorded_accuracy"])  # the finalised accuracy
    onnx_file = tmp_path / "fin.onnx"
    result = runner.invoke(app, ["export", str(folder), "--trial", str(number), "--out", str(onnx_file)])
    assert result.exit_code == 0, result.output
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(y, model(x).numpy(), rtol=1e-4, atol=1e-5)
    result = runner.invoke(app, ["profile", "--model", str(target)])
    assert result.exit_code == 0, result.output


def test_export_finalizes_again_a_finalized_trial_whose_weights_are_gone(finalized_results, tmp_path):
    import shutil

    folder, number = finalized_results
    copy = tmp_path / "fin"
    shutil.copytree(folder, copy)
    (copy / "weights" / f"trial_{number}.safetensors").unlink()
    model, info = ns.export.rebuild_trial(copy, number)
    assert info["how"].startswith("finalised again")
    saved = ns.load_model(folder / "weights" / f"trial_{number}.safetensors")
    for (name, a), b in zip(saved.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(a, b.cpu(), msg=name)


def test_finalize_flag_is_refused_outside_oneshot_mode(tmp_path):
    import yaml
    from conftest import FAST_SPACE

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(FAST_SPACE))
    result = runner.invoke(app, ["search", "--space", str(path), "--out", str(tmp_path / "r"), "--finalize", "2"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: --finalize:"), result.stderr
