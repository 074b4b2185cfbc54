"""``nas-sepconv profile``: per-layer MACs and parameters of a model by name or file
(``nas_sepconv.measure.profile``), optionally its latency."""

from __future__ import annotations

import typer

from ..conversion import latency_table
from ..errors import UserInputError
from ..measure import RUNTIMES, check_threads, count_macs, count_params, find_runtime, measure_latency
from ..measure import profile as profile_model
from ..measure.onnx_profile import onnx_input_shape, onnx_latency, onnx_profile
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
        help="torchvision:NAME, timm:NAME, nas_sepconv:NAME, package.module:factory, or a file saved by convert/export "
        "(.safetensors, or .onnx: MACs from its graph, latency in onnxruntime)",
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
        if model.lower().endswith(".onnx"):
            _profile_onnx(model, input_size=input_size, latency=latency, threads=threads, runtime=record.name)
            return
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


def _profile_onnx(path: str, *, input_size: str | None, latency: bool, threads: int, runtime: str) -> None:
    """An ONNX file: MACs and parameters per node from its graph, latency in ONNX Runtime."""
    if input_size is not None:
        raise UserInputError("--input-size", "an ONNX file runs at the input size it was exported with", "leave it out")
    if runtime not in ("eager", "onnxruntime"):
        raise UserInputError("--runtime", f"an ONNX file runs in onnxruntime, not {runtime}", "leave --runtime out")
    frame = onnx_profile(path)
    shape = onnx_input_shape(path)
    print_frame(frame, title=f"{path} at {','.join(str(d) for d in shape[1:])} (ONNX graph)")
    out.print(f"total MACs {int(frame['macs'].sum()):,} (FLOPs = 2 x MACs), params {int(frame['params'].sum()):,}")
    if latency:
        table = latency_table(path, threads=threads)
        columns = ["name", "op", "input_shape", "macs", "latency_ms", "p10_ms", "p90_ms"]
        print_frame(table.frame[columns], title=f"latency per Conv node (ONNX Runtime's profiler, {threads} threads)")
        out.print(
            f"the same session, whole model: median {table.model_ms:.2f} ms (p10 {table.model_p10_ms:.2f}, p90 "
            f"{table.model_p90_ms:.2f}); its Conv nodes {table.model_ms - table.remainder_ms:.2f} ms"
        )
        lat = onnx_latency(path, threads=threads)
        out.print(
            f"latency (onnxruntime, batch 1, {threads} threads): median {lat['median_ms']:.2f} ms (p10 "
            f"{lat['p10_ms']:.2f}, p90 {lat['p90_ms']:.2f})"
        )
