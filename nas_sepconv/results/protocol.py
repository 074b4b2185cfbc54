"""The comparison protocol of :func:`~nas_sepconv.results.compare` (issue 26): each study's front
is chosen on the validation split and scored on the test split; the ratio of its test
hypervolume to the best baseline's, with a bootstrap interval that resamples the test images
(Efron 1979, the percentile interval; Efron & Tibshirani 1993, ch. 13), on normalised axes
(each objective scaled to [0, 1] over every study's points, the hypervolume in the unit box:
Zitzler & Thiele 1998's S metric) and with the accuracy reference at chance.

The columns it adds to a comparison (:func:`protocol_columns`): ``test_<hypervolume column>``
(each front chosen on validation, scored on ``test_accuracy``, MACs as they are, on one test
reference: per objective the worst of every front point so scored, pushed out by 1% of the
range), ``test_hypervolume_ratio`` (its ratio to the best baseline's: the headline),
``test_ratio_low`` / ``test_ratio_high`` (the bootstrap interval, :func:`bootstrap_ratios`;
NaN without ``test_correct``), ``test_hypervolume_unit`` / ``test_ratio_unit`` (each objective
scaled to [0, 1] over every front point so scored, 0 the best value, the reference at 1, the
worst) and ``test_ratio_chance`` (the same with the accuracy reference at chance,
``1 / num_classes``; NaN where not known).

A trial's per-image test correctness is its user attribute ``test_correct``: ``"<n>:<base64 of
the n bits packed by numpy.packbits>"`` (:func:`pack_correct`, :func:`unpack_correct`).
"""

from __future__ import annotations

import base64
import binascii
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import UserInputError
from .front import loss_matrix, pareto_front, points_hypervolume, resolve_directions
from .objectives import LOG_SCALE_COLUMNS, METRICS

__all__ = [
    "CORRECT_ATTR",
    "ScoredFront",
    "bootstrap_ratios",
    "pack_correct",
    "padded_reference",
    "protocol_columns",
    "ratios_to_best",
    "scored_front",
    "unpack_correct",
]

#: The trial user attribute (and frame column) holding the per-image test correctness.
CORRECT_ATTR = "test_correct"


def pack_correct(correct: Sequence[bool] | np.ndarray) -> str:
    """``"<n>:<base64>"``: the n per-image booleans packed 8 to a byte (``numpy.packbits``)."""
    bits = np.asarray(correct, dtype=bool).ravel()
    return f"{len(bits)}:{base64.b64encode(np.packbits(bits).tobytes()).decode('ascii')}"


def unpack_correct(text: object) -> np.ndarray | None:
    """The booleans :func:`pack_correct` packed; None for anything else (NA, a malformed value)."""
    if not isinstance(text, str) or ":" not in text:
        return None
    count, _, payload = text.partition(":")
    try:
        n = int(count)
        raw = base64.b64decode(payload.encode("ascii"), validate=True)
    except (ValueError, binascii.Error, UnicodeEncodeError):
        return None
    if n < 0 or len(raw) != (n + 7) // 8:
        return None
    return np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=n).astype(bool)


@dataclass(frozen=True)
class ScoredFront:
    """A study's front chosen on validation, scored on the test split.

    Attributes:
        losses: the front's points (rows) on the test split, every column minimised, the
            log-scaled objectives as log10.
        correct: per point, per test image, whether it was predicted right (points x images);
            None when some point did not record it.
        accuracy_column: which column of ``losses`` bootstrap resampling redraws (the first
            objective with a chance level, negated accuracy); None: none.
    """

    losses: np.ndarray
    correct: np.ndarray | None
    accuracy_column: int | None


def scored_front(
    df: pd.DataFrame,
    objectives: Sequence[str],
    dirs: Sequence[str],
    *,
    log_scale: Sequence[str] = LOG_SCALE_COLUMNS,
) -> ScoredFront | None:
    """The front of ``objectives`` (chosen on the columns as they are: validation accuracy),
    each objective read from its test column (:attr:`~.objectives.Objective.test_column`) where
    it has one; None when the frame has no such column or a front point has no finite test value."""
    front = pareto_front(df, objectives=objectives, directions=dirs)
    columns = [_test_column(o) for o in objectives]
    if any(c not in front.columns for c in columns):
        return None
    scored = pd.DataFrame({o: pd.to_numeric(front[c], errors="coerce") for o, c in zip(objectives, columns)})
    for o in objectives:
        if o in log_scale:
            scored[o] = np.log10(scored[o].where(scored[o] > 0))
    losses = loss_matrix(scored, objectives, dirs)
    if not np.isfinite(losses).all():
        return None
    chance = [i for i, o in enumerate(objectives) if o in METRICS and METRICS[o].chance]
    return ScoredFront(losses, _correct_matrix(front, len(front)), chance[0] if chance else None)


