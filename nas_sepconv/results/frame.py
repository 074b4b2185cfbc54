"""Results of a search as a pandas DataFrame: :func:`load`, one row per trial.

The third door to the library (after the Python API and the CLI) is pandas::

    df = ns.results.load("results/my_study")          # one row per trial
    front = ns.results.pareto_front(df)               # accuracy vs MACs, non-dominated rows
    ns.results.hypervolume(df, reference={"accuracy": 0.1, "macs": 1e9})
    ns.results.plot_pareto(df)                         # a matplotlib Axes

The front, hypervolume and knee are in :mod:`.front`, the comparison of studies in
:mod:`.comparison`, the plot in :mod:`.plot`, the written files in :mod:`.outputs`.

Conventions read from the Optuna study (written by :mod:`nas_sepconv.search`):

* metric names (``study.set_metric_names``) name the objective columns; their directions are
  the study's, and those of the other known columns come from the objectives table
  (:data:`~nas_sepconv.results.OBJECTIVES`);
* trial user attributes ``accuracy``, ``test_accuracy``, ``macs``, ``params``, ``latency_ms``,
  ``arch``, ``arch_json``, ``wall_time_s``, ``epochs`` (COMPLETE trials, both modes),
  ``accuracy`` (the last one reported), ``macs``, ``params``, ``epochs`` (PRUNED trials) and
  ``fail_reason`` (FAIL trials); in the multi-fidelity mode ``stopped_early``,
  ``epochs_trained`` and ``rung_results`` (a list, one entry per rung reached:
  ``{"epoch", <objectives>, "population", "promoted"}``, the full budget's without a decision);
* study user attributes ``mode`` (``"pareto"`` | ``"scalarised"``), ``space``,
  ``multi_fidelity`` (``{"min_epochs", "eta", "rungs"}`` or None) and, for a convert space,
  ``base`` (the original model's accuracy, test accuracy, MACs and params).

MACs are multiply-accumulates (FLOPs = 2 x MACs).  Nothing here prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..errors import UserInputError
from ..storage import open_source
from .arrays import infer, typed
from .modes import SEARCH_MODES
from .objectives import KNOWN_DIRECTIONS
from .stored import decoding, read_study

if TYPE_CHECKING:  # pragma: no cover - typing only
    import optuna

__all__ = ["load", "STATES"]

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
#: The columns a frame may have whatever the study searched: a searched parameter of one of these
#: names becomes ``param_<name>``, a user attribute of one is not added as an extra column.
FIXED_COLUMNS = (
    {
        "number",
        "state",
        "datetime_start",
        "datetime_complete",
        "duration_s",
        "fail_reason",
        "feasible",
        "epochs_trained",
        "stopped_early",
        "rung",
        "rung_results",
    }
    | set(_ATTR_COLUMNS)
    | set(_TAIL_ATTR_COLUMNS)
    | set(_TIME_ATTR_COLUMNS)
)


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
        trial failed), ``feasible`` (boolean: False for a trial over a hard budget, which was not
        trained and is never on the front; NA where unknown, e.g. a running trial),
        ``epochs_trained`` (Int64: summed, the training epochs the study spent),
        ``stopped_early`` (boolean: True for a trial the multi-fidelity mode stopped at a rung,
        which is off the front by default; False for the other COMPLETE trials), in a
        multi-fidelity study ``rung`` (Int64: the highest rung reached, 0 the first, the full
        budget the last) and ``accuracy_epoch_<E>`` (float64: the validation accuracy at the
        rung of epoch E), then any other scalar user attributes.  MACs and params are nullable
        ``Int64`` so that failed or running trials (NA) keep the integers exact.  A searched
        parameter whose name clashes with one of these columns is named ``param_<name>``.

        ``df.attrs`` holds ``study`` (name), ``directions`` (column -> ``"maximize"`` /
        ``"minimize"``, for the study's objectives and the known columns), ``objectives`` (the
        study's metric names), ``mode`` (``"pareto"`` or ``"scalarised"``), ``params`` (the
        searched-parameter columns), ``space`` and ``storage`` where known,
        ``multi_fidelity`` (the study's ``{"min_epochs", "eta", "rungs"}``, None when off), and ``base``: the
        original model of a convert space (``{"model", "accuracy", "test_accuracy", "macs",
        "params"}``, validation accuracy in ``accuracy``), None for a build space.

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
        return _frame_from_study(source, storage_label=None, source=f"study {source.study_name!r}")

    storage, label, meta_study = open_source(source)
    with decoding(str(source)):  # (Optuna decodes every study's attributes here)
        loaded = _load_named(storage, label, study if study is not None else meta_study)
    return _frame_from_study(loaded, storage_label=label, source=str(source))


def _load_named(storage: Any, label: str, name: str | None) -> optuna.Study:
    """The study ``name`` (None: the only one) of an open storage."""
    import optuna

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
    return optuna.load_study(study_name=name, storage=storage)


def _frame_from_study(study: optuna.Study, storage_label: str | None, source: str) -> pd.DataFrame:
    trials = read_study(study, source)
    metric_names, mode, study_dirs = _study_objectives(study)
    param_dists = _param_distributions(trials)
    param_cols = {p: (f"param_{p}" if p in FIXED_COLUMNS or p in study_dirs else p) for p in param_dists}

    cols: dict[str, pd.Series | pd.api.extensions.ExtensionArray | np.ndarray] = {}
    n = len(trials)
    cols["number"] = np.fromiter((t.number for t in trials), dtype=np.int64, count=n)
    cols["state"] = pd.Categorical([t.state.name for t in trials], categories=list(STATES))
    cols.update(_objective_columns(trials, metric_names))
    cols.update(_param_value_columns(trials, param_dists, param_cols))
    for name, dtype in _TAIL_ATTR_COLUMNS.items():
        cols[name] = typed(_attr(trials, name), dtype)
    cols.update(_time_columns(trials))
    cols["fail_reason"] = typed(
        [t.user_attrs.get("fail_reason") if t.state.name == "FAIL" else None for t in trials],
        "string",
    )
    cols["feasible"] = _feasible(trials)
    cols.update(_fidelity_columns(trials))
    _add_extra_attr_columns(cols, trials)

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
            "space": dict(study.user_attrs).get("space"),
            "base": dict(study.user_attrs).get("base"),
            "multi_fidelity": dict(study.user_attrs).get("multi_fidelity"),
            "num_classes": dict(study.user_attrs).get("num_classes"),
            "supernet_compute": dict(study.user_attrs).get("supernet_compute"),
            "storage": storage_label,
        }
    )
    return df


def _study_objectives(study: optuna.Study) -> tuple[list[str], str, dict[str, str]]:
    """The study's metric names (named after the values when it set none), its mode, and the
    direction of each metric."""
    from optuna.study import StudyDirection

    n_obj = len(study.directions)
    metric_names = list(study.metric_names or [])
    mode = dict(study.user_attrs).get("mode")
    known = SEARCH_MODES.get(mode) if isinstance(mode, str) else None
    if not metric_names:
        if n_obj == 1:
            metric_names = [known.metric if known is not None and known.metric else "value"]
        else:
            metric_names = [f"value_{i}" for i in range(n_obj)]
    if known is None:  # a study made elsewhere: named after its number of values
        mode = "pareto" if n_obj > 1 else "scalarised"
    study_dirs = {
        name: "maximize" if d == StudyDirection.MAXIMIZE else "minimize"
        for name, d in zip(metric_names, study.directions)
    }
    return metric_names, mode, study_dirs


def _param_distributions(trials: list[Any]) -> dict[str, list[Any]]:
    """Searched parameters: the union of every trial's distributions (spaces may be conditional)."""
    param_dists: dict[str, list[Any]] = {}
    for t in trials:
        for pname, dist in t.distributions.items():
            param_dists.setdefault(pname, []).append(dist)
    return param_dists


