"""Results of a search as a DataFrame: load, Pareto front, hypervolume, knee, compare, plots,
outputs.  Never imports the search."""

from __future__ import annotations

from .frame import KNOWN_DIRECTIONS, LOG_SCALE_COLUMNS, STATES, compare, hypervolume, knee, load, pareto_front, pareto_table, plot_pareto, write_outputs

__all__ = [
    "KNOWN_DIRECTIONS",
    "LOG_SCALE_COLUMNS",
    "STATES",
    "compare",
    "hypervolume",
    "knee",
    "load",
    "pareto_front",
    "pareto_table",
    "plot_pareto",
    "write_outputs",
]
