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
    text = text.replace("base_epochs: 8", "base_epochs: 2").replace("trials: 12", "trials: 1").replace("epochs: 6", "epochs: 1")
    (root / "dc.yaml").write_text(text)
    result = runner.invoke(app, ["search", "--space", str(root / "dc.yaml"), "--trials", "1", "--out", str(root / "r"), "--heartbeat", "0"])
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
    assert base["macs"] == ns.count_macs(ns.model_from_name("nas_sepconv:tiny_convnet", width=32), __import__("torch").randn(1, 1, 16, 16))
    df = ns.results.load(folder)
    assert df.attrs["base"] == base


def test_report_and_closing_table_show_the_original_model(convert_search):
    folder, search_output = convert_search
    df = ns.results.load(folder)
    line = ns.results.base_line(df)
    base = df.attrs["base"]
    assert line.startswith(f"original model: accuracy {100 * base['accuracy']:.2f}%") and f"MACs {base['macs'] / 1e6:.2f} M" in line
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
