"""Results of a search as a pandas DataFrame: Pareto front, hypervolume, knee, plots, outputs.

The third door to the library (after the Python API and the CLI) is pandas::

    df = ns.results.load("results/my_study")          # one row per trial
    front = ns.results.pareto_front(df)               # accuracy vs MACs, non-dominated rows
    ns.results.hypervolume(df, reference={"accuracy": 0.1, "macs": 1e9})
    ns.results.plot_pareto(df)                         # a matplotlib Axes

Conventions read from the Optuna study (written by :mod:`nas_sepconv.search`):

* metric names (``study.set_metric_names``) name the objective columns; ``accuracy`` is
  maximised, ``macs``, ``params`` and ``latency_ms`` are minimised, ``reward`` (the scalarised
  MnasNet mode) is maximised;
* trial user attributes ``accuracy``, ``test_accuracy``, ``macs``, ``params``, ``latency_ms``,
  ``arch``, ``arch_json``, ``wall_time_s``, ``epochs`` (COMPLETE trials, both modes) and
  ``fail_reason`` (FAIL trials);
* study user attributes ``mode`` (``"pareto"`` | ``"scalarised"``) and ``space``.

MACs are multiply-accumulates (FLOPs = 2 x MACs).  Nothing here prints; matplotlib is imported
inside the plotting functions only, with the Agg canvas (no pyplot, no global figure state).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..errors import UserInputError
from ..files import atomic_write
from ..storage import open_source
from .objectives import _AXIS_LABELS, _PERCENT_COLUMNS, KNOWN_DIRECTIONS, LOG_SCALE_COLUMNS

if TYPE_CHECKING:  # pragma: no cover - typing only
    import matplotlib.axes
    import optuna

__all__ = [
    "load",
    "pareto_front",
    "hypervolume",
    "knee",
    "compare",
    "plot_pareto",
    "write_outputs",
    "pareto_table",
    "STATES",
    "KNOWN_DIRECTIONS",
    "LOG_SCALE_COLUMNS",
]

#: Trial states, the categories of the ``state`` column.
STATES: tuple[str, ...] = ("COMPLETE", "FAIL", "PRUNED", "RUNNING", "WAITING")

# Columns filled from trial user attributes, with their dtypes, in frame order.
_ATTR_COLUMNS: dict[str, str] = {
    "accuracy": "float64",
    "macs": "Int64",
    "params": "Int64",
    "latency_ms": "float64",
    "test_accuracy": "float64",
}
_TAIL_ATTR_COLUMNS: dict[str, str] = {
    "arch": "string",
    "arch_json": "string",
}
_TIME_ATTR_COLUMNS: dict[str, str] = {
    "wall_time_s": "float64",
    "epochs": "Int64",
}
_FIXED = (
    {"number", "state", "datetime_start", "datetime_complete", "duration_s", "fail_reason"}
    | set(_ATTR_COLUMNS)
    | set(_TAIL_ATTR_COLUMNS)
    | set(_TIME_ATTR_COLUMNS)
)

# --------------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------------


def load(source: str | Path | optuna.Study, study: str | None = None) -> pd.DataFrame:
    """Load every trial of a study into a DataFrame, one row per trial.

    Args:
        source: a results directory holding ``meta.json`` (``{"storage": URL, "study": NAME}``),
            an Optuna storage URL (``sqlite:///path.db``, ``postgresql://...``, ``mysql://...``),
            a path to a SQLite file (``.db``/``.sqlite``) or to a JournalFileStorage file
            (``.log``/``.journal``), or an :class:`optuna.Study`.
        study: the study name.  Needed only when the storage holds more than one study and
            ``meta.json`` does not name one; it overrides the name in ``meta.json``.

    Returns:
        A frame with columns ``number`` (int64), ``state`` (category of :data:`STATES`), the
        objective columns named after the study's metrics (``accuracy``, ``macs``, ... or
        ``reward``), ``accuracy``/``macs``/``params``/``latency_ms``/``test_accuracy`` from the
        trial user attributes wherever present (so a scalarised study has them too), one column
        per searched parameter (category for string choices, Int64 for integers, float64 for
        floats), ``arch``, ``arch_json``, ``datetime_start``, ``datetime_complete``,
        ``duration_s``, ``wall_time_s``, ``epochs``, ``fail_reason`` (string, NA unless the
        trial failed), then any other scalar user attributes.  MACs and params are nullable
        ``Int64`` so that failed or running trials (NA) keep the integers exact.  A searched
        parameter whose name clashes with one of these columns is named ``param_<name>``.

        ``df.attrs`` holds ``study`` (name), ``directions`` (column -> ``"maximize"`` /
        ``"minimize"``, for the study's objectives and the known columns), ``objectives`` (the
        study's metric names), ``mode`` (``"pareto"`` or ``"scalarised"``), ``params`` (the
        searched-parameter columns), ``space`` and ``storage`` where known.

    Raises:
        UserInputError: the source does not exist, or the study cannot be chosen.
    """
    import optuna

    if isinstance(source, optuna.Study):
        if study is not None and study != source.study_name:
            raise UserInputError(
                "study",
                f"{study!r} given with a Study object named {source.study_name!r}",
                "leave study out when passing a Study",
            )
        return _frame_from_study(source, storage_label=None)

    storage, label, meta_study = open_source(source)
    name = study if study is not None else meta_study
    names = optuna.get_all_study_names(storage=storage)
    if name is None:
        if len(names) != 1:
            listed = ", ".join(repr(n) for n in names) if names else "none"
            raise UserInputError(
                "study",
                f"the storage {label} holds {len(names)} studies ({listed})",
                "pass study=NAME (CLI: --study NAME)",
            )
        name = names[0]
    elif name not in names:
        listed = ", ".join(repr(n) for n in names) if names else "none"
        raise UserInputError(
            "study",
            f"no study named {name!r} in {label} (studies: {listed})",
            "pass one of the listed names",
        )
    loaded = optuna.load_study(study_name=name, storage=storage)
    return _frame_from_study(loaded, storage_label=label)


def _frame_from_study(study: optuna.Study, storage_label: str | None) -> pd.DataFrame:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )
    from optuna.study import StudyDirection

    trials = study.get_trials(deepcopy=False)
    n_obj = len(study.directions)
    metric_names = list(study.metric_names or [])
    study_attrs = dict(study.user_attrs)
    mode = study_attrs.get("mode")
    if not metric_names:
        if n_obj == 1:
            metric_names = ["reward"] if mode == "scalarised" else ["value"]
        else:
            metric_names = [f"value_{i}" for i in range(n_obj)]
    if mode not in ("pareto", "scalarised"):
        mode = "pareto" if n_obj > 1 else "scalarised"
    study_dirs = {
        name: "maximize" if d == StudyDirection.MAXIMIZE else "minimize"
        for name, d in zip(metric_names, study.directions)
    }

    # Searched parameters: union of every trial's distributions (spaces may be conditional).
    param_dists: dict[str, list[Any]] = {}
    for t in trials:
        for pname, dist in t.distributions.items():
            param_dists.setdefault(pname, []).append(dist)
    param_cols = {p: (f"param_{p}" if p in _FIXED or p in study_dirs else p) for p in param_dists}

    cols: dict[str, pd.Series | pd.api.extensions.ExtensionArray | np.ndarray] = {}
    n = len(trials)
    cols["number"] = np.fromiter((t.number for t in trials), dtype=np.int64, count=n)
    cols["state"] = pd.Categorical([t.state.name for t in trials], categories=list(STATES))

    def attr(name: str) -> list[Any]:
        return [t.user_attrs.get(name) for t in trials]

    def objective(i: int) -> list[Any]:
        return [t.values[i] if t.values is not None and len(t.values) > i else None for t in trials]

    # Objective columns: the study's metrics in order, then the known attribute columns.
    for i, name in enumerate(metric_names):
        values = objective(i)
        if name in _ATTR_COLUMNS:
            from_attr = attr(name)  # exact (int MACs) when present; the told value otherwise
            values = [a if a is not None else v for a, v in zip(from_attr, values)]
        cols[name] = _typed(values, _ATTR_COLUMNS.get(name, "float64"))
    for name, dtype in _ATTR_COLUMNS.items():
        if name not in cols:
            values = attr(name)
            if name == "latency_ms" and all(v is None for v in values):
                continue  # optional column, left out when no trial measured it
            cols[name] = _typed(values, dtype)

    for pname, dists in param_dists.items():
        values = [t.params.get(pname) for t in trials]
        cols[param_cols[pname]] = _param_array(values, dists, CategoricalDistribution,
                                               IntDistribution, FloatDistribution)
    for name, dtype in _TAIL_ATTR_COLUMNS.items():
        cols[name] = _typed(attr(name), dtype)

    start = pd.to_datetime(pd.Series([t.datetime_start for t in trials], dtype=object)).astype(
        "datetime64[us]")
    complete = pd.to_datetime(pd.Series([t.datetime_complete for t in trials], dtype=object)
                              ).astype("datetime64[us]")
    cols["datetime_start"] = start.to_numpy()
    cols["datetime_complete"] = complete.to_numpy()
    cols["duration_s"] = (complete - start).dt.total_seconds().to_numpy(dtype="float64",
                                                                         na_value=np.nan)
    for name, dtype in _TIME_ATTR_COLUMNS.items():
        cols[name] = _typed(attr(name), dtype)
    cols["fail_reason"] = _typed(
        [t.user_attrs.get("fail_reason") if t.state.name == "FAIL" else None for t in trials],
        "string",
    )

    # Any other scalar user attributes, under their own names unless they clash.
    extra: list[str] = []
    for t in trials:
        for key in t.user_attrs:
            if key not in _FIXED and key not in extra:
                extra.append(key)
    for key in extra:
        values = attr(key)
        if not all(v is None or isinstance(v, (str, int, float, bool)) for v in values):
            continue
        column = key if key not in cols else f"user_attrs_{key}"
        cols[column] = _infer(values)

    df = pd.DataFrame(cols)
    if n == 0:  # pd.DataFrame of empty arrays loses nothing, but keep dtypes explicit
        df["number"] = df["number"].astype("int64")
    directions = dict(KNOWN_DIRECTIONS)
    directions = {k: v for k, v in directions.items() if k in df.columns}
    directions.update(study_dirs)
    df.attrs.update(
        {
            "study": study.study_name,
            "directions": directions,
            "objectives": metric_names,
            "mode": mode,
            "params": [param_cols[p] for p in param_dists],
            "space": study_attrs.get("space"),
            "storage": storage_label,
        }
    )
    return df


def _typed(values: list[Any], dtype: str) -> Any:
    """Values (with None for missing) as an array of the given dtype."""
    if dtype == "string":
        return pd.array([None if v is None else str(v) for v in values], dtype="string")
    numeric = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").astype("float64")
    if dtype == "Int64":
        return numeric.round().astype("Int64").array
    return numeric.to_numpy(dtype="float64")


def _infer(values: list[Any]) -> Any:
    """Nullable dtype for a list of scalars (None = missing)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pd.array(values, dtype="boolean")
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pd.array(values, dtype="Int64")
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return _typed(values, "float64")
    if all(isinstance(v, str) for v in present):
        return pd.array(values, dtype="string")
    return pd.array(values, dtype=object)


