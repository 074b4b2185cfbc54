"""Opening a results source (issue 28, family 4): a ``meta.json`` or a journal file that is a
link to ``/dev/zero`` or to a 20 GB sparse file, or a ``meta.json`` nested 100,000 deep, is one
line naming it; nothing is read whole."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from conftest import FAST_SPACE
from typer.testing import CliRunner

import nas_sepconv as ns
from nas_sepconv.cli import app
from nas_sepconv.errors import UserInputError
from nas_sepconv.storage import MAX_JOURNAL_BYTES, open_storage


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(size)  # takes no disk
    return path


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "results" / "tiny"
    folder.mkdir(parents=True)
    return folder


def _one_line(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("kind", ["dev-zero", "sparse", "nested"])
def test_a_meta_json_that_is_endless_huge_or_nested_is_one_line(tmp_path, kind):
    folder = _folder(tmp_path)
    meta = folder / "meta.json"
    if kind == "dev-zero":
        meta.symlink_to("/dev/zero")
    elif kind == "sparse":
        meta.symlink_to(_sparse(tmp_path / "big", 20 * 2**30))
    else:
        meta.write_text('{"storage": ' + "[" * 100_000 + "]" * 100_000 + "}")
    problem = {"dev-zero": "is not a regular file", "sparse": "bytes, over the", "nested": "nests deeper than"}[kind]
    with pytest.raises(UserInputError, match=rf"^meta\.json: .*{problem}"):
        ns.results.load(folder)
    result = CliRunner().invoke(app, ["report", str(folder)])
    assert result.exit_code == 2 and problem in _one_line(result)


@pytest.mark.parametrize("kind", ["dev-zero", "sparse"])
def test_a_journal_that_is_endless_or_huge_is_refused_unread(tmp_path, kind):
    journal = tmp_path / "study.log"
    if kind == "dev-zero":
        journal.symlink_to("/dev/zero")
    else:
        journal.symlink_to(_sparse(tmp_path / "big", MAX_JOURNAL_BYTES + 1))
    problem = "is not a regular file" if kind == "dev-zero" else "bytes, over the"
    with pytest.raises(UserInputError, match=rf"^storage: .*{problem}"):
        ns.results.load(journal)
    folder = _folder(tmp_path)  # named by a results folder's meta.json
    (folder / "meta.json").write_text(json.dumps({"storage": str(journal), "study": "tiny"}))
    with pytest.raises(UserInputError, match=rf"^storage: .*{problem}"):
        ns.results.load(folder)
    with pytest.raises(UserInputError, match=rf"^storage: .*{problem}"):  # a search resuming it
        open_storage(str(journal))
    space = tmp_path / "tiny.yaml"
    space.write_text(json.dumps(FAST_SPACE))
    args = ["search", "--space", str(space), "--storage", str(journal), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and problem in _one_line(result)


def test_an_ordinary_journal_still_opens(tmp_path):
    journal = tmp_path / "study.log"
    study = optuna.create_study(study_name="tiny", storage=open_storage(str(journal)))
    study.enqueue_trial({})
    assert ns.results.load(journal).shape[0] == 1
