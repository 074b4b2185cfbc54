"""Nullable pandas arrays from Python values (None for missing): of a given dtype
(:func:`typed`), or of the dtype the values call for (:func:`infer`).  The columns of a results
frame (:mod:`.frame`) and of a comparison of studies (:mod:`.comparison`) are made with them, so
that integers stay exact (``Int64``) where some values are missing."""

from __future__ import annotations

from typing import Any

import pandas as pd

__all__ = ["typed", "infer"]


def typed(values: list[Any], dtype: str) -> Any:
    """Values (with None for missing) as an array of the given dtype."""
    if dtype == "string":
        return pd.array([None if v is None else str(v) for v in values], dtype="string")
    numeric = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").astype("float64")
    if dtype == "Int64":  # (what no int64 holds, e.g. an objective told as inf, is missing)
        numeric = numeric.where(numeric.abs() < 2.0**63)
        return numeric.round().astype("Int64").array
    return numeric.to_numpy(dtype="float64")


def infer(values: list[Any]) -> Any:
    """Nullable dtype for a list of scalars (None = missing)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pd.array(values, dtype="boolean")
    if present and all(isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**63 for v in present):
        return pd.array(values, dtype="Int64")
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return typed(values, "float64")
    if all(isinstance(v, str) for v in present):
        return pd.array(values, dtype="string")
    return pd.array(values, dtype=object)
