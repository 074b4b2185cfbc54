"""The Optuna samplers a search can use: one table (:data:`SAMPLERS`), read by the space
schema (``search.sampler``), by :func:`~nas_sepconv.search.search` (``--sampler``) and by the
CLI's help.  Every sampler is seeded; hard budgets reach it as trial constraints
(``Trial.set_constraint``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import optuna

from ..errors import UserInputError

__all__ = ["SAMPLERS", "Sampler", "find_sampler", "make_sampler"]


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