def _attr(trials: list[Any], name: str) -> list[Any]:
    return [t.user_attrs.get(name) for t in trials]


def _objective_columns(trials: list[Any], metric_names: list[str]) -> dict[str, Any]:
    """The study's metrics in order, then the known attribute columns."""
    cols: dict[str, Any] = {}
    for i, name in enumerate(metric_names):
        values = [t.values[i] if t.values is not None and len(t.values) > i else None for t in trials]
        if name in _ATTR_COLUMNS:
            from_attr = _attr(trials, name)  # exact (int MACs) when present; the told value otherwise
            values = [a if a is not None else v for a, v in zip(from_attr, values)]
        cols[name] = typed(values, _ATTR_COLUMNS.get(name, "float64"))
    for name, dtype in _ATTR_COLUMNS.items():
        if name not in cols:
            values = _attr(trials, name)
            if name == "latency_ms" and all(v is None for v in values):
                continue  # optional column, left out when no trial measured it
            cols[name] = typed(values, dtype)
    return cols


def _param_value_columns(
    trials: list[Any], param_dists: dict[str, list[Any]], param_cols: dict[str, str]
) -> dict[str, Any]:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    cols: dict[str, Any] = {}
    for pname, dists in param_dists.items():
        values = [t.params.get(pname) for t in trials]
        cols[param_cols[pname]] = _param_array(
            values, dists, CategoricalDistribution, IntDistribution, FloatDistribution
        )
    return cols


