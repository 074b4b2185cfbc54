"""Progress of long work, on stderr: a rich bar on a terminal, plain periodic lines otherwise.

One helper for every long operation (``fit``/``distill``, ``sensitivity``, ``refit``, the
CLI's search status, the benchmarks), so that a log file or a CI job sees the same as a
terminal: where stderr is not a terminal, a line every few seconds and one at the end::

    refit: 12/40 sites, 1.9/s, elapsed 6s, ETA 15s | layer2.0.conv1

(``done/total``, the rate since the start, elapsed time, the estimated time left, and what the
operation adds).  Lines are at most 120 columns (a terminal's width on a terminal), cut at a
space with an ellipsis.  ``NAS_SEPCONV_PROGRESS_INTERVAL`` sets the seconds between lines
(default 5).  Nothing is shown before the total is known (a search before its study is open:
a bad input then leaves its one error line only).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as _RichProgress
from rich.text import Text

__all__ = ["Progress", "progress", "track", "shorten", "PLAIN_WIDTH", "INTERVAL_ENV"]

#: the width of plain lines (stderr not a terminal)
PLAIN_WIDTH = 120
#: environment variable: seconds between plain progress lines
INTERVAL_ENV = "NAS_SEPCONV_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 5.0
ELLIPSIS = "..."


def shorten(text: str, width: int) -> str:
    """``text`` if it fits in ``width`` columns, else cut at the last space that leaves room for
    an ellipsis (``...``), never inside a token (unless one token alone is wider)."""
    if len(text) <= width:
        return text
    room = width - len(ELLIPSIS)
    if room <= 0:
        return ELLIPSIS[: max(width, 0)]
    cut = text.rfind(" ", 0, room + 1)
    head = text[:cut] if cut > 0 else text[:room]
    return head.rstrip(" |,;:") + ELLIPSIS


def interval_seconds() -> float:
    """Seconds between plain lines: ``NAS_SEPCONV_PROGRESS_INTERVAL`` (> 0), else 5."""
    try:
        value = float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value > 0 and math.isfinite(value) else DEFAULT_INTERVAL


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _rate(per_second: float) -> str:
    if per_second >= 1:
        return f"{per_second:.1f}/s"
    if per_second * 60 >= 1:
        return f"{per_second * 60:.1f}/min"
    return f"{per_second * 3600:.2g}/h"


class _Bar(_RichProgress):
    """A rich progress bar with the operation's text on a line of its own below it."""

    def __init__(self, owner: Progress, *columns: Any, **kwargs: Any) -> None:
        self._owner = owner
        super().__init__(*columns, **kwargs)

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        if self._owner.info:
            yield Text(shorten(self._owner.info, self.console.width), no_wrap=True, overflow="ellipsis")


class Progress:
    """Shows the progress of ``total`` steps of ``description`` on ``console`` (default stderr)
    while used as a context manager; ``update`` reports work done.

    A rich bar where the console is a terminal (``console.is_terminal``; a rich ``Console`` with
    ``force_terminal=True`` counts), else plain lines every ``interval`` seconds and one at the
    end (see the module docstring).  ``transient``: on a terminal the bar is erased at the end
    and the final line printed in its place.  ``resume``: the first ``update``'s count is work
    done before (a resumed search's trials): left out of the rate and the time left.
    """

    def __init__(
        self,
        description: str,
        total: int | None = None,
        *,
        unit: str = "steps",
        console: Console | None = None,
        interval: float | None = None,
        transient: bool = False,
        resume: bool = False,
    ) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.console = console if console is not None else Console(stderr=True, markup=False, highlight=False)
        self.terminal = self.console.is_terminal or self.console.is_jupyter  # a notebook shows rich's widget
        self.interval = interval_seconds() if interval is None else interval
        self.transient, self._resume = transient, resume
        self.completed, self.info = 0, ""
        self._start = self._base_time = time.perf_counter()
        self._base = 0
        self._bar: _Bar | None = None
        self._task: Any = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- reporting ------------------------------------------------------------------------
    def update(
        self, completed: int | None = None, *, advance: int = 0, total: int | None = None, info: str | None = None
    ) -> None:
        """Set the count (``completed``) or add to it (``advance``); ``total`` and ``info`` (the
        operation's own text, e.g. the loss) replace theirs when given."""
        with self._lock:
            if total is not None:
                self.total = total
            if info is not None:
                self.info = info
            if self._resume and completed is not None:  # work done before this run
                self._resume = False
                self._base, self._base_time = completed, time.perf_counter()
                if self._bar is not None:
                    self._bar.reset(self._task, completed=completed, total=self.total)
            self.completed = (completed if completed is not None else self.completed) + advance
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, total=self.total)

    def line(self, final: bool = False, stopped: bool = False) -> str:
        """The plain line of the progress now, at most the width (120 columns off a terminal)."""
        with self._lock:
            done, total, info = self.completed, self.total, self.info
            now = time.perf_counter()
            elapsed, rate_time, rate_done = now - self._start, now - self._base_time, done - self._base
        parts = [f"{self.description}: {done}/{'?' if total is None else total} {self.unit}"]
        rate = rate_done / rate_time if rate_time > 0 and rate_done > 0 else None
        if rate is not None:
            parts.append(_rate(rate))
        parts.append(f"{'stopped after' if stopped else 'took' if final else 'elapsed'} {_duration(elapsed)}")
        if not final and rate is not None and total is not None and total > done:
            parts.append(f"ETA {_duration((total - done) / rate)}")
        text = ", ".join(parts) + (f" | {info}" if info else "")
        return shorten(text, self.console.width if self.terminal else PLAIN_WIDTH)

    # -- showing --------------------------------------------------------------------------
    def __enter__(self) -> Progress:
        self._start = self._base_time = time.perf_counter()
        if self.terminal:
            columns = (
                TextColumn(f"[bold]{self.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(self.unit),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self._bar = _Bar(self, *columns, console=self.console, transient=self.transient)
            self._task = self._bar.add_task(self.description, total=self.total, completed=self.completed)
            self._bar.start()
        else:
            self._ticker = threading.Thread(target=self._tick, name=f"progress:{self.description}", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        if self._bar is not None:
            self._bar.stop()
        if self.total is not None and (not self.terminal or self.transient):
            self._write(self.line(final=True, stopped=exc_type is not None))

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            if self.total is not None:
                self._write(self.line())

    def _write(self, text: str) -> None:
        if self.terminal:
            self.console.print(Text(text), soft_wrap=True)
        else:
            stream = self.console.file
            stream.write(text + "\n")
            stream.flush()


class _Silent:
    """The progress of a library call made without ``progress=True``: shows nothing."""

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None


def progress(enabled: bool, description: str, total: int | None = None, **kwargs: Any) -> Progress | _Silent:
    """A :class:`Progress` when ``enabled``, else one that shows nothing (same methods)."""
    return Progress(description, total, **kwargs) if enabled else _Silent()


def track(
    items: Iterable[Any], enabled: bool, description: str, *, total: int | None = None, **kwargs: Any
) -> Iterator[Any]:
    """Yield ``items``, showing one step per item when ``enabled``."""
    items = list(items) if total is None else items
    with progress(enabled, description, len(items) if total is None else total, **kwargs) as bar:
        for item in items:
            yield item
            bar.update(advance=1)
