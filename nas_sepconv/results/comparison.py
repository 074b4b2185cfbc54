"""Several studies side by side: one summary row per study (front size, best values,
hypervolume on a common reference, knee), and each one's hypervolume over the best baseline's
(hand-designed families such as MobileNet's width multipliers, run like a search)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UserInputError
from .arrays import typed
from .front import eligible_rows, hypervolume, knee, loss_matrix, pareto_front, resolve_directions
from .objectives import LOG_SCALE_COLUMNS
from .protocol import padded_reference, protocol_columns

__all__ = ["compare"]


def compare(
    studies: Mapping[str, pd.DataFrame],
    *,
    baselines: Mapping[str, pd.DataFrame] | None = None,
    objectives: Sequence[str] = ("accuracy", "macs"),
    reference: Mapping[str, float] | Sequence[float] | None = None,
    directions: Sequence[str] | None = None,
    log_scale: Sequence[str] = LOG_SCALE_COLUMNS,
    chance: float | None = None,
    resamples: int = 1000,
    resample_seed: int = 0,
    level: float = 0.9,
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

    ``baselines`` (name -> frame, e.g. the ``mobilenetv2_width_digits`` study) adds one row per
    baseline after the studies', and the reference then covers them too.  Two more columns:
    ``baseline`` (True on their rows) and ``hypervolume_ratio``, each row's hypervolume over the
    best baseline's (NaN without baselines; inf where the best baseline's is 0); the best
    baseline's name is ``attrs["best_baseline"]``.

    The protocol of :mod:`.protocol` (issue 26; ``chance``, ``resamples``, ``resample_seed`` and
    ``level`` are its) adds the front chosen on validation and scored on the test split
    (``test_hypervolume_ratio``: the headline), its bootstrap interval, normalised axes, the
    chance reference and the compute spent (``train_compute``, ``wall_time_s``): see there.

    Raises:
        UserInputError: no study, a name given twice, a frame without the objectives' columns,
            or frames of studies that searched different objectives (``attrs["objectives"]``).
    """
    baselines = dict(baselines or {})
    _check_frames(studies, baselines)
    searched = list(studies)
    studies = {**studies, **baselines}
    first = next(iter(studies.values()))
    dirs = resolve_directions(first, objectives, directions)
    logged = [o for o in objectives if o in log_scale]
    transformed, stacked = _log_transformed(studies, objectives, dirs, logged)
    if reference is None:
        ref_values = _default_reference(stacked, dirs)
    else:
        ref_values = _given_reference(reference, objectives, logged)
    hv_column = "hypervolume" + "".join(f"_log{o}" for o in logged)

    rows = [
        _row(name, df, transformed[name], ref_values, objectives, dirs, log_scale, hv_column)
        for name, df in studies.items()
    ]
    out = _typed_summary(pd.DataFrame(rows), first, objectives)
    out["baseline"] = [name not in searched for name in studies]
    out["hypervolume_ratio"], best = _ratios(out, hv_column)
    _add_protocol_columns(
        out,
        studies,
        set(baselines),
        objectives,
        dirs,
        logged,
        hv_column,
        chance=chance,
        resamples=resamples,
        resample_seed=resample_seed,
        level=level,
    )
    out.attrs["reference"] = None if ref_values is None else dict(zip(objectives, ref_values))
    out.attrs.update(log_scale=logged, hypervolume_column=hv_column, best_baseline=best)
    return out


def _add_protocol_columns(
    out: pd.DataFrame,
    studies: Mapping[str, pd.DataFrame],
    baselines: set[str],
    objectives: Sequence[str],
    dirs: list[str],
    logged: list[str],
    hv_column: str,
    *,
    chance: float | None,
    resamples: int,
    resample_seed: int,
    level: float,
) -> None:
    """The test-split columns (:func:`~.protocol.protocol_columns`) and the compute spent."""
    test, test_ref = protocol_columns(
        studies,
        set(baselines),
        objectives,
        dirs,
        log_scale=logged,
        chance=chance if chance is not None else _chance(studies.values()),
        resamples=resamples,
        seed=resample_seed,
        level=level,
    )
    out["test_" + hv_column] = test.pop("test_hypervolume")
    for column, values in test.items():
        out[column] = values
    out["train_compute"] = typed([_spent(df, "train_compute") for df in studies.values()], "Int64")
    out["wall_time_s"] = typed([_spent(df, "wall_time_s") for df in studies.values()], "float64")
    out.attrs["test_reference"] = None if test_ref is None else _in_units(test_ref, objectives, dirs, logged)
    out.attrs["interval"] = level


