"""Predicted against measured latency: per-layer latency tables (ns.latency_table) on CPU.

    python benchmarks/latency_table.py --models resnet18 resnet50 mobilenet_v2 regnet_x_400mf \
        --runtimes eager optimized onnxruntime --threads 1 --size 224 --repeats 20 --out results/latency_budget

For each torchvision model (random weights) and each runtime: build the latency table of the
original (``ns.latency_table``: every conv site and the conversion's block at each converted
site, alone, interleaved rounds; a fresh cache folder, so every figure is measured in this run),
then measure the original and the converted model whole, interleaved (every round runs both,
order flipped every other round), and compare with ``table.predict(plan)`` (the table's
measured whole original, less each converted site's conv entry, plus its block's).  The
converted model is ``ns.apply_plan(model, plan, init="random")`` (weights do not change the
time).  ResNets and the RegNet are converted with ``dwsep``; MobileNetV2, whose 3×3 convs are
already depthwise, with ``grouped_g2`` on its 1×1 convs.

Writes ``OUT/prediction.csv`` and ``OUT/prediction.md`` (the table, the median absolute error,
and per runtime the speedup of the converted model against its MACs cut: which runtime gets
the most of the MACs saving).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

import nas_sepconv as ns
from nas_sepconv.measure import find_runtime, prepare_forward, summarise, time_rounds, torch_threads

POLICIES = {"mobilenet_v2": ns.Policy(default="grouped_g2", skip_pointwise=False)}
COLUMNS = ["model", "runtime", "variant", "macs", "predicted_ms", "measured_ms", "p10_ms", "p90_ms", "error_pct"]


def measure_pair(original, converted, x, runtime: str, threads: int, repeats: int, warmup: int) -> list[dict]:
    """Original and converted timed whole, interleaved."""
    record = find_runtime(runtime)
    with torch_threads(threads):
        with torch.no_grad():
            forwards = [
                prepare_forward(m.eval(), (x,), runtime=record, threads=threads, device=torch.device("cpu"), dtype=None)
                for m in (original, converted)
            ]
        with torch.inference_mode():
            times = time_rounds(forwards, repeats=repeats, warmup=warmup)
    return [summarise(t) for t in times]


def bench(name: str, runtime: str, args: argparse.Namespace, cache: Path) -> list[dict]:
    torch.manual_seed(0)
    model = ns.model_from_name(f"torchvision:{name}").eval()
    x = torch.randn(1, 3, args.size, args.size)
    policy = POLICIES.get(name, ns.Policy(default=args.spec))
    plan = ns.make_plan(model, policy, example_inputs=x)
    spec = str(plan.converted[0].spec)
    t0 = time.perf_counter()
    table = ns.latency_table(
        model,
        x,
        candidates=[spec],
        policy=policy,
        runtime=runtime,
        threads=args.threads,
        repeats=args.repeats,
        warmup=args.warmup,
        cache_dir=cache,
        progress=True,
    )
    built = time.perf_counter() - t0
    converted = ns.apply_plan(model, plan, init="random").eval()
    measured = measure_pair(model, converted, x, runtime, args.threads, args.repeats, args.warmup)
    predicted = [table.model_ms, table.predict(plan)]
    rows = []
    for variant, macs, pred, meas in zip(
        ("original", "converted"), (plan.model_macs, plan.macs_after), predicted, measured
    ):
        rows.append(
            dict(
                model=name,
                runtime=runtime,
                variant=variant,
                macs=macs,
                predicted_ms=round(pred, 3),
                measured_ms=round(meas["median_ms"], 3),
                p10_ms=round(meas["p10_ms"], 3),
                p90_ms=round(meas["p90_ms"], 3),
                error_pct=round(100 * (pred - meas["median_ms"]) / meas["median_ms"], 1),
            )
        )
    print(
        f"[{name} {runtime}] table {built:.0f} s ({len(table.frame)} entries); "
        + "; ".join(
            f"{r['variant']} predicted {r['predicted_ms']} measured {r['measured_ms']} ms ({r['error_pct']:+}%)"
            for r in rows
        ),
        flush=True,
    )
    return rows


def efficiency(df: pd.DataFrame) -> pd.DataFrame:
    """Per model and runtime: measured speedup of the converted model, MACs ratio, efficiency."""
    out = []
    for (model, runtime), g in df.groupby(["model", "runtime"], sort=False):
        o, c = g.set_index("variant").loc["original"], g.set_index("variant").loc["converted"]
        speedup, ratio = o.measured_ms / c.measured_ms, c.macs / o.macs
        predicted = o.predicted_ms / c.predicted_ms
        out.append(
            dict(
                model=model,
                runtime=runtime,
                original_ms=o.measured_ms,
                converted_ms=c.measured_ms,
                macs_ratio=round(ratio, 3),
                speedup=round(speedup, 2),
                efficiency=round(speedup * ratio, 2),
                predicted_speedup=round(predicted, 2),
                speedup_error_pct=round(100 * (predicted - speedup) / speedup, 1),
            )
        )
    return pd.DataFrame(out)


def markdown(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns) + "\n"
    return head + "\n".join("| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)) + "\n"


def write(df: pd.DataFrame, args: argparse.Namespace, seconds: float, loads: tuple) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "prediction.csv", index=False)
    eff = efficiency(df)
    mae = statistics.median(df["error_pct"].abs())
    per_runtime = {r: statistics.median(g["error_pct"].abs()) for r, g in df.groupby("runtime", sort=False)}
    best = eff.groupby("runtime", sort=False)["efficiency"].median().sort_values(ascending=False)
    lines = [
        "# Predicted vs measured latency (per-layer latency tables)",
        "",
        f"Command: `python benchmarks/latency_table.py {' '.join(shlex.quote(a) for a in sys.argv[1:])}`",
        "",
        f"- torch {torch.__version__}, Python {platform.python_version()}; {find_runtime('onnxruntime').version() if 'onnxruntime' in args.runtimes else ''}",
        f"- machine: {os.cpu_count()} logical CPUs ({ns.measure.processor_name(torch.device('cpu'))}), "
        f"shared with other jobs: load average {loads[0]:.1f} before, {loads[1]:.1f} after; wall time {seconds / 60:.1f} min",
        f"- {args.threads} thread(s), batch 1, {args.size}x{args.size}, random weights; {args.repeats} interleaved rounds after {args.warmup} warm-up, medians",
        "- predicted: `table.predict(plan)` = the table's measured whole original + per converted site (block entry - conv entry) x calls;"
        " for the original that is the table's own whole-model measurement, taken minutes before the measured column",
        "- measured: original and converted whole, interleaved in one loop, after the table",
        "",
        markdown(df),
        "",
        f"**Median absolute error: {mae:.1f}%** of the measured latency over all {len(df)} rows "
        f"({'met' if mae <= 10 else 'NOT met'}: the goal is 10%); per runtime: "
        + ", ".join(f"{r} {v:.1f}%" for r, v in per_runtime.items())
        + ".",
        "",
        "The original's error is the machine's drift between two measurements of the same model (the table's, and the loop's "
        "minutes later): on a loaded machine it is as large as the converted model's.  The predicted *speedup* (original / "
        "converted, both predicted) against the measured one cancels that drift: median absolute error "
        f"{statistics.median(eff['speedup_error_pct'].abs()):.1f}% (column speedup_error_pct below).",
        "",
        "## Which runtime gets the most of the MACs saving",
        "",
        "Speedup of the converted model (measured) against its MACs cut; efficiency = speedup x MACs ratio (1.0: time falls as much as MACs).",
        "",
        markdown(eff),
        "",
        "Median efficiency per runtime: "
        + ", ".join(f"{r} {v:.2f}" for r, v in best.items())
        + f"; **{best.index[0]}** gets the most of the MACs saving on this machine.",
    ]
    (out / "prediction.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'prediction.md'}; median absolute error {mae:.1f}%")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "mobilenet_v2", "regnet_x_400mf"])
    p.add_argument("--runtimes", nargs="+", default=["eager", "optimized", "onnxruntime"])
    p.add_argument("--spec", default="dwsep", help="the conversion (MobileNetV2: grouped_g2 on its 1x1 convs)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default="results/latency_budget")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start, load0 = time.perf_counter(), os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for name in args.models:
            for runtime in args.runtimes:
                rows += bench(name, runtime, args, Path(cache))
    write(pd.DataFrame(rows, columns=COLUMNS), args, time.perf_counter() - start, (load0, os.getloadavg()[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
