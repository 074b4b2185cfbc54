"""The options of one search: the keyword arguments of :func:`~nas_sepconv.search.search`, one
record that the library checks and the CLI builds from its flags (``nas_sepconv.cli.common``
maps each field's name to its flag)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SearchOptions:
    """What a search is asked to do, besides its space (each field is the parameter of
    :func:`~nas_sepconv.search.search` of the same name, documented there).

    As given, a None means "the default"; the settings of a run (:class:`~.settings.Settings`)
    hold the options checked and completed: ``trials``, ``storage``, ``study``, ``sampler``
    and ``threads`` filled in, ``timeout`` None for no limit."""

    #: finished (COMPLETE or PRUNED) trials the study should hold; None: the space's
    trials: int | None = None
    #: stop claiming new trials after this many seconds; None (or inf): no limit
    timeout: float | None = None
    #: an Optuna storage URL or a journal file (``.log``); None: SQLite in the results folder
    storage: str | None = None
    #: the study's name; None: the space's name
    study: str | None = None
    #: a name of :data:`~nas_sepconv.search.SAMPLERS`; None: the space's (tpe in scalarised mode)
    sampler: str | None = None
    #: seeds the samplers and each trial
    seed: int = 0
    #: where the trials train: ``cpu``, ``cuda``, ``cuda:1``
    device: str = "cpu"
    #: local worker processes sharing the storage
    workers: int = 1
    #: the results root; a study's outputs go to ``<out>/<study>/``
    out: str | Path = "results"
    #: retries of a trial whose worker died
    retries: int = 1
    #: seconds between a running trial's heartbeats (RDB storages)
    heartbeat: int = 10
    #: read the data set from here instead of the space's ``data.root``
    data_root: str | Path | None = None
    #: torch's intra-op threads per worker process; None: chosen for the inputs
    threads: int | None = None
    #: the multi-fidelity mode: None keeps the space's, True/False, or ``{"min_epochs": .., "eta": ..}``
    multi_fidelity: bool | dict[str, int] | None = None
    #: stream the data set from disk (True), hold it in memory (False); None: the space's ``data.stream``
    stream: bool | None = None
    #: the data set's memory budget in GB; None: the space's ``data.memory_budget_gb``
    memory_budget_gb: float | None = None
