"""The search: space files (schema, spaces), suggest(trial), samplers, the study, candidates,
its workers and outputs."""

from __future__ import annotations

from .schema import BLOCK_OPTIONS, LIMITS, SpaceLimits
from .spaces import Space, list_spaces, load_space, parse_space, space_dirs
from .suggestion import Candidate, suggest
from .candidates import TrialContext, build_candidate, run_candidate
from .outputs import SearchStatus
from .run import normalise_storage_url, search, storage_url_for
from .samplers import SAMPLERS, Sampler, grid_of
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
    "TrialContext",
    "build_candidate",
    "grid_of",
    "list_spaces",
    "load_space",
    "normalise_storage_url",
    "open_study",
    "parse_space",
    "quiet_optuna",
    "run_candidate",
    "search",
    "space_dirs",
    "storage_url_for",
    "suggest",
]
