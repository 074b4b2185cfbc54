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

    #: finished (COMPLETE or PRUNED) trials the study should hold; None: the space's ``search.trials``.
    #: Failed trials do not count.
    trials: int | None = None
    #: stop claiming new trials after this many seconds; None (or inf): no limit
    timeout: float | None = None
    #: any Optuna storage URL, or a journal file path ending in ``.log``; None: SQLite ``<out>/<study>/study.db``
    storage: str | None = None
    #: the study's name; None: the space's name
    study: str | None = None
    #: a name of :data:`~nas_sepconv.search.SAMPLERS`; None: the space's (tpe in scalarised mode)
    sampler: str | None = None
    #: seeds the sampler and each trial (seed + trial number).  The first worker of the first run of a
    #: study seeds its sampler with ``seed``; every other worker, and every resumed run, with a seed
    #: derived from ``seed``, the run's number in the study and the worker's, so that none replays
    #: another's draws and the same commands with the same seed give the same trials
    seed: int = 0
    #: where the trials train: ``cpu``, ``cuda``, ``cuda:1``
    device: str = "cpu"
    #: local worker processes sharing the storage
    workers: int = 1
    #: the results root; a study's outputs go to ``<out>/<study>/``
    out: str | Path = "results"
    #: how many times a trial whose worker died is retried (heartbeat detection)
    retries: int = 1
    #: heartbeat interval in seconds (RDB storages); a RUNNING trial without a heartbeat for 3
    #: intervals is marked FAIL
    heartbeat: int = 10
    #: read the data set from this folder or file instead of the space's ``data.root``.  A relative
    #: ``data.root`` in a space file is read from the file's folder; none: the per-user folder of
    #: :func:`nas_sepconv.data.default_data_root`
    data_root: str | Path | None = None
    #: torch's intra-op threads per worker process; None: :func:`~nas_sepconv.search.threads.choose_threads`
    #: (1 for small inputs such as the 16x16 digits, else the cores divided among the workers)
    threads: int | None = None
    #: the multi-fidelity mode (MO-ASHA, :mod:`~nas_sepconv.search.asha`): None keeps the space's
    #: ``search.multi_fidelity``, True turns it on (min_epochs 1, eta 3 unless the space says), False
    #: off, or ``{"min_epochs": .., "eta": ..}``
    multi_fidelity: bool | dict[str, int] | None = None
    #: stream an image-folder data set from disk (True) or hold it in memory (False); None: the space's
    #: ``data.stream`` (default ``auto``: streamed when its decoded images exceed the memory budget;
    #: :mod:`nas_sepconv.data.memory`)
    stream: bool | None = None
    #: the data set's memory budget in GB; None: the space's ``data.memory_budget_gb``, else half the
    #: machine's memory
    memory_budget_gb: float | None = None
    #: after the trials (mode oneshot), train the K candidates of the inherited-accuracy front
    #: alone (spread over the front when it holds more), from their inherited weights or from
    #: scratch (the space's ``search.finalize_from``) for ``search.finalize_epochs``;
    #: :func:`~nas_sepconv.search.finalization.finalize_front`.  None: no finalisation
    finalize: int | None = None
