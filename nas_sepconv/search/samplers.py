"""The Optuna samplers a search can use: one table (:data:`SAMPLERS`), read by the space
schema (``search.sampler``), by :func:`~nas_sepconv.search.search` (``--sampler``) and by the
CLI's help.  Every sampler is seeded; hard budgets reach it as trial constraints
(``Trial.set_constraint``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import optuna

from ..errors import UserInputError

__all__ = ["SAMPLERS", "Sampler", "find_sampler", "make_sampler", "process_seed"]


@dataclass(frozen=True)
class Sampler:
    """A sampler by name.

    Attributes:
        name: the name a space (``search.sampler``) or ``--sampler`` gives.
        description: one line: what it is.
        make: ``make(seed, space)`` builds it for a :class:`~nas_sepconv.search.Space`.
        options: the space's ``search:`` fields it reads.
    """

    name: str
    description: str
    make: Callable[[int, Any], optuna.samplers.BaseSampler]
    options: tuple[str, ...] = ()


def _startup_trials(space: Any) -> int:
    """Random trials before a model-based sampler starts modelling: a third of the trials, 2..10."""
    return min(10, max(2, space.spec.search.trials // 3))


#: The samplers, by name (the first is the default of a pareto-mode space).
SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        Sampler("nsga2", "NSGA-II, a genetic algorithm for several objectives (Deb et al. 2002)",
                lambda seed, space: optuna.samplers.NSGAIISampler(seed=seed, population_size=space.spec.search.population_size),
                ("population_size",)),
        Sampler("tpe", "multivariate tree-structured Parzen estimator (the default of a scalarised space)",
                lambda seed, space: optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=_startup_trials(space)),
                ("trials",)),
        Sampler("gp", "Gaussian-process Bayesian optimisation",
                lambda seed, space: optuna.samplers.GPSampler(seed=seed, n_startup_trials=_startup_trials(space)),
                ("trials",)),
        Sampler("random", "uniform random sampling", lambda seed, space: optuna.samplers.RandomSampler(seed=seed)),
    )
}


def find_sampler(name: Any, *, field: str = "--sampler") -> Sampler:
    """The record of the sampler ``name``; a :class:`UserInputError` naming ``field`` (and
    listing the samplers) if there is none."""
    record = SAMPLERS.get(name) if isinstance(name, str) else None
    if record is None:
        raise UserInputError(field, f"unknown sampler {name!r}", f"use one of {', '.join(SAMPLERS)}")
    return record


def make_sampler(name: str, seed: int, space: Any) -> optuna.samplers.BaseSampler:
    """The seeded sampler ``name`` for ``space``."""
    return find_sampler(name).make(seed, space)


def process_seed(seed: int, session: int, worker: int) -> int:
    """The sampler seed of one process of a study: the study's ``seed`` for the first worker of
    the first ``search`` call (so a one-process search seeds its sampler with ``--seed``), and
    for any other (session, worker) a seed derived from all three.  A resumed search (a later
    session), a second local worker or another machine thus never replays the draws of an
    earlier process, while the same sequence of commands with the same seed draws the same
    trials."""
    if session == 0 and worker == 0:
        return seed
    entropy = [seed % 2**64, session, worker]  # SeedSequence takes non-negative integers
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint32)[0])
