"""Resuming a study whose results folder was tampered with (issue 28, family 4): what the
resume reads back (the study's attributes, its trials', the count of its searches) is checked
first, and an absurd value is one line naming it, before any trial runs."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml
from conftest import FAST_SPACE

from nas_sepconv.errors import UserInputError
from nas_sepconv.search import search as run_search
from nas_sepconv.search.study import SESSIONS_ATTR

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    (root / "tiny.yaml").write_text(yaml.safe_dump(FAST_SPACE))
    run_search(str(root / "tiny.yaml"), trials=1, out=root / "out", heartbeat=0)
    return root


@pytest.mark.parametrize(
    "sql, args, field",
    [
        ("UPDATE study_user_attributes SET value_json = ? WHERE key = 'multi_fidelity'", ('"zzz"',), "multi_fidelity"),
        ("INSERT INTO study_user_attributes (study_id, key, value_json) VALUES (1, 'base', ?)", ("[]",), "base"),
        ("UPDATE study_system_attributes SET value_json = ? WHERE key = ?", ('"abc"', SESSIONS_ATTR), SESSIONS_ATTR),
        ("UPDATE trial_user_attributes SET value_json = ? WHERE key = 'threads'", ("-5",), "threads"),
        ("INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (1, 'x', ?)", (DEEP,), "source"),
    ],
    ids=["multi_fidelity", "base", "sessions", "threads", "deep"],
)
def test_a_tampered_study_is_refused_in_one_line_before_any_trial_runs(searched, tmp_path, sql, args, field):
    shutil.copytree(searched, tmp_path / "copy")
    db = tmp_path / "copy" / "out" / "tiny" / "study.db"
    with sqlite3.connect(db) as con:
        assert con.execute(sql, args).rowcount == 1
    with pytest.raises(UserInputError) as info:
        run_search(str(tmp_path / "copy" / "tiny.yaml"), trials=2, out=tmp_path / "copy" / "out", heartbeat=0)
    assert info.value.field == field and "\n" not in str(info.value), str(info.value)
    with sqlite3.connect(db) as con:  # nothing ran: still the one trial
        assert con.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == 1
