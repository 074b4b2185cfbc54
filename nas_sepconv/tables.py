"""Looking a name up in a table of records: the one way every table is read.

A concept with variants (block kinds, runtimes, samplers, data sets, objectives, space kinds,
search modes, pruners, initialisations) is a mapping of names to small frozen records.  A name
that is not in its table is one :class:`~nas_sepconv.errors.UserInputError` of one shape,
``<field>: unknown <what> <name>; use one of: a, b, c``, whichever table was asked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from .errors import UserInputError

__all__ = ["lookup", "unknown_name"]

T = TypeVar("T")


def unknown_name(name: Any, *, field: str, what: str, names: Iterable[str]) -> UserInputError:
    """The error for a ``name`` that is no ``what``: it names ``field`` and lists ``names``."""
    return UserInputError(field, f"unknown {what} {name!r}", f"use one of: {', '.join(names)}")


def lookup(table: Mapping[str, T], name: Any, *, field: str, what: str, names: Iterable[str] | None = None) -> T:
    """The record ``table`` holds under ``name``.

    ``names`` are the names the error lists (default: the table's keys), for a table keyed by
    aliases too.  A name that is not a string is unknown like any other.

    Raises:
        UserInputError: (field ``field``) ``name`` is not in ``table``; the fix lists the names.
    """
    if isinstance(name, str) and name in table:
        return table[name]
    raise unknown_name(name, field=field, what=what, names=table if names is None else names)
