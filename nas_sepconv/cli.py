"""The ``nas-sepconv`` command: thin commands, each parsing its flags and calling one library
function.  Bad input: one line on stderr naming what was wrong and how to mend it, exit status
2, no traceback (``--debug`` shows it).  A storage that cannot be written mid-run (disk full,
database gone; not the user's input): one line, exit status 1, and the same command resumes.
Ctrl-C: exit status 130."""

from __future__ import annotations

import sys
import traceback
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from . import results
from .blocks import BlockSpec
from .conversion import PlanWarning, apply_plan, make_plan
from .errors import SearchFailed, StorageError, UserInputError
from .export import check_model_file, export_trial, write_model
from .files import ensure_writable_dir
from .io import load_model, named_model, read_recipe
from .measure import (
    ACTIVATION_BUDGET,
    RUNTIMES,
    activation_bytes,
    check_threads,
    count_macs,
    count_params,
    find_runtime,
    measure_latency,
)
from .measure import profile as profile_model
from .models import model_from_name
from .progress import Progress, shorten
from .recipe import Recipe
from .search import SAMPLERS, SearchStatus, list_spaces, quiet_optuna
from .search import search as run_search

try:  # typer 0.2x vendors click
    from typer._click.exceptions import ClickException
    from typer.exceptions import Abort
except ImportError:  # pragma: no cover - typer with click as a dependency
    from click.exceptions import Abort, ClickException


class _NoFlagType:
    """``--help`` shows no value placeholder (typer writes ``<bool>`` for a flag)."""

    def get_help_option(self, ctx):  # type: ignore[override]
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option


class _Command(_NoFlagType, TyperCommand):
    pass


class _OneLineErrors(_NoFlagType, TyperGroup):
    """Flags typer cannot parse (unknown flag, a value of the wrong type) also end in one line
    on stderr and exit status 2, like the commands' own errors."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # type: ignore[override]
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as exc:
            if type(exc).__name__ != "NoArgsIsHelpError":  # (no arguments: typer printed the help)
                err.print(f"error: {exc.format_message()} (see --help)", markup=False, highlight=False, soft_wrap=True)
            code = exc.exit_code
        except Abort:
            err.print("aborted", highlight=False)
            code = 1
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=_OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    help="Convert CNNs to separable convolutions; search the accuracy-vs-MACs Pareto front.",
)
# markup=False: messages, file names, table cells and status lines are printed as written (rich
# markup would eat "[onnx]" of "pip install 'nas-sepconv[onnx]'"); styles are Text objects
out = Console(width=None if sys.stdout.isatty() else 200, markup=False)  # tables stay readable in logs and pipes
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200, markup=False)
_state = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", metavar="", help="Show tracebacks.")) -> None:
    _state["debug"] = debug


def _guard(fn: Callable[[], Any]) -> Any:
    """Run a command body; bad input becomes one line on stderr and exit status 2."""
    try:
        return fn()
    except UserInputError as exc:
        if _state["debug"]:
            raise
        err.print(_error_line(exc), highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    except (StorageError, SearchFailed) as exc:  # a fault, not the user's input: status 1
        if _state["debug"]:
            raise
        err.print(_error_line(exc), highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130)


def _error_line(exc: BaseException) -> Text:
    """``error: <message>``, the message verbatim (brackets included), the prefix in bold red."""
    return Text.assemble(("error:", "bold red"), f" {exc}")


def parse_input_size(text: str) -> tuple[int, ...]:
    try:  # "3,224,224" or "3x224x224"; an empty or non-integer part is an error, never dropped
        size = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        size = ()
    if not size or len(size) > 4 or any(v <= 0 for v in size):
        raise UserInputError(
            "--input-size", f"{text!r} is not a size", "use comma-separated positive ints, e.g. 3,224,224"
        )
    return size


def example_input(net: Any, size: tuple[int, ...], text: str) -> Any:
    """A random input of batch 1 and ``size`` for ``net``, refused before it is allocated when
    the activations of one forward would exceed ``ACTIVATION_BUDGET`` (estimated on the meta
    device) or the model's first convolution does not take its channel count."""
    shape = (1, *size)
    with _flag_names():
        need = activation_bytes(net, shape)
    if need is None:  # the model does not run on the meta device: the input alone is the bound
        need = 4 * torch.Size(shape).numel()
    if need > ACTIVATION_BUDGET:
        raise UserInputError(
            "--input-size",
            f"{text} needs about {need / 2**30:,.1f} GiB of activations for one example (estimated), above the budget of {ACTIVATION_BUDGET / 2**30:g} GiB",
            f"use a smaller input size, e.g. {size[0]},224,224",
        )
    return torch.randn(shape)


