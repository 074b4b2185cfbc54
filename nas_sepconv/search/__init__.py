"""The search: space files, suggest(trial), the study, its workers and outputs."""

from __future__ import annotations

from .schema import BLOCK_OPTIONS, LIMITS, SpaceLimits
from .spaces import Space, list_spaces, load_space, space_dirs
from .suggestion import Candidate, suggest
from .candidates import build_candidate, run_candidate
from .outputs import SearchStatus
from .run import normalise_storage_url, search, storage_url_for
from .samplers import SAMPLERS, Sampler
from .study import open_study
from .workers import quiet_optuna

__all__ = [
    "BLOCK_OPTIONS",
    "Candidate",
    "LIMITS",
    "SAMPLERS",
    "Sampler",
    "SearchStatus",
    "Space",
    "SpaceLimits",
    "build_candidate",
    "list_spaces",
    "load_space",
    "normalise_storage_url",
    "open_study",
    "quiet_optuna",
    "run_candidate",
    "search",
    "space_dirs",
    "storage_url_for",
    "suggest",
]
