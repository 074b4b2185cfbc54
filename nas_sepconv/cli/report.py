"""``nas-sepconv report``: the Pareto table of a study and its output files (``nas_sepconv.results``),
with a comparison against baselines; ``print_report`` is also how a search ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .. import results
from ..files import ensure_writable_dir
from .common import RESULTS_DIR, RESULTS_STORAGE, RESULTS_STUDY, guard, out, print_frame, results_source


def print_report(study_name: str, folder: Path, df: Any = None) -> None:
    """The Pareto table, the original model of a convert search, the files written."""
    df = results.load(folder) if df is None else df
    print_frame(results.pareto_table(df), title=f"Pareto front of {study_name} ({len(df)} trials)")
    for line in (results.base_line(df), results.finalized_line(df)):
        if line:
            out.print(line)
    for name in ("trials.csv", "pareto.csv", "pareto.png"):
        out.print(f"wrote {folder / name}")


def report(
    results_dir: Path | None = RESULTS_DIR,
    storage: str | None = RESULTS_STORAGE,
    study: str | None = RESULTS_STUDY,
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
        help=(
            "a baseline's results directory (e.g. of a mobilenetv2_width_digits search) to compare with, "
            "repeatable: hypervolumes on one common reference, comparison.csv and .png"
        ),
    ),
) -> None:
    """Print the Pareto table; write trials.csv, pareto.csv, pareto.png (--baseline: comparison.csv, .png)."""

    def run() -> None:
        source = results_source(
            results_dir, storage, command="report", example="e.g. nas-sepconv report results/default"
        )
        if out_dir is not None:
            ensure_writable_dir(out_dir, "--out")
        df = results.load(source, study=study)
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
        print_report(df.attrs["study"], folder, df)
        if table is not None:
            print_frame(
                results.comparison_table(table),
                title=f"Hypervolumes over the best baseline's ({table.attrs['best_baseline']}), on one reference point",
            )
            out.print(
                "\n".join(
                    [
                        results.reference_line(table) or "no complete trial: no reference point",
                        results.protocol_line(table) or "no test accuracy: no test-split ratio",
                        *(f"wrote {p}" for p in paths.values()),
                    ]
                )
            )

    guard(run)