def _param_array(values: list[Any], dists: list[Any], categorical: type, integer: type,
                 floating: type) -> Any:
    if all(isinstance(d, categorical) for d in dists):
        choices: list[Any] = []
        for d in dists:
            choices += [c for c in d.choices if c not in choices]
        if all(isinstance(c, str) for c in choices):
            return pd.Categorical(values, categories=choices)
        return _infer(values)
    if all(isinstance(d, integer) for d in dists):
        return _typed(values, "Int64")
    if all(isinstance(d, (integer, floating)) for d in dists):
        return _typed(values, "float64")
    return _infer(values)


# --------------------------------------------------------------------------------------------
# Pareto front, hypervolume, knee
# --------------------------------------------------------------------------------------------


def _directions(df: pd.DataFrame, objectives: Sequence[str],
                directions: Sequence[str] | None) -> list[str]:
    """Validated list of "maximize"/"minimize", one per objective."""
    if isinstance(objectives, str):
        raise UserInputError("objectives", f"got the string {objectives!r}",
                             f"pass a sequence of column names, e.g. ({objectives!r},)")
    if len(objectives) == 0:
        raise UserInputError("objectives", "no objective given", 'pass e.g. ("accuracy", "macs")')
    missing = [o for o in objectives if o not in df.columns]
    if missing:
        raise UserInputError(
            "objectives", f"column(s) {missing} not in the frame",
            f"choose from {[c for c in df.columns if c in KNOWN_DIRECTIONS] or list(df.columns)}",
        )
    if directions is not None:
        if isinstance(directions, str) or len(directions) != len(objectives):
            raise UserInputError("directions",
                                 f"{directions!r} does not give one direction per objective",
                                 f"pass {len(objectives)} of 'maximize'/'minimize'")
        out = []
        for d in directions:
            text = str(getattr(d, "name", d)).lower()
            if text in ("maximize", "max", "maximise"):
                out.append("maximize")
            elif text in ("minimize", "min", "minimise"):
                out.append("minimize")
            else:
                raise UserInputError("directions", f"unknown direction {d!r}",
                                     "use 'maximize' or 'minimize'")
        return out
    known = {**KNOWN_DIRECTIONS, **dict(df.attrs.get("directions") or {})}
    unknown = [o for o in objectives if o not in known]
    if unknown:
        raise UserInputError("directions", f"no known direction for {unknown}",
                             "pass directions=('maximize'|'minimize', ...)")
    return [known[o] for o in objectives]


