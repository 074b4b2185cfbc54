"""What a search records in its study and in each trial, and what a value read back must be.

A results folder (its SQLite database or journal file) is shared and can be edited like any
file, and some of what it records is used again: ``export`` re-trains a trial with its
``seed`` on its ``threads`` at its ``resolution`` and writes its recipe (``arch_json``);
``report`` prints the original model (``base``) and the columns of every trial; a resumed
search compares ``multi_fidelity``.  Each attribute that is used again has one record here,
with the bounds the search itself works within (the threads of ``--threads``, the input sides
of a recipe); :func:`check_attrs` and :func:`stored_attr` refuse a value outside them with one
:class:`~nas_sepconv.errors.UserInputError` naming the attribute and the folder, before it
reaches torch or pandas.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import UserInputError
from ..measure import MAX_THREADS
from ..recipe import MAX_INPUT_SIDE
from .modes import SEARCH_MODES

if TYPE_CHECKING:  # pragma: no cover - typing only
    import optuna

__all__ = [
    "LEGACY_DATA_SEED",
    "MAX_SEED",
    "STUDY_ATTRS",
    "TAMPERED",
    "TRIAL_ATTRS",
    "Attr",
    "check_attrs",
    "FINALIZED_PREFIX",
    "data_seed_of",
    "decoding",
    "finalized_key",
    "with_finalized",
    "read_study",
    "stored_attr",
]

#: The largest seed a trial may record: below 2**63, which every generator it seeds takes.
MAX_SEED = 2**63 - 1

_INT64 = 2**63 - 1
#: The fix of every refusal here.
TAMPERED = "the results folder was altered: restore it, or run the search again"


@dataclass(frozen=True)
class Attr:
    """One recorded attribute: its name, what a value must be (in words), and the check."""

    name: str
    expected: str
    accepts: Callable[[Any], bool]


def _int_in(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _number_in(low: float, high: float) -> Callable[[Any], bool]:
    """A real number in [low, high], or NaN (a metric that could not be measured)."""

    def accepts(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        return math.isnan(v) or low <= v <= high

    return accepts


def _text(v: Any) -> bool:
    return isinstance(v, str)


def _flag(v: Any) -> bool:
    return isinstance(v, bool)


def _multi_fidelity(v: Any) -> bool:
    """``{"min_epochs", "eta", "rungs"}`` as :func:`~nas_sepconv.search.study.multi_fidelity_record` writes it."""
    if not isinstance(v, dict) or set(v) != {"min_epochs", "eta", "rungs"}:
        return False
    rungs = v["rungs"]
    counts = isinstance(rungs, list) and 0 < len(rungs) <= 64 and all(_int_in(1, 10**6)(r) for r in rungs)
    return _int_in(1, 10**6)(v["min_epochs"]) and _int_in(2, 10**6)(v["eta"]) and counts and rungs == sorted(rungs)


def _base(v: Any) -> bool:
    """The original model of a convert search: its name, accuracies, MACs and params."""
    if not isinstance(v, dict) or not set(v) <= {"model", "accuracy", "test_accuracy", "macs", "params"}:
        return False
    checks = {
        "model": _text,
        "accuracy": _number_in(0, 1),
        "test_accuracy": _number_in(0, 1),
        "macs": _int_in(0, _INT64),
        "params": _int_in(0, _INT64),
    }
    return all(value is None or checks[key](value) for key, value in v.items())


def _table(*records: Attr) -> dict[str, Attr]:
    return {r.name: r for r in records}


_FRACTION = "a fraction in [0, 1]"
_COUNT = "a non-negative integer below 2**63"

#: The trial user attributes that are read back, and what each must be.
TRIAL_ATTRS: dict[str, Attr] = _table(
    Attr("accuracy", _FRACTION, _number_in(0, 1)),
    Attr("test_accuracy", _FRACTION, _number_in(0, 1)),
    Attr("inherited_accuracy", _FRACTION, _number_in(0, 1)),
    Attr("inherited_test_accuracy", _FRACTION, _number_in(0, 1)),
    Attr("macs", _COUNT, _int_in(0, _INT64)),
    Attr("params", _COUNT, _int_in(0, _INT64)),
    Attr("latency_ms", "a non-negative number of milliseconds", _number_in(0, math.inf)),
    Attr("wall_time_s", "a non-negative number of seconds", _number_in(0, math.inf)),
    Attr("epochs", _COUNT, _int_in(0, _INT64)),
    Attr("epochs_trained", _COUNT, _int_in(0, _INT64)),
    Attr("train_compute", _COUNT, _int_in(0, _INT64)),
    Attr("test_correct", "text (base64 of packed bits)", _text),
    Attr("seed", f"an integer in [0, {MAX_SEED}]", _int_in(0, MAX_SEED)),
    Attr("threads", f"an integer in [1, {MAX_THREADS}] (as the search's threads)", _int_in(1, MAX_THREADS)),
    Attr("resolution", f"an input side in [1, {MAX_INPUT_SIDE}]", _int_in(1, MAX_INPUT_SIDE)),
    Attr("arch", "text", _text),
    Attr("arch_json", "the JSON text of a recipe", _text),
    Attr("fail_reason", "text", _text),
    Attr("accuracy_source", "text", _text),
    Attr("finalized_from", "text", _text),
    Attr("feasible", "true or false", _flag),
    Attr("stopped_early", "true or false", _flag),
    Attr("rung_results", "a list of at most 64 rung records", lambda v: isinstance(v, list) and len(v) <= 64),
)

#: The study user attributes that are read back, and what each must be.
STUDY_ATTRS: dict[str, Attr] = _table(
    Attr("space", "the name of a space", lambda v: isinstance(v, str) and 0 < len(v) <= 200),
    Attr("space_yaml", "the YAML text of a space", _text),
    Attr("mode", " or ".join(map(repr, SEARCH_MODES)), lambda v: isinstance(v, str) and v in SEARCH_MODES),
    Attr(
        "multi_fidelity",
        "null or {min_epochs, eta, rungs} (ascending epochs)",
        lambda v: v is None or _multi_fidelity(v),
    ),
    Attr("base", "{model, accuracy, test_accuracy, macs, params} of the original model", _base),
    Attr("data_seed", f"an integer in [0, {MAX_SEED}]", _int_in(0, MAX_SEED)),
    Attr("num_classes", "a positive integer", _int_in(1, _INT64)),
    Attr("supernet_compute", "a count of training images x MACs", _int_in(0, _INT64)),
)

#: The data seed of a study that recorded none: studies made before ``data_seed`` was recorded
#: all held out their validation split with seed 0, whatever ``--seed``.
LEGACY_DATA_SEED = 0


def data_seed_of(attrs: Mapping[str, Any], *, source: str) -> int:
    """The seed that held out the study's validation split (study user attr ``data_seed``:
    the first run's ``--seed``), :data:`LEGACY_DATA_SEED` for a study that recorded none."""
    value = stored_attr(attrs, "data_seed", owner="the study", source=source, table=STUDY_ATTRS)
    return LEGACY_DATA_SEED if value is None else value


