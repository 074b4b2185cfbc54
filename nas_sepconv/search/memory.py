"""The search's memory: what it will need (checked before it starts) and what it took (the peak,
measured while it runs, reported in the final status and in ``meta.json``).

Measured as the proportional set size (PSS, Linux's ``/proc/<pid>/smaps_rollup``) summed over the
search's process and all its descendants (worker processes, DataLoader workers): a page shared by
N processes (the memory-mapped data set, torch's libraries) counts once in total, not N times, so
the figure is what the machine gives the search.  Elsewhere: the largest resident set of the
process and of its children (``getrusage``), which counts shared pages in each.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from pathlib import Path
from typing import Any

from ..data import Dataset
from ..data.memory import MemoryPlan, format_bytes, machine_memory
from ..errors import UserInputError

__all__ = ["MemoryWatch", "WORKER_MEMORY", "available_memory", "check_memory", "data_record", "tree_pss"]

#: host memory a worker process needs besides the data set (torch, one model training, batches)
WORKER_MEMORY = 1 << 30

_PROC = Path("/proc")


def available_memory() -> int | None:
    """Available host memory in bytes (``MemAvailable`` of /proc/meminfo; else free pages)."""
    try:
        with open(_PROC / "meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(data: Dataset, *, workers: int) -> int:
    """Refuse a search that would not fit this machine's memory: the data set held once (unless
    streamed) plus :data:`WORKER_MEMORY` per worker process.  Returns the estimate in bytes."""
    held = 0 if data.streamed else data.decoded_bytes
    need = held + workers * WORKER_MEMORY
    total = machine_memory()
    if need <= total:
        return need
    what = f"the data set held in memory ({format_bytes(held)}) and " if held else ""
    problem = (
        f"this search needs about {format_bytes(need)}: {what}{workers} worker(s) at ~{format_bytes(WORKER_MEMORY)} "
        f"each, more than this machine's {format_bytes(total)}"
    )
    fitting = (total - held) // WORKER_MEMORY
    if fitting >= 1:
        raise UserInputError("workers", problem, f"use {fitting} worker(s) or fewer")
    raise UserInputError("data.stream", problem, "stream the data set (data.stream: true in the space file)")


def data_record(data: Dataset, *, plan: MemoryPlan) -> dict[str, Any]:
    """What ``meta.json`` records of the data set a search reads, and a short ``note`` of how it is
    held that the search's status line shows (``data 983 MB in memory``, ``data 25.6 GB streamed``)."""
    limit = plan.limit
    images = len(data.train) + len(data.val) + len(data.test)
    note = f"data {format_bytes(data.decoded_bytes)} {'streamed' if data.streamed else 'in memory'}"
    return {
        "dataset": data.name,
        "images": images,
        "train_images": len(data.train),
        "decoded_bytes": data.decoded_bytes,
        "streamed": data.streamed,
        "memory_budget_bytes": limit,
        "note": note,
    }


def _children() -> dict[int, list[int]]:
    """Process id -> its children's ids, from /proc/<pid>/stat."""
    tree: dict[int, list[int]] = {}
    for entry in os.scandir(_PROC):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"{entry.path}/stat") as fh:
                text = fh.read()
        except OSError:
            continue  # gone
        fields = text[text.rfind(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...
        tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def _pss(pid: int) -> int:
    try:
        with open(_PROC / str(pid) / "smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tree_pss(root: int | None = None) -> int | None:
    """PSS in bytes of process ``root`` (default: this one) and all its descendants; ``None``
    where /proc has no ``smaps_rollup`` (not Linux)."""
    root = os.getpid() if root is None else root
    if not (_PROC / str(root) / "smaps_rollup").exists():
        return None
    tree = _children()
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += _pss(pid)
        todo.extend(tree.get(pid, ()))
    return total


def _rusage_peak() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, kB elsewhere
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) * scale


class MemoryWatch:
    """Samples :func:`tree_pss` of this process's tree every ``interval`` seconds on a daemon
    thread while in the ``with`` block; :attr:`peak` is the largest sample (bytes)."""

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.method = "pss" if tree_pss() is not None else "rusage"

    def sample(self) -> int:
        now = tree_pss() if self.method == "pss" else _rusage_peak()
        self.peak = max(self.peak, now or 0)
        return self.peak

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> MemoryWatch:
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="memory-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