def _row(
    name: str,
    df: pd.DataFrame,
    transformed: pd.DataFrame,
    ref_values: list[float] | None,
    objectives: Sequence[str],
    dirs: list[str],
    log_scale: Sequence[str],
    hv_column: str,
) -> dict[str, Any]:
    """One study's summary row on the validation columns."""
    row = _study_row(name, df, objectives, dirs, log_scale)
    row[hv_column] = (
        hypervolume(transformed, reference=ref_values, objectives=objectives, directions=dirs)
        if ref_values is not None
        else 0.0
    )
    row.update(_knee_columns(df, objectives, dirs, log_scale))
    return row


def _check_frames(studies: Mapping[str, pd.DataFrame], baselines: Mapping[str, pd.DataFrame]) -> None:
    if not isinstance(studies, Mapping) or not studies:
        raise UserInputError(
            "studies", "expected a non-empty mapping name -> DataFrame", "pass e.g. {'nsga2': df1, 'random': df2}"
        )
    clash = sorted(set(studies) & set(baselines))
    if clash:
        raise UserInputError(
            "baselines", f"{clash} named as both a study and a baseline", "give each frame its own name"
        )
    _same_objectives({**studies, **baselines}, set(baselines))


def _same_objectives(frames: Mapping[str, pd.DataFrame], baselines: set[str]) -> None:
    """Frames loaded from studies (``attrs["objectives"]``) searched the same objectives."""
    known = {
        name: list(df.attrs["objectives"])
        for name, df in frames.items()
        if isinstance(df, pd.DataFrame) and df.attrs.get("objectives")
    }
    items = list(known.items())
    for name, searched in items[1:]:
        if searched != items[0][1]:
            raise UserInputError(
                "baselines" if name in baselines else "studies",
                f"study {name!r} searched {searched}, but {items[0][0]!r} searched {items[0][1]}",
                "compare studies of the same objectives",
            )


def _ratios(out: pd.DataFrame, hv_column: str) -> tuple[list[float], str | None]:
    """Each row's hypervolume over the best baseline row's, and that baseline's name."""
    base = out[out["baseline"]]
    if base.empty:
        return [math.nan] * len(out), None
    i = int(np.argmax(base[hv_column].to_numpy(dtype="float64")))
    best_name, best = str(base["name"].iloc[i]), float(base[hv_column].iloc[i])
    ratios = []
    for hv in out[hv_column].to_numpy(dtype="float64"):
        ratios.append(hv / best if best > 0 else (math.inf if hv > 0 else math.nan))
    return ratios, best_name


def _log_transformed(
    studies: Mapping[str, pd.DataFrame], objectives: Sequence[str], dirs: list[str], logged: list[str]
) -> tuple[dict[str, pd.DataFrame], np.ndarray]:
    """Copies of the frames with the ``logged`` objectives as log10, and the stacked losses of
    every study's eligible rows in that space."""
    transformed: dict[str, pd.DataFrame] = {}
    all_losses = []
    for name, df in studies.items():
        resolve_directions(df, objectives, dirs)  # checks the columns
        t = df.copy()
        for o in logged:
            v = pd.to_numeric(t[o], errors="coerce").astype("float64")
            t[o] = np.log10(v.where(v > 0))
        transformed[name] = t
        losses = loss_matrix(t, objectives, dirs)
        all_losses.append(losses[eligible_rows(t, losses)])
    stacked = np.vstack(all_losses) if all_losses else np.empty((0, len(objectives)))
    return transformed, stacked


def _default_reference(stacked: np.ndarray, dirs: list[str]) -> list[float] | None:
    """The worst value per objective pushed out by 1% of its range (of its magnitude when the
    range is zero); None when no study has an eligible row."""
    ref_loss = padded_reference(stacked)
    if ref_loss is None:
        return None
    return [-r if d == "maximize" else r for r, d in zip(ref_loss, dirs)]


