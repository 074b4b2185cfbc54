"""What a finished search leaves on disk (``trials.csv``, ``pareto.csv``, ``pareto.png``), the
front as a table for display (the CLI's ``report``), and the comparison with baselines
(``comparison.csv``, ``comparison.png``; ``report --baseline``)."""

from __future__ import annotations

import errno
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from ..errors import StorageError, UserInputError
from ..files import atomic_write
from .comparison import compare
from .frame import FIXED_COLUMNS, load
from .front import pareto_front
from .objectives import KNOWN_DIRECTIONS
from .plot import plot_fronts, plot_pareto

__all__ = [
    "load_baselines",
    "write_outputs",
    "write_comparison",
    "pareto_table",
    "comparison_table",
    "base_line",
    "finalized_line",
    "reference_line",
]


def _param_columns(df: pd.DataFrame) -> list[str]:
    """The searched-parameter columns (from ``df.attrs``, else everything not known)."""
    params = df.attrs.get("params")
    if params is not None:
        return [p for p in params if p in df.columns]
    known = FIXED_COLUMNS | set(KNOWN_DIRECTIONS) | set(df.attrs.get("objectives") or [])
    return [c for c in df.columns if c not in known and not c.startswith("user_attrs_") and not c.startswith("value")]


def _pareto_columns(df: pd.DataFrame) -> list[str]:
    base = ["number", "accuracy", "test_accuracy", "macs", "params", "latency_ms", "arch"]
    chosen = [c for c in base if c in df.columns]
    return chosen + [p for p in _param_columns(df) if p not in chosen]


def _made_dir(out_dir: str | Path) -> Path:
    """``out_dir`` as a Path, created if needed (an ``out_dir`` error if it cannot be)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno in _DISK_FAULTS:
            raise _unwritten(out, exc) from exc
        raise UserInputError("out_dir", f"cannot create {str(out)!r} ({exc})", "choose a writable directory") from exc
    return out


#: errors of the disk, not of the folder the user chose: full, over quota, a file over the size limit, I/O
_DISK_FAULTS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)


def _unwritten(path: Path, exc: OSError) -> StorageError:
    """The one line (exit status 1 in the CLI) for an output that cannot be written; the
    ``OSError`` it is raised from names the file (``filename``)."""
    exc.filename = str(path)
    reason = exc.strerror or exc
    return StorageError(f"cannot write {path} ({reason}); free disk space, then run the same command again")


def _write(path: Path, content: Callable[[IO], None], *, binary: bool) -> None:
    """:func:`atomic_write` (a failed write leaves the file as it was, and no temporary file);
    a write that fails raises :class:`StorageError`."""
    try:
        atomic_write(path, content, binary=binary)
    except OSError as exc:
        raise _unwritten(path, exc) from exc


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

    Raises:
        StorageError: a file cannot be written (disk full); it names the file, and the
            ``OSError`` it is raised from has the file as its ``filename``.

    Returns:
        ``{"trials": path, "pareto": path, "plot": path}``.
    """
    out = _made_dir(out_dir)
    paths = {"trials": out / "trials.csv", "pareto": out / "pareto.csv", "plot": out / "pareto.png"}
    front = pareto_front(df, objectives=objectives)
    _write(paths["trials"], lambda fh: df.to_csv(fh, index=False), binary=False)
    _write(paths["pareto"], lambda fh: front[_pareto_columns(front)].to_csv(fh, index=False), binary=False)
    x, y = (objectives[1], objectives[0]) if len(objectives) == 2 else ("macs", "accuracy")
    ax = plot_pareto(df, x=x, y=y, baselines=baselines)
    _write(paths["plot"], lambda fh: ax.figure.savefig(fh, format="png", dpi=120), binary=True)
    return paths