def _test_column(objective: str) -> str:
    record = METRICS.get(objective)
    return record.test_column if record is not None and record.test_column else objective


def _correct_matrix(front: pd.DataFrame, points: int) -> np.ndarray | None:
    """The front points' ``test_correct`` as one (points x images) matrix; None when any is
    missing or they differ in length."""
    if CORRECT_ATTR not in front.columns or points == 0:
        return None
    rows = [unpack_correct(v) for v in front[CORRECT_ATTR]]
    if any(r is None for r in rows) or len({len(r) for r in rows}) != 1:
        return None
    return np.vstack(rows)


def padded_reference(stacked: np.ndarray) -> np.ndarray | None:
    """The reference of points ``stacked`` (minimised): per column the worst value pushed out
    by 1% of the range (1% of its magnitude when the range is zero); None with no point."""
    if len(stacked) == 0:
        return None
    worst, best = stacked.max(axis=0), stacked.min(axis=0)
    span = worst - best
    return worst + np.where(span > 0, 0.01 * span, np.where(worst != 0, 0.01 * np.abs(worst), 0.01))


def ratios_to_best(hypervolumes: Sequence[float], is_baseline: Sequence[bool]) -> list[float]:
    """Each hypervolume over the largest baseline one (NaN without baselines or where a value
    is NaN; inf where the best baseline's is 0 and this one's not)."""
    base = [hv for hv, b in zip(hypervolumes, is_baseline) if b and not math.isnan(hv)]
    if not base:
        return [math.nan] * len(hypervolumes)
    best = max(base)
    return [hv / best if best > 0 else (math.inf if hv > 0 else math.nan) for hv in hypervolumes]


def bootstrap_ratios(
    studies: Mapping[str, pd.DataFrame],
    *,
    baselines: Sequence[str],
    objectives: Sequence[str] = ("accuracy", "macs"),
    reference: Sequence[float] | None = None,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.9,
    log_scale: Sequence[str] = LOG_SCALE_COLUMNS,
) -> pd.DataFrame:
    """A bootstrap interval on each study's test hypervolume ratio to the best baseline.

    Each of ``resamples`` draws takes the test images with replacement (a seeded NumPy
    generator), rescores every front point's accuracy on them from its ``test_correct``, and
    computes each study's test hypervolume over the best baseline's of that draw (on the one
    ``reference``, in loss space: negated accuracy, log10 MACs; default the padded worst of
    every front point scored on the full test split).  The interval is the percentile one
    (Efron & Tibshirani 1993): the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles, of
    the draws that define a ratio (a draw where the best baseline's volume and the study's are
    both 0 does not).

    ``studies`` holds every frame, the baselines' too (``baselines`` names them).  Returns one
    row per study: ``name``, ``ratio_low``, ``ratio_high``; NaN where the study or any baseline
    recorded no ``test_correct`` (older results), or the test splits differ.

    Raises:
        UserInputError: ``resamples`` below 1, or ``level`` outside (0, 1).
    """
    _check_bootstrap(resamples, level)
    first = next(iter(studies.values()))
    dirs = resolve_directions(first, objectives, None)
    fronts = {n: scored_front(df, objectives, dirs, log_scale=log_scale) for n, df in studies.items()}
    ref = np.asarray(reference, dtype="float64") if reference is not None else padded_reference(_stacked(fronts))
    lo, hi = _interval(fronts, set(baselines), ref, resamples=resamples, seed=seed, level=level)
    return pd.DataFrame({"name": list(studies), "ratio_low": lo, "ratio_high": hi})


def _check_bootstrap(resamples: int, level: float) -> None:
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise UserInputError("resamples", f"must be a positive integer, got {resamples!r}", "use e.g. 1000")
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise UserInputError("level", f"must be in (0, 1), got {level!r}", "use e.g. 0.9")


def _interval(
    fronts: Mapping[str, ScoredFront | None],
    baselines: set[str],
    ref: np.ndarray | None,
    *,
    resamples: int,
    seed: int,
    level: float,
) -> tuple[list[float], list[float]]:
    """The percentile interval of every study's ratio: NaN for a study whose front did not
    record ``test_correct``, and for all when a baseline's did not (or the splits differ)."""
    names = list(fronts)
    drawn = [n for n, f in fronts.items() if _resamplable(f)]
    sizes = {fronts[n].correct.shape[1] for n in drawn if fronts[n].correct is not None}
    lo, hi = [math.nan] * len(names), [math.nan] * len(names)
    if ref is None or len(sizes) != 1 or not baselines or not baselines <= set(drawn):
        return lo, hi
    ratios = _draw_ratios({n: fronts[n] for n in drawn}, baselines, ref, sizes.pop(), resamples, seed)
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):  # a draw where every volume is 0 has no ratio
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanquantile(ratios, [(1 - level) / 2, (1 + level) / 2], axis=0)
    for j, name in enumerate(drawn):
        lo[names.index(name)], hi[names.index(name)] = float(low[j]), float(high[j])
    return lo, hi


