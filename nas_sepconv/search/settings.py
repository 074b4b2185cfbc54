"""What one search runs with (the checked arguments of :func:`~nas_sepconv.search.search`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .spaces import Space


@dataclass
class Settings:
    space: Space
    trials: int
    timeout: float | None
    storage: str
    study: str
    sampler: str
    seed: int
    device: str
    workers: int
    out_dir: Path
    retries: int
    heartbeat: int
    keep_weights: bool = True
    #: which ``search`` call of the study this is (0, 1, ...: counted in the study, see
    #: :func:`~nas_sepconv.search.study.claim_session`); with the worker number it seeds the sampler
    session: int = 0
    #: intra-op threads of each worker process (``--threads``); None: torch's own setting
    threads: int | None = None