def load_baselines(
    folders: Sequence[str | Path], *, taken: Sequence[str] = (), field: str = "baselines"
) -> dict[str, pd.DataFrame]:
    """The frames (:func:`load`) of baselines' results folders, by study name; a name already
    in ``taken`` or given twice gets its folder appended (``"default (results/seed1/default)"``).

    Raises:
        UserInputError: naming ``field`` (the CLI: ``--baseline``) and the folder, when it is
            no results folder.
    """
    frames: dict[str, pd.DataFrame] = {}
    for folder in folders:
        fix = "give the results directory of a search (results/<study>)"
        if not Path(folder).is_dir():
            raise UserInputError(field, f"{folder} is not a folder", fix)
        try:
            frame = load(folder)
        except UserInputError as exc:
            raise UserInputError(field, f"{folder} is not a results folder ({exc.field}: {exc.problem})", fix) from exc
        name = str(frame.attrs["study"])
        frames[name if name not in frames and name not in taken else f"{name} ({folder})"] = frame
    return frames


def write_comparison(
    studies: Mapping[str, pd.DataFrame],
    out_dir: str | Path,
    *,
    baselines: Mapping[str, pd.DataFrame],
    objectives: Sequence[str] = ("accuracy", "macs"),
    field: str = "baselines",
) -> tuple[pd.DataFrame, dict[str, Path]]:
    """Compare searched studies with baselines and write ``comparison.csv`` and
    ``comparison.png`` into ``out_dir`` (atomically, as :func:`write_outputs`).

    The table is :func:`compare` ``(studies, baselines=baselines)``: hypervolumes on one
    reference point computed from every study and baseline together, and each one's ratio to
    the best baseline's; the CSV adds the reference in the columns' own units
    (``reference_<objective>``).  The plot is :func:`plot_fronts` of the first two objectives.
    Nothing is written when the comparison fails (baselines of other objectives: an error
    naming ``field``, the CLI's ``--baseline``); a file that cannot be written raises
    :class:`StorageError`, as in :func:`write_outputs`.

    Returns:
        The table, and ``{"comparison": path, "plot": path}``.
    """
    try:
        table = compare(studies, baselines=baselines, objectives=objectives)
    except UserInputError as exc:
        raise (UserInputError(field, exc.problem, exc.fix) if exc.field == "baselines" else exc) from None
    out = _made_dir(out_dir)
    written = table.copy()
    for o, value in (table.attrs["reference"] or {}).items():
        written[f"reference_{o}"] = 10.0**value if o in table.attrs["log_scale"] else value
    for o, value in (table.attrs.get("test_reference") or {}).items():
        written[f"test_reference_{o}"] = value
    paths = {"comparison": out / "comparison.csv", "plot": out / "comparison.png"}
    _write(paths["comparison"], lambda fh: written.to_csv(fh, index=False), binary=False)
    x, y = objectives[1], objectives[0]
    ax = plot_fronts(
        studies, baselines=baselines, x=x, y=y, title=f"{', '.join(studies)} against {', '.join(baselines)}"
    )
    _write(paths["plot"], lambda fh: ax.figure.savefig(fh, format="png", dpi=120), binary=True)
    return table, paths


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
    table["trial"] = front["number"].to_numpy() if "number" in front.columns else front.index.to_numpy()

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
    return (
        f"original model: accuracy {100 * base['accuracy']:.2f}%{test}, MACs {base['macs'] / 1e6:.2f} M{params}{model}"
    )


def finalized_line(df: pd.DataFrame) -> str | None:
    """``front of the N finalised trials; M trials with inherited accuracy are left out of it``
    for a one-shot study of which some trials were finalised (the front never mixes the two
    accuracies: :func:`~.front.eligible_rows`); None otherwise."""
    if "accuracy_source" not in df.columns:
        return None
    source = df["accuracy_source"].astype("string")
    finalized = int((source == "finalized").sum())
    inherited = int((source == "inherited").sum())
    if not finalized or not inherited:
        return None
    return (
        f"front of the {finalized} finalised trials; {inherited} trials with inherited accuracy "
        "are left out of it (their accuracy_source in trials.csv)"
    )