@contextmanager
def _flag_names():
    """Library errors about the example input name the flag (``--input-size``) in their fix."""
    try:
        yield
    except UserInputError as exc:
        if exc.field != "input_size" or not exc.fix:
            raise
        raise UserInputError(exc.field, exc.problem, exc.fix.replace("input size ", "--input-size ")) from exc


def print_frame(df, *, title: str | None = None, max_rows: int = 200) -> None:
    table = Table(title=title, show_lines=False)
    for col in df.columns:
        table.add_column(str(col), overflow="fold")
    for _, row in df.head(max_rows).iterrows():
        table.add_row(*[_fmt(v) for v in row])
    out.print(table)
    if len(df) > max_rows:
        out.print(f"... {len(df) - max_rows} more rows")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and abs(v) >= 10000:
        return f"{v:,}"
    return str(v)


# --------------------------------------------------------------------------------------------
@app.command(cls=_Command)
def convert(
    model: str = typer.Option(
        ..., "--model", metavar="MODEL", help="torchvision:NAME, timm:NAME, nas_sepconv:NAME or package.module:factory"
    ),
    to: str = typer.Option(
        "dwsep",
        "--to",
        metavar="SPEC",
        help="block spec for every eligible conv, e.g. dwsep, dwsep_m2, spatial_r0.5, ir_e4",
    ),
    input_size: str = typer.Option("3,224,224", "--input-size", metavar="C,H,W", help="C,H,W of one input"),
    out_file: Path | None = typer.Option(
        None, "--out", metavar="FILE", help="save the converted model: .safetensors (with its recipe) or .onnx"
    ),
    init: str = typer.Option(
        "svd", "--init", metavar="svd|random", help="svd (closed form from the original weights) or random"
    ),
    num_classes: int | None = typer.Option(
        None, "--num-classes", metavar="N", help="classes of the model's head (default: the model's own)"
    ),
) -> None:
    """Convert a model's convolutions and print the per-site report (macs_ratio: MACs after /
    before per site; for dwsep the MobileNet paper's 1/C_out + 1/K²)."""

    def run() -> None:
        check_model_file(out_file)  # before any work (None: nothing to save)
        size = parse_input_size(input_size)
        spec = BlockSpec.parse(to)
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        net = named_model(model, num_classes=num_classes)
        x = example_input(net, size, input_size)
        with _flag_names(), warnings.catch_warnings():
            warnings.simplefilter("ignore", PlanWarning)  # the same lines are in plan.notes, printed below
            plan = make_plan(net, spec, example_inputs=x)
        converted = apply_plan(net, plan, init=init)
        report = plan.report()[
            ["name", "op", "spec", "reason", "macs_before", "macs_after", "macs_ratio", "params_before", "params_after"]
        ]
        print_frame(report, title=f"{model} -> {spec}")
        out.print(plan.summary())
        for note in plan.notes:
            out.print(f"note: {note}")
        if out_file is not None:
            recipe = Recipe(
                kind="converted",
                model=model,
                model_kwargs=kwargs,
                width_mult=1.0,
                input_size=size,
                plan=plan.to_json(indent=None),
            )
            out.print(f"saved {out_file} ({write_model(out_file, converted, recipe, allow_import=model)})")

    _guard(run)


@app.command(cls=_Command)
def profile(
    model: str = typer.Option(
        ...,
        "--model",
        metavar="MODEL|FILE",
        help="torchvision:NAME, timm:NAME, nas_sepconv:NAME, package.module:factory, or a file saved by convert/export",
    ),
    input_size: str | None = typer.Option(
        None,
        "--input-size",
        metavar="C,H,W",
        help="C,H,W of one input (default: a saved model's recorded input size, else 3,224,224)",
    ),
    latency: bool = typer.Option(False, "--latency", metavar="", help="also measure CPU latency (batch 1)"),
    threads: int = typer.Option(2, "--threads", metavar="N", help="intra-op threads for --latency"),
    runtime: str = typer.Option(
        "eager", "--runtime", metavar="|".join(RUNTIMES), help="what runs the forward for --latency"
    ),
    allow_import: list[str] | None = typer.Option(
        None,
        "--allow-import",
        metavar="MODULE:FACTORY",
        help="package.module:factory a saved model file may import and call (repeatable); registry models need none",
    ),
) -> None:
    """Per-layer MACs and parameters of a model (MACs: multiply-accumulates, bias excluded)."""

    def run() -> None:
        check_threads(threads, "--threads")
        record = find_runtime(runtime, field="--runtime")
        text = input_size if input_size is not None else _recorded_input_size(model) or "3,224,224"
        size = parse_input_size(text)
        net = _load_any_model(model, allow_import=allow_import)
        x = example_input(net, size, text)
        with _flag_names():
            print_frame(profile_model(net, x), title=f"{model} at {size}")
        out.print(f"total MACs {count_macs(net, x):,} (FLOPs = 2 x MACs), params {count_params(net):,}")
        if latency:
            lat = measure_latency(net, x, threads=threads, runtime=record.name)
            out.print(
                f"latency ({record.name}, batch 1, {threads} threads): median {lat['median_ms']:.2f} ms (p10 {lat['p10_ms']:.2f}, p90 {lat['p90_ms']:.2f})"
            )

    _guard(run)


