"""``nas-sepconv search``: run the search (``nas_sepconv.search.search``) with its status line on
stderr, then print the Pareto report."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import typer

from ..data.memory import format_bytes
from ..progress import Progress, shorten
from ..search import SAMPLERS, SearchStatus
from ..search.options import SearchOptions
from ..search.run import search_with
from .common import err, guard
from .report import print_report

_HEARTBEAT_HELP = (
    "seconds between a running trial's heartbeats; one silent for 3 beats (its worker died) is failed and retried"
)
_THREADS_HELP = (
    "torch intra-op threads per worker process (default: 1 for small inputs such as the 16x16 digits, else "
    "the CPU cores divided among the workers)"
)
_MULTI_FIDELITY_HELP = (
    "stop candidates early at rungs of epochs unless in the best 1/eta by non-dominated sorting (MO-ASHA; "
    "rungs from the space's search.multi_fidelity, else min_epochs 1, eta 3); default: the space's setting"
)

# The data set's options: where it is read from and how it is held (nas_sepconv.data.memory)
_DATA_ROOT = typer.Option(
    None,
    "--data-root",
    metavar="PATH",
    help="read the data set from this folder or archive instead of the space's data.root",
)
_STREAM = typer.Option(
    None,
    "--stream/--no-stream",
    metavar="",
    help="stream an image-folder data set from disk (DataLoader workers decode each batch), or hold it in "
    "memory; default: the space's data.stream (auto: streamed when its decoded images exceed the budget)",
)
_MEMORY_BUDGET = typer.Option(
    None,
    "--memory-budget",
    metavar="GB",
    help="the data set's memory budget (default: the space's data.memory_budget_gb, else half the machine's memory)",
)

# mode oneshot: the front candidates trained alone after the trials (search/finalization.py)
_FINALIZE = typer.Option(
    None,
    "--finalize",
    metavar="K",
    help="mode oneshot: after the trials, train the K front candidates alone (the space's search.finalize_from "
    "and search.finalize_epochs); their finalised accuracies replace the inherited ones",
)


def search(
    space: str = typer.Option(
        "default", "--space", metavar="NAME|PATH", help="a bundled space name (nas-sepconv spaces) or a YAML path"
    ),
    trials: int | None = typer.Option(
        None, "--trials", metavar="N", help="finished trials the study should hold (default: the space's)"
    ),
    timeout: float | None = typer.Option(
        None, "--timeout", metavar="S", help="stop starting trials after this many seconds"
    ),
    storage: str | None = typer.Option(
        None, "--storage", metavar="URL", help="Optuna storage URL (default: sqlite in the results directory)"
    ),
    study: str | None = typer.Option(None, "--study", metavar="NAME", help="study name (default: the space name)"),
    sampler: str | None = typer.Option(
        None,
        "--sampler",
        metavar="|".join(SAMPLERS),
        help="the sampler (default: the space's search.sampler; tpe in scalarised mode)",
    ),
    seed: int = typer.Option(
        0, "--seed", metavar="N", help="seeds the sampler (worker i: N + i) and each trial (N + trial number)"
    ),
    device: str = typer.Option("cpu", "--device", metavar="cpu|cuda|cuda:N", help="where the trials train"),
    workers: int = typer.Option(1, "--workers", metavar="N", help="local worker processes"),
    out_dir: Path = typer.Option(
        Path("results"), "--out", metavar="DIR", help="results root; outputs go to OUT/STUDY/"
    ),
    retries: int = typer.Option(1, "--retries", metavar="N", help="retries of a trial whose worker died"),
    heartbeat: int = typer.Option(10, "--heartbeat", metavar="S", help=_HEARTBEAT_HELP),
    data_root: Path | None = _DATA_ROOT,
    threads: int | None = typer.Option(
        None,
        "--threads",
        metavar="N",
        help=_THREADS_HELP,
    ),
    multi_fidelity: bool | None = typer.Option(
        None,
        "--multi-fidelity/--no-multi-fidelity",
        metavar="",
        help=_MULTI_FIDELITY_HELP,
    ),
    stream: bool | None = _STREAM,
    memory_budget_gb: float | None = _MEMORY_BUDGET,
    finalize: int | None = _FINALIZE,
) -> None:
    """Search the accuracy-vs-MACs Pareto front (resumes the study if it exists)."""

    options = SearchOptions(
        trials=trials,
        timeout=timeout,
        storage=storage,
        study=study,
        sampler=sampler,
        seed=seed,
        device=device,
        workers=workers,
        out=out_dir,
        retries=retries,
        heartbeat=heartbeat,
        data_root=data_root,
        threads=threads,
        multi_fidelity=multi_fidelity,
        stream=stream,
        memory_budget_gb=memory_budget_gb,
        finalize=finalize,
    )

    def run() -> None:
        bar = _SearchProgress()
        with _resumable_on_ctrl_c(), bar:
            result = search_with(space, options, progress=bar.show)
        print_report(result.study_name, out_dir / result.study_name)

    guard(run)


class _SearchProgress(Progress):
    """The search's status on stderr: on a terminal a transient bar (bad input leaves its one
    error line only), else a plain line every few seconds; the last status stays
    (nas_sepconv.progress)."""

    def __init__(self) -> None:
        super().__init__("search", unit="trials", console=err, transient=True, resume=True)
        self.update(info=status_line(None))

    def show(self, status: SearchStatus) -> None:
        """The ``progress`` callback of the search: one status after each trial."""
        self.update(status.done, total=status.target, info=status_line(status))


@contextmanager
def _resumable_on_ctrl_c():
    """Ctrl-C during the search: its outputs are written, and the same command resumes it
    (exit status 130)."""
    try:
        yield
    except KeyboardInterrupt:
        err.print("interrupted: outputs written; run the same command again to resume")
        raise typer.Exit(130)


def status_line(status: SearchStatus | None) -> str:
    """What the search's progress line adds to ``search: done/target trials, rate, ETA``; the
    progress cuts it to the line's width at a space, so the architecture text (last) goes first."""
    if status is None:
        return "starting (loading data, opening the study) ..."
    best = "-" if status.best_accuracy is None else f"{100 * status.best_accuracy:.2f}%"
    counts = ", ".join(f"{n} {what}" for n, what in ((status.running, "running"), (status.failed, "failed")) if n)
    parts = ([counts] if counts else []) + [f"front {status.front_size}", f"best {best}"]
    if status.warning:
        parts.append(f"warning: {shorten(status.warning, 80)}")
    if status.data_note:
        parts.append(status.data_note)
    if status.peak_memory:
        parts.append(f"peak memory {format_bytes(status.peak_memory)}")
    if status.last:
        parts.append(f"last {status.last}")
    return " | ".join(parts)
