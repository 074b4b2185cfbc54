"""Optuna orchestration: objectives, samplers, budgets, storage, workers, outputs.

One trial: ``spaces.suggest`` draws a candidate, :func:`build_candidate` makes the model
(built from scratch, or converted from the trained base model with closed-form init and refit),
:func:`run_candidate` trains and evaluates it, and the trial stores everything needed to rebuild
it (``arch_json``: the recipe of :mod:`nas_sepconv.io`) with its ``accuracy`` (validation),
``test_accuracy`` (reported, never used to select), ``macs``, ``params``, ``wall_time_s``.

Pareto mode (default): objectives validation accuracy (max) and MACs (min), optionally params
and latency; NSGA-II by default.  Scalarised mode: MnasNet's reward ``ACC·(MACs/T)^w`` (Tan et
al., CVPR 2019; w = -0.07, or -0.15 as in MobileNetV3-Small), single objective, so a pruner
(median or Hyperband) can stop weak candidates after an epoch; its trials still record both
accuracy and MACs for the Pareto analysis.  Hard budgets (max MACs/params/latency) are Optuna
constraints; a candidate over a MACs/params budget is not trained (accuracy 0, infeasible).

Exactly ``trials`` trials finish (COMPLETE or PRUNED): workers claim a slot under a lock file
and re-check their rank after ``ask`` (several machines on one PostgreSQL storage); a failed
trial (NaN loss, out of memory, invalid candidate, a crash detected by the storage heartbeat)
is recorded as FAIL with its reason and does not use up a slot.  Running the same command again
resumes the study.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna

from ..data import Dataset
from ..errors import StorageError, UserInputError
from ..files import atomic_write, ensure_writable_dir
from ..io import check_device
from ..measure import check_threads, torch_threads
from ..models import model_from_name
from ..results.stored import data_seed_of
from ..storage import normalise_storage_url, open_storage, redact, sqlite_path, storage_url_for, without_password
from .base_model import check_base_cache
from .candidates import TrialContext, build_candidate, run_candidate
from .finalization import check_finalize, finalize_front
from .memory import MemoryWatch, check_memory, data_record
from .options import SearchOptions
from .outputs import SearchStatus, refresh_outputs
from .processes import check_workers, run_workers
from .samplers import check_grid_trials, make_sampler
from .settings import Settings
from .spaces import Space, load_space, with_data_memory, with_data_root, with_multi_fidelity
from .study import claim_session, open_study
from .tally import check_run, counts
from .threads import choose_threads
from .workers import interruptible, sigint_deferred, worker_loop

__all__ = [
    "search",
    "search_with",
    "SearchStatus",
    "build_candidate",
    "run_candidate",
    "storage_url_for",
    "normalise_storage_url",
    "open_study",
]


def search(
    space: str | Path | Space = "default",
    *,
    trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    study: str | None = None,
    sampler: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    workers: int = 1,
    out: str | Path = "results",
    retries: int = 1,
    heartbeat: int = 10,
    progress: Callable[[SearchStatus], None] | None = None,
    data_root: str | Path | None = None,
    threads: int | None = None,
    multi_fidelity: bool | dict[str, int] | None = None,
    stream: bool | None = None,
    memory_budget_gb: float | None = None,
    finalize: int | None = None,
) -> optuna.Study:
    """Run (or resume) a search until ``trials`` trials have finished; returns the study.

    Args:
        space: a bundled space name (``nas-sepconv spaces``) or a YAML path.
        progress: called with a :class:`SearchStatus` once the study is open (the trials it
            holds from earlier runs; no front yet; how the data set is held) and after each
            finished trial (the last one with the peak memory).
        trials, timeout, storage, study, sampler, seed, device, workers, out, retries, heartbeat,
            data_root, threads, multi_fidelity, stream, memory_budget_gb, finalize: the fields of
            :class:`~.options.SearchOptions`, documented there (the CLI's flags of the same names).

    Raises:
        UserInputError: bad input, before anything runs; or every trial of the run failed
            for a reason the space's choices cause (:func:`~.tally.check_run`).
        SearchFailed: every trial of the run failed, or the failure limit stopped it.
        StorageError: the storage or the results folder cannot be written (disk full); what
            finished is kept, and the same call resumes.
    """
    options = SearchOptions(
        trials=trials,
        timeout=timeout,
        storage=storage,
        study=study,
        sampler=sampler,
        seed=seed,
        device=device,
        workers=workers,
        out=out,
        retries=retries,
        heartbeat=heartbeat,
        data_root=data_root,
        threads=threads,
        multi_fidelity=multi_fidelity,
        stream=stream,
        memory_budget_gb=memory_budget_gb,
        finalize=finalize,
    )
    return search_with(space, options, progress=progress)


def search_with(
    space: str | Path | Space, options: SearchOptions, *, progress: Callable[[SearchStatus], None] | None = None
) -> optuna.Study:
    """:func:`search` with its options as one record (how the CLI calls it)."""
    loaded = with_multi_fidelity(load_space(space), options.multi_fidelity)
    if options.data_root is not None:
        loaded = with_data_root(loaded, options.data_root)
    loaded = with_data_memory(loaded, stream=options.stream, budget_gb=options.memory_budget_gb)
    settings = _settings(loaded, options)
    data = _fit_to_data(settings)
    the_study = _open_and_run(settings, progress, data, data_record(data, plan=settings.space.spec.data.memory_plan()))
    if options.finalize is not None:  # trials.csv, the front and the report then show the finalised trials
        finalize_front(settings, the_study, options.finalize, progress=progress is not None)
    return the_study


def _fit_to_data(settings: Settings) -> Dataset:
    """Check the space against its data set and the machine's memory before anything is created
    (bad data, or a convert space's bad base model, would otherwise fail every trial), and choose
    the threads for its inputs unless ``threads`` gave them.  Returns the data set."""
    data = _checked_data(settings.space, given_root=settings.options.data_root is not None)
    check_memory(data, workers=settings.options.workers)
    if settings.options.threads is None:
        threads = choose_threads(
            data.input_shape, batch_size=settings.space.spec.train.batch_size, workers=settings.options.workers
        )
        settings.options = replace(settings.options, threads=threads)
    if settings.space.spec.space_kind.from_base:
        _check_convert(settings.space, data, settings.out_dir)  # a bad base model would otherwise fail every trial
    return data


def _open_and_run(
    settings: Settings, progress: Callable[[SearchStatus], None] | None, dataset: Dataset, data: dict[str, Any]
) -> optuna.Study:
    """Create the results folder, open (or resume) the study, claim this run's session in it
    and record where the study lives and what data it reads (``meta.json``); in a mode whose
    trials inherit their weights, train (or resume, or load) the study's supernet here first,
    its epochs shown when ``progress`` is; run the trials while watching the memory of the
    search's processes (its peak goes to ``meta.json`` and the last status), then check the run
    (every trial failed: an error).  Returns the study."""
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    the_study = open_study(settings)
    settings.session = claim_session(the_study, settings)
    _write_meta(settings, data=data)
    with MemoryWatch() as watch:
        if settings.space.spec.search.search_mode.accuracy_source == "inherited":
            _prepare_supernet(the_study, settings, progress=progress is not None)
        status = _run(the_study, settings, progress, data_note=data["note"])
    with contextlib.suppress(
        StorageError
    ):  # (a full disk) meta.json of the start stays; the run's own error is the one to tell
        _write_meta(settings, data=data, peak_memory=watch.peak)
    status.peak_memory = watch.peak
    if progress:
        progress(status)
    check_run(the_study, settings, unwritten_output=status.unwritten)
    return the_study


def _prepare_supernet(the_study: optuna.Study, settings: Settings, *, progress: bool) -> None:
    """Train (or resume, or load) a one-shot study's supernet in this process, on the data its
    trials read (the study's validation split held out), its epochs shown when ``progress``
    is; the trials then load it from the results folder."""
    source = redact(settings.options.storage)
    ctx = TrialContext(settings, data_seed=data_seed_of(the_study.user_attrs, source=source))
    ctx.study = the_study
    with torch_threads(settings.options.threads):
        ctx.supernet(progress=progress)


def _run(
    the_study: optuna.Study,
    settings: Settings,
    progress: Callable[[SearchStatus], None] | None,
    *,
    data_note: str = "",
) -> SearchStatus:
    """Run the trials (in this process, or in ``settings.options.workers`` processes) until the study
    holds its trials, or the time or the failure limit is up; the outputs are rewritten after
    each trial, and after an error that stops the run.  Returns the last status."""
    update = _updater(the_study, settings, progress, data_note=data_note)
    with interruptible(), torch_threads(settings.options.threads if settings.options.workers == 1 else None):
        try:
            if settings.options.workers == 1:
                worker_loop(settings, 0, on_finish=update)
            else:
                run_workers(settings, update)
        except BaseException:
            with contextlib.suppress(
                Exception
            ):  # the outputs of what finished; never in place of the error that stopped the run
                update()
            raise
        return update()


def _settings(space: Space, options: SearchOptions) -> Settings:
    """The options of :func:`search`, checked (each error names its parameter) and completed,
    as settings; nothing is created but the results folder's parents (checked writable)."""
    trials, timeout, seed = options.trials, options.timeout, options.seed
    if trials is not None and trials < 1:
        raise UserInputError("trials", f"must be >= 1, got {trials}")
    if options.workers < 1:
        raise UserInputError("workers", f"must be >= 1, got {options.workers}")
    check_workers(options.workers)
    check_threads(options.threads, "threads")
    if timeout is not None and math.isnan(timeout):
        raise UserInputError(
            "timeout", "nan is not a number of seconds", "give seconds > 0, or leave it out (or inf) for no limit"
        )
    if timeout is not None and timeout <= 0:
        raise UserInputError("timeout", f"must be > 0 seconds, got {timeout}")
    if timeout == math.inf:  # inf: no limit, as when timeout is left out
        timeout = None
    for name in ("heartbeat", "retries"):
        if getattr(options, name) < 0:
            raise UserInputError(name, f"must be >= 0, got {getattr(options, name)}")
    check_device(options.device, field="device")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        problem = f"must be an integer from 0 to {MAX_SEED} (2**32 - 1), got {seed!r}"
        raise UserInputError("seed", problem, "use e.g. seed=0")
    name = _study_name(options.study, space)
    out_dir = Path(options.out) / name
    ensure_writable_dir(out_dir, "out")  # a new search, or the folder of the one it resumes
    search = space.spec.search
    completed = replace(
        options,
        trials=trials or search.trials,
        timeout=timeout,
        storage=storage_url_for(options.storage, out_dir),
        study=name,
        sampler=options.sampler or search.search_mode.sampler or search.sampler,
    )
    settings = Settings(space=space, options=completed, out_dir=out_dir)
    check_finalize(options.finalize, settings)
    make_sampler(completed.sampler, seed, space)  # validate before creating anything
    check_grid_trials(completed.sampler, space, completed.trials)
    if options.storage is not None:
        open_storage(completed.storage)  # a bad URL fails before the results directory exists
        if completed.storage.startswith("sqlite"):  # SQLite writes a journal beside the database
            ensure_writable_dir(Path(sqlite_path(completed.storage) or ".").parent, "storage")
    return settings


#: the largest seed: NumPy's generators take seeds below 2**32
MAX_SEED = 2**32 - 1
#: the longest study name in bytes: it names the results folder (NAME_MAX of Linux and macOS)
MAX_NAME_BYTES = 255


def _study_name(study: str | None, space: Space) -> str:
    """The study's name (``study``, else the space's ``name``), checked: it names the results
    folder, so it is one usable folder name; an error names where the name came from."""
    name = study or space.name
    if study:
        field, fix = "study", "give another study="
    else:
        field, fix = "space", f"give another name: in {space.path or 'the space'}, or with study=NAME"
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        problem = f"{name[:80]!r} is not a usable study name"
        raise UserInputError(field, problem, f"use letters, digits, '-', '_' and '.'; {fix}")
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        problem = f"the study name {name[:40]!r}... is {size} bytes, more than a folder name takes ({MAX_NAME_BYTES})"
        raise UserInputError(field, problem, fix)
    return name


def _checked_data(space: Space, *, given_root: bool = False) -> Any:
    """The space's data set, loaded once here so that bad data fails early, named by its field
    in the space file (``data_root`` when the search was given the root)."""
    d = space.spec.data
    try:
        return d.load()
    except UserInputError as exc:
        field = "data." + exc.field.removeprefix("dataset.") if exc.field.startswith("dataset") else exc.field
        fix = (
            exc.fix.replace(" (root=)", "") + ", or give data_root=PATH"
            if field == "data.root" and d.root is None and exc.fix
            else exc.fix
        )
        raise UserInputError("data_root" if given_root and field == "data.root" else field, exc.problem, fix) from None


def _write_meta(settings: Settings, *, data: dict[str, Any], peak_memory: int | None = None) -> None:
    """``meta.json`` of the results folder: where the study lives (password left out), the data
    set this run read and how (:func:`data_record`), and after the run the peak memory (bytes,
    PSS of the search's processes: :mod:`.memory`)."""
    space, out_dir = settings.space, settings.out_dir
    meta: dict[str, Any] = {
        "storage": without_password(settings.options.storage),
        "study": settings.options.study,
        "space": space.name,
        "mode": space.spec.search.mode,
        "data": {k: v for k, v in data.items() if k != "note"},
    }
    if peak_memory is not None:
        meta["peak_memory_bytes"] = int(peak_memory)
    try:
        atomic_write(out_dir / "meta.json", json.dumps(meta, indent=2))
    except OSError as exc:  # (the folder was checked writable: a full disk)
        raise StorageError(
            f"out: cannot write {out_dir / 'meta.json'} ({exc.strerror or exc}); free disk space and run the same "
            "command again"
        ) from None


def _updater(
    the_study: optuna.Study,
    settings: Settings,
    progress: Callable[[SearchStatus], None] | None,
    *,
    data_note: str = "",
) -> Callable[[], SearchStatus]:
    """What runs after each finished trial: rewrite the outputs, then show the progress.  The
    study is open: ``progress`` is shown what it holds before this run's first trial, and how
    its data set is held (``data_note``)."""
    if progress:
        n = counts(the_study, settings.session)
        first = SearchStatus(target=settings.options.trials, done=n["done"], failed=n["failed"], running=n["running"])
        first.data_note = data_note
        progress(first)

    def update() -> SearchStatus:
        with sigint_deferred():  # Ctrl-C while writing outputs (or importing matplotlib) waits until they are written
            status = refresh_outputs(the_study, settings.out_dir) or SearchStatus(target=settings.options.trials)
            n = counts(the_study, settings.session)
            status.target, status.done, status.running = settings.options.trials, n["done"], n["running"]
            status.failed, status.data_note = n["failed"], data_note
            done = [t for t in the_study.get_trials(deepcopy=False) if t.state.is_finished()]
            if done:
                last = max(done, key=lambda t: t.number)
                state = (
                    f"stopped early at epoch {last.user_attrs.get('epochs_trained')}"
                    if last.user_attrs.get("stopped_early")
                    else last.state.name
                )
                arch, reason = last.user_attrs.get("arch", ""), last.user_attrs.get("fail_reason", "")
                status.last = f"#{last.number} {state} {arch} {reason}".strip()
            if progress:
                progress(status)
        return status

    return update


def _check_convert(space: Space, data: Any, out_dir: Path) -> None:
    """The base model of a convert space can be built, its weights file exists, and a base
    model cached in the results folder by an earlier run is this space's."""
    c = space.spec.convert
    if c.weights and not Path(c.weights).is_file():
        raise UserInputError(
            "convert.weights",
            f"{c.weights} does not exist",
            "give a state dict (.safetensors or .pt) of the base model, or remove the field to train it",
        )
    try:
        model_from_name(c.model, **dict(c.model_kwargs, num_classes=data.num_classes, in_channels=data.input_shape[0]))
    except UserInputError as exc:
        raise UserInputError(
            f"convert.{exc.field}" if exc.field in ("model", "num_classes", "in_channels") else exc.field,
            exc.problem,
            exc.fix,
        ) from None
    check_base_cache(space, data, out_dir)
