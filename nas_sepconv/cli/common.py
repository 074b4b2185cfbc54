"""What the commands share: the typer app and its one-line error handling (bad input: exit status
2; a storage fault: 1; Ctrl-C: 130), the consoles, ``print_frame``, the input size and the
example input, a model by name or by file, and the console-script entry point ``main``."""

from __future__ import annotations

import re
import sys
import traceback
from collections.abc import Callable, Collection
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from ..errors import SearchFailed, StorageError, UserInputError
from ..io import load_model, read_recipe
from ..measure import ACTIVATION_BUDGET, activation_bytes
from ..models import model_from_name
from ..search import quiet_optuna

try:  # typer 0.2x vendors click
    from typer._click.exceptions import ClickException
    from typer._click.globals import get_current_context
    from typer.exceptions import Abort
except ImportError:  # pragma: no cover - typer with click as a dependency
    from click import get_current_context
    from click.exceptions import Abort, ClickException


class _NoFlagType:
    """``--help`` shows no value placeholder (typer writes ``<bool>`` for a flag)."""

    def get_help_option(self, ctx):  # type: ignore[override]
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option


class Command(_NoFlagType, TyperCommand):
    pass


class _OneLineErrors(_NoFlagType, TyperGroup):
    """Flags typer cannot parse (unknown flag, a value of the wrong type) also end in one line
    on stderr and exit status 2, like the commands' own errors."""

    def main(  # type: ignore[override]
        self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra
    ):
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
#: --debug, and the flags of the command running (the parameters its errors name become these)
_state: dict[str, Any] = {"debug": False, "flags": frozenset()}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", metavar="", help="Show tracebacks.")) -> None:
    _state["debug"] = debug


#: the library's parameters (the names its errors give) -> the flags that set them, in every
#: command that has the flag (elsewhere a name such as ``threads`` is a field of a results folder)
FLAGS: dict[str, str] = {
    "trials": "--trials",
    "timeout": "--timeout",
    "storage": "--storage",
    "study": "--study",
    "sampler": "--sampler",
    "seed": "--seed",
    "device": "--device",
    "workers": "--workers",
    "out": "--out",
    "retries": "--retries",
    "heartbeat": "--heartbeat",
    "data_root": "--data-root",
    "threads": "--threads",
    "multi_fidelity": "--multi-fidelity",
    "stream": "--stream",
    "memory_budget_gb": "--memory-budget",
    "input_size": "--input-size",
    "finalize": "--finalize",
    "trial": "--trial",
    "allow_import": "--allow-import",
}
# "name: " at the start (the field), "name=" anywhere (a value to give, or "name=" alone: the parameter)
_FIELD = re.compile(rf"^({'|'.join(FLAGS)}): ")
_KEYWORD = re.compile(rf"(?<![\w.-])({'|'.join(FLAGS)})=(?=([^\s,;.)]?))")


def with_flags(message: str, flags: Collection[str] | None = None) -> str:
    """A library error's message as the command line reads it: the parameters it names
    (``trials: ...``, ``give trials=5``) become their flags (``--trials: ...``, ``give --trials 5``);
    ``flags``: the command's (None: every flag of :data:`FLAGS`), a parameter without one stays."""

    def flag(name: str) -> str | None:
        return FLAGS[name] if flags is None or FLAGS[name] in flags else None

    message = _FIELD.sub(lambda m: f"{flag(m[1]) or m[1]}: ", message)
    return _KEYWORD.sub(lambda m: (flag(m[1]) + (" " if m[2] else "")) if flag(m[1]) else m[0], message)


def _command_flags() -> frozenset[str]:
    """The flags of the command running now (none outside a command)."""
    ctx = get_current_context(silent=True)
    return frozenset(opt for p in ctx.command.params for opt in p.opts) if ctx is not None else frozenset()


def guard(fn: Callable[[], Any]) -> Any:
    """Run a command body; bad input becomes one line on stderr and exit status 2."""
    _state["flags"] = _command_flags()
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
    return Text.assemble(("error:", "bold red"), f" {with_flags(str(exc), _state['flags'])}")


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
    with flag_names():
        need = activation_bytes(net, shape)
    if need is None:  # the model does not run on the meta device: the input alone is the bound
        need = 4 * torch.Size(shape).numel()
    if need > ACTIVATION_BUDGET:
        raise UserInputError(
            "--input-size",
            f"{text} needs about {need / 2**30:,.1f} GiB of activations for one example (estimated), above the "
            f"budget of {ACTIVATION_BUDGET / 2**30:g} GiB",
            f"use a smaller input size, e.g. {size[0]},224,224",
        )
    return torch.randn(shape)


@contextmanager
def flag_names():
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


#: where ``report`` and ``export`` read a search's results: its folder, or its storage and study
RESULTS_DIR = typer.Argument(None, metavar="RESULTS_DIR", help="a results directory (results/<study>)")
RESULTS_STORAGE = typer.Option(None, "--storage", metavar="URL", help="Optuna storage URL (instead of RESULTS_DIR)")
RESULTS_STUDY = typer.Option(None, "--study", metavar="NAME", help="study name (needed when the storage holds several)")


def results_source(results_dir: Path | None, storage: str | None, *, command: str, example: str) -> Path | str:
    """Where a command reads a search's results: its results directory or its ``--storage``,
    exactly one of them given (else a :class:`UserInputError` showing ``example``)."""
    if (results_dir is None) == (storage is None):
        raise UserInputError(command, "give either a results directory or --storage (with --study)", example)
    return results_dir if results_dir is not None else storage


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and abs(v) >= 10000:
        return f"{v:,}"
    return str(v)


def _is_model_file(name: str) -> bool:
    return name.endswith(".safetensors") or Path(name).is_file()


def recorded_input_size(name: str) -> str | None:
    """A saved model's recorded input size (``"C,H,W"``); None for a model by name or none recorded."""
    if not _is_model_file(name):
        return None
    size = read_recipe(name).input_size
    return ",".join(str(v) for v in size) if size else None


def load_any_model(name: str, *, allow_import: list[str] | None = None):
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
        err.print(f"error: {with_flags(str(exc), _state['flags'])}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C before a command body runs (importing torch takes seconds)
        err.print("interrupted", highlight=False)
        sys.exit(130)
