"""The search: space files (schema, spaces), suggest(trial), samplers, the study, candidates,
its workers and outputs, and the multi-fidelity mode (MO-ASHA, :mod:`.asha`)."""

from __future__ import annotations

from .asha import crowding_distance, nondominated_fronts, promotes, rung_epochs
from .candidates import TrialContext, build_candidate, run_candidate
from .choices import LIMITS, SpaceLimits
from .outputs import SearchStatus
from .run import normalise_storage_url, search, storage_url_for
from .samplers import SAMPLERS, Sampler, grid_of
from .schema import BLOCK_OPTIONS
from .spaces import Space, list_spaces, load_space, parse_space, space_dirs, with_data_root, with_multi_fidelity
from .study import open_study
from .suggestion import Candidate, StoredTrial, suggest, trial_resolution
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
    "StoredTrial",
    "TrialContext",
    "build_candidate",
    "crowding_distance",
    "grid_of",
    "list_spaces",
    "load_space",
    "nondominated_fronts",
    "normalise_storage_url",
    "open_study",
    "parse_space",
    "promotes",
    "quiet_optuna",
    "run_candidate",
    "rung_epochs",
    "search",
    "space_dirs",
    "storage_url_for",
    "suggest",
    "trial_resolution",
    "with_data_root",
    "with_multi_fidelity",
]
