"""Wall-clock latency of one forward, in any runtime of :data:`~nas_sepconv.measure.RUNTIMES`,
and the interleaved timing loop that latency tables share."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn

from ..errors import UserInputError
from .inputs import as_inputs, eval_mode, model_device
from .runtimes import find_runtime, prepare_forward

__all__ = [
    "MAX_THREADS",
    "check_threads",
    "measure_latency",
    "reject_stalls",
    "summarise",
    "time_rounds",
    "torch_threads",
]

MAX_THREADS = 256  # more intra-op threads than this is a typo, not a latency measurement


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` for the block (``None``: unchanged), restored after."""
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def time_rounds(
    forwards: Sequence[Callable[[], Any]],
    *,
    repeats: int,
    warmup: int,
    sync: Callable[[], None] = lambda: None,
    on_round: Callable[[], None] = lambda: None,
) -> list[list[float]]:
    """Times in ms of each forward over ``repeats`` interleaved rounds after ``warmup`` rounds:
    every round runs every forward once, in reverse order every other round, so that load from
    other processes and the machine's drift hit each alike (the protocol of results/latency/).
    ``on_round`` is called after each round."""
    times: list[list[float]] = [[] for _ in forwards]
    order = list(enumerate(forwards))
    for r in range(warmup + repeats):
        on_round()
        for i, forward in order if r % 2 == 0 else order[::-1]:
            sync()
            start = time.perf_counter()
            forward()
            sync()
            if r >= warmup:
                times[i].append((time.perf_counter() - start) * 1000)
    return times


#: a time further above the median than this many robust deviations (1.4826 × the median
#: absolute deviation) is a stall, not the op: the scheduler gave the core to another process
STALL_DEVIATIONS = 5.0
#: ... and at least this fraction of the median above it (a tight spread of a fast op is not a stall)
STALL_FLOOR = 0.25


def reject_stalls(times: Sequence[float]) -> list[float]:
    """``times`` less its stalls: those more than :data:`STALL_DEVIATIONS` robust standard
    deviations (1.4826 × the median absolute deviation) and :data:`STALL_FLOOR` × the median
    above the median.  A shared machine stops a process for tens of milliseconds now and then;
    such a round says nothing of the op (the robust outlier rule of F. R. Hampel, "The
    Influence Curve and its Role in Robust Estimation", JASA 1974).  Fast times are never
    rejected: a stall only ever slows."""
    if len(times) < 3:
        return list(times)
    median = statistics.median(times)
    mad = 1.4826 * statistics.median(abs(t - median) for t in times)
    limit = median + max(STALL_DEVIATIONS * mad, STALL_FLOOR * median)
    return [t for t in times if t <= limit]


def summarise(times: list[float]) -> dict[str, float]:
    """Median, p10 and p90 of ``times`` (ms), stalls rejected first (:func:`reject_stalls`)."""
    s = sorted(reject_stalls(times))
    q = lambda f: s[min(len(s) - 1, int(f * len(s)))]  # noqa: E731
    return {"median_ms": statistics.median(s), "p10_ms": q(0.1), "p90_ms": q(0.9)}


def check_repeats(repeats: Any, warmup: Any) -> None:
    for field, value, low in (("repeats", repeats, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserInputError(field, f"expected an integer >= {low}, got {value!r}", "use e.g. repeats=30, warmup=5")


def measure_latency(
    model: nn.Module,
    example_inputs: Any,
    *,
    repeats: int = 30,
    warmup: int = 5,
    threads: int | None = None,
    device: str | torch.device | None = None,
    runtime: str = "eager",
    dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Wall-clock latency of one forward (eval mode, no grad): median, p10 and p90 in ms over
    ``repeats`` timed runs after ``warmup`` runs.  ``threads`` sets the intra-op threads for the
    measurement (torch's, restored after; ONNX Runtime's session).  On CUDA the device is
    synchronised around each run.  ``runtime`` names a record of
    :data:`~nas_sepconv.measure.RUNTIMES` (``eager``, ``channels_last``, ``optimized``,
    ``onnxruntime``); ``dtype`` runs a copy in another dtype (default: the model's).
    ``model`` is never changed."""
    check_threads(threads, "threads")
    check_repeats(repeats, warmup)
    record = find_runtime(runtime)
    inputs = as_inputs(example_inputs)
    device = torch.device(device) if device is not None else model_device(model)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch_threads(threads), eval_mode(model):
        with torch.no_grad():
            forward = prepare_forward(model, inputs, runtime=record, threads=threads, device=device, dtype=dtype)
        with torch.inference_mode():
            (times,) = time_rounds([forward], repeats=repeats, warmup=warmup, sync=sync)
    return summarise(times)


def check_threads(threads: Any, field: str) -> None:
    """``threads`` is ``None`` (torch's setting) or an int in [1, :data:`MAX_THREADS`]."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise UserInputError(
            field,
            f"expected an integer in [1, {MAX_THREADS}], got {threads!r}",
            "use e.g. 1 or the number of CPU cores",
        )
