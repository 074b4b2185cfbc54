"""Counting a study's trials for one run of the search (one ``search`` call, a *session*), and
the line a run ends with when it did not do what it was asked.

A study keeps the failures of all its runs; only this run's count towards the failure limit
(a fault that failed ten trials yesterday and is gone today must not stop today's run).  A run
ends with one line when every trial it ran failed, or when the failure limit stopped it
(:func:`check_run`: the most common reason recorded on its trials), and when some of its
results could not be written (weights, the output files).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import optuna

from ..errors import SearchFailed, StorageError, UserInputError
from .settings import Settings

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
SURPLUS = "surplus claim: another worker took the last slot"
#: system attribute of a trial: the session (``Settings.session``) of the run that claimed it
SESSION_ATTR = "nas_sepconv:session"
#: user attribute of a trial: what it could not save (``MissingWeights.to_attr`` of its weights)
MISSING_ARTIFACTS = "missing_artifacts"
#: the start of the reasons of failures that the space's own choices cause (see workers._fail_reason)
_INPUT_REASONS = ("CandidateError:", "UserInputError:")


@dataclass(frozen=True)
class MissingWeights:
    """A finished trial's weights file that could not be written, and why; recorded on the
    trial (:data:`MISSING_ARTIFACTS`) as ``weights (<file>: <why>)``."""

    file: str
    why: str

    def to_attr(self) -> str:
        return f"weights ({self.file}: {self.why})"

    @classmethod
    def of(cls, trial: optuna.trial.FrozenTrial) -> MissingWeights | None:
        """What the trial records as missing; None when it saved its weights."""
        missing = trial.user_attrs.get(MISSING_ARTIFACTS)
        if not missing:
            return None
        file, _, why = str(missing[0]).removeprefix("weights (").removesuffix(")").partition(": ")
        return cls(file, why)


def failure_limit(settings: Settings) -> int:
    """The failed trials after which a run stops: ``search.max_failures`` (0: the first, as 1;
    it ran nothing), else ``max(10, trials)`` (a candidate or setup that fails every time must
    not loop forever)."""
    limit = settings.space.spec.search.max_failures
    return max(10, settings.options.trials) if limit is None else max(1, limit)


def run_trials(
    study: optuna.Study, session: int, trials: list[optuna.trial.FrozenTrial] | None = None
) -> list[optuna.trial.FrozenTrial]:
    """The trials this run claimed (a surplus claim, never run, left out), of ``trials``
    (default: the study's)."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    mine = [t for t in trials if t.system_attrs.get(SESSION_ATTR) == session]
    return [t for t in mine if t.user_attrs.get("fail_reason") != SURPLUS]


def counts(study: optuna.Study, session: int) -> dict[str, int]:
    """The study's finished and running trials, and this run's failed ones."""
    trials = study.get_trials(deepcopy=False)
    S = optuna.trial.TrialState
    return {
        "done": sum(t.state in FINISHED for t in trials),
        "running": sum(t.state == S.RUNNING for t in trials),
        "failed": sum(t.state == S.FAIL for t in run_trials(study, session, trials)),
    }


def check_run(study: optuna.Study, settings: Settings, *, unwritten_output: str = "") -> None:
    """Raise the one line a finished run ends with, if it needs one: every trial of the run
    failed, or the failure limit stopped it (:class:`UserInputError` when every failure came
    from the space's choices, else :class:`SearchFailed`); else some of its results could not
    be written (:class:`StorageError`: the weights of its trials, ``unwritten_output``: an
    output file and why, :attr:`~.outputs.SearchStatus.unwritten`)."""
    trials = study.get_trials(deepcopy=False)  # read once: every count below is of these
    mine = run_trials(study, settings.session, trials)
    failed = [t for t in mine if t.state == optuna.trial.TrialState.FAIL]
    done = sum(t.state in FINISHED for t in trials)
    stopped = len(failed) >= failure_limit(settings) and done < settings.options.trials
    if failed and (stopped or len(failed) == len(mine)):
        raise _failed(failed, len(mine), stopped, failure_limit(settings))
    unwritten = [unwritten_output] if unwritten_output else []
    missing = {t.number: m for t in mine if t.state in FINISHED and (m := MissingWeights.of(t)) is not None}
    if missing:
        why = next(iter(missing.values())).why
        numbers = ", ".join(str(n) for n in missing)
        unwritten.append(f"the weights of trial{'s' if len(missing) > 1 else ''} {numbers} ({why[:160]})")
    if unwritten:
        raise StorageError(
            f"out: could not write in {settings.out_dir}: {'; '.join(unwritten)}; free disk space, "
            "then run the same command again: the study keeps every trial, the outputs are written again "
            "(and export re-trains a trial whose weights are missing)"
        )


def _failed(failed: list[optuna.trial.FrozenTrial], ran: int, stopped: bool, limit: int) -> Exception:
    """The error that says why a run's trials failed: its most common kind of failure (the
    exception's name, or "out of memory"), how often, and an example."""
    reasons = [str(t.user_attrs.get("fail_reason") or "no reason recorded") for t in failed]
    kinds = Counter(r.split(":")[0] for r in reasons)
    kind, times = kinds.most_common(1)[0]
    examples = list(dict.fromkeys(r for r in reasons if r.split(":")[0] == kind))  # in trial order
    why = f"{times}x {examples[0][:300]}" if len(examples) == 1 else f"{times}x {kind}, e.g. {examples[0][:300]}"
    if len(kinds) > 1:
        why += f"; {len(failed) - times} other failures"
    if len(failed) == ran:
        what = f"all {ran} trial{'s' if ran > 1 else ''} of this run failed"
    else:
        what = f"{len(failed)} of this run's {ran} trials failed"
    if stopped:
        what += f", and the search stopped at its limit of {limit} failures (search.max_failures)"
    if all(r.startswith(_INPUT_REASONS) for r in reasons):
        fix = "change the space's choices so that its candidates can be built, then run the same command again"
        return UserInputError("space", f"{what} ({why})", fix)
    return SearchFailed(
        f"search: {what} ({why}); mend the cause, then run the same command again: "
        "finished trials are kept and the search resumes"
    )
