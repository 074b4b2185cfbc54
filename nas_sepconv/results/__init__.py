"""Results of a search as a DataFrame: load, Pareto front, hypervolume, knee, compare, plots,
outputs.  Never imports the search."""

from __future__ import annotations

from .comparison import compare
from .frame import STATES, load
from .front import hypervolume, knee, pareto_front
from .objectives import KNOWN_DIRECTIONS, LOG_SCALE_COLUMNS, OBJECTIVES, Objective, objective
from .outputs import (
    base_line,
    comparison_table,
    finalized_line,
    load_baselines,
    pareto_table,
    protocol_line,
    reference_line,
    write_comparison,
    write_outputs,
)
from .plot import plot_fronts, plot_pareto
from .protocol import bootstrap_ratios, pack_correct, unpack_correct

__all__ = [
    "KNOWN_DIRECTIONS",
    "LOG_SCALE_COLUMNS",
    "OBJECTIVES",
    "Objective",
    "STATES",
    "base_line",
    "bootstrap_ratios",
    "compare",
    "comparison_table",
    "finalized_line",
    "hypervolume",
    "knee",
    "load",
    "load_baselines",
    "objective",
    "pack_correct",
    "pareto_front",
    "pareto_table",
    "plot_fronts",
    "plot_pareto",
    "protocol_line",
    "reference_line",
    "unpack_correct",
    "write_comparison",
    "write_outputs",
]
