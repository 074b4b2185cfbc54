"""Results of a search as a DataFrame: load, Pareto front, hypervolume, knee, compare, plots,
outputs.  Never imports the search."""

from __future__ import annotations

from .comparison import compare
from .frame import STATES, load
from .front import hypervolume, knee, pareto_front
from .objectives import KNOWN_DIRECTIONS, LOG_SCALE_COLUMNS, OBJECTIVES, Objective, objective
from .outputs import base_line, pareto_table, write_outputs
from .plot import plot_pareto

__all__ = [
    "KNOWN_DIRECTIONS",
    "LOG_SCALE_COLUMNS",
    "OBJECTIVES",
    "Objective",
    "STATES",
    "base_line",
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
