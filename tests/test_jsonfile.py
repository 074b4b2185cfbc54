"""The bounded JSON reader: what a file or a stored text may make us parse or read (issue 28,
family 4).  Each refusal is one UserInputError naming the field, raised before the whole of
anything is read or walked."""

from __future__ import annotations

import json
import os

import pytest

from nas_sepconv.errors import UserInputError
from nas_sepconv.jsonfile import MAX_DEPTH, check_regular_file, loads, read_bytes, read_json

DEEP = "[" * 100_000 + "]" * 100_000


def _load(text):
    return loads(text, field="thing", what="the thing", fix="mend it")


def test_a_text_nested_100000_deep_is_one_line_not_a_recursion_error():
    with pytest.raises(UserInputError, match=rf"^thing: the thing nests deeper than {MAX_DEPTH} levels; mend it$"):
        _load(DEEP)
    deep_object = '{"a":' * 100_000 + "1" + "}" * 100_000
    with pytest.raises(UserInputError, match="nests deeper than"):
        _load(deep_object)


def test_the_depth_limit_is_exact():
    assert _load("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    with pytest.raises(UserInputError, match="nests deeper than"):
        _load("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    assert _load(json.dumps({"a": [1, {"b": [2, 3]}], "c": "[[[[["})) == {"a": [1, {"b": [2, 3]}], "c": "[[[[["}


@pytest.mark.parametrize(
    "text, problem",
    [
        ("{nope", "is not valid JSON"),
        ("1" * 5000, "is not valid JSON"),
        (12, "is int, not JSON text"),
        ("[" + " " * 20_000 + "]", "characters long"),
    ],
)
def test_junk_is_one_line(text, problem):
    with pytest.raises(UserInputError) as info:
        loads(text, field="thing", what="the thing", fix="mend it", max_chars=10_000)
    assert info.value.field == "thing" and problem in str(info.value) and "\n" not in str(info.value)


def test_a_link_to_dev_zero_is_refused_without_reading(tmp_path):
    link = tmp_path / "meta.json"
    link.symlink_to("/dev/zero")
    with pytest.raises(UserInputError, match=r"^meta\.json: .*meta\.json is not a regular file"):
        read_json(link, field="meta.json", fix="mend it", max_bytes=1024)
    with pytest.raises(UserInputError, match="is not a regular file"):
        check_regular_file(link, field="storage", fix="mend it", max_bytes=1024)


def test_a_huge_sparse_file_is_refused_by_its_size(tmp_path):
    sparse = tmp_path / "big.json"
    with open(sparse, "wb") as fh:
        fh.truncate(20 * 2**30)  # 20 GB that take no disk
    for read in (read_json, read_bytes, check_regular_file):
        with pytest.raises(UserInputError, match=r"is 21,474,836,480 bytes, over the 1,024 it may have"):
            read(sparse, field="thing", fix="mend it", max_bytes=1024)


def test_a_fifo_or_a_folder_is_refused(tmp_path):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    held = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # (so that no open of it can ever wait for a writer)
    try:
        with pytest.raises(UserInputError, match="pipe.json is not a regular file"):
            read_bytes(fifo, field="f", fix="x", max_bytes=10)
    finally:
        os.close(held)
    with pytest.raises(UserInputError, match="is not a regular file"):
        read_bytes(tmp_path, field="f", fix="x", max_bytes=10)


def test_an_ordinary_file_reads(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text(json.dumps({"storage": "sqlite:///x.db"}))
    assert read_json(path, field="meta.json", fix="x", max_bytes=1024) == {"storage": "sqlite:///x.db"}
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "absent.json", field="meta.json", fix="x", max_bytes=1024)
