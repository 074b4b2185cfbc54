"""How many intra-op threads a trial trains with (``--threads N``; default: chosen per workload).

A trial of a small model (the 16x16 digits) gains nothing from torch's intra-op threads: each
op is too small to split, and the threads spin against each other and against whatever else
the machine runs.  Measured on a busy 2-core machine, three trials of the default space took
114-143 s with torch's default thread count and 29-34 s with one thread per process.  Large
inputs (CIFAR-10 at batch 128 and up) do use them: each worker gets its share of the cores.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from ..measure import MAX_THREADS

#: a training batch with fewer input elements than this (batch x C x H x W) is "small": one
#: thread per process.  Digits at batch 128: 32,768 (small); CIFAR-10 at batch 128: 393,216.
SMALL_BATCH_ELEMENTS = 1 << 18


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def choose_threads(input_shape: Sequence[int], *, batch_size: int, workers: int = 1, cores: int | None = None) -> int:
    """The intra-op threads of each worker process: 1 for a small workload (a training batch
    of fewer than :data:`SMALL_BATCH_ELEMENTS` input elements), else ``cores // workers``
    (at least 1, at most :data:`~nas_sepconv.measure.MAX_THREADS`), so that the workers together
    use each core once."""
    cores = available_cores() if cores is None else max(1, cores)
    if batch_size * math.prod(input_shape) < SMALL_BATCH_ELEMENTS:
        return 1
    return min(MAX_THREADS, max(1, cores // max(1, workers)))  # (a trial records them: within --threads' bound)
