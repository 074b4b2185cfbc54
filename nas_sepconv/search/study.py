"""The study: created or resumed on its storage, with its metric names and directions, its
sampler and pruner, and the record of the space that made it (a resume refuses another one).
Storage failures become one line (:class:`~nas_sepconv.errors.StorageError`)."""

from __future__ import annotations

import sqlite3

import optuna
import sqlalchemy.exc

from ..errors import StorageError, UserInputError
from ..results import OBJECTIVES
from ..results.stored import TAMPERED, read_study
from ..storage import lock, open_storage, redact
from .heartbeat import RetryStale
from .pruners import PRUNERS, find_pruner
from .samplers import make_sampler, process_seed
from .schema import candidate_epochs
from .settings import Settings
from .spaces import Space, parse_space


def _pruner(space: Space) -> optuna.pruners.BasePruner:
    """The space's pruner where its search mode prunes, else none."""
    s = space.spec.search
    pruner = find_pruner(s.pruner) if s.search_mode.prunes else PRUNERS["none"]
    return pruner.make(space.spec.train.epochs)


def metric_names(space: Space) -> list[str]:
    s = space.spec.search
    return s.search_mode.metric_names(s.objectives)


def open_study(settings: Settings, *, worker: int = 0) -> optuna.Study:
    """Create or load the study (same name and storage: resumed)."""
    space = settings.space
    storage = open_storage(
        settings.options.storage,
        heartbeat=settings.options.heartbeat,
        stale_callback=RetryStale(max_retry=settings.options.retries) if settings.options.retries else None,
    )
    names = metric_names(space)
    directions = [OBJECTIVES[n].direction for n in names]
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=settings.options.study,
            directions=directions,
            sampler=make_sampler(
                settings.options.sampler, process_seed(settings.options.seed, settings.session, worker), space
            ),
            pruner=_pruner(space),
            load_if_exists=True,
        )
    except Exception as exc:
        if isinstance(exc, OSError) or is_storage_failure(exc):
            raise storage_error(exc, settings.options.storage, "opening the study") from None
        raise
    if [d.name.lower() for d in study.directions] != directions:
        raise UserInputError(
            "study", f"study {settings.options.study!r} exists with other objectives", "use another study=NAME"
        )
    read_study(study, redact(settings.options.storage))  # what a resume reads back, checked first (tampered: one line)
    mf = multi_fidelity_record(space)
    existing = study.user_attrs.get("space")
    recorded = study.user_attrs.get("space_yaml")
    if existing is None:  # new study; "space" is written last and marks the record complete
        try:
            study.set_metric_names(names)
            study.set_user_attr("space_yaml", space.text)
            study.set_user_attr("mode", space.spec.search.mode)
            study.set_user_attr(MULTI_FIDELITY_ATTR, mf)
            study.set_user_attr("data_seed", settings.options.seed)  # holds out its validation split (candidates.py)
            study.set_user_attr("space", space.name)
        except Exception as exc:
            if isinstance(exc, OSError) or is_storage_failure(exc):
                raise storage_error(exc, settings.options.storage, "creating the study") from None
            raise
    elif existing != space.name or (recorded is not None and _defining(recorded) != _defining(space.text)):
        raise UserInputError(
            "study",
            f"study {settings.options.study!r} was made with another version of space {existing!r}",
            "use another study=NAME, or the same space file",
        )
    elif study.user_attrs.get(MULTI_FIDELITY_ATTR) != mf:
        was = study.user_attrs.get(MULTI_FIDELITY_ATTR)
        was_run = "with rungs " + str(was["rungs"]) if was else "without the multi-fidelity mode"
        asked = "with rungs " + str(mf["rungs"]) if mf else "without it"
        raise UserInputError(
            "multi_fidelity",
            f"study {settings.options.study!r} was run {was_run}, not {asked}",
            "resume it with its own setting, or use another study=NAME",
        )
    return study


#: study user attribute: the multi-fidelity setting the study was made with (None: off)
MULTI_FIDELITY_ATTR = "multi_fidelity"


def multi_fidelity_record(space: Space) -> dict | None:
    """``{"min_epochs", "eta", "rungs"}`` of the space's multi-fidelity mode, None when off."""
    mf = space.spec.search.multi_fidelity
    if mf is None:
        return None
    return {"min_epochs": mf.min_epochs, "eta": mf.eta, "rungs": list(mf.rungs(candidate_epochs(space.spec)))}


#: study system attribute: how many ``search`` calls (sessions) the study has had
SESSIONS_ATTR = "nas_sepconv:sessions"


def claim_session(study: optuna.Study, settings: Settings) -> int:
    """The number of this ``search`` call in the study (0 for the first), counted in the study
    under the results folder's lock: with the worker number it seeds the sampler
    (:func:`~nas_sepconv.search.samplers.process_seed`), so that no process replays the draws of
    another.  (Machines that share a PostgreSQL study but not a results folder and start in the
    same instant could read the same count; their workers still differ by number.)"""
    try:
        with lock(settings.out_dir):
            count = study._storage.get_study_system_attrs(study._study_id).get(SESSIONS_ATTR)
            if count is None:  # a new study, or one made before sessions were counted: past its trials
                count = len(study.get_trials(deepcopy=False))
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                where = redact(settings.options.storage)
                problem = f"the study in {where} records {str(count)[:40]!r}, not a count of searches"
                raise UserInputError(SESSIONS_ATTR, problem, TAMPERED)
            study._storage.set_study_system_attr(study._study_id, SESSIONS_ATTR, count + 1)
    except Exception as exc:
        if isinstance(exc, OSError) or is_storage_failure(exc):
            raise storage_error(exc, settings.options.storage, "opening the study") from None
        raise
    return count


def _defining(space_yaml: str) -> dict:
    """What of a space defines its candidates and objectives: all but the description and the
    trial count (changing those resumes the same study)."""
    return parse_space(space_yaml).spec.model_dump(exclude={"description": True, "search": {"trials", "max_failures"}})


def is_storage_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is the storage failing (Optuna, SQLAlchemy or sqlite), not the trial."""
    return isinstance(exc, (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError, sqlite3.Error))


def storage_error(exc: BaseException, url: str | None, doing: str) -> StorageError:
    """One line for a storage that failed (the chained SQLAlchemy traceback runs to ~500 lines)."""
    chain, seen = [], exc
    while seen is not None and len(chain) < 10:  # StorageInternalError <- OperationalError <- sqlite3 ...
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    texts = [str(e).strip() for e in chain if str(e).strip()]
    detail = next(
        (t for t in texts if "full" in t.lower() or "too large" in t.lower()), texts[0] if texts else type(exc).__name__
    )
    detail = detail.splitlines()[0][:160]
    return StorageError(
        f"storage: cannot write to {redact(url) if url else 'the storage'} while {doing} ({detail}); "
        "free disk space (or mend the database), then run the same command again: finished trials are kept and the "
        "search resumes"
    )
