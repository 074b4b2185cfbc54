"""The Pareto front of a results frame, its hypervolume and its knee (non-dominated sorting).

Only COMPLETE, feasible rows with finite objective values take part, and of a multi-fidelity
search only the trials trained to the full budget (``include_stopped=True``: all).  Directions come from the
arguments, else ``df.attrs["directions"]``, else the objectives table (:data:`KNOWN_DIRECTIONS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import UserInputError
from .objectives import KNOWN_DIRECTIONS, LOG_SCALE_COLUMNS

__all__ = [
    "pareto_front",
    "hypervolume",
    "points_hypervolume",
    "knee",
    "nondominated_fronts",
    "eligible_rows",
    "loss_matrix",
    "non_dominated_mask",
    "resolve_directions",
]


def resolve_directions(df: pd.DataFrame, objectives: Sequence[str], directions: Sequence[str] | None) -> list[str]:
    """Validated list of "maximize"/"minimize", one per objective."""
    if isinstance(objectives, str):
        raise UserInputError(
            "objectives", f"got the string {objectives!r}", f"pass a sequence of column names, e.g. ({objectives!r},)"
        )
    if len(objectives) == 0:
        raise UserInputError("objectives", "no objective given", 'pass e.g. ("accuracy", "macs")')
    missing = [o for o in objectives if o not in df.columns]
    if missing:
        raise UserInputError(
            "objectives",
            f"column(s) {missing} not in the frame",
            f"choose from {[c for c in df.columns if c in KNOWN_DIRECTIONS] or list(df.columns)}",
        )
    if directions is not None:
        if isinstance(directions, str) or len(directions) != len(objectives):
            raise UserInputError(
                "directions",
                f"{directions!r} does not give one direction per objective",
                f"pass {len(objectives)} of 'maximize'/'minimize'",
            )
        out = []
        for d in directions:
            text = str(getattr(d, "name", d)).lower()
            if text in ("maximize", "max", "maximise"):
                out.append("maximize")
            elif text in ("minimize", "min", "minimise"):
                out.append("minimize")
            else:
                raise UserInputError("directions", f"unknown direction {d!r}", "use 'maximize' or 'minimize'")
        return out
    known = {**KNOWN_DIRECTIONS, **dict(df.attrs.get("directions") or {})}
    unknown = [o for o in objectives if o not in known]
    if unknown:
        raise UserInputError(
            "directions", f"no known direction for {unknown}", "pass directions=('maximize'|'minimize', ...)"
        )
    return [known[o] for o in objectives]


def loss_matrix(df: pd.DataFrame, objectives: Sequence[str], dirs: Sequence[str]) -> np.ndarray:
    """Objective values as a float matrix to minimise (maximised columns negated)."""
    cols = []
    for o, d in zip(objectives, dirs):
        v = pd.to_numeric(df[o], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        cols.append(-v if d == "maximize" else v)
    return np.column_stack(cols) if cols else np.empty((len(df), 0))


def eligible_rows(df: pd.DataFrame, losses: np.ndarray, *, include_stopped: bool = False) -> np.ndarray:
    """Rows eligible for the front: COMPLETE (when a state column exists), feasible (trials over
    a hard budget are recorded with ``feasible`` False and are never on the front), trained to
    the full budget unless ``include_stopped`` (the multi-fidelity mode records a trial it
    stopped at a rung with ``stopped_early`` True, and that rung's objectives), finite
    objectives.  In a one-shot study of which some trials were finalised (``accuracy_source``
    ``finalized``, :mod:`nas_sepconv.search.finalization`), only the finalised ones: an inherited
    accuracy and one trained alone are not on the same scale, so one front never mixes them."""
    ok = np.isfinite(losses).all(axis=1)
    if "accuracy_source" in df.columns:
        finalized = (df["accuracy_source"].astype("string") == "finalized").fillna(False).to_numpy(dtype=bool)
        if finalized.any():
            ok &= finalized
    if "state" in df.columns:
        ok &= (df["state"].astype("string") == "COMPLETE").fillna(False).to_numpy(dtype=bool)
    if "feasible" in df.columns:
        ok &= (df["feasible"].astype("boolean") != False).fillna(True).to_numpy(dtype=bool)  # noqa: E712
    if not include_stopped and "stopped_early" in df.columns:
        ok &= (df["stopped_early"].astype("boolean") != True).fillna(True).to_numpy(dtype=bool)  # noqa: E712
    return ok


def non_dominated_mask(losses: np.ndarray) -> np.ndarray:
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
        rows = losses[lo : lo + block, None, :]  # (b, 1, k)
        le = (losses[None, :, :] <= rows).all(axis=2)  # (b, n): other <= row everywhere
        lt = (losses[None, :, :] < rows).any(axis=2)  # (b, n): other < row somewhere
        keep[lo : lo + block] = ~(le & lt).any(axis=1)
    return keep


def nondominated_fronts(losses: np.ndarray) -> np.ndarray:
    """The non-dominated front of each row of ``losses`` (n x k, every column minimised): 0 for
    the rows no other row dominates, 1 for those only rows of front 0 dominate, and so on
    (NSGA-II's non-dominated sorting, Deb et al. 2002): each front is the non-dominated rows of
    those not yet on a front."""
    losses = np.asarray(losses, dtype="float64")
    fronts = np.full(len(losses), -1, dtype=np.int64)
    left = np.arange(len(losses))
    level = 0
    while len(left):
        current = non_dominated_mask(losses[left])
        fronts[left[current]] = level
        left = left[~current]
        level += 1
    return fronts


def pareto_front(
    df: pd.DataFrame,
    *,
    objectives: Sequence[str] = ("accuracy", "macs"),
    directions: Sequence[str] | None = None,
    mask: bool = False,
    include_stopped: bool = False,
) -> pd.DataFrame | pd.Series:
    """The non-dominated trials: the Pareto front of ``objectives``.

    Only COMPLETE rows (when the frame has a ``state`` column) with finite values in every
    objective take part, and of those neither the infeasible ones (``feasible`` False) nor, by
    default, those the multi-fidelity mode stopped early (``stopped_early`` True: their
    objectives are a rung's, not the full budget's).  A row is on the front when no other
    eligible row is at least as good in every objective and strictly better in one.  Ties: rows
    with identical objective vectors do not dominate one another, so all copies of a
    non-dominated vector are on the front.

    Args:
        df: a frame from :func:`load` (or any frame with the objective columns).
        objectives: two or more columns (any number works, one too).
        directions: ``"maximize"``/``"minimize"`` per objective; by default from
            ``df.attrs["directions"]``, else from the known names (accuracy, test_accuracy,
            reward maximised; macs, params, latency_ms minimised).
        mask: return a boolean Series aligned to ``df.index`` instead of the rows.
        include_stopped: let trials stopped early take part too.

    Returns:
        The front rows sorted by the first minimised objective (then the others, best first),
        or, with ``mask=True``, the boolean Series ``on_front``.
    """
    dirs = resolve_directions(df, objectives, directions)
    losses = loss_matrix(df, objectives, dirs)
    ok = eligible_rows(df, losses, include_stopped=include_stopped)
    on_front = np.zeros(len(df), dtype=bool)
    idx = np.flatnonzero(ok)
    on_front[idx[non_dominated_mask(losses[idx])]] = True
    if mask:
        return pd.Series(on_front, index=df.index, name="on_front")
    order = _front_order(losses[on_front], dirs)
    return df.iloc[np.flatnonzero(on_front)[order]]


def _front_order(losses: np.ndarray, dirs: Sequence[str]) -> np.ndarray:
    """Stable order: first minimised objective ascending, then the others best first."""
    first = dirs.index("minimize") if "minimize" in dirs else 0
    keys = [first] + [i for i in range(len(dirs)) if i != first]
    # np.lexsort sorts by the last key first.
    return np.lexsort(tuple(losses[:, i] for i in reversed(keys))) if len(losses) else np.arange(0)


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
    points = points[non_dominated_mask(points)]
    points = points[np.argsort(points[:, -1], kind="stable")]
    z = np.append(points[:, -1], ref[-1])
    total = 0.0
    for i in range(len(points)):
        depth = z[i + 1] - z[i]
        if depth > 0:
            total += depth * _hv(points[: i + 1, :-1], ref[:-1])
    return total


def points_hypervolume(losses: np.ndarray, reference: np.ndarray) -> float:
    """Hypervolume of the points ``losses`` (n x k, every column minimised) up to ``reference``
    (k values): the points not strictly better than it in every objective count nothing."""
    losses = np.asarray(losses, dtype="float64")
    ref = np.asarray(reference, dtype="float64")
    losses = losses[np.isfinite(losses).all(axis=1) & (losses < ref).all(axis=1)]
    if len(losses) == 0:
        return 0.0
    losses = np.unique(losses, axis=0)
    return _hv(losses[non_dominated_mask(losses)], ref)


def hypervolume(
    df: pd.DataFrame,
    *,
    reference: Mapping[str, float] | Sequence[float],
    objectives: Sequence[str] = ("accuracy", "macs"),
    directions: Sequence[str] | None = None,
    include_stopped: bool = False,
) -> float:
    """Dominated hypervolume of the trials w.r.t. a reference point, in the objectives' units.

    The volume of the region that some eligible trial (as in :func:`pareto_front`: COMPLETE,
    feasible, finite objectives, not stopped early unless ``include_stopped``) dominates
    and that dominates the reference point.  Maximised objectives are negated, so the value is
    the one :func:`optuna._hypervolume.compute_hypervolume` gives on the negated points.  Trials
    that are not strictly better than the reference in every objective contribute nothing.

    Args:
        df: a frame from :func:`load`.
        reference: the reference (nadir) point, as ``{objective: value}`` or a sequence in the
            order of ``objectives``, in the columns' own units (accuracy as a fraction, MACs).
        objectives, directions, include_stopped: as in :func:`pareto_front`.
    """
    dirs = resolve_directions(df, objectives, directions)
    if isinstance(reference, Mapping):
        missing = [o for o in objectives if o not in reference]
        if missing:
            raise UserInputError("reference", f"no value for {missing}", "give one value per objective")
        ref_values = [reference[o] for o in objectives]
    else:
        if isinstance(reference, str) or len(reference) != len(objectives):
            raise UserInputError(
                "reference", f"{reference!r} does not match {list(objectives)}", "give one value per objective"
            )
        ref_values = list(reference)
    try:
        ref = np.array([float(v) for v in ref_values], dtype="float64")
    except (TypeError, ValueError) as exc:
        raise UserInputError("reference", f"{ref_values!r} is not numeric", "give numbers") from exc
    if not np.isfinite(ref).all():
        raise UserInputError("reference", f"{ref_values!r} is not finite", "give finite numbers")
    ref = np.where(np.array(dirs) == "maximize", -ref, ref)
    losses = loss_matrix(df, objectives, dirs)
    return points_hypervolume(losses[eligible_rows(df, losses, include_stopped=include_stopped)], ref)


def _normalised_losses(
    front: pd.DataFrame, objectives: Sequence[str], dirs: Sequence[str], log_scale: Sequence[str]
) -> np.ndarray:
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
    include_stopped: bool = False,
) -> pd.Series:
    """The front trial with the best trade-off (the knee of the Pareto front of
    :func:`pareto_front`, ``include_stopped`` as there).

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
    front = pareto_front(df, objectives=objectives, directions=directions, include_stopped=include_stopped)
    if len(front) == 0:
        raise UserInputError(
            "df",
            "no COMPLETE trial with finite objective values",
            "wait for trials to complete, or check the objective columns",
        )
    dirs = resolve_directions(df, objectives, directions)
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
