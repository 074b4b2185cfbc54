"""The files a search keeps up to date: trials.csv, pareto.csv, pareto.png, pareto/trial_<n>.json;
the saved weights of trials off the front are dropped.  And the status the progress shows."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from .. import results
from ..errors import StorageError, UserInputError
from ..files import atomic_write
from ..jsonfile import loads


@dataclass
class SearchStatus:
    """What the progress display shows."""

    target: int
    done: int = 0
    failed: int = 0
    running: int = 0
    front_size: int = 0
    best_accuracy: float | None = None
    last: str = ""
    #: an output that could not be written and why, e.g. ``trials.csv (No space left on device)``
    #: (disk full, folder gone): the search goes on without it
    unwritten: str = ""
    #: how the data set is held: its size decoded, in memory or streamed (``data 983 MB in memory``)
    data_note: str = ""
    #: peak memory of the search's processes in bytes (last status only; :mod:`.memory`)
    peak_memory: int | None = None

    @property
    def warning(self) -> str:
        """The line the progress shows about an output that could not be written ("" if none)."""
        return f"could not write {self.unwritten}; nas-sepconv report rewrites it" if self.unwritten else ""


def refresh_outputs(study: optuna.Study, out_dir: Path) -> SearchStatus | None:
    """Rewrite trials.csv, pareto.csv, pareto.png and pareto/trial_<n>.json; drop the saved
    weights of trials no longer on the front.  A file that cannot be written (disk full) is
    named in the status's ``unwritten``; the study holds everything, so the next refresh (or
    ``nas-sepconv report``) writes it again."""
    try:
        return _refresh_outputs(study, out_dir)
    except (OSError, StorageError) as exc:  # (results.write_outputs raises StorageError from the OSError)
        cause = exc.__cause__ if isinstance(exc, StorageError) and isinstance(exc.__cause__, OSError) else exc
        status = SearchStatus(target=0)
        name = Path(cause.filename).name if getattr(cause, "filename", None) else "outputs"
        reason = getattr(cause, "strerror", None) or cause
        status.unwritten = f"{name} ({reason})"
        return status


def _refresh_outputs(study: optuna.Study, out_dir: Path) -> SearchStatus | None:
    # only the weights of trials finished before the frame is loaded may go: a trial still
    # running (or started since) may have saved its weights already, in another worker
    finished = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    df = results.load(study)
    status = SearchStatus(target=0)
    results.write_outputs(df, out_dir)  # an empty study's too: the search names them as written
    if df.empty:
        return status
    front = results.pareto_front(df)
    keep = set(int(n) for n in front["number"])
    pareto_dir = out_dir / "pareto"
    pareto_dir.mkdir(exist_ok=True)
    for _, row in front.iterrows():
        record = {
            k: (None if _isna(v) else v)
            for k, v in row.items()
            if k in ("number", "accuracy", "test_accuracy", "macs", "params", "latency_ms", "arch")
        }
        record["recipe"] = _recipe_of(row.get("arch_json"))
        atomic_write(
            pareto_dir / f"trial_{int(row['number'])}.json", json.dumps(record, indent=2, default=_json_default)
        )
    for path in pareto_dir.glob("trial_*.json"):
        if int(path.stem.split("_")[1]) not in keep:
            path.unlink(missing_ok=True)
    weights = out_dir / "weights"
    if weights.is_dir():
        for path in weights.glob("trial_*.safetensors"):
            number = int(path.stem.split("_")[1])
            if number in finished and number not in keep:
                path.unlink(missing_ok=True)
    # over budget: accuracy 0, not a result; stopped early: a rung's accuracy, not the full budget's
    complete = df[(df["state"] == "COMPLETE") & df["feasible"].fillna(True) & ~df["stopped_early"].fillna(False)]
    status.front_size = len(front)
    status.best_accuracy = float(complete["accuracy"].max()) if len(complete) else None
    return status


def _recipe_of(arch_json: Any) -> Any:
    """A trial's recipe for its pareto/trial_<n>.json: its ``arch_json`` parsed by the bounded
    reader (None when it has none, or one that is not JSON within the reader's bounds)."""
    if not isinstance(arch_json, str):
        return None
    try:
        return loads(arch_json, field="arch_json", what="the recipe", fix="")
    except UserInputError:
        return None


def _isna(value: Any) -> bool:
    try:
        return bool(value != value) or value is None
    except (TypeError, ValueError):
        return False


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)