@app.command(cls=_Command)
def spaces() -> None:
    """List the bundled search spaces."""

    def run() -> None:
        for name, description in list_spaces().items():
            out.print(Text.assemble((name, "bold"), f"  {description}"), highlight=False)

    _guard(run)


@app.command(cls=_Command)
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
    heartbeat: int = typer.Option(
        10,
        "--heartbeat",
        metavar="S",
        help="seconds between a running trial's heartbeats; one silent for 3 beats (its worker died) is failed and retried",
    ),
    data_root: Path | None = typer.Option(
        None,
        "--data-root",
        metavar="PATH",
        help="read the data set from this folder or archive instead of the space's data.root",
    ),
    threads: int | None = typer.Option(
        None,
        "--threads",
        metavar="N",
        help="torch intra-op threads per worker process (default: 1 for small inputs such as the 16x16 digits, else the CPU cores divided among the workers)",
    ),
    multi_fidelity: bool | None = typer.Option(
        None,
        "--multi-fidelity/--no-multi-fidelity",
        metavar="",
        help="stop candidates early at rungs of epochs unless in the best 1/eta by non-dominated sorting (MO-ASHA; rungs from the space's search.multi_fidelity, else min_epochs 1, eta 3); default: the space's setting",
    ),
) -> None:
    """Search the accuracy-vs-MACs Pareto front (resumes the study if it exists)."""

    def run() -> None:
        # on a terminal a transient bar (bad input leaves its one error line only), else a plain
        # line every few seconds; the last status stays (nas_sepconv.progress)
        bar = Progress("search", unit="trials", console=err, transient=True, resume=True)
        bar.update(info=_status_line(None))

        def show(status: SearchStatus) -> None:
            bar.update(status.done, total=status.target, info=_status_line(status))

        try:
            with bar:
                result = run_search(
                    space,
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
                    progress=show,
                    data_root=data_root,
                    threads=threads,
                    multi_fidelity=multi_fidelity,
                )
        except KeyboardInterrupt:
            err.print("interrupted: outputs written; run the same command again to resume")
            raise typer.Exit(130)
        _print_report(result.study_name, out_dir / result.study_name)

    _guard(run)


def _status_line(status: SearchStatus | None) -> str:
    """What the search's progress line adds to ``search: done/target trials, rate, ETA``; the
    progress cuts it to the line's width at a space, so the architecture text (last) goes first."""
    if status is None:
        return "starting (loading data, opening the study) ..."
    best = "-" if status.best_accuracy is None else f"{100 * status.best_accuracy:.2f}%"
    counts = ", ".join(f"{n} {what}" for n, what in ((status.running, "running"), (status.failed, "failed")) if n)
    parts = ([counts] if counts else []) + [f"front {status.front_size}", f"best {best}"]
    if status.warning:
        parts.append(f"warning: {shorten(status.warning, 80)}")
    if status.last:
        parts.append(f"last {status.last}")
    return " | ".join(parts)


def _print_report(study_name: str, folder: Path, df: Any = None) -> None:
    """The Pareto table, the original model of a convert search, the files written."""
    df = results.load(folder) if df is None else df
    print_frame(results.pareto_table(df), title=f"Pareto front of {study_name} ({len(df)} trials)")
    if line := results.base_line(df):
        out.print(line)
    for name in ("trials.csv", "pareto.csv", "pareto.png"):
        out.print(f"wrote {folder / name}")


