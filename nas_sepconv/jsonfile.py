"""Reading JSON that came from a file, bounded: the one reader for every recipe, ``arch``,
plan, ``meta.json``, latency cache and stored trial record.

Results folders and model files get shared, so what they hold is input like any other: a file
may be a link to ``/dev/zero`` or to a 20 GB sparse file, and a JSON text may nest brackets
100,000 deep (Python's parser then raises ``RecursionError``, and whatever walks the result
recurses too).  Here a file must be a regular file no larger than its cap, and a text may nest
at most :data:`MAX_DEPTH` levels; anything else is one :class:`~nas_sepconv.errors.UserInputError`
naming the field, before the value reaches any other code.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from .errors import UserInputError

__all__ = ["MAX_DEPTH", "MAX_TEXT", "check_regular_file", "loads", "read_bytes", "read_json"]

#: The deepest nesting of lists and objects a JSON text may have (ours nest under ten).
MAX_DEPTH = 64

#: The longest JSON text :func:`loads` parses (characters or bytes).
MAX_TEXT = 64 * 2**20


def loads(
    text: str | bytes, *, field: str, what: str, fix: str, max_depth: int = MAX_DEPTH, max_chars: int = MAX_TEXT
) -> Any:
    """``text`` parsed as JSON, refused (naming ``field``; ``what`` says whose text it is) when
    it is not text, longer than ``max_chars``, not valid JSON, or nested deeper than
    ``max_depth`` levels of lists and objects."""
    if not isinstance(text, (str, bytes)):
        raise UserInputError(field, f"{what} is {type(text).__name__}, not JSON text", fix)
    if len(text) > max_chars:
        raise UserInputError(field, f"{what} is {len(text):,} characters long, over the {max_chars:,} it may have", fix)
    try:
        value = json.loads(text)
    except RecursionError:
        raise UserInputError(field, f"{what} nests deeper than {max_depth} levels", fix) from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, and too many digits in a number
        detail = " ".join(str(exc).split())[:80]
        raise UserInputError(field, f"{what} is not valid JSON ({detail})", fix) from None
    if _deeper_than(value, max_depth):
        raise UserInputError(field, f"{what} nests deeper than {max_depth} levels", fix)
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists and objects more than ``limit`` levels (walked without
    recursion: ``[]`` is one level, ``[[]]`` two)."""
    if not isinstance(value, (dict, list)):
        return False
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def check_regular_file(path: str | Path, *, field: str, fix: str, max_bytes: int) -> os.stat_result:
    """Refuse (naming ``field``) a path that is not a regular file (a device such as
    ``/dev/zero``, a pipe, a folder; links are followed) or that is larger than ``max_bytes``.
    Returns its ``stat``; a path that does not exist raises ``FileNotFoundError``."""
    info = os.stat(path)
    _check_stat(info, path, field=field, fix=fix, max_bytes=max_bytes)
    return info


def _check_stat(info: os.stat_result, path: str | Path, *, field: str, fix: str, max_bytes: int) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise UserInputError(field, f"{path} is not a regular file (a device, a pipe or a folder)", fix)
    if info.st_size > max_bytes:
        raise UserInputError(field, f"{path} is {info.st_size:,} bytes, over the {max_bytes:,} it may have", fix)


def read_bytes(path: str | Path, *, field: str, fix: str, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` of them (checked on the
    open file, and bounded while reading: a file that grows is still refused).  A path that
    cannot be opened raises ``OSError``."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block the open
    try:
        _check_stat(os.fstat(fd), path, field=field, fix=fix, max_bytes=max_bytes)
    except UserInputError:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UserInputError(field, f"{path} is over the {max_bytes:,} bytes it may have", fix)
    return data


def read_json(path: str | Path, *, field: str, fix: str, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of the file ``path``: :func:`read_bytes`, then :func:`loads`."""
    data = read_bytes(path, field=field, fix=fix, max_bytes=max_bytes)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserInputError(field, f"{path} is not UTF-8 text", fix) from None
    return loads(text, field=field, what=str(path), fix=fix, max_depth=max_depth, max_chars=max_bytes)
