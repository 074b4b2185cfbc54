"""The pruners table: one frozen record per way a scalarised study stops a trial early.

A space's ``search.pruner`` names one (it applies where the search mode prunes:
:attr:`~nas_sepconv.results.modes.SearchMode.prunes`); the study makes its Optuna pruner from
the record, and the schema's choices are the table's names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from ..tables import lookup

__all__ = ["Pruner", "PRUNERS", "PRUNER_NAMES", "find_pruner"]


@dataclass(frozen=True)
class Pruner:
    """One pruner: ``make(epochs)`` is its Optuna pruner for candidates trained ``epochs`` epochs."""

    name: str
    make: Callable[[int], optuna.pruners.BasePruner]
    doc: str = ""


#: every pruner by name; the first is the default
PRUNERS: dict[str, Pruner] = {
    p.name: p
    for p in (
        Pruner(
            "median",
            lambda epochs: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
            "stop a trial whose reward is below the median of earlier trials at the same epoch",
        ),
        Pruner(
            "hyperband",
            lambda epochs: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs),
            "Hyperband over epochs (successive halving in several brackets)",
        ),
        Pruner("none", lambda epochs: optuna.pruners.NopPruner(), "every trial trains to the end"),
    )
}

#: the names, for the schema's ``Literal`` (derived from the table, never listed again)
PRUNER_NAMES = tuple(PRUNERS)


def find_pruner(name: Any, *, field: str = "search.pruner") -> Pruner:
    """The record of the pruner ``name``; :class:`~nas_sepconv.errors.UserInputError` naming
    ``field`` if there is none."""
    return lookup(PRUNERS, name, field=field, what="pruner")
