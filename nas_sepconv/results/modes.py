"""The search modes table: one frozen record per way a study ranks its trials.

A space's ``search.mode`` names one; the search (the study's metrics, the default sampler, the
pruner, the values a trial reports) and the results (a stored study's ``mode`` attribute, the
metric name of a one-value study) read :data:`SEARCH_MODES` and nothing else lists the modes.
It lives with the results, the lowest package both read (the results never import the search).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..tables import lookup

__all__ = ["SearchMode", "SEARCH_MODES", "SEARCH_MODE_NAMES", "search_mode"]


@dataclass(frozen=True)
class SearchMode:
    """One search mode.

    Attributes:
        name: what ``search.mode`` says, and the study's ``mode`` attribute.
        metric: the one metric the study registers (an objective of the objectives table),
            or ``None``: one metric per objective the space lists (``search.objectives``).
        sampler: the sampler used when none is given on the command line, or ``None``: the
            space's ``search.sampler``.
        prunes: a trial reports its metric after each epoch, and the space's
            ``search.pruner`` may stop it early.
        multi_fidelity: ``search.multi_fidelity`` (rungs, ASHA) may be set.
        needs: the ``search`` fields the mode needs -> what each is for.
        accuracy_source: how a trial's accuracy is had (the ``accuracy_source`` column):
            ``"trained"``, each candidate trained on its own; ``"inherited"``, its weights taken
            from a weight-sharing supernet trained once per study (a build space's, or a convert
            space's: :mod:`nas_sepconv.search.convert_oneshot`).  A trial
            of such a study that was finalised (trained alone afterwards:
            :mod:`nas_sepconv.search.finalization`) says ``"finalized"``.
        doc: one line.
    """

    name: str
    metric: str | None
    sampler: str | None
    prunes: bool
    multi_fidelity: bool
    needs: Mapping[str, str] = field(default_factory=dict)
    accuracy_source: str = "trained"
    doc: str = ""

    def metric_names(self, objectives: Sequence[str]) -> list[str]:
        """The metric names of a study in this mode whose space lists ``objectives``."""
        return [self.metric] if self.metric is not None else list(objectives)


#: every search mode by name; the first is the default
SEARCH_MODES: dict[str, SearchMode] = {
    m.name: m
    for m in (
        SearchMode(
            "pareto",
            metric=None,
            sampler=None,
            prunes=False,
            multi_fidelity=True,
            doc="one metric per objective; the study's Pareto front is the result (NSGA-II by default)",
        ),
        SearchMode(
            "scalarised",
            metric="reward",
            sampler="tpe",
            prunes=True,
            multi_fidelity=False,
            needs={"target_macs": "the T of MnasNet's reward ACC·(MACs/T)^w"},
            doc="MnasNet's single reward ACC·(MACs/T)^w, maximised; trials stopped early by the pruner",
        ),
        SearchMode(
            "oneshot",
            metric=None,
            sampler=None,
            prunes=False,
            multi_fidelity=False,
            accuracy_source="inherited",
            doc="one metric per objective; each trial's subnet inherits its weights from a supernet trained "
            "once per study (Once-for-All, Cai et al. 2020; BigNAS, Yu et al. 2020), BatchNorm recalibrated",
        ),
    )
}

#: the names, for the schema's ``Literal`` (derived from the table, never listed again)
SEARCH_MODE_NAMES = tuple(SEARCH_MODES)


def search_mode(name: Any, *, field: str = "search.mode") -> SearchMode:
    """The record of the search mode ``name``; :class:`~nas_sepconv.errors.UserInputError`
    naming ``field`` if there is none."""
    return lookup(SEARCH_MODES, name, field=field, what="search mode")
