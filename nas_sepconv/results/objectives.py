"""The objectives table: one frozen record per metric a trial is measured by.

Every part that needs an objective's direction, label, axis scale or whether a space may search
it reads :data:`OBJECTIVES` (the search's schema and Optuna directions, the results' Pareto
front, knee, plots and tables).  Nothing else lists objective names.

``test_accuracy`` is reported next to the objectives (a column of every frame) but is never
optimised, so it is not in :data:`OBJECTIVES`; :data:`METRICS` holds the objectives and it, and
the results' column facts (:data:`~nas_sepconv.results.KNOWN_DIRECTIONS`, ...) derive from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..tables import lookup

__all__ = [
    "Objective",
    "OBJECTIVES",
    "METRICS",
    "objective",
    "KNOWN_DIRECTIONS",
    "LOG_SCALE_COLUMNS",
    "PERCENT_COLUMNS",
    "AXIS_LABELS",
]


@dataclass(frozen=True)
class Objective:
    """One metric: its column, direction, how it is shown and how a trial measures it.

    Attributes:
        name: the metric name, which is also the DataFrame column and the Optuna metric name.
        direction: ``"maximize"`` or ``"minimize"``.
        label: the axis and column label.
        log_axis: plotted on a logarithmic axis (the values span orders of magnitude).
        percent: a fraction shown x100 in tables and plots.
        measured_by: one line: how a trial measures it.
        searchable: may be listed in a space's ``search.objectives`` (``reward`` is the
            scalarised mode's single objective, never listed).
        test_column: the column holding the same metric measured on the test split, where the
            comparison protocol scores a front chosen on validation (``accuracy``:
            ``test_accuracy``); None: the metric does not depend on the data split (MACs).
        chance: the metric's value by chance is ``1 / num_classes`` (accuracy): the
            comparison's chance reference point uses it.
    """

    name: str
    direction: str
    label: str
    log_axis: bool
    percent: bool
    measured_by: str
    searchable: bool
    test_column: str | None = None
    chance: bool = False

    def __post_init__(self) -> None:
        if self.direction not in ("maximize", "minimize"):
            raise ValueError(
                f"Objective {self.name!r}: direction must be 'maximize' or 'minimize', got {self.direction!r}"
            )


def _table(*records: Objective) -> dict[str, Objective]:
    return {r.name: r for r in records}


#: The objectives, by name, in the order a space lists them.
OBJECTIVES: dict[str, Objective] = _table(
    Objective(
        "accuracy",
        "maximize",
        "Validation accuracy (%)",
        log_axis=False,
        percent=True,
        measured_by="top-1 accuracy on the validation split after training",
        searchable=True,
        test_column="test_accuracy",
        chance=True,
    ),
    Objective(
        "macs",
        "minimize",
        "MACs (multiply-accumulates)",
        log_axis=True,
        percent=False,
        measured_by="multiply-accumulates of conv and linear weights and of activation-by-activation "
        "products (attention) for one input (ns.count_macs)",
        searchable=True,
    ),
    Objective(
        "params",
        "minimize",
        "Parameters",
        log_axis=True,
        percent=False,
        measured_by="trainable parameters of the candidate (ns.count_params)",
        searchable=True,
    ),
    Objective(
        "latency_ms",
        "minimize",
        "Latency (ms)",
        log_axis=True,
        percent=False,
        measured_by="median forward time of one input on the search device in search.latency_runtime: predicted "
        "from a latency table of the base model (convert spaces) or measured (ns.measure_latency); "
        "column latency_source says which",
        searchable=True,
    ),
    Objective(
        "reward",
        "maximize",
        "Reward",
        log_axis=False,
        percent=False,
        measured_by="MnasNet's scalarised reward ACC·(MACs/T)^w (the scalarised mode's single objective)",
        searchable=False,
    ),
)

#: Every metric column the results know: the objectives and the reported ``test_accuracy``.
METRICS: dict[str, Objective] = {
    **OBJECTIVES,
    **_table(
        Objective(
            "test_accuracy",
            "maximize",
            "Test accuracy (%)",
            log_axis=False,
            percent=True,
            measured_by="top-1 accuracy on the test split after training (reported, never optimised)",
            searchable=False,
        ),
    ),
}


#: Directions of the metric columns the library knows by name.
KNOWN_DIRECTIONS: dict[str, str] = {name: m.direction for name, m in METRICS.items()}

#: Columns best read on a logarithmic scale (they span orders of magnitude).
LOG_SCALE_COLUMNS: tuple[str, ...] = tuple(name for name, m in METRICS.items() if m.log_axis)

#: Columns holding fractions, shown x100 (as percent).
PERCENT_COLUMNS: tuple[str, ...] = tuple(name for name, m in METRICS.items() if m.percent)
#: The axis label of each known metric column.
AXIS_LABELS: dict[str, str] = {name: m.label for name, m in METRICS.items()}


def objective(name: str) -> Objective:
    """The record of the objective ``name``.

    Raises:
        UserInputError: (field ``search.objectives``) no objective has that name; the message
            lists the names.
    """
    return lookup(OBJECTIVES, name, field="search.objectives", what="objective")