def _time_columns(trials: list[Any]) -> dict[str, Any]:
    """``datetime_start``, ``datetime_complete``, ``duration_s``, then the timing attributes."""
    start = pd.to_datetime(pd.Series([t.datetime_start for t in trials], dtype=object)).astype("datetime64[us]")
    complete = pd.to_datetime(pd.Series([t.datetime_complete for t in trials], dtype=object)).astype("datetime64[us]")
    cols: dict[str, Any] = {
        "datetime_start": start.to_numpy(),
        "datetime_complete": complete.to_numpy(),
        "duration_s": (complete - start).dt.total_seconds().to_numpy(dtype="float64", na_value=np.nan),
    }
    for name, dtype in _TIME_ATTR_COLUMNS.items():
        cols[name] = typed(_attr(trials, name), dtype)
    return cols


def _feasible(trials: list[Any]) -> Any:
    """The ``feasible`` column: the trial's own record (user attribute ``feasible``, written by
    the search), else its Optuna constraints (feasible when all are <= 0), else True for a
    COMPLETE trial (no budget was set) and NA for the others."""
    values: list[bool | None] = []
    for t in trials:
        flag = t.user_attrs.get("feasible")
        if not isinstance(flag, bool):
            constraints = _constraint_values(t)
            flag = all(c <= 0 for c in constraints) if constraints else (True if t.state.name == "COMPLETE" else None)
        values.append(flag)
    return pd.array(values, dtype="boolean")


def _fidelity_columns(trials: list[Any]) -> dict[str, Any]:
    """``epochs_trained`` (the trial's epochs of training: summed, the epochs a study spent),
    ``stopped_early`` (a COMPLETE trial the multi-fidelity mode stopped at a rung: never on the
    front by default), and in a multi-fidelity study ``rung`` (the highest rung reached, 0 for
    the first; the full budget is the last) and ``accuracy_epoch_<E>`` (validation accuracy at
    the rung of epoch E), from the user attributes ``epochs_trained``/``epochs``,
    ``stopped_early`` and ``rung_results``."""
    cols: dict[str, Any] = {
        "epochs_trained": typed(
            [t.user_attrs.get("epochs_trained", t.user_attrs.get("epochs")) for t in trials], "Int64"
        ),
    }
    stopped = [t.user_attrs.get("stopped_early") for t in trials]
    cols["stopped_early"] = pd.array(
        [
            s if isinstance(s, bool) else (False if t.state.name == "COMPLETE" else None)
            for s, t in zip(stopped, trials)
        ],
        dtype="boolean",
    )
    rungs = [[e for e in (t.user_attrs.get("rung_results") or []) if isinstance(e, dict)] for t in trials]
    if any(rungs):
        cols["rung"] = typed([len(r) - 1 if r else None for r in rungs], "Int64")
        epochs = sorted({e["epoch"] for r in rungs for e in r if isinstance(e.get("epoch"), int)})
        for epoch in epochs:
            cols[f"accuracy_epoch_{epoch}"] = typed(
                [next((e.get("accuracy") for e in r if e.get("epoch") == epoch), None) for r in rungs], "float64"
            )
    return cols


def _constraint_values(trial: Any) -> list[float]:
    """A trial's Optuna constraint values (``Trial.set_constraint`` keys, or the older list that
    a sampler's ``constraints_func`` stores)."""
    named = getattr(trial, "constraints", None)  # FrozenTrial.constraints (newer Optuna)
    if isinstance(named, dict):
        return [float(v) for v in named.values()]
    old = trial.system_attrs.get("constraints")
    return [float(v) for v in old] if isinstance(old, (list, tuple)) else []


def _add_extra_attr_columns(cols: dict[str, Any], trials: list[Any]) -> None:
    """Any other scalar user attributes, under their own names unless they clash."""
    extra: list[str] = []
    for t in trials:
        for key in t.user_attrs:
            if key not in FIXED_COLUMNS and key not in extra:
                extra.append(key)
    for key in extra:
        values = _attr(trials, key)
        if not all(v is None or isinstance(v, (str, int, float, bool)) for v in values):
            continue
        column = key if key not in cols else f"user_attrs_{key}"
        cols[column] = infer(values)


def _param_array(values: list[Any], dists: list[Any], categorical: type, integer: type, floating: type) -> Any:
    if all(isinstance(d, categorical) for d in dists):
        choices: list[Any] = []
        for d in dists:
            choices += [c for c in d.choices if c not in choices]
        if all(isinstance(c, str) for c in choices):
            return pd.Categorical(values, categories=choices)
        return infer(values)
    if all(isinstance(d, integer) for d in dists):
        return typed(values, "Int64")
    if all(isinstance(d, (integer, floating)) for d in dists):
        return typed(values, "float64")
    return infer(values)
