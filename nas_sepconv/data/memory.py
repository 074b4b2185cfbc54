"""How much memory a data set may take, and whether it is held in memory or streamed from disk.

:class:`MemoryPlan` is the choice :func:`~nas_sepconv.data.load_dataset` makes for a source that can
stream (ImageFolder trees and uncompressed tar archives of them): the images decoded at the
requested size, ``uint8``, are held once per machine (a memory-mapped decoded cache that every
process shares) when they fit ``budget``; else they stay on disk and DataLoader worker processes
decode each batch (:class:`~nas_sepconv.data.images.ImageFiles`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import UserInputError

__all__ = ["MemoryPlan", "machine_memory", "format_bytes"]

#: Share of the machine's memory a data set may take in memory when no budget is given.
DEFAULT_BUDGET_SHARE = 0.5


def machine_memory() -> int:
    """The machine's physical memory in bytes (``MemTotal``; a cgroup limit when lower)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file) as fh:
                text = fh.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def format_bytes(n: float) -> str:
    """``n`` bytes as ``'983 MB'`` / ``'1.5 GB'`` (powers of 1000)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{int(n)} B"


@dataclass(frozen=True)
class MemoryPlan:
    """Whether a data set is streamed: ``stream`` ``True`` (always), ``False`` (never: held in
    memory), ``None`` (when its decoded images exceed ``budget`` bytes; default budget: half the
    machine's memory, :data:`DEFAULT_BUDGET_SHARE`)."""

    stream: bool | None = None
    budget: int | None = None

    def __post_init__(self) -> None:
        if self.stream is not None and not isinstance(self.stream, bool):
            raise UserInputError("dataset.stream", f"expected true, false or auto, got {self.stream!r}")
        if self.budget is not None and (
            isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1
        ):
            raise UserInputError(
                "dataset.memory_budget", f"must be a positive number of bytes, got {self.budget!r}", "use e.g. 4e9"
            )

    @property
    def limit(self) -> int:
        """The budget in bytes (the default when none was given)."""
        return self.budget if self.budget is not None else int(DEFAULT_BUDGET_SHARE * machine_memory())

    def streams(self, decoded_bytes: int) -> bool:
        """Whether a data set of ``decoded_bytes`` (decoded, ``uint8``) is streamed."""
        return self.stream if self.stream is not None else decoded_bytes > self.limit

    def held_in_memory(self, what: str) -> None:
        """Refuse ``stream=True`` for a source that is only ever held in memory (``what``)."""
        if self.stream:
            raise UserInputError(
                "dataset.stream",
                f"{what}; only image folders stream",
                "drop stream, or use an ImageFolder tree (imagefolder:PATH)",
            )
