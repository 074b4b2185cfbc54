"""The Optuna samplers a search can use: one table (:data:`SAMPLERS`), read by the space
schema (``search.sampler``), by :func:`~nas_sepconv.search.search` (``--sampler``) and by the
CLI's help.  Every sampler is seeded; hard budgets reach it as trial constraints
(``Trial.set_constraint``).

``grid`` enumerates a space whose every searched choice is a list (a hand-designed family such
as MobileNet's width multipliers): each point once, in the same order in every process, so that
workers, resumed runs and seeds share one grid."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from ..blocks import BlockSpec
from ..errors import UserInputError
from ..tables import lookup

__all__ = [
    "SAMPLERS",
    "Sampler",
    "check_grid_trials",
    "find_sampler",
    "grid_of",
    "grid_points",
    "make_sampler",
    "process_seed",
]


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


def _grid_values(name: str, choice: Any) -> list[Any]:
    """The values of one choice of a grid: a list, or one fixed value; a range is refused."""
    if isinstance(choice, list):
        return list(choice)
    if choice is None or isinstance(choice, (bool, int, float, str)):
        return [choice]
    raise UserInputError(
        "search.sampler",
        f"grid enumerates lists of values, and {name} is a range",
        f"give {name} as a list, or use another sampler",
    )


def grid_of(space: Any) -> dict[str, list[Any]]:
    """The searched parameters of a build space and their values: what the ``grid`` sampler
    enumerates (every parameter with more than one value; the names :func:`suggest` gives).

    Refused (:class:`UserInputError` naming ``search.sampler``): a convert space, a range, a
    stage with several kinds (the options a kind takes would be conditional parameters)."""
    spec = space.spec
    if spec.space_kind.from_base:
        raise UserInputError(
            "search.sampler", "grid enumerates build spaces only", "use another sampler for a convert space"
        )
    b = spec.build
    grid: dict[str, list[Any]] = {}
    for i, stage in enumerate(b.stages):
        kinds = _grid_values(f"stages[{i}].kind", stage.kind)
        if len(kinds) > 1:
            raise UserInputError(
                "search.sampler",
                f"grid takes one kind per stage, and stage {i} has {kinds}",
                "fix one kind per stage, or use another sampler",
            )
        options = stage.options()
        for opt in BlockSpec(str(kinds[0])).info.options:  # the options suggest() asks for this kind
            if opt.name in options:
                grid[f"stage{i}.{opt.name}"] = _grid_values(f"stages[{i}].{opt.name}", options[opt.name])
    for name in ("width_mult", "depth_mult", "resolution_mult", "act"):
        grid[name] = _grid_values(name, getattr(b, name))
    return {name: values for name, values in grid.items() if len(values) > 1}


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler, without its ``study.stop()`` after the last point: the search
    counts its trials itself, and ``stop`` outside ``Study.optimize`` raises."""

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        pass


def grid_points(space: Any) -> int:
    """How many points :func:`grid_of` enumerates (the most trials a ``grid`` search runs)."""
    return int(np.prod([len(v) for v in grid_of(space).values()]))


def check_grid_trials(sampler: str, space: Any, trials: int) -> None:
    """A ``grid`` search asked for more trials than its grid has points is refused (``trials``)."""
    if sampler == "grid" and trials > (points := grid_points(space)):
        raise UserInputError(
            "trials",
            f"{trials} trials, but the grid of space {space.name!r} has {points} points",
            f"give trials={points} or fewer (each point once)",
        )


def _make_grid(seed: int, space: Any) -> optuna.samplers.BaseSampler:
    """Every point of :func:`grid_of` once.  The points are numbered alike in every process
    (Optuna shuffles them with the sampler's seed: a fixed one here); trial ``n`` of the study
    takes point ``n`` (a failed trial's point is not retried).  The seed still changes each
    trial's training (seed + trial number)."""
    grid, points = grid_of(space), grid_points(space)
    if space.spec.search.trials > points:
        raise UserInputError(
            "search.trials",
            f"{space.spec.search.trials} trials, but the grid has {points} points",
            f"give trials: {points} (each point once)",
        )
    return _GridSampler(grid, seed=0)


#: The samplers, by name (the first is the default of a pareto-mode space).
SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        Sampler(
            "nsga2",
            "NSGA-II, a genetic algorithm for several objectives (Deb et al. 2002)",
            lambda seed, space: optuna.samplers.NSGAIISampler(
                seed=seed, population_size=space.spec.search.population_size
            ),
            ("population_size",),
        ),
        Sampler(
            "tpe",
            "multivariate tree-structured Parzen estimator (the default of a scalarised space)",
            lambda seed, space: optuna.samplers.TPESampler(
                seed=seed, multivariate=True, n_startup_trials=_startup_trials(space)
            ),
            ("trials",),
        ),
        Sampler(
            "gp",
            "Gaussian-process Bayesian optimisation",
            lambda seed, space: optuna.samplers.GPSampler(seed=seed, n_startup_trials=_startup_trials(space)),
            ("trials",),
        ),
        Sampler("random", "uniform random sampling", lambda seed, space: optuna.samplers.RandomSampler(seed=seed)),
        Sampler(
            "grid",
            "every point of a space whose choices are all lists, once each (a hand-designed family, e.g. "
            "MobileNet's width multipliers)",
            _make_grid,
            ("trials",),
        ),
    )
}


def find_sampler(name: Any, *, field: str = "sampler") -> Sampler:
    """The record of the sampler ``name``; a :class:`UserInputError` naming ``field`` (and
    listing the samplers) if there is none."""
    return lookup(SAMPLERS, name, field=field, what="sampler")


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
