"""Wall-clock latency of one forward."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.nn as nn

from ..errors import UserInputError
from .inputs import _eval_mode, as_inputs

__all__ = ["MAX_THREADS", "check_threads", "measure_latency"]

MAX_THREADS = 256  # more intra-op threads than this is a typo, not a latency measurement


def measure_latency(
    model: nn.Module,
    example_inputs: Any,
    *,
    repeats: int = 30,
    warmup: int = 5,
    threads: int | None = None,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Wall-clock latency of one forward (eval mode, no grad): median, p10 and p90 in ms over
    ``repeats`` timed runs after ``warmup`` runs.  ``threads`` sets torch's intra-op threads for
    the measurement (restored after).  On CUDA the device is synchronised around each run."""
    check_threads(threads, "threads")
    inputs = as_inputs(example_inputs)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    inputs = tuple(t.to(device) for t in inputs)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    try:
        with _eval_mode(model), torch.inference_mode():
            for i in range(warmup + repeats):
                sync()
                start = time.perf_counter()
                model(*inputs)
                sync()
                if i >= warmup:
                    times.append((time.perf_counter() - start) * 1000)
    finally:
        torch.set_num_threads(old_threads)
    times.sort()
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]  # noqa: E731
    return {"median_ms": statistics.median(times), "p10_ms": q(0.1), "p90_ms": q(0.9)}


def check_threads(threads: Any, field: str) -> None:
    """``threads`` is ``None`` (torch's setting) or an int in [1, :data:`MAX_THREADS`]."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise UserInputError(field, f"expected an integer in [1, {MAX_THREADS}], got {threads!r}", "use e.g. 1 or the number of CPU cores")
