"""What one search runs with: its space and its options (:class:`~.options.SearchOptions`),
checked and completed by :func:`~nas_sepconv.search.search`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .options import SearchOptions
from .spaces import Space


@dataclass
class Settings:
    space: Space
    #: the options, checked and completed (``trials``, ``storage``, ``study``, ``sampler`` and
    #: ``threads`` filled in; ``timeout`` None for no limit)
    options: SearchOptions
    #: the results folder of the study: ``<options.out>/<options.study>``
    out_dir: Path
    keep_weights: bool = True
    #: which ``search`` call of the study this is (0, 1, ...: counted in the study, see
    #: :func:`~nas_sepconv.search.study.claim_session`); with the worker number it seeds the sampler
    session: int = 0