def _resamplable(f: ScoredFront | None) -> bool:
    """A front whose accuracies can be redrawn (an empty front too: it stays empty)."""
    return f is not None and f.accuracy_column is not None and (f.correct is not None or len(f.losses) == 0)


def protocol_columns(
    frames: Mapping[str, pd.DataFrame],
    baselines: set[str],
    objectives: Sequence[str],
    dirs: Sequence[str],
    *,
    log_scale: Sequence[str],
    chance: float | None,
    resamples: int,
    seed: int,
    level: float,
) -> tuple[dict[str, list[float]], np.ndarray | None]:
    """The test-split columns of :func:`~nas_sepconv.results.compare`, one value per frame, and
    the test reference (loss space; None with no front point scored on the test split)."""
    _check_bootstrap(resamples, level)
    fronts = {n: scored_front(df, objectives, dirs, log_scale=log_scale) for n, df in frames.items()}
    is_base = [n in baselines for n in frames]
    stacked = _stacked(fronts)
    ref = padded_reference(stacked)
    hv = [math.nan if f is None or ref is None else points_hypervolume(f.losses, ref) for f in fronts.values()]
    cols: dict[str, list[float]] = {"test_hypervolume": hv, "test_hypervolume_ratio": ratios_to_best(hv, is_base)}
    cols["test_ratio_low"], cols["test_ratio_high"] = _interval(
        fronts, baselines, ref, resamples=resamples, seed=seed, level=level
    )
    unit = _unit_box(fronts, stacked, chance=None)
    cols["test_hypervolume_unit"], cols["test_ratio_unit"] = unit, ratios_to_best(unit, is_base)
    at_chance = [math.nan] * len(fronts) if chance is None else _unit_box(fronts, stacked, chance=chance)
    cols["test_ratio_chance"] = ratios_to_best(at_chance, is_base)
    return cols, ref


def _unit_box(fronts: Mapping[str, ScoredFront | None], stacked: np.ndarray, *, chance: float | None) -> list[float]:
    """Each front's hypervolume with every objective scaled to [0, 1] over all fronts' points
    (0 the best value, 1 the worst; the reference at 1), or with the accuracy reference at
    ``chance`` instead (NaN where no accuracy, or no chance, is given)."""
    if len(stacked) == 0:
        return [math.nan] * len(fronts)
    lo, hi = stacked.min(axis=0), stacked.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    ref = np.ones(stacked.shape[1])
    if chance is not None:
        column = next((f.accuracy_column for f in fronts.values() if f is not None), None)
        if column is None:
            return [math.nan] * len(fronts)
        ref[column] = (-chance - lo[column]) / span[column]
    return [math.nan if f is None else points_hypervolume((f.losses - lo) / span, ref) for f in fronts.values()]


def _stacked(fronts: Mapping[str, ScoredFront | None]) -> np.ndarray:
    parts = [f.losses for f in fronts.values() if f is not None]
    return np.vstack(parts) if parts else np.empty((0, 0))


def _draw_ratios(
    fronts: Mapping[str, ScoredFront],
    baselines: set[str],
    ref: np.ndarray,
    n: int,
    resamples: int,
    seed: int,
) -> np.ndarray:
    """(resamples x fronts) ratios, each draw rescoring every front on one resample (with
    replacement) of the n test images: a point's accuracy is its share of the drawn images it
    predicts right."""
    rng = np.random.default_rng(seed)
    names = list(fronts)
    is_base = [name in baselines for name in names]
    weights = {name: f.correct.astype("float64") for name, f in fronts.items() if f.correct is not None}
    out = np.empty((resamples, len(names)))
    for start in range(0, resamples, 100):
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=min(100, resamples - start)).T / n  # (n, draws)
        accuracies = {name: w @ counts for name, w in weights.items()}
        for d in range(counts.shape[1]):
            hvs = []
            for name, f in fronts.items():
                losses = f.losses.copy()
                if name in accuracies:
                    losses[:, f.accuracy_column] = -accuracies[name][:, d]
                hvs.append(points_hypervolume(losses, ref))
            out[start + d] = ratios_to_best(hvs, is_base)
    return out
