"""Seeding a run: the generators of Python, NumPy and torch, and torch's deterministic
algorithms on the CPU, so that a trial (or a base model) trained twice comes out the same."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


@contextlib.contextmanager
def seeded(seed: int, device: str) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's generators with ``seed``; on the CPU also make torch
    choose deterministic algorithms (warning where there is none) for the block, and restore its
    settings afterwards.  A trial run in this block twice on the CPU gives the same weights and
    accuracy, bit for bit.  On CUDA the generators are seeded but kernels are not forced to be
    deterministic (atomics in cuDNN's backward, AMP): a re-run agrees to within the run-to-run
    noise of the validation accuracy (typically well under a point), not exactly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    cpu = torch.device(device).type == "cpu"
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if cpu:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        if cpu:
            torch.use_deterministic_algorithms(before[0], warn_only=before[1])
