"""``nas-sepconv convert``: convert a model's convolutions (``make_plan``, ``apply_plan``), print
the per-site report, optionally save the converted model."""

from __future__ import annotations

import warnings
from pathlib import Path

import typer

from ..blocks import BlockSpec
from ..conversion import INITS, PlanWarning, apply_plan, make_plan
from ..export import check_model_file, write_model
from ..io import named_model
from ..recipe import Recipe
from .common import example_input, flag_names, guard, out, parse_input_size, print_frame


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
        next(iter(INITS)),
        "--init",
        metavar="|".join(INITS),
        help=", ".join(f"{m.name} ({m.doc})" for m in INITS.values()),
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
        with flag_names(), warnings.catch_warnings():
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
                plan=plan,
            )
            out.print(f"saved {out_file} ({write_model(out_file, converted, recipe, allow_import=model)})")

    guard(run)
