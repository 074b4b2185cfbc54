"""A convert search records the original model's accuracy (issue 19): the study's user attr
``base``, ``df.attrs["base"]``, the "original model" line of the search's closing table and of
``report``, and a reference marker on the Pareto plot."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

import nas_sepconv as ns
from nas_sepconv.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def convert_search(tmp_path_factory):
    """One trial of the digits convert space, shrunk as tests/search/test_search.py does, run
    through the CLI."""
    root = tmp_path_factory.mktemp("base")
    text = (Path(__file__).resolve().parents[2] / "search_spaces" / "digits_convert.yaml").read_text()
    text = (
        text.replace("base_epochs: 8", "base_epochs: 2")
        .replace("trials: 12", "trials: 1")
        .replace("epochs: 6", "epochs: 1")
    )
    (root / "dc.yaml").write_text(text)
    result = runner.invoke(
        app, ["search", "--space", str(root / "dc.yaml"), "--trials", "1", "--out", str(root / "r"), "--heartbeat", "0"]
    )
    assert result.exit_code == 0, result.output
    return root / "r" / "digits_convert", result.output


def test_the_study_records_the_original_models_accuracy(convert_search):
    folder, _ = convert_search
    study = optuna.load_study(study_name="digits_convert", storage=f"sqlite:///{folder / 'study.db'}")
    base = study.user_attrs["base"]
    assert base["model"] == "nas_sepconv:tiny_convnet"
    assert 0.2 < base["accuracy"] <= 1.0 and 0.0 < base["test_accuracy"] <= 1.0  # trained 2 epochs: well above chance
    (trial,) = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert base["macs"] > 0 and base["params"] > 0
    assert base["macs"] == ns.count_macs(
        ns.model_from_name("nas_sepconv:tiny_convnet", width=32), __import__("torch").randn(1, 1, 16, 16)
    )
    df = ns.results.load(folder)
    assert df.attrs["base"] == base


def test_report_and_closing_table_show_the_original_model(convert_search):
    folder, search_output = convert_search
    df = ns.results.load(folder)
    line = ns.results.base_line(df)
    base = df.attrs["base"]
    assert (
        line.startswith(f"original model: accuracy {100 * base['accuracy']:.2f}%")
        and f"MACs {base['macs'] / 1e6:.2f} M" in line
    )
    assert line in search_output
    result = runner.invoke(app, ["report", str(folder)])
    assert result.exit_code == 0 and line in result.output, result.output


def test_the_plot_marks_the_original_model(convert_search):
    folder, _ = convert_search
    df = ns.results.load(folder)
    base = df.attrs["base"]
    ax = ns.results.plot_pareto(df)
    labels = ax.get_legend_handles_labels()[1]
    assert "original model" in labels
    (marker,) = [c for c in ax.collections if c.get_label() == "original model"]
    assert marker.get_offsets().tolist() == [[float(base["macs"]), 100 * base["accuracy"]]]
    assert any(list(line.get_ydata()) == [100 * base["accuracy"]] * 2 for line in ax.lines)  # the reference line
    df.attrs["base"] = None  # a build search: no marker, no line
    assert "original model" not in ns.results.plot_pareto(df).get_legend_handles_labels()[1]
    assert ns.results.base_line(df) is None


@pytest.mark.parametrize("planted", ["another model", "not a model"])
def test_a_planted_base_model_is_refused_before_any_trial_and_deleting_it_helps(convert_search, tmp_path, planted):
    """A ``base.safetensors`` in the results folder that this space did not make: one line
    naming the file (exit status 2) before anything runs (every trial failed with it, and the
    run ended with exit status 0); deleting it, as the line says, lets the same command run."""
    from nas_sepconv.io import read_recipe
    from nas_sepconv.recipe import Recipe

    space = convert_search[0].parents[1] / "dc.yaml"
    cache = tmp_path / "out" / "digits_convert" / "base.safetensors"
    cache.parent.mkdir(parents=True)
    if planted == "another model":
        kwargs = {"width": 16, "num_classes": 10, "in_channels": 1}
        recipe = Recipe(
            kind="converted",
            model="nas_sepconv:tiny_convnet",
            model_kwargs=kwargs,
            width_mult=1.0,
            input_size=(1, 16, 16),
        )
        ns.save_model(cache, ns.model_from_name("nas_sepconv:tiny_convnet", width=16), recipe)
    else:
        cache.write_bytes(b"junk")
    args = ["search", "--space", str(space), "--trials", "1", "--out", str(tmp_path / "out"), "--heartbeat", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith("search: ")]
    assert len(lines) == 1 and lines[0].startswith(f"error: {cache}: "), result.stderr
    refusal = "holds another base model" if planted == "another model" else "is not a base model a search saved"
    assert refusal in lines[0]
    assert lines[0].endswith("delete it, and the base model is trained again")
    assert not (cache.parent / "study.db").exists()  # refused before the study was opened
    if planted == "another model":
        cache.unlink()
        again = runner.invoke(app, args)
        assert again.exit_code == 0, again.output
        assert read_recipe(cache).model_kwargs["width"] == 32  # this space's base model, trained and cached


def test_a_base_model_cache_that_cannot_be_written_costs_only_the_cache(convert_search, tmp_path, monkeypatch):
    """The trained base model cannot be cached (disk full): the trial still runs and completes
    (it failed, and so did every later one); the next run trains the base model again."""
    import errno
    import importlib

    base_model = importlib.import_module("nas_sepconv.search.base_model")  # where the base model is cached

    def no_space(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(base_model, "save_model", no_space)
    space = convert_search[0].parents[1] / "dc.yaml"
    study = ns.search(str(space), trials=1, out=tmp_path / "out", heartbeat=0)
    assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.COMPLETE]
    assert not (tmp_path / "out" / "digits_convert" / "base.safetensors").exists()
