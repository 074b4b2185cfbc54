"""CPU latency of original vs converted models, under the same inference optimisations.

    python benchmarks/latency.py --models resnet18 resnet50 --spec dwsep --threads 2 --repeats 30

For each model: build it (``torchvision:NAME`` for a bare name, else any ``source:name`` that
``nas_sepconv.models.model_from_name`` takes), convert it with ``ns.convert(model, SPEC)``, and
time both at batch 1 under each variant, applying the variant to BOTH:

  a. ``eager``             the module as is (naive module swap, BN unfolded, NCHW)
  b. ``fold_bn``           BN folded into the preceding convs (our blocks inlined first)
  c. ``fold_bn+cl``        (b) + channels_last weights and input
  d. ``fold_bn+cl+compile`` (c) + torch.compile (inductor, freezing)

Measurements are interleaved: every round runs every variant's original and converted model
once (A B A B ..., order flipped every other round), and each cell is the median over rounds,
so load from other processes hits both sides alike.  Outputs: a table on stdout,
``OUT/latency.csv`` and ``OUT/latency.md`` (command, torch version, threads, machine, reading),
plus ``OUT/ops.csv``: one ResNet-18 3x3 conv per stage timed alone against its depthwise and
pointwise replacements (how far the depthwise conv is from its MAC share).

Speedup efficiency = speedup / (1 / MACs ratio) = speedup x MACs ratio (1.0: latency falls
exactly as much as MACs).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

import nas_sepconv as ns
from nas_sepconv.conversion import optimize_for_inference
from nas_sepconv.models import model_from_name

VARIANTS = {
    "eager": None,
    "fold_bn": dict(fold_bn=True, channels_last=False),
    "fold_bn+cl": dict(fold_bn=True, channels_last=True),
    "fold_bn+cl+compile": dict(fold_bn=True, channels_last=True, compile=True),
}
COLUMNS = [
    "model",
    "variant",
    "macs_orig",
    "macs_conv",
    "macs_ratio",
    "latency_orig_ms",
    "latency_conv_ms",
    "speedup",
    "efficiency",
    "min_orig_ms",
    "min_conv_ms",
    "efficiency_min",
    "p10_orig_ms",
    "p90_orig_ms",
    "p10_conv_ms",
    "p90_conv_ms",
    "max_abs_diff",
]


def _one_call_ms(model: nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return (time.perf_counter() - start) * 1000


def interleaved(
    pairs: dict[str, tuple[nn.Module, nn.Module]], x: torch.Tensor, repeats: int, warmup: int
) -> dict[str, tuple[list[float], list[float]]]:
    """Per key, the (original, converted) times in ms of ``repeats`` interleaved rounds."""
    times = {k: ([], []) for k in pairs}
    with torch.no_grad():
        for _ in range(warmup):
            for a, b in pairs.values():
                a(x), b(x)
        for r in range(repeats):
            for key, (a, b) in pairs.items():
                order = ((0, a), (1, b)) if r % 2 == 0 else ((1, b), (0, a))
                for side, model in order:
                    times[key][side].append(_one_call_ms(model, x))
    return times


def _q(values: list[float], f: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(f * len(s)))]


def model_name(name: str) -> str:
    return name if ":" in name else f"torchvision:{name}"


def bench_model(name: str, spec: str, x: torch.Tensor, args: argparse.Namespace, notes: list[str]) -> list[dict]:
    torch.manual_seed(0)
    original = model_from_name(model_name(name)).eval()
    t0 = time.perf_counter()
    converted = ns.convert(original, spec, example_inputs=x).eval()
    print(f"[{name}] converted to {spec} in {time.perf_counter() - t0:.1f} s", flush=True)
    macs_o, macs_c = ns.count_macs(original, x), ns.count_macs(converted, x)
    pairs: dict[str, tuple[nn.Module, nn.Module]] = {}
    for variant, options in VARIANTS.items():
        if options is None:
            pairs[variant] = (original, converted)
            continue
        if options.get("compile") and (args.no_compile or (args.compile_models and name not in args.compile_models)):
            notes.append(f"{name}: `{variant}` not run (compile not requested for this model)")
            continue
        t0 = time.perf_counter()
        try:
            pairs[variant] = (
                optimize_for_inference(original, x, **options),
                optimize_for_inference(converted, x, **options),
            )
        except RuntimeError as exc:
            notes.append(f"{name}: `{variant}` skipped: {exc}")
            print(f"[{name}] {variant} skipped: {exc}", flush=True)
            continue
        took = time.perf_counter() - t0
        print(f"[{name}] {variant} prepared in {took:.1f} s", flush=True)
        if options.get("compile"):
            notes.append(f"{name}: compiling original + converted took {took:.0f} s")
    diffs = {}
    with torch.no_grad():
        ref = (original(x), converted(x))
        for variant, (a, b) in pairs.items():
            diffs[variant] = max((a(x) - ref[0]).abs().max().item(), (b(x) - ref[1]).abs().max().item())
    print(f"[{name}] timing {len(pairs)} variants x 2 models x {args.repeats} interleaved rounds", flush=True)
    times = interleaved(pairs, x, args.repeats, args.warmup)
    rows = []
    for variant, (to, tc) in times.items():
        lo, lc = statistics.median(to), statistics.median(tc)
        ratio = macs_c / macs_o
        rows.append(
            dict(
                model=name,
                variant=variant,
                macs_orig=macs_o,
                macs_conv=macs_c,
                macs_ratio=round(ratio, 4),
                latency_orig_ms=round(lo, 2),
                latency_conv_ms=round(lc, 2),
                speedup=round(lo / lc, 3),
                efficiency=round(lo / lc * ratio, 3),
                min_orig_ms=round(min(to), 2),
                min_conv_ms=round(min(tc), 2),
                efficiency_min=round(min(to) / min(tc) * ratio, 3),
                p10_orig_ms=round(_q(to, 0.1), 2),
                p90_orig_ms=round(_q(to, 0.9), 2),
                p10_conv_ms=round(_q(tc, 0.1), 2),
                p90_conv_ms=round(_q(tc, 0.9), 2),
                max_abs_diff=f"{diffs[variant]:.1e}",
            )
        )
    return rows


def bench_ops(args: argparse.Namespace) -> list[dict]:
    """One stride-1 3x3 conv per ResNet-18 stage vs its depthwise and pointwise parts, each
    timed alone (eager, channels_last, interleaved rounds)."""
    rows = []
    for c, hw in ((64, 56), (128, 28), (256, 14), (512, 7)):
        x = torch.randn(1, c, hw, hw).contiguous(memory_format=torch.channels_last)
        ops = {
            "conv3x3": nn.Conv2d(c, c, 3, padding=1, bias=False),
            "dw3x3": nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False),
            "pw1x1": nn.Conv2d(c, c, 1, bias=False),
        }
        macs = {"conv3x3": c * c * 9 * hw * hw, "dw3x3": c * 9 * hw * hw, "pw1x1": c * c * hw * hw}
        ops = {k: m.eval().to(memory_format=torch.channels_last) for k, m in ops.items()}
        times = interleaved(
            {"full": (ops["conv3x3"], ops["dw3x3"]), "pw": (ops["pw1x1"], ops["pw1x1"])},
            x,
            args.repeats * 3,
            args.warmup,
        )
        t = {
            "conv3x3": statistics.median(times["full"][0]),
            "dw3x3": statistics.median(times["full"][1]),
            "pw1x1": statistics.median(times["pw"][0] + times["pw"][1]),
        }
        sep_ms, sep_macs = t["dw3x3"] + t["pw1x1"], macs["dw3x3"] + macs["pw1x1"]
        for op in ops:
            rows.append(
                dict(
                    layer=f"{c}ch@{hw}x{hw}",
                    op=op,
                    macs=macs[op],
                    latency_ms=round(t[op], 4),
                    gmacs_per_s=round(macs[op] / t[op] / 1e6, 1),
                    share_of_dwsep_macs="" if op == "conv3x3" else round(macs[op] / sep_macs, 3),
                    share_of_dwsep_latency="" if op == "conv3x3" else round(t[op] / sep_ms, 3),
                )
            )
        rows.append(
            dict(
                layer=f"{c}ch@{hw}x{hw}",
                op="dw+pw vs conv3x3",
                macs=sep_macs,
                latency_ms=round(sep_ms, 4),
                gmacs_per_s=round(sep_macs / sep_ms / 1e6, 1),
                share_of_dwsep_macs=f"MACs ratio {sep_macs / macs['conv3x3']:.3f}",
                share_of_dwsep_latency=f"efficiency {t['conv3x3'] / sep_ms * sep_macs / macs['conv3x3']:.2f}",
            )
        )
    return rows


def ops_reading(op_rows: list[dict]) -> str:
    parts = []
    for r in op_rows:
        if r["op"] == "dw3x3":
            parts.append(
                f"{r['layer']}: depthwise {100 * r['share_of_dwsep_macs']:.0f}% of the block's MACs, "
                f"{100 * r['share_of_dwsep_latency']:.0f}% of its time"
            )
    return "; ".join(parts) + "."


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def reading(rows: list[dict]) -> str:
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        best = max(mine, key=lambda r: r["efficiency"])
        ok = [r["variant"] for r in mine if r["efficiency"] >= 0.8]
        eff = ", ".join(f"{r['variant']} {r['efficiency']:.2f}" for r in mine)
        verdict = f"meets >= 0.8 with {', '.join(ok)}" if ok else "no variant reaches 0.8"
        spread = max(max(r["p90_orig_ms"] / r["p10_orig_ms"], r["p90_conv_ms"] / r["p10_conv_ms"]) for r in mine)
        noisy = (
            (
                f" CAUTION: p90/p10 up to {spread:.1f}, other processes were competing for the cores; "
                "these medians measure contention as much as compute"
            )
            if spread > 2
            else ""
        )
        out.append(
            f"- {model}: efficiency {eff}; best {best['variant']} (speedup {best['speedup']:.2f}x "
            f"for a {1 / best['macs_ratio']:.2f}x MACs cut); {verdict}.{noisy}"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=["resnet18", "resnet50"],
        help="resnet18, torchvision:NAME or package.module:factory",
    )
    p.add_argument("--spec", default="dwsep", help="conversion policy / block spec (default dwsep)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30, help="interleaved timing rounds (default 30)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    p.add_argument("--compile-models", nargs="*", default=None, help="compile only these models (default: all)")
    p.add_argument("--no-ops", action="store_true", help="skip the per-op depthwise/pointwise measurement")
    p.add_argument("--machine", default="2-core shared CPU")
    p.add_argument("--out", type=Path, default=Path("results/latency"))
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    x = torch.randn(1, 3, args.input_size, args.input_size)
    command = "python benchmarks/latency.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    load_before = os.getloadavg()
    started = time.perf_counter()
    rows: list[dict] = []
    notes: list[str] = []
    for name in args.models:
        rows += bench_model(name, args.spec, x, args, notes)
    show = [
        "model",
        "variant",
        "macs_orig",
        "macs_conv",
        "macs_ratio",
        "latency_orig_ms",
        "latency_conv_ms",
        "speedup",
        "efficiency",
        "efficiency_min",
    ]
    table = markdown_table(rows, show)
    print(table, flush=True)
    op_rows = [] if args.no_ops else bench_ops(args)
    op_cols = ["layer", "op", "macs", "latency_ms", "gmacs_per_s", "share_of_dwsep_macs", "share_of_dwsep_latency"]
    if op_rows:
        print(markdown_table(op_rows, op_cols))
    load_after = os.getloadavg()
    wall = time.perf_counter() - started

    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "latency.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    if op_rows:
        with open(args.out / "ops.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=op_cols)
            w.writeheader()
            w.writerows(op_rows)
    md = [
        "# CPU latency: original vs converted",
        "",
        f"Command: `{command}`",
        "",
        f"- torch {torch.__version__}, torchvision {_tv_version()}, Python {platform.python_version()}",
        f"- machine: {args.machine} ({os.cpu_count()} logical CPUs, {platform.processor() or platform.machine()}); "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; total wall time {wall / 60:.1f} min",
        f"- torch threads: {args.threads}; batch 1, {args.input_size}x{args.input_size}, eval, `torch.no_grad`",
        f"- conversion: `ns.convert(model, {args.spec!r}, example_inputs=x)` (weights=None, closed-form init)",
        f"- timing: {args.repeats} interleaved rounds after {args.warmup} warm-up rounds; each round runs every "
        "variant's original and converted model once (order flipped every other round); medians shown, "
        "p10/p90 and best-of-rounds (min) with its efficiency in latency.csv. Every optimisation is applied to both models.",
        "- MACs: conv + linear weight multiply-accumulates (bias excluded); ratio = converted / original; "
        "efficiency = speedup x MACs ratio (1.0 = latency falls as much as MACs).",
        "",
        table,
        "",
        "## Reading",
        "",
        reading(rows),
        "",
    ]
    if notes:
        md += ["Notes:", "", *[f"- {n}" for n in notes], ""]
    if op_rows:
        md += [
            "## One 3x3 conv per ResNet-18 stage vs its depthwise + pointwise parts",
            "",
            "Eager, channels_last, each op alone, interleaved rounds (ops.csv).",
            "",
            markdown_table(op_rows, op_cols),
            "",
            ops_reading(op_rows),
            "",
        ]
    (args.out / "latency.md").write_text("\n".join(md))
    print(
        f"wrote {args.out / 'latency.csv'}, {args.out / 'latency.md'}"
        + (f", {args.out / 'ops.csv'}" if op_rows else "")
    )
    return 0


def _tv_version() -> str:
    try:
        import torchvision

        return torchvision.__version__
    except ImportError:
        return "n/a"


if __name__ == "__main__":
    sys.exit(main())
