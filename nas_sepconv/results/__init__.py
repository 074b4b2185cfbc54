"""Results of a search as a DataFrame: load, Pareto front, hypervolume, knee, compare, plots,
outputs.  Never imports the search."""

from __future__ import annotations

from .frame import KNOWN_DIRECTIONS, LOG_SCALE_COLUMNS, STATES, compare, hypervolume, knee, load, pareto_front, pareto_table, plot_pareto, write_outputs
from .objectives import OBJECTIVES, Objective, objective

__all__ = [
    "KNOWN_DIRECTIONS",
    "LOG_SCALE_COLUMNS",
    "OBJECTIVES",
    "Objective",
    "STATES",
    "compare",
    "hypervolume",
    "knee",
    "load",
    "objective",
    "pareto_front",
    "pareto_table",
    "plot_pareto",
    "write_outputs",
]