def _refuse(record: Attr, value: Any, *, owner: str, source: str) -> UserInputError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return UserInputError(record.name, f"{owner} in {source} records {shown}, not {record.expected}", TAMPERED)


def stored_attr(
    attrs: Mapping[str, Any], name: str, *, owner: str, source: str, table: Mapping[str, Attr] = TRIAL_ATTRS
) -> Any:
    """The attribute ``name`` of ``attrs`` (a trial's or the study's ``user_attrs``), None when
    absent, checked against its record in ``table``.  ``owner`` (``"trial 3"``, ``"the
    study"``) and ``source`` (the results folder or storage) name it in the error."""
    value = attrs.get(name)
    record = table[name]
    if value is not None and not record.accepts(value):
        raise _refuse(record, value, owner=owner, source=source)
    return value


def check_attrs(attrs: Mapping[str, Any], *, owner: str, source: str, table: Mapping[str, Attr] = TRIAL_ATTRS) -> None:
    """Every attribute of ``table`` that ``attrs`` holds, checked (see :func:`stored_attr`)."""
    for name in table:
        if name in attrs:
            stored_attr(attrs, name, owner=owner, source=source, table=table)


@contextlib.contextmanager
def decoding(source: str) -> Iterator[None]:
    """Optuna reading the storage of ``source`` in this block: a record it cannot decode
    (nested 100,000 deep, a choice index out of range) is one line naming ``source``, not a
    traceback from inside Optuna."""
    try:
        yield
    except UserInputError:
        raise
    except (RecursionError, ValueError, KeyError, IndexError, TypeError) as exc:
        if isinstance(exc, RecursionError):
            detail = "a value nested too deeply to decode"
        else:
            detail = f"{type(exc).__name__}: {' '.join(str(exc).split())[:80]}"
        raise UserInputError("source", f"{source} holds a record that cannot be read ({detail})", TAMPERED) from None


#: A finalised trial's record is the study user attribute ``finalized:<number>`` (a finished
#: trial's own attributes cannot change): the attributes that replace the trial's (see
#: :func:`with_finalized`), written by :mod:`nas_sepconv.search.finalization`.
FINALIZED_PREFIX = "finalized:"


def finalized_key(number: int) -> str:
    """The study user attribute holding trial ``number``'s finalisation."""
    return f"{FINALIZED_PREFIX}{number}"


def with_finalized(trials: list[Any], attrs: Mapping[str, Any], *, source: str) -> list[Any]:
    """``trials`` as their finalisation left them: a trial the study records as finalised
    (:data:`FINALIZED_PREFIX`) is a copy whose user attributes are its own updated with the
    record's (``accuracy``, ``test_accuracy``, ``test_correct``, ``epochs``, ``train_compute``
    finalised, ``inherited_accuracy`` and ``inherited_test_accuracy`` kept, ``accuracy_source``
    ``finalized``), so that every reader (the frame, the front, the report, ``export``) sees the
    finalised trial.  The others are returned as they are."""
    out = []
    for trial in trials:
        record = attrs.get(finalized_key(trial.number))
        if record is None:
            out.append(trial)
            continue
        if not isinstance(record, dict):
            raise UserInputError(finalized_key(trial.number), f"the study in {source} records {record!r}", TAMPERED)
        trial = copy.copy(trial)
        trial.user_attrs = {**trial.user_attrs, **record}
        out.append(trial)
    return out


def read_study(study: optuna.Study, source: str) -> list[Any]:
    """The study's trials, finalised ones as :func:`with_finalized` gives them, with its
    attributes and every trial's checked (the tables above; Optuna's reading as in
    :func:`decoding`)."""
    with decoding(source):
        trials = study.get_trials(deepcopy=False)
        attrs = study.user_attrs
        study.metric_names  # (read from the study's system attributes)
    check_attrs(attrs, owner="the study", source=source, table=STUDY_ATTRS)
    trials = with_finalized(trials, attrs, source=source)
    for t in trials:
        check_attrs(t.user_attrs, owner=f"trial {t.number}", source=source)
    return trials
