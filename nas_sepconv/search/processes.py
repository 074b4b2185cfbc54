"""Local worker processes (``--workers N``): how many this machine can run, starting them with
Ctrl-C held back, replacing a killed one, and stopping them all on Ctrl-C or a storage failure."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.queues import SimpleQueue
from typing import Any

import torch

from ..errors import StorageError, UserInputError
from ..storage import open_storage
from .memory import WORKER_MEMORY, available_memory
from .settings import Settings
from .threads import available_cores
from .workers import INTERRUPTED, quiet_optuna, sigint_deferred, worker_loop

#: exit status of a worker stopped by a storage failure (EX_TEMPFAIL); its message goes up a queue
STORAGE_FAILED = 75


def _worker_main(settings: Settings, worker: int, errors: Any = None) -> None:
    """A spawned worker.  It starts with Ctrl-C blocked (see :func:`_start_worker`): a Ctrl-C
    while it imported torch would have printed a traceback per worker; it arrives now."""
    quiet_optuna()
    torch.set_num_threads(settings.options.threads or max(1, available_cores() // max(1, settings.options.workers)))

    def interrupt_once(signum: int, frame: Any) -> None:  # Ctrl-C reaches us and the parent forwards it
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        INTERRUPTED.set()
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGINT, interrupt_once)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        worker_loop(settings, worker, parent=os.getppid())
    except KeyboardInterrupt:  # the running trial is recorded FAIL; exit without a traceback
        sys.exit(130)
    except StorageError as exc:  # the parent reports it, once
        if errors is not None:
            errors.put(str(exc))
        sys.exit(STORAGE_FAILED)


def check_workers(workers: int) -> None:
    """At most one worker per CPU core, and ~1 GiB of available memory per worker: more start
    that many torch processes that only fight over cores and memory (or get OOM-killed)."""
    cores = available_cores()
    memory = available_memory()
    by_memory = max(1, memory // WORKER_MEMORY) if memory is not None else workers
    cap = min(cores, by_memory)
    if workers > cap:
        why = (
            f"{cores} CPU cores"
            if cap == cores
            else f"{memory / (1 << 30):.1f} GiB of available memory at ~1 GiB per worker"
        )
        raise UserInputError(
            "workers", f"{workers} is more than this machine can run ({cap}: {why})", f"use workers={cap} or fewer"
        )


def _start_worker(ctx: SpawnContext, settings: Settings, number: int, errors: SimpleQueue) -> SpawnProcess:
    """Start a spawned worker with Ctrl-C blocked: a terminal's Ctrl-C reaches every process of
    the group, and a worker still importing torch would die with a traceback of its own.  The
    blocked mask survives fork and exec; the worker unblocks it once its handler is in place,
    and a Ctrl-C that came meanwhile is delivered then (here too, after the start)."""
    proc = ctx.Process(target=_worker_main, args=(settings, number, errors), daemon=False)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        proc.start()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    return proc


def run_workers(settings: Settings, update: Callable[[], None]) -> None:
    """Run ``settings.options.workers`` spawned worker processes to the end, replacing killed ones and
    calling ``update`` when the count of finished trials changes; on Ctrl-C or a failed storage,
    stop them all (each records its running trial as FAIL) and raise."""
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.SimpleQueue()
    procs: dict[int, SpawnProcess] = {}
    restarts = 0
    seen = -1
    try:
        for i in range(settings.options.workers):
            procs[i] = _start_worker(ctx, settings, i, errors)
        storage = open_storage(settings.options.storage)
        study_id = storage.get_study_id_from_name(settings.options.study)
        while procs:
            time.sleep(1.0)
            if INTERRUPTED.is_set():  # swallowed on the way: see _interrupt
                raise KeyboardInterrupt
            for i, p in list(procs.items()):
                if p.exitcode is None:
                    continue
                del procs[i]
                if p.exitcode == STORAGE_FAILED:  # every worker would fail the same way
                    raise StorageError(
                        errors.get()
                        if not errors.empty()
                        else "storage: a worker could not write to the storage; run the same command again to resume"
                    )
                if p.exitcode != 0 and restarts < 4 * settings.options.workers:  # a killed worker is replaced
                    restarts += 1
                    procs[i] = _start_worker(ctx, settings, i + settings.options.workers * restarts, errors)
            finished = sum(t.state.is_finished() for t in storage.get_all_trials(study_id, deepcopy=False))
            if finished != seen:
                seen = finished
                update()
    except BaseException:  # Ctrl-C or a failed storage: each worker records its running trial as FAIL, then stops
        with sigint_deferred():
            for p in procs.values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGINT)
            for p in procs.values():
                p.join(timeout=30)
                if p.exitcode is None:
                    p.terminate()
                    p.join()
        raise
