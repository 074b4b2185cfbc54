"""What a study records, read back (issue 28, family 4): an attribute of a tampered results
folder set to an absurd value, or a record Optuna cannot decode, is one UserInputError naming
the attribute and the folder; ``report`` prints it in one line with exit status 2."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from typer.testing import CliRunner

import nas_sepconv as ns
from nas_sepconv.cli import app
from nas_sepconv.errors import UserInputError
from nas_sepconv.results.stored import STUDY_ATTRS, TRIAL_ATTRS

DEEP = "[" * 100_000 + "]" * 100_000
GOOD_TRIAL = {
    "accuracy": 0.5,
    "test_accuracy": 0.4,
    "macs": 1000,
    "params": 10,
    "latency_ms": 1.5,
    "wall_time_s": 2.0,
    "epochs": 1,
    "epochs_trained": 1,
    "train_compute": 3000,
    "test_correct": "3:oA==",
    "seed": 0,
    "threads": 1,
    "resolution": 16,
    "arch": "a",
    "arch_json": "{}",
    "feasible": True,
    "stopped_early": False,
    "rung_results": [{"epoch": 1, "accuracy": 0.5}],
    "accuracy_source": "finalized",
    "inherited_accuracy": 0.45,
    "inherited_test_accuracy": 0.35,
    "finalized_from": "inherited",
}
GOOD_STUDY = {
    "space": "tiny",
    "space_yaml": "name: tiny",
    "mode": "pareto",
    "multi_fidelity": {"min_epochs": 1, "eta": 3, "rungs": [1, 3]},
    "base": {"model": "m", "accuracy": 0.9, "test_accuracy": None, "macs": 10, "params": 2},
    "data_seed": 3,
    "num_classes": 10,
    "supernet_compute": 5_000_000,
}


def _folder(tmp_path: Path, *, trial: dict | None = None, study: dict | None = None) -> Path:
    """A results folder of one COMPLETE trial with the attributes a search records (and the
    changes ``trial`` and ``study`` make to them)."""
    folder = tmp_path / "results" / "tiny"
    folder.mkdir(parents=True)
    url = f"sqlite:///{folder / 'study.db'}"
    made = optuna.create_study(study_name="tiny", storage=url, directions=["maximize", "minimize"])
    made.set_metric_names(["accuracy", "macs"])
    for key, value in {**GOOD_STUDY, **(study or {})}.items():
        made.set_user_attr(key, value)
    asked = made.ask({"width_mult": CategoricalDistribution([0.5, 1.0])})
    for key, value in {**GOOD_TRIAL, **(trial or {})}.items():
        asked.set_user_attr(key, value)
    made.tell(asked, [0.5, 1000])
    (folder / "meta.json").write_text(json.dumps({"storage": url, "study": "tiny"}))
    return folder


def test_the_tables_cover_what_a_search_records():
    assert set(GOOD_TRIAL) | {"fail_reason"} == set(TRIAL_ATTRS)  # (a COMPLETE trial has no fail_reason)
    assert set(GOOD_STUDY) == set(STUDY_ATTRS)


def test_a_finalized_record_overlays_its_trial_and_is_checked_like_it(tmp_path):
    record = {"accuracy": 0.7, "inherited_accuracy": 0.5, "accuracy_source": "finalized", "epochs": 4}
    df = ns.results.load(_folder(tmp_path / "good", study={"finalized:0": record}))
    assert df.loc[0, "accuracy"] == 0.7 and df.loc[0, "inherited_accuracy"] == 0.5 and df.loc[0, "epochs"] == 4
    assert df.loc[0, "accuracy_source"] == "finalized"
    for bad, field in (({"accuracy": 3.0}, "accuracy"), ("high", "finalized:0")):
        folder = _folder(tmp_path / field, study={"finalized:0": bad})
        with pytest.raises(UserInputError) as info:
            ns.results.load(folder)
        assert info.value.field == field and "\n" not in str(info.value)


def test_a_folder_of_sane_values_loads(tmp_path):
    df = ns.results.load(_folder(tmp_path))
    assert df.loc[0, "macs"] == 1000 and df.attrs["base"]["accuracy"] == 0.9


@pytest.mark.parametrize(
    "trial, field",
    [
        ({"macs": math.inf}, "macs"),
        ({"macs": 10**30}, "macs"),
        ({"params": -1}, "params"),
        ({"accuracy": 7.0}, "accuracy"),
        ({"accuracy": "high"}, "accuracy"),
        ({"latency_ms": -math.inf}, "latency_ms"),
        ({"threads": -5}, "threads"),
        ({"seed": 2**70}, "seed"),
        ({"resolution": 10**6}, "resolution"),
        ({"epochs": -3}, "epochs"),
        ({"train_compute": -1}, "train_compute"),
        ({"test_correct": 5}, "test_correct"),
        ({"arch_json": [1, 2]}, "arch_json"),
        ({"feasible": "yes"}, "feasible"),
        ({"rung_results": [{"epoch": e} for e in range(10_000)]}, "rung_results"),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={str(x)[:8]}" for k, x in v.items()),
)
def test_an_absurd_trial_attribute_is_one_line_naming_it_and_the_folder(tmp_path, trial, field):
    folder = _folder(tmp_path, trial=trial)
    with pytest.raises(UserInputError) as info:
        ns.results.load(folder)
    assert info.value.field == field and f"trial 0 in {folder}" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "study, field",
    [
        ({"base": {"model": "m", "accuracy": "x", "macs": 5}}, "base"),
        ({"base": {"model": "m", "accuracy": 0.5, "macs": math.inf}}, "base"),
        ({"multi_fidelity": "zzz"}, "multi_fidelity"),
        ({"multi_fidelity": {"min_epochs": 1, "eta": 3, "rungs": [9, 1]}}, "multi_fidelity"),
        ({"mode": "banana"}, "mode"),
        ({"space": 123}, "space"),
        ({"data_seed": -1}, "data_seed"),
        ({"num_classes": 0}, "num_classes"),
        ({"supernet_compute": -1}, "supernet_compute"),
    ],
    ids=["base-text", "base-inf", "mf-text", "mf-unordered", "mode", "space", "data-seed", "classes", "supernet"],
)
def test_an_absurd_study_attribute_is_one_line_naming_it_and_the_folder(tmp_path, study, field):
    folder = _folder(tmp_path, study=study)
    with pytest.raises(UserInputError) as info:
        ns.results.load(folder)
    assert info.value.field == field and f"the study in {folder}" in str(info.value)
    result = CliRunner().invoke(app, ["report", str(folder)])
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {field}: "), result.stderr


@pytest.mark.parametrize(
    "sql, args",
    [
        ("INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (1, 'x', ?)", (DEEP,)),
        ("INSERT INTO study_user_attributes (study_id, key, value_json) VALUES (1, 'x', ?)", (DEEP,)),
        ("UPDATE trial_params SET param_value = 99 WHERE param_name = 'width_mult'", ()),  # a choice index out of range
    ],
    ids=["trial-attr-deep", "study-attr-deep", "choice-index"],
)
def test_a_record_optuna_cannot_decode_is_one_line(tmp_path, sql, args):
    folder = _folder(tmp_path)
    with sqlite3.connect(folder / "study.db") as db:
        db.execute(sql, args)
    with pytest.raises(UserInputError, match=rf"^source: {folder} holds a record that cannot be read"):
        ns.results.load(folder)
    result = CliRunner().invoke(app, ["report", str(folder)])
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