def comparison_table(table: pd.DataFrame) -> pd.DataFrame:
    """A :func:`compare` table formatted for display (the CLI's ``report --baseline``).

    Columns: ``study``, ``role`` (``searched`` / ``baseline``), ``complete``, ``front``,
    ``best accuracy %``, ``min MACs (M)``, then the protocol's (:mod:`.protocol`): ``test ratio``
    (the hypervolume over the best baseline's, each front chosen on validation and scored on the
    test split: the headline), ``90% interval`` (its bootstrap interval, NA without per-image
    test results), ``val ratio`` (the same ratio on validation) and ``train TMACs`` (what the
    study's trials spent: training images x MACs, in 1e12).  The hypervolumes themselves, the
    normalised and chance-reference ratios and the wall clock are in :func:`compare`'s table
    (``comparison.csv``).
    """
    shown = pd.DataFrame(
        {
            "study": table["name"].to_numpy(),
            "role": np.where(table["baseline"].to_numpy(dtype=bool), "baseline", "searched"),
            "complete": table["n_complete"].to_numpy(),
            "front": table["front_size"].to_numpy(),
        }
    )
    if "best_accuracy" in table.columns:
        shown["best accuracy %"] = np.round(
            100 * pd.to_numeric(table["best_accuracy"]).to_numpy(dtype="float64", na_value=np.nan), 2
        )
    if "min_macs" in table.columns:
        shown["min MACs (M)"] = np.round(
            pd.to_numeric(table["min_macs"]).to_numpy(dtype="float64", na_value=np.nan) / 1e6, 3
        )
    for name, values in _protocol_shown(table).items():
        shown[name] = values
    return shown


def _protocol_shown(table: pd.DataFrame) -> dict[str, Any]:
    """The protocol's columns for display: the test ratio (the headline) and its interval, the
    validation ratio beside it, the normalised and chance ratios, the compute spent."""

    def column(name: str) -> np.ndarray:
        if name not in table.columns:
            return np.full(len(table), np.nan)
        return pd.to_numeric(table[name], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)

    level = round(100 * float(table.attrs.get("interval", 0.9)))
    low, high = column("test_ratio_low"), column("test_ratio_high")
    return {
        "test ratio": np.round(column("test_hypervolume_ratio"), 3),
        f"{level}% interval": [
            "NA" if np.isnan(lo) or np.isnan(hi) else f"{lo:.3f}-{hi:.3f}" for lo, hi in zip(low, high)
        ],
        "val ratio": np.round(column("hypervolume_ratio"), 3),
        "train TMACs": np.round(column("train_compute") / 1e12, 4),
    }


def reference_line(table: pd.DataFrame) -> str | None:
    """``reference point: accuracy X%, MACs Y M (...)``: the common reference of a
    :func:`compare` table, in the columns' units; None when no study has a complete trial."""
    reference = table.attrs.get("reference")
    if not reference:
        return None
    logged = table.attrs.get("log_scale") or []
    parts = []
    for name, value in reference.items():
        value = 10.0**value if name in logged else value
        parts.append(
            f"accuracy {100 * value:.2f}%"
            if name == "accuracy"
            else f"MACs {value / 1e6:.3f} M"
            if name == "macs"
            else f"{name} {value:.4g}"
        )
    return (
        f"reference point: {', '.join(parts)} (per objective the worst value of every study's trials, pushed out by "
        "1% of the range)"
    )


def protocol_line(table: pd.DataFrame) -> str | None:
    """How to read a :func:`compare` table's headline: the front chosen on validation and
    scored on the test split (its reference), the interval, the compute; None when no front
    was scored on the test split."""
    reference = table.attrs.get("test_reference")
    if not reference:
        return None
    parts = [
        f"accuracy {100 * v:.2f}%" if o == "accuracy" else f"MACs {v / 1e6:.3f} M" if o == "macs" else f"{o} {v:.4g}"
        for o, v in reference.items()
    ]
    level = round(100 * float(table.attrs.get("interval", 0.9)))
    return (
        "headline (test ratio: hypervolume x the best baseline's): each front chosen on validation, "
        "scored on the test split, on the "
        f"reference {', '.join(parts)}; {level}% interval: bootstrap over the test images; val ratio: the same "
        "on validation; train TMACs: training images x MACs, summed (compare them before reading a ratio)"
    )
