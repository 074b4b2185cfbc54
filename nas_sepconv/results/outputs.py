"""What a finished search leaves on disk (``trials.csv``, ``pareto.csv``, ``pareto.png``) and the
front as a table for display (the CLI's ``report``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserInputError
from ..files import atomic_write
from .frame import _FIXED
from .front import pareto_front
from .objectives import KNOWN_DIRECTIONS
from .plot import plot_pareto

__all__ = ["write_outputs", "pareto_table", "base_line"]


def _param_columns(df: pd.DataFrame) -> list[str]:
    """The searched-parameter columns (from ``df.attrs``, else everything not known)."""
    params = df.attrs.get("params")
    if params is not None:
        return [p for p in params if p in df.columns]
    known = _FIXED | set(KNOWN_DIRECTIONS) | set(df.attrs.get("objectives") or [])
    return [c for c in df.columns if c not in known and not c.startswith("user_attrs_")
            and not c.startswith("value")]


def _pareto_columns(df: pd.DataFrame) -> list[str]:
    base = ["number", "accuracy", "test_accuracy", "macs", "params", "latency_ms", "arch"]
    chosen = [c for c in base if c in df.columns]
    return chosen + [p for p in _param_columns(df) if p not in chosen]


def write_outputs(
    df: pd.DataFrame,
    out_dir: str | Path,
    *,
    baselines: Mapping[str, pd.DataFrame] | None = None,
    objectives: Sequence[str] = ("accuracy", "macs"),
) -> dict[str, Path]:
    """Write ``trials.csv``, ``pareto.csv`` and ``pareto.png`` into ``out_dir``.

    ``trials.csv`` holds every row of ``df``; ``pareto.csv`` the front of ``objectives``
    (columns ``number, accuracy, test_accuracy, macs, params, [latency_ms], arch`` and the
    searched parameters), sorted by MACs; ``pareto.png`` is :func:`plot_pareto` at 120 dpi.
    Each file is written to a temporary file in ``out_dir`` and renamed over the target, so an
    interrupted write never leaves a half-written file.  ``out_dir`` is created if needed.

    Returns:
        ``{"trials": path, "pareto": path, "plot": path}``.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError("out_dir", f"cannot create {str(out)!r} ({exc})",
                             "choose a writable directory") from exc
    paths = {"trials": out / "trials.csv", "pareto": out / "pareto.csv", "plot": out / "pareto.png"}
    front = pareto_front(df, objectives=objectives)
    atomic_write(paths["trials"], lambda fh: df.to_csv(fh, index=False), binary=False)
    atomic_write(paths["pareto"], lambda fh: front[_pareto_columns(front)].to_csv(fh, index=False),
                  binary=False)
    x, y = (objectives[1], objectives[0]) if len(objectives) == 2 else ("macs", "accuracy")
    ax = plot_pareto(df, x=x, y=y, baselines=baselines)
    atomic_write(paths["plot"], lambda fh: ax.figure.savefig(fh, format="png", dpi=120),
                  binary=True)
    return paths


def pareto_table(
    df: pd.DataFrame,
    *,
    objectives: Sequence[str] = ("accuracy", "macs"),
) -> pd.DataFrame:
    """The Pareto front formatted for display (the CLI's ``report``), sorted by MACs.

    Columns: ``trial``, ``accuracy %``, ``test accuracy %``, ``MACs (M)``, ``params (M)``,
    ``latency (ms)`` (when measured), ``arch``; numbers rounded for reading (accuracies to 2
    decimals, MACs to 2 decimals of a million, params to 3).
    """
    front = pareto_front(df, objectives=objectives)
    table = pd.DataFrame(index=range(len(front)))
    table["trial"] = (front["number"].to_numpy() if "number" in front.columns
                      else front.index.to_numpy())

    def num(column: str) -> np.ndarray:
        return pd.to_numeric(front[column]).to_numpy(dtype="float64", na_value=np.nan)

    spec = [
        ("accuracy %", "accuracy", 100.0, 2),
        ("test accuracy %", "test_accuracy", 100.0, 2),
        ("MACs (M)", "macs", 1e-6, 2),
        ("params (M)", "params", 1e-6, 3),
        ("latency (ms)", "latency_ms", 1.0, 2),
    ]
    for label, column, factor, digits in spec:
        if column in front.columns:
            table[label] = np.round(num(column) * factor, digits)
    if "arch" in front.columns:
        table["arch"] = front["arch"].to_numpy()
    return table


def base_line(df: pd.DataFrame) -> str | None:
    """``original model: accuracy X% (test Y%), MACs Z M, params P M (MODEL)``: the original
    model of a convert search (``df.attrs["base"]``), what the front is compared against; None
    for a build search (or a study made before it was recorded)."""
    base = df.attrs.get("base")
    if not isinstance(base, Mapping) or base.get("accuracy") is None or base.get("macs") is None:
        return None
    test = f" (test {100 * base['test_accuracy']:.2f}%)" if base.get("test_accuracy") is not None else ""
    params = f", params {base['params'] / 1e6:.3f} M" if base.get("params") is not None else ""
    model = f" ({base['model']})" if base.get("model") else ""
    return f"original model: accuracy {100 * base['accuracy']:.2f}%{test}, MACs {base['macs'] / 1e6:.2f} M{params}{model}"