def _losses(df: pd.DataFrame, objectives: Sequence[str], dirs: Sequence[str]) -> np.ndarray:
    """Objective values as a float matrix to minimise (maximised columns negated)."""
    cols = []
    for o, d in zip(objectives, dirs):
        v = pd.to_numeric(df[o], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        cols.append(-v if d == "maximize" else v)
    return np.column_stack(cols) if cols else np.empty((len(df), 0))


def _candidates(df: pd.DataFrame, losses: np.ndarray) -> np.ndarray:
    """Rows eligible for the front: COMPLETE (when a state column exists), feasible (trials over
    a hard budget are recorded with ``feasible`` False and are never on the front), finite
    objectives."""
    ok = np.isfinite(losses).all(axis=1)
    if "state" in df.columns:
        ok &= (df["state"].astype("string") == "COMPLETE").fillna(False).to_numpy(dtype=bool)
    if "feasible" in df.columns:
        ok &= (df["feasible"].astype("boolean") != False).fillna(True).to_numpy(dtype=bool)  # noqa: E712
    return ok


def _non_dominated(losses: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows of ``losses`` (n x k, minimised) that no other row dominates.

    Row j dominates row i when it is <= in every objective and < in at least one; identical
    rows never dominate each other.  Vectorised in row blocks, O(n^2 k) time, bounded memory.
    """
    n, k = losses.shape
    keep = np.ones(n, dtype=bool)
    if n <= 1:
        return keep
    block = max(1, 4_000_000 // max(1, n * k))
    for lo in range(0, n, block):
        rows = losses[lo:lo + block, None, :]  # (b, 1, k)
        le = (losses[None, :, :] <= rows).all(axis=2)  # (b, n): other <= row everywhere
        lt = (losses[None, :, :] < rows).any(axis=2)  # (b, n): other < row somewhere
        keep[lo:lo + block] = ~(le & lt).any(axis=1)
    return keep


def pareto_front(
    df: pd.DataFrame,
    *,
    objectives: Sequence[str] = ("accuracy", "macs"),
    directions: Sequence[str] | None = None,
    mask: bool = False,
) -> pd.DataFrame | pd.Series:
    """The non-dominated trials: the Pareto front of ``objectives``.

    Only COMPLETE rows (when the frame has a ``state`` column) with finite values in every
    objective take part.  A row is on the front when no other eligible row is at least as good
    in every objective and strictly better in one.  Ties: rows with identical objective vectors
    do not dominate one another, so all copies of a non-dominated vector are on the front.

    Args:
        df: a frame from :func:`load` (or any frame with the objective columns).
        objectives: two or more columns (any number works, one too).
        directions: ``"maximize"``/``"minimize"`` per objective; by default from
            ``df.attrs["directions"]``, else from the known names (accuracy, test_accuracy,
            reward maximised; macs, params, latency_ms minimised).
        mask: return a boolean Series aligned to ``df.index`` instead of the rows.

    Returns:
        The front rows sorted by the first minimised objective (then the others, best first),
        or, with ``mask=True``, the boolean Series ``on_front``.
    """
    dirs = _directions(df, objectives, directions)
    losses = _losses(df, objectives, dirs)
    ok = _candidates(df, losses)
    on_front = np.zeros(len(df), dtype=bool)
    idx = np.flatnonzero(ok)
    on_front[idx[_non_dominated(losses[idx])]] = True
    if mask:
        return pd.Series(on_front, index=df.index, name="on_front")
    order = _front_order(losses[on_front], dirs)
    return df.iloc[np.flatnonzero(on_front)[order]]


def _front_order(losses: np.ndarray, dirs: Sequence[str]) -> np.ndarray:
    """Stable order: first minimised objective ascending, then the others best first."""
    first = dirs.index("minimize") if "minimize" in dirs else 0
    keys = [first] + [i for i in range(len(dirs)) if i != first]
    # np.lexsort sorts by the last key first.
    return np.lexsort(tuple(losses[:, i] for i in reversed(keys))) if len(losses) else \
        np.arange(0)


def _hv(points: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume dominated by ``points`` (minimised, each strictly < ``ref``) up to ``ref``.

    2-D: one sweep.  Higher dimensions: slice along the last objective (HSO), recursing on the
    points below each slice.  Exact; fine for fronts of a few hundred points in 3-4 D.
    """
    n, k = points.shape
    if n == 0:
        return 0.0
    if k == 1:
        return float(ref[0] - points[:, 0].min())
    if k == 2:
        order = np.lexsort((points[:, 1], points[:, 0]))
        x = points[order, 0]
        y = np.minimum.accumulate(points[order, 1])
        widths = np.diff(np.append(x, ref[0]))
        return float(np.sum(widths * (ref[1] - y)))
    points = points[_non_dominated(points)]
    points = points[np.argsort(points[:, -1], kind="stable")]
    z = np.append(points[:, -1], ref[-1])
    total = 0.0
    for i in range(len(points)):
        depth = z[i + 1] - z[i]
        if depth > 0:
            total += depth * _hv(points[: i + 1, :-1], ref[:-1])
    return total


def hypervolume(
    df: pd.DataFrame,
    *,
    reference: Mapping[str, float] | Sequence[float],
    objectives: Sequence[str] = ("accuracy", "macs"),
    directions: Sequence[str] | None = None,
) -> float:
    """Dominated hypervolume of the trials w.r.t. a reference point, in the objectives' units.

    The volume of the region that some eligible trial (COMPLETE, finite objectives) dominates
    and that dominates the reference point.  Maximised objectives are negated, so the value is
    the one :func:`optuna._hypervolume.compute_hypervolume` gives on the negated points.  Trials
    that are not strictly better than the reference in every objective contribute nothing.

    Args:
        df: a frame from :func:`load`.
        reference: the reference (nadir) point, as ``{objective: value}`` or a sequence in the
            order of ``objectives``, in the columns' own units (accuracy as a fraction, MACs).
        objectives, directions: as in :func:`pareto_front`.
    """
    dirs = _directions(df, objectives, directions)
    if isinstance(reference, Mapping):
        missing = [o for o in objectives if o not in reference]
        if missing:
            raise UserInputError("reference", f"no value for {missing}",
                                 "give one value per objective")
        ref_values = [reference[o] for o in objectives]
    else:
        if isinstance(reference, str) or len(reference) != len(objectives):
            raise UserInputError("reference", f"{reference!r} does not match {list(objectives)}",
                                 "give one value per objective")
        ref_values = list(reference)
    try:
        ref = np.array([float(v) for v in ref_values], dtype="float64")
    except (TypeError, ValueError) as exc:
        raise UserInputError("reference", f"{ref_values!r} is not numeric",
                             "give numbers") from exc
    if not np.isfinite(ref).all():
        raise UserInputError("reference", f"{ref_values!r} is not finite", "give finite numbers")
    ref = np.where(np.array(dirs) == "maximize", -ref, ref)
    losses = _losses(df, objectives, dirs)
    losses = losses[_candidates(df, losses)]
    losses = losses[(losses < ref).all(axis=1)]
    if len(losses) == 0:
        return 0.0
    losses = np.unique(losses, axis=0)
    return _hv(losses[_non_dominated(losses)], ref)


def _normalised_losses(front: pd.DataFrame, objectives: Sequence[str], dirs: Sequence[str],
                       log_scale: Sequence[str]) -> np.ndarray:
    """Front objectives scaled to [0, 1] with 0 the best value (log10 for log_scale columns)."""
    out = []
    for o, d in zip(objectives, dirs):
        v = pd.to_numeric(front[o], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        if o in log_scale and (v > 0).all():
            v = np.log10(v)
        lo, hi = v.min(), v.max()
        scaled = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
        out.append(1.0 - scaled if d == "maximize" else scaled)
    return np.column_stack(out)


def knee(
    df: pd.DataFrame,
    *,
    objectives: Sequence[str] = ("accuracy", "macs"),
    directions: Sequence[str] | None = None,
    log_scale: Sequence[str] = LOG_SCALE_COLUMNS,
) -> pd.Series:
    """The front trial with the best trade-off (the knee of the Pareto front).

    Method: each objective is normalised to [0, 1] over the front (after log10 for the
    ``log_scale`` columns whose values are all positive), 0 being the best value.  With two
    objectives, the knee is the point farthest from the chord joining the two extreme points
    of the front, on the side of the ideal point: the maximum-distance-to-chord ("Kneedle")
    method of Satopaa et al. 2011.  If no point lies strictly on that side (a straight or
    concave front), and with three or more objectives, the knee is the point closest
    (Euclidean) to the ideal point (all zeros) in the normalised space.  Ties go to the first
    point in front order (see :func:`pareto_front`).

    Returns:
        The row (a Series whose ``.name`` is its index label in ``df``).

    Raises:
        UserInputError: no COMPLETE trial has finite objective values.
    """
    front = pareto_front(df, objectives=objectives, directions=directions)
    if len(front) == 0:
        raise UserInputError("df", "no COMPLETE trial with finite objective values",
                             "wait for trials to complete, or check the objective columns")
    dirs = _directions(df, objectives, directions)
    pos = _knee_position(_normalised_losses(front, objectives, dirs, log_scale))
    return front.iloc[pos]


def _knee_position(z: np.ndarray) -> int:
    n, k = z.shape
    if n <= 2:
        return int(np.argmin(np.linalg.norm(z, axis=1)))
    if k == 2:
        a = int(np.lexsort((z[:, 1], z[:, 0]))[0])  # best in objective 0
        b = int(np.lexsort((z[:, 0], z[:, 1]))[0])  # best in objective 1
        u = z[b] - z[a]
        length = float(np.hypot(*u))
        ideal_side = u[0] * (0 - z[a, 1]) - u[1] * (0 - z[a, 0])
        if length > 0 and ideal_side != 0:
            cross = u[0] * (z[:, 1] - z[a, 1]) - u[1] * (z[:, 0] - z[a, 0])
            signed = cross * np.sign(ideal_side) / length
            best = int(np.argmax(signed))
            if signed[best] > 1e-12:
                return best
    return int(np.argmin(np.linalg.norm(z, axis=1)))


# --------------------------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------------------------


def compare(
    studies: Mapping[str, pd.DataFrame],
    *,
    objectives: Sequence[str] = ("accuracy", "macs"),
    reference: Mapping[str, float] | Sequence[float] | None = None,
    directions: Sequence[str] | None = None,
    log_scale: Sequence[str] = LOG_SCALE_COLUMNS,
) -> pd.DataFrame:
    """Summarise several studies side by side, one row per study.

    Columns: ``name``, ``n_trials``, ``n_complete``, ``front_size``, per objective
    ``best_<o>`` (maximised) or ``min_<o>`` (minimised) over the COMPLETE rows, the hypervolume,
    ``knee_number`` and ``knee_<o>`` per objective (NA when a study has no complete trial).

    The hypervolume is computed on one reference point common to all studies, with the
    ``log_scale`` objectives taken as log10 (MACs span orders of magnitude; a linear MACs axis
    would let the largest models dominate the volume); the column name says so, e.g.
    ``hypervolume_logmacs`` for accuracy x log10(MACs).  The default reference is, per
    objective, the worst value over every study's COMPLETE rows (in that log space), pushed
    out by 1% of the objective's range over those rows (1% of its magnitude when the range is
    zero).  A given ``reference`` is in the columns' own units (MACs, not log10 MACs).
    """
    if not isinstance(studies, Mapping) or not studies:
        raise UserInputError("studies", "expected a non-empty mapping name -> DataFrame",
                             "pass e.g. {'nsga2': df1, 'random': df2}")
    first = next(iter(studies.values()))
    dirs = _directions(first, objectives, directions)
    logged = [o for o in objectives if o in log_scale]
    transformed: dict[str, pd.DataFrame] = {}
    all_losses = []
    for name, df in studies.items():
        _directions(df, objectives, dirs)  # checks the columns
        t = df.copy()
        for o in logged:
            v = pd.to_numeric(t[o], errors="coerce").astype("float64")
            t[o] = np.log10(v.where(v > 0))
        transformed[name] = t
        losses = _losses(t, objectives, dirs)
        all_losses.append(losses[_candidates(t, losses)])
    stacked = np.vstack(all_losses) if all_losses else np.empty((0, len(objectives)))

    if reference is None:
        if len(stacked) == 0:
            ref_loss = None
        else:
            worst, best = stacked.max(axis=0), stacked.min(axis=0)
            span = worst - best
            pad = np.where(span > 0, 0.01 * span, np.where(worst != 0, 0.01 * np.abs(worst), 0.01))
            ref_loss = worst + pad
        ref_values = None if ref_loss is None else [
            -r if d == "maximize" else r for r, d in zip(ref_loss, dirs)
        ]
    else:
        if isinstance(reference, Mapping):
            ref_values = [reference[o] for o in objectives if o in reference]
        else:
            ref_values = list(reference)
        if len(ref_values) != len(objectives):
            raise UserInputError("reference", f"{reference!r} does not match {list(objectives)}",
                                 "give one value per objective")
        ref_values = [
            math.log10(float(r)) if o in logged else float(r) for o, r in zip(objectives, ref_values)
        ]
    hv_column = "hypervolume" + "".join(f"_log{o}" for o in logged)

    rows = []
    for name, df in studies.items():
        losses = _losses(df, objectives, dirs)
        ok = _candidates(df, losses)
        row: dict[str, Any] = {
            "name": name,
            "n_trials": len(df),
            "n_complete": int((df["state"].astype("string") == "COMPLETE").fillna(False).sum())
            if "state" in df.columns else len(df),
        }
        front_mask = pareto_front(df, objectives=objectives, directions=dirs, mask=True)
        row["front_size"] = int(front_mask.sum())
        for o, d in zip(objectives, dirs):
            v = pd.to_numeric(df[o], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)[ok]
            label = f"best_{o}" if d == "maximize" else f"min_{o}"
            row[label] = (v.max() if d == "maximize" else v.min()) if len(v) else np.nan
        row[hv_column] = (
            hypervolume(transformed[name], reference=ref_values, objectives=objectives,
                        directions=dirs)
            if ref_values is not None else 0.0
        )
        if ok.any():
            k = knee(df, objectives=objectives, directions=dirs, log_scale=log_scale)
            row["knee_number"] = k["number"] if "number" in k.index else k.name
            for o in objectives:
                row[f"knee_{o}"] = k[o]
        else:
            row["knee_number"] = pd.NA
            for o in objectives:
                row[f"knee_{o}"] = np.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    for column in ("n_trials", "n_complete", "front_size"):
        out[column] = out[column].astype("int64")
    out["knee_number"] = pd.array(out["knee_number"].tolist(), dtype="Int64")
    for o in objectives:
        for prefix in ("best_", "min_", "knee_"):
            if prefix + o in out.columns:
                dtype = "Int64" if _is_integer(first, o) else "float64"
                out[prefix + o] = _typed(out[prefix + o].tolist(), dtype)
    out.attrs["reference"] = None if ref_values is None else dict(zip(objectives, ref_values))
    out.attrs["log_scale"] = logged
    return out


def _is_integer(df: pd.DataFrame, column: str) -> bool:
    return column in df.columns and pd.api.types.is_integer_dtype(df[column].dtype)


# --------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Front2D:
    """The arrays one scatter of trials and its front are drawn from."""

    x_all: np.ndarray  # eligible trials (COMPLETE, finite x and y), plotted units
    y_all: np.ndarray
    on_front: np.ndarray  # bool per eligible trial
    x_front: np.ndarray  # front points sorted by x
    y_front: np.ndarray
    numbers: np.ndarray  # trial numbers of the front points (or index labels)
    drawstyle: str


@dataclass(frozen=True)
class _ParetoPlotData:
    main: _Front2D
    baselines: dict[str, _Front2D] = field(default_factory=dict)
    knee_xy: tuple[float, float] | None = None
    knee_number: Any = None
    x_label: str = ""
    y_label: str = ""
    x_log: bool = False
    y_log: bool = False


def _scale(column: str) -> float:
    return 100.0 if column in _PERCENT_COLUMNS else 1.0


def _front_2d(df: pd.DataFrame, x: str, y: str, dirs: Sequence[str]) -> _Front2D:
    losses = _losses(df, (x, y), dirs)
    ok = _candidates(df, losses)
    eligible = df.iloc[np.flatnonzero(ok)]
    on_front = _non_dominated(losses[ok])
    xs = pd.to_numeric(eligible[x]).to_numpy(dtype="float64", na_value=np.nan) * _scale(x)
    ys = pd.to_numeric(eligible[y]).to_numpy(dtype="float64", na_value=np.nan) * _scale(y)
    order = np.lexsort((losses[ok][on_front, 1], xs[on_front]))
    numbers = (eligible["number"].to_numpy() if "number" in eligible.columns
               else eligible.index.to_numpy())
    return _Front2D(
        x_all=xs, y_all=ys, on_front=on_front,
        x_front=xs[on_front][order], y_front=ys[on_front][order],
        numbers=numbers[on_front][order],
        # Attainment boundary: the best y for an x budget holds until the next front point
        # when x is minimised (steps-post), and from the previous one when x is maximised.
        drawstyle="steps-post" if dirs[0] == "minimize" else "steps-pre",
    )


def _axis_label(column: str, log: bool) -> str:
    label = _AXIS_LABELS.get(column, column)
    if log:
        label = label[:-1] + ", log scale)" if label.endswith(")") else label + " (log scale)"
    return label


def _pareto_plot_data(df: pd.DataFrame, *, x: str, y: str,
                      baselines: Mapping[str, pd.DataFrame] | None,
                      annotate_knee: bool) -> _ParetoPlotData:
    dirs = _directions(df, (x, y), None)
    main = _front_2d(df, x, y, dirs)
    others = {}
    for name, base in (baselines or {}).items():
        missing = [c for c in (x, y) if c not in base.columns]
        if missing:
            raise UserInputError("baselines", f"baseline {name!r} lacks column(s) {missing}",
                                 f"give baselines with {x!r} and {y!r} columns")
        others[name] = _front_2d(base, x, y, dirs)
    knee_xy, knee_number = None, None
    if annotate_knee and len(main.x_front) >= 3:
        row = knee(df, objectives=(x, y), directions=dirs)
        knee_xy = (float(row[x]) * _scale(x), float(row[y]) * _scale(y))
        knee_number = row["number"] if "number" in row.index else row.name
    everything = [main.x_all] + [b.x_all for b in others.values()]
    x_values = np.concatenate(everything) if everything else np.empty(0)
    every_y = np.concatenate([main.y_all] + [b.y_all for b in others.values()])
    x_log = x in LOG_SCALE_COLUMNS and len(x_values) > 0 and bool((x_values > 0).all())
    y_log = y in LOG_SCALE_COLUMNS and len(every_y) > 0 and bool((every_y > 0).all())
    return _ParetoPlotData(
        main=main, baselines=others, knee_xy=knee_xy, knee_number=knee_number,
        x_label=_axis_label(x, x_log), y_label=_axis_label(y, y_log), x_log=x_log, y_log=y_log,
    )


def _new_axes(figsize: tuple[float, float] = (7.0, 4.8)) -> matplotlib.axes.Axes:
    """A fresh Axes on an Agg canvas, without pyplot's global figure registry."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig.add_subplot()


def plot_pareto(
    df: pd.DataFrame,
    *,
    ax: matplotlib.axes.Axes | None = None,
    x: str = "macs",
    y: str = "accuracy",
    baselines: Mapping[str, pd.DataFrame] | None = None,
    title: str | None = None,
    annotate_knee: bool = True,
) -> matplotlib.axes.Axes:
    """Scatter of the trials with their Pareto front (accuracy vs MACs by default).

    MACs, params and latency go on a log axis; accuracies are shown in %.  Dominated trials are
    faded, front trials highlighted and joined by a step line tracing the attainable region;
    each baseline (name -> frame, e.g. a random-search study or the hand-designed MobileNets)
    adds its own front as a labelled step line.  The knee (see :func:`knee`) is marked when the
    front has at least three points.  Only COMPLETE trials with finite values are drawn.

    Args:
        df: a frame from :func:`load`.
        ax: the Axes to draw on; a new figure (Agg canvas, no pyplot) when None.
        x, y: the columns on each axis.
        baselines: other frames whose fronts are drawn for comparison.
        title: the title; by default the study name from ``df.attrs``.
        annotate_knee: mark and label the knee point.

    Returns:
        The Axes (``ax.figure.savefig(...)`` to write it).
    """
    data = _pareto_plot_data(df, x=x, y=y, baselines=baselines, annotate_knee=annotate_knee)
    if ax is None:
        ax = _new_axes()
    main = data.main
    dominated = ~main.on_front
    if dominated.any():
        ax.scatter(main.x_all[dominated], main.y_all[dominated], s=14, color="tab:gray",
                   alpha=0.3, linewidths=0, label=f"dominated trials ({int(dominated.sum())})")
    if len(main.x_front):
        ax.plot(main.x_front, main.y_front, drawstyle=main.drawstyle, color="tab:blue",
                linewidth=1.5, zorder=3)
        ax.scatter(main.x_front, main.y_front, s=30, color="tab:blue", edgecolors="black",
                   linewidths=0.5, zorder=4, label=f"Pareto front ({len(main.x_front)})")
    colours = ["tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
               "tab:olive", "tab:cyan"]
    for i, (name, base) in enumerate(data.baselines.items()):
        colour = colours[i % len(colours)]
        if len(base.x_front):
            ax.plot(base.x_front, base.y_front, drawstyle=base.drawstyle, color=colour,
                    linewidth=1.2, linestyle="--", marker="o", markersize=4, zorder=2,
                    label=name)
    if data.knee_xy is not None:
        ax.scatter([data.knee_xy[0]], [data.knee_xy[1]], marker="*", s=160, color="tab:red",
                   edgecolors="black", linewidths=0.5, zorder=5, label="knee")
        ax.annotate(f"trial {data.knee_number}", data.knee_xy, xytext=(8, -14),
                    textcoords="offset points", fontsize=8)
    if not len(main.x_all) and not data.baselines:
        ax.text(0.5, 0.5, "no completed trials yet", ha="center", va="center",
                transform=ax.transAxes, color="tab:gray")
    if data.x_log:
        ax.set_xscale("log")
    if data.y_log:
        ax.set_yscale("log")
    ax.set_xlabel(data.x_label)
    ax.set_ylabel(data.y_label)
    title = title if title is not None else df.attrs.get("study")
    if title:
        ax.set_title(str(title))
    ax.grid(True, which="major", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8, frameon=True)
    return ax


# --------------------------------------------------------------------------------------------
# outputs and tables
# --------------------------------------------------------------------------------------------


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
