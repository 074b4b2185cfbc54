"""The Optuna samplers a search can use."""

from __future__ import annotations

import optuna

from ..errors import UserInputError
from .spaces import Space


def _sampler(name: str, seed: int, space: Space) -> optuna.samplers.BaseSampler:
    """Seeded samplers; hard budgets reach them as trial constraints (``Trial.set_constraint``)."""
    s = space.spec.search
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=s.population_size)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(10, max(2, s.trials // 3)))
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=min(10, max(2, s.trials // 3)))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UserInputError("--sampler", f"unknown sampler {name!r}", "use one of nsga2, tpe, gp, random")
