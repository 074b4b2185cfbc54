"""``nas-sepconv profile``: per-layer MACs and parameters of a model by name or file
(``nas_sepconv.measure.profile``), optionally its latency."""

from __future__ import annotations

import typer

from ..measure import RUNTIMES, check_threads, count_macs, count_params, find_runtime, measure_latency
from ..measure import profile as profile_model
from .common import (
    example_input,
    flag_names,
    guard,
    load_any_model,
    out,
    parse_input_size,
    print_frame,
    recorded_input_size,
)


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
        text = input_size if input_size is not None else recorded_input_size(model) or "3,224,224"
        size = parse_input_size(text)
        net = load_any_model(model, allow_import=allow_import)
        x = example_input(net, size, text)
        with flag_names():
            print_frame(profile_model(net, x), title=f"{model} at {size}")
        out.print(f"total MACs {count_macs(net, x):,} (FLOPs = 2 x MACs), params {count_params(net):,}")
        if latency:
            lat = measure_latency(net, x, threads=threads, runtime=record.name)
            out.print(
                f"latency ({record.name}, batch 1, {threads} threads): median {lat['median_ms']:.2f} ms (p10 "
                f"{lat['p10_ms']:.2f}, p90 {lat['p90_ms']:.2f})"
            )

    guard(run)