@app.command(cls=_Command)
def report(
    results_dir: Path | None = typer.Argument(
        None, metavar="RESULTS_DIR", help="a results directory (results/<study>)"
    ),
    storage: str | None = typer.Option(
        None, "--storage", metavar="URL", help="Optuna storage URL (instead of RESULTS_DIR)"
    ),
    study: str | None = typer.Option(
        None, "--study", metavar="NAME", help="study name (needed when the storage holds several)"
    ),
    out_dir: Path | None = typer.Option(
        None,
        "--out",
        metavar="DIR",
        help="where to write CSV and PNG (default: the results directory, or results/<study>)",
    ),
    baseline: list[Path] | None = typer.Option(
        None,
        "--baseline",
        metavar="DIR",
        help="a baseline's results directory (e.g. of a mobilenetv2_width_digits search) to compare with, repeatable: hypervolumes on one common reference, comparison.csv and .png",
    ),
) -> None:
    """Print the Pareto table; write trials.csv, pareto.csv, pareto.png (--baseline: comparison.csv, .png)."""

    def run() -> None:
        if (results_dir is None) == (storage is None):
            raise UserInputError(
                "report",
                "give either a results directory or --storage (with --study)",
                "e.g. nas-sepconv report results/default",
            )
        if out_dir is not None:
            ensure_writable_dir(out_dir, "--out")
        df = results.load(results_dir if results_dir is not None else storage, study=study)
        folder = out_dir or (results_dir if results_dir is not None else Path("results") / df.attrs["study"])
        if out_dir is None:  # the outputs go beside the study
            ensure_writable_dir(
                folder,
                "RESULTS_DIR" if results_dir is not None else "--out",
                fix="give --out DIR, a folder you can write to",
            )
        table, paths = (
            results.write_comparison(
                {df.attrs["study"]: df},
                folder,
                baselines=results.load_baselines(baseline, taken=[df.attrs["study"]], field="--baseline"),
                field="--baseline",
            )
            if baseline
            else (None, {})
        )
        results.write_outputs(df, folder)  # (after the comparison: a bad --baseline fails before anything is written)
        _print_report(df.attrs["study"], folder, df)
        if table is not None:
            print_frame(
                results.comparison_table(table),
                title=f"Hypervolumes on one reference point (best baseline: {table.attrs['best_baseline']})",
            )
            out.print(
                "\n".join(
                    [
                        results.reference_line(table) or "no complete trial: no reference point",
                        *(f"wrote {p}" for p in paths.values()),
                    ]
                )
            )

    _guard(run)


@app.command(cls=_Command)
def export(
    trial: int = typer.Option(..., "--trial", metavar="N", help="trial number"),
    results_dir: Path | None = typer.Argument(
        None, metavar="RESULTS_DIR", help="a results directory (results/<study>)"
    ),
    storage: str | None = typer.Option(
        None, "--storage", metavar="URL", help="Optuna storage URL (instead of RESULTS_DIR)"
    ),
    study: str | None = typer.Option(
        None, "--study", metavar="NAME", help="study name (needed when the storage holds several)"
    ),
    out_file: Path = typer.Option(
        ..., "--out", metavar="FILE", help="output file: .safetensors (loads with nas_sepconv.load_model) or .onnx"
    ),
    device: str = typer.Option(
        "cpu", "--device", metavar="cpu|cuda|cuda:N", help="where a trial without saved weights is re-trained"
    ),
    allow_import: list[str] | None = typer.Option(
        None,
        "--allow-import",
        metavar="NAME",
        help="a name the results folder may make us import and call: package.module:factory of a convert space, or a torchvision:DATASET (repeatable)",
    ),
    data_root: Path | None = typer.Option(
        None,
        "--data-root",
        metavar="PATH",
        help="the data set's folder or archive, as given to the search's --data-root (re-training needs the data)",
    ),
) -> None:
    """Rebuild a trial's model (saved weights, or re-trained) and write it to a file."""

    def run() -> None:
        if (results_dir is None) == (storage is None):
            raise UserInputError(
                "export",
                "give either a results directory or --storage (with --study)",
                "e.g. nas-sepconv export results/default --trial 3 --out m.safetensors",
            )
        info = export_trial(
            results_dir if results_dir is not None else storage,
            trial,
            study=study,
            out=out_file,
            device=device,
            allow_import=allow_import,
            data_root=data_root,
        )
        out.print(
            f"trial {trial}: {info['how']}; accuracy {info['accuracy']:.4f} (recorded {info['recorded_accuracy']:.4f}); wrote {out_file}"
        )

    _guard(run)


def _is_model_file(name: str) -> bool:
    return name.endswith(".safetensors") or Path(name).is_file()


def _recorded_input_size(name: str) -> str | None:
    """A saved model's recorded input size (``"C,H,W"``); None for a model by name or none recorded."""
    if not _is_model_file(name):
        return None
    size = read_recipe(name).input_size
    return ",".join(str(v) for v in size) if size else None


def _load_any_model(name: str, *, allow_import: list[str] | None = None):
    if _is_model_file(name):
        return load_model(name, allow_import=allow_import)
    return model_from_name(name).eval()


def main() -> None:
    """Console-script entry point."""
    try:
        quiet_optuna()
        app()
    except UserInputError as exc:  # raised outside a guarded command body, or re-raised by --debug
        if _state["debug"]:  # the traceback, then the same one line and status as without --debug
            traceback.print_exception(exc, file=sys.stderr)
            sys.stderr.flush()
        err.print(f"error: {exc}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C before a command body runs (importing torch takes seconds)
        err.print("interrupted", highlight=False)
        sys.exit(130)


if __name__ == "__main__":
    main()
