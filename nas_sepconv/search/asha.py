"""The multi-fidelity mode: multi-objective asynchronous successive halving (MO-ASHA).

Schmucker, Donini, Perrone, Archambeau, "Multi-objective multi-fidelity hyperparameter
optimization with application to fairness" (2021, arXiv:2106.12639): ASHA (Li et al., "A System
for Massively Parallel Hyperparameter Tuning", MLSys 2020) whose rung decision ranks the rung's
results by non-dominated sorting.  We use the NSGA-II selection the paper offers (Deb et al.,
"A fast and elitist multiobjective genetic algorithm: NSGA-II", 2002): non-dominated fronts
(the results layer's :func:`~nas_sepconv.results.front.nondominated_fronts`), then the crowding
distance inside a front.

Rungs are in epochs: ``min_epochs · eta^k`` below the epochs a candidate trains (the full
budget), then the full budget itself (:func:`rung_epochs`).  A trial trains in one run of
:func:`~nas_sepconv.train.fit` with the full budget's learning-rate schedule, so that a trial
promoted to the end is exactly the trial a full-budget search would train.  After the epoch of
each rung it records its result on the Optuna trial (user attr ``rung_results``) and reads the
results other trials recorded at that rung from the storage (any worker, any machine, earlier
runs of the study): it goes on when it ranks among the best ``max(1, ⌊n/eta⌋)`` of the ``n``
results there, its own included (:func:`promotes`), and stops otherwise (:class:`StopAtRung`).
This is the stopping variant of asynchronous successive halving that Syne Tune's MOASHA and
Ray Tune's ASHA implement: decisions use the results seen so far, never wait; while a rung holds
fewer than ``eta`` results only its best goes on, as in Optuna's SuccessiveHalvingPruner.
Candidates tied with the last one that goes on go on too.

Objectives at a rung: the search's own, with the accuracy measured on the validation split after
that epoch; MACs and params are the candidate's (fixed), and so is its latency, measured once
at the first rung.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna

from ..errors import UserInputError
from ..results import OBJECTIVES
from ..results.front import nondominated_fronts

__all__ = [
    "StopAtRung",
    "RungLadder",
    "rung_epochs",
    "nondominated_fronts",
    "crowding_distance",
    "promotes",
    "RUNG_ATTR",
]

#: the trial user attribute holding a trial's rung results (a list, one entry per rung reached)
RUNG_ATTR = "rung_results"


def rung_epochs(min_epochs: int, eta: int, budget: int) -> tuple[int, ...]:
    """The rungs in epochs: ``min_epochs · eta^k`` while below ``budget``, then ``budget``
    (ASHA's geometric rungs, Li et al. 2020), e.g. ``(1, 3, 5)`` for 1, 3 and 5 epochs.

    Raises:
        UserInputError: ``eta`` below 2, ``min_epochs`` below 1 or not below ``budget``.
    """
    if isinstance(eta, bool) or not isinstance(eta, int) or eta < 2:
        raise UserInputError(
            "search.multi_fidelity.eta",
            f"must be an integer >= 2, got {eta!r}",
            "use e.g. eta: 3 (a third of a rung goes on)",
        )
    if isinstance(min_epochs, bool) or not isinstance(min_epochs, int) or min_epochs < 1:
        raise UserInputError(
            "search.multi_fidelity.min_epochs", f"must be an integer >= 1, got {min_epochs!r}", "use e.g. min_epochs: 1"
        )
    if min_epochs >= budget:
        raise UserInputError(
            "search.multi_fidelity.min_epochs",
            f"{min_epochs} is not below the {budget} epochs a candidate trains",
            f"give min_epochs below {budget}, or train candidates for more epochs",
        )
    rungs, epochs = [], min_epochs
    while epochs < budget:
        rungs.append(epochs)
        epochs *= eta
    return (*rungs, budget)


def crowding_distance(losses: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance of the rows of one front (Deb et al. 2002): per objective,
    the gap between a row's two neighbours in that objective over the objective's range, summed;
    the rows at either end of an objective with a range get infinity."""
    losses = np.asarray(losses, dtype="float64")
    n, k = losses.shape
    distance = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(k):
        order = np.argsort(losses[:, j], kind="stable")
        values = losses[order, j]
        span = values[-1] - values[0]
        if span <= 0:
            continue
        distance[order[0]] = distance[order[-1]] = np.inf
        distance[order[1:-1]] += (values[2:] - values[:-2]) / span
    return distance


def promotes(losses: np.ndarray, index: int, *, eta: int) -> bool:
    """Whether row ``index`` of a rung's results (``losses``: n x k, minimised, the row itself
    included) goes on to the next rung: it ranks among the best ``max(1, ⌊n/eta⌋)`` by
    non-dominated front, then crowding distance (larger first) inside the front; rows tied with
    the last of those go on too."""
    losses = np.asarray(losses, dtype="float64")
    n = len(losses)
    if not 0 <= index < n:
        raise UserInputError("index", f"{index} is not a row of the {n} results", "give the row of the trial deciding")
    keep = max(1, n // eta)
    fronts = nondominated_fronts(losses)
    crowding = np.zeros(n)
    for level in np.unique(fronts):
        rows = np.flatnonzero(fronts == level)
        crowding[rows] = crowding_distance(losses[rows])
    keys = sorted(zip(fronts.tolist(), (-crowding).tolist()))
    return (int(fronts[index]), float(-crowding[index])) <= keys[keep - 1]


class StopAtRung(Exception):
    """Raised from the epoch callback: the trial stops at this rung (its ``epoch`` and the
    validation ``accuracy`` measured there)."""

    def __init__(self, epoch: int, accuracy: float):
        super().__init__(f"stopped at the rung of epoch {epoch}")
        self.epoch = epoch
        self.accuracy = accuracy


def _losses(entries: Sequence[dict[str, Any]], objectives: Sequence[str]) -> np.ndarray:
    """Rung entries as rows to minimise (maximised objectives negated)."""
    signs = [-1.0 if OBJECTIVES[o].direction == "maximize" else 1.0 for o in objectives]
    return np.array([[s * float(e[o]) for s, o in zip(signs, objectives)] for e in entries], dtype="float64").reshape(
        len(entries), len(objectives)
    )


class RungLadder:
    """One trial's way up the rungs: call :meth:`on_epoch` after every epoch."""

    def __init__(self, trial: optuna.trial.Trial, *, rungs: Sequence[int], eta: int, objectives: Sequence[str]):
        self.trial, self.rungs, self.eta = trial, tuple(rungs), eta
        self.objectives = tuple(objectives)
        self.results: list[dict[str, Any]] = []

    def on_epoch(self, epoch: int, accuracy: float, fixed: Mapping[str, Any]) -> None:
        """Record the result of a rung's epoch on the trial (``accuracy`` measured now, the
        other objectives from ``fixed``); below the full budget, decide: raise
        :class:`StopAtRung` unless the trial goes on."""
        if epoch not in self.rungs:
            return
        entry: dict[str, Any] = {
            "epoch": epoch,
            "accuracy": float(accuracy),
            **{o: fixed[o] for o in self.objectives if o != "accuracy"},
        }
        if epoch < self.rungs[-1]:
            others = self._others(epoch)
            losses = _losses([*others, entry], self.objectives)
            entry["population"] = len(losses)
            entry["promoted"] = bool(np.isfinite(losses[-1]).all() and promotes(losses, len(losses) - 1, eta=self.eta))
        self.results.append(entry)
        self.trial.set_user_attr(RUNG_ATTR, self.results)
        if entry.get("promoted") is False:
            raise StopAtRung(epoch, float(accuracy))

    def _others(self, epoch: int) -> list[dict[str, Any]]:
        """The results other trials of the study (running or complete) recorded at this rung,
        read from the storage now."""
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
        found = []
        for t in self.trial.study.get_trials(deepcopy=False, states=states):
            if t.number == self.trial.number:
                continue
            for e in t.user_attrs.get(RUNG_ATTR) or ():
                if (
                    isinstance(e, dict)
                    and e.get("epoch") == epoch
                    and all(isinstance(e.get(o), (int, float)) for o in self.objectives)
                ):
                    found.append(e)
        return [e for e in found if np.isfinite(_losses([e], self.objectives)).all()]

    def attrs(self, epochs_trained: int) -> dict[str, Any]:
        """What the trial records besides its metrics: ``stopped_early``, ``epochs_trained`` and
        ``rung_results``."""
        stopped = bool(self.results) and self.results[-1].get("promoted") is False
        return {"stopped_early": stopped, "epochs_trained": int(epochs_trained), RUNG_ATTR: list(self.results)}