def _in_units(ref_loss: np.ndarray, objectives: Sequence[str], dirs: list[str], logged: list[str]) -> dict[str, float]:
    """A reference in loss space (negated maximised, log10 logged) in the columns' own units."""
    values = [-float(r) if d == "maximize" else float(r) for r, d in zip(ref_loss, dirs)]
    return {o: 10.0**v if o in logged else v for o, v in zip(objectives, values)}


def _chance(frames: Iterable[pd.DataFrame]) -> float | None:
    """``1 / num_classes`` of the first frame that records its classes (``attrs["num_classes"]``)."""
    for df in frames:
        classes = df.attrs.get("num_classes")
        if isinstance(classes, int) and not isinstance(classes, bool) and classes > 0:
            return 1.0 / classes
    return None


def _spent(df: pd.DataFrame, column: str) -> Any:
    """The sum of the trials' ``column`` (what they spent); None when none recorded it.  A
    one-shot study's ``train_compute`` adds its supernet's training (``attrs["supernet_compute"]``)."""
    if column not in df.columns:
        return None
    values = pd.to_numeric(df[column], errors="coerce")
    if values.isna().all():
        return None
    extra = df.attrs.get("supernet_compute") if column == "train_compute" else None
    return values.sum() + (extra or 0)


def _given_reference(
    reference: Mapping[str, float] | Sequence[float], objectives: Sequence[str], logged: list[str]
) -> list[float]:
    """A reference in the columns' own units, in the comparison's (log10) space."""
    if isinstance(reference, Mapping):
        ref_values = [reference[o] for o in objectives if o in reference]
    else:
        ref_values = list(reference)
    if len(ref_values) != len(objectives):
        raise UserInputError(
            "reference", f"{reference!r} does not match {list(objectives)}", "give one value per objective"
        )
    return [math.log10(float(r)) if o in logged else float(r) for o, r in zip(objectives, ref_values)]


def _study_row(
    name: str, df: pd.DataFrame, objectives: Sequence[str], dirs: list[str], log_scale: Sequence[str]
) -> dict[str, Any]:
    """``name``, the counts, the front size and the best value of each objective."""
    losses = loss_matrix(df, objectives, dirs)
    ok = eligible_rows(df, losses)
    row: dict[str, Any] = {
        "name": name,
        "n_trials": len(df),
        "n_complete": int((df["state"].astype("string") == "COMPLETE").fillna(False).sum())
        if "state" in df.columns
        else len(df),
    }
    front_mask = pareto_front(df, objectives=objectives, directions=dirs, mask=True)
    row["front_size"] = int(front_mask.sum())
    for o, d in zip(objectives, dirs):
        v = pd.to_numeric(df[o], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)[ok]
        label = f"best_{o}" if d == "maximize" else f"min_{o}"
        row[label] = (v.max() if d == "maximize" else v.min()) if len(v) else np.nan
    return row


def _knee_columns(
    df: pd.DataFrame, objectives: Sequence[str], dirs: list[str], log_scale: Sequence[str]
) -> dict[str, Any]:
    """``knee_number`` and ``knee_<o>``; NA when the study has no eligible row."""
    losses = loss_matrix(df, objectives, dirs)
    if not eligible_rows(df, losses).any():
        return {"knee_number": pd.NA, **{f"knee_{o}": np.nan for o in objectives}}
    k = knee(df, objectives=objectives, directions=dirs, log_scale=log_scale)
    row: dict[str, Any] = {"knee_number": k["number"] if "number" in k.index else k.name}
    for o in objectives:
        row[f"knee_{o}"] = k[o]
    return row


def _typed_summary(out: pd.DataFrame, first: pd.DataFrame, objectives: Sequence[str]) -> pd.DataFrame:
    for column in ("n_trials", "n_complete", "front_size"):
        out[column] = out[column].astype("int64")
    out["knee_number"] = pd.array(out["knee_number"].tolist(), dtype="Int64")
    for o in objectives:
        for prefix in ("best_", "min_", "knee_"):
            if prefix + o in out.columns:
                dtype = "Int64" if _is_integer(first, o) else "float64"
                out[prefix + o] = typed(out[prefix + o].tolist(), dtype)
    return out


def _is_integer(df: pd.DataFrame, column: str) -> bool:
    return column in df.columns and pd.api.types.is_integer_dtype(df[column].dtype)
