"""``nas-sepconv export``: rebuild a trial's model and write it to a file (``export_trial``)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..export import export_trial
from .common import RESULTS_DIR, RESULTS_STORAGE, RESULTS_STUDY, guard, out, results_source


def export(
    trial: int = typer.Option(..., "--trial", metavar="N", help="trial number"),
    results_dir: Path | None = RESULTS_DIR,
    storage: str | None = RESULTS_STORAGE,
    study: str | None = RESULTS_STUDY,
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
        help=(
            "a name the results folder may make us import and call: package.module:factory of a convert space, or a "
            "torchvision:DATASET (repeatable)"
        ),
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
        source = results_source(
            results_dir,
            storage,
            command="export",
            example="e.g. nas-sepconv export results/default --trial 3 --out m.safetensors",
        )
        info = export_trial(
            source,
            trial,
            study=study,
            out=out_file,
            device=device,
            allow_import=allow_import,
            data_root=data_root,
        )
        out.print(
            f"trial {trial}: {info['how']}; accuracy {info['accuracy']:.4f} (recorded "
            f"{info['recorded_accuracy']:.4f}); wrote {out_file}"
        )

    guard(run)
