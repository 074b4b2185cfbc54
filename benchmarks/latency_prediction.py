"""Prediction error of latency tables over many converted models (issue #25 item 3).

    python benchmarks/latency_prediction.py --runtimes eager onnxruntime --threads 1 \
        --out results/latency_budget

For each model (torchvision classifiers at 224 built with random weights, no download; CIFAR
ResNet-18s at 32 at several widths) and each runtime (1 thread, batch 1): one
``ns.latency_table`` (every site with its BatchNorm and activation, the whole model and the
calibration plans, one session, fresh cache), then the plans: uniform ``dwsep_m1``,
``dwsep_m2``, ``dwsep_m4`` (the table's calibration plans: marked ``calibration``, reported but
counted apart), uniform ``spatial_r0.25``, and ``plan_for_budget`` at latency ratios 0.7, 0.5,
0.35 (damage: ``ns.sensitivity`` on two random images without refit; ``measure=False``: the
prediction is what is under test).  The original and every converted model are then measured
whole, afresh, in one interleaved loop (random weights: latency does not depend on them).

Per row: predicted (calibrated) and raw (uncalibrated) latency, measured latency, the latency
error, and the speed-up error (predicted speed-up ``table.model_ms / predicted`` over measured
speed-up ``original / converted``, both measured in their own session).  The originals' rows
(prediction = the table's own whole-model time) are reported apart and never counted.  The
share of converted rows within +-10 % is compared with the goal 90 % (nn-Meter, Zhang et al.,
MobiSys 2021: 99.0 % of 26,000 models within +-10 % on a mobile CPU), for the development models
and, apart, for the ``--held-out`` models (not looked at while the predictor was built).

Checkpoint: each (model, runtime) group's rows are appended to ``OUT/prediction_error_rows.csv``
when measured; a re-run skips the groups already there (``--fresh`` starts over).  Writes
``OUT/prediction_error.md`` and ``.csv``.
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

import nas_sepconv as ns
from nas_sepconv.conversion.latency_session import LatencySettings, time_modules
from nas_sepconv.measure import find_runtime, processor_name
from nas_sepconv.models import cifar_resnet18

# models with dense 3x3 convs past the stem (the sites of the dwsep policy; MobileNets, MnasNet and
# ShuffleNet have none, so they would give originals only)
MODELS = ["resnet18", "resnet50", "regnet_x_400mf", "squeezenet1_1", "cifar_w16", "cifar_w32", "cifar_w64"]
HELD_OUT = ["resnet34", "vgg11_bn", "squeezenet1_0", "cifar_w24", "cifar_w48"]
CANDIDATES = ["dwsep_m1", "dwsep_m2", "dwsep_m4", "spatial_r0.25"]
CALIBRATION = CANDIDATES[:3]  # latency_table(calibrate=3) measures the uniform plans of these
BUDGETS = [0.7, 0.5, 0.35]
ROWS = "prediction_error_rows.csv"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build(name: str, size: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """``cifar_w<width>``: ns.cifar_resnet18 at 32; else a torchvision classifier at ``size``."""
    torch.manual_seed(0)
    if name.startswith("cifar_w"):
        return cifar_resnet18(width=int(name.removeprefix("cifar_w"))).eval(), torch.randn(1, 3, 32, 32)
    return ns.model_from_name(f"torchvision:{name}").eval(), torch.randn(1, 3, size, size)


@functools.cache
def damage_of(name: str, shape: tuple[int, ...]) -> pd.DataFrame:
    """One model's damage table (the same in every runtime): it only orders the candidates."""
    model, x = build(name, shape[-1])
    return ns.sensitivity(
        model, [torch.randn(2, *shape[1:])], candidates=CANDIDATES, example_inputs=x, refit_sites=False
    )


def plans(name: str, model: torch.nn.Module, x: torch.Tensor, table: ns.LatencyTable) -> dict[str, ns.Plan]:
    """The plans of one model: uniform per candidate, then planned per budget."""
    out = {f"uniform {c}": ns.make_plan(model, c, example_inputs=x) for c in CANDIDATES}
    damage = damage_of(name, tuple(x.shape))
    for r in BUDGETS:
        try:
            out[f"planned {r}"] = ns.plan_for_budget(
                model, damage, latency_ratio=r, latency_table=table, example_inputs=x, measure=False
            )
        except ns.UserInputError as exc:
            log(f"  planned {r}: {exc}")
    return {k: p for k, p in out.items() if p.converted}


def group_rows(name: str, held_out: bool, runtime: str, args: argparse.Namespace) -> list[dict]:
    """Every row of one model in one runtime: the original, then each plan."""
    model, x = build(name, args.size)
    table = ns.latency_table(
        model,
        x,
        candidates=CANDIDATES,
        runtime=runtime,
        threads=args.threads,
        repeats=args.repeats,
        warmup=args.warmup,
        calibrate=len(CALIBRATION),
        cache_dir=args.cache,
    )
    chosen = plans(name, model, x, table)
    converted = [ns.apply_plan(model, p, init="random").eval() for p in chosen.values()]
    settings = LatencySettings.checked(runtime, args.threads, "cpu", torch.float32, args.repeats, args.warmup, None)
    records = time_modules([(m, (x,)) for m in [model, *converted]], settings)
    original = records[0]
    base = dict(model=name, held_out=held_out, runtime=runtime, input=tuple(x.shape))
    rows = [
        dict(
            base,
            plan="original",
            calibration=False,
            sites=0,
            macs=ns.make_plan(model, {}, example_inputs=x).model_macs,
            predicted_ms=table.model_ms,
            raw_predicted_ms=table.model_ms,
            measured_ms=original["median_ms"],
            p10_ms=original["p10_ms"],
            p90_ms=original["p90_ms"],
        )
    ]
    for (label, plan), rec in zip(chosen.items(), records[1:]):
        predicted = table.predict(plan)
        rows.append(
            dict(
                base,
                plan=label,
                calibration=label.removeprefix("uniform ") in CALIBRATION,
                sites=len(plan.converted),
                macs=plan.macs_after,
                predicted_ms=predicted,
                raw_predicted_ms=table.predict(plan, calibrated=False),
                measured_ms=rec["median_ms"],
                p10_ms=rec["p10_ms"],
                p90_ms=rec["p90_ms"],
                predicted_speedup=table.model_ms / predicted,
                measured_speedup=original["median_ms"] / rec["median_ms"],
            )
        )
    for row in rows:
        row["error_pct"] = 100 * (row["predicted_ms"] / row["measured_ms"] - 1)
        row["raw_error_pct"] = 100 * (row["raw_predicted_ms"] / row["measured_ms"] - 1)
        if "measured_speedup" in row:
            row["speedup_error_pct"] = 100 * (row["predicted_speedup"] / row["measured_speedup"] - 1)
    return rows


def share(errors: pd.Series) -> str:
    if not len(errors):
        return "no rows"
    within = (errors.abs() <= 10).mean()
    return f"{100 * within:.0f} % within +-10 % (median |error| {errors.abs().median():.1f} %, {len(errors)} rows)"


def summary(df: pd.DataFrame) -> list[str]:
    """Per runtime and model set: the shares within +-10 % against the goal 90 %."""
    lines = []
    converted = df[df["plan"] != "original"]
    for runtime, by_rt in converted.groupby("runtime"):
        for held, part in by_rt.groupby("held_out"):
            label = "held-out models" if held else "development models"
            out = part[~part["calibration"]]
            goal = "met" if len(out) and (out["error_pct"].abs() <= 10).mean() >= 0.9 else "MISSED"
            lines += [
                f"- **{runtime}, {label}**, plans not used for calibration: latency {share(out['error_pct'])} "
                f"(goal 90 %: {goal}); speed-up {share(out['speedup_error_pct'])}; uncalibrated latency "
                f"{share(out['raw_error_pct'])}",
                f"  - calibration plans (in-sample): latency {share(part[part['calibration']]['error_pct'])}",
            ]
    originals = df[df["plan"] == "original"]
    lines.append(
        f"- originals (apart, never counted: the prediction is the table's own measurement): {share(originals['error_pct'])}"
    )
    return lines


def markdown(df: pd.DataFrame, args: argparse.Namespace, minutes: float, loads: tuple) -> str:
    cols = ["model", "held_out", "runtime", "plan", "calibration", "sites", "predicted_ms", "raw_predicted_ms"]
    cols += ["measured_ms", "error_pct", "raw_error_pct", "predicted_speedup", "measured_speedup", "speedup_error_pct"]
    table = df[cols].round(3)
    lines = [
        "# Latency prediction error over converted models",
        "",
        f"Command: `{' '.join(shlex.quote(a) for a in ['python', 'benchmarks/latency_prediction.py', *sys.argv[1:]])}`",
        "",
        f"- torch {torch.__version__}; " + ", ".join(f"{r}: {find_runtime(r).version()}" for r in args.runtimes),
        f"- machine: {os.cpu_count()} logical CPUs ({processor_name(torch.device('cpu'))}); load average "
        f"{loads[0]:.1f} before, {loads[1]:.1f} after; {args.threads} thread(s), batch 1; wall time {minutes:.1f} min",
        f"- {args.repeats} interleaved rounds after {args.warmup} warm-up, medians with stalls rejected",
        "",
        *summary(df),
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
        *("| " + " | ".join("" if pd.isna(v) else str(v) for v in r) + " |" for r in table.itertuples(index=False)),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", default=MODELS, help="torchvision names, or cifar_w<width>")
    p.add_argument("--held-out", nargs="*", default=HELD_OUT)
    p.add_argument("--runtimes", nargs="+", default=["eager", "onnxruntime"])
    p.add_argument("--size", type=int, default=224, help="input size of the torchvision models")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--cache", default=None, help="latency cache folder (default: a fresh temporary one)")
    p.add_argument("--fresh", action="store_true", help="ignore the rows of an earlier run")
    p.add_argument("--out", default="results/latency_budget")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.cache = args.cache or tempfile.mkdtemp(prefix="latency_prediction_")
    checkpoint = out / ROWS
    done = pd.read_csv(checkpoint) if checkpoint.exists() and not args.fresh else pd.DataFrame()
    finished = set(zip(done["model"], done["runtime"])) if len(done) else set()
    loads, start = os.getloadavg()[0], time.time()
    for name, held in [(m, False) for m in args.models] + [(m, True) for m in args.held_out]:
        for runtime in args.runtimes:
            if (name, runtime) in finished:
                continue
            log(f"{name} {runtime}")
            try:
                rows = group_rows(name, held, runtime, args)
            except (ns.UserInputError, RuntimeError) as exc:  # a model this runtime cannot take: said, skipped
                log(f"  skipped: {type(exc).__name__}: {str(exc).splitlines()[0]}")
                continue
            done = pd.concat([done, pd.DataFrame(rows)], ignore_index=True)
            done.to_csv(checkpoint, index=False)
            log(f"  {len(rows) - 1} plans; errors " + ", ".join(f"{e:+.0f}%" for e in pd.DataFrame(rows)["error_pct"]))
    minutes = (time.time() - start) / 60
    done.to_csv(out / "prediction_error.csv", index=False)
    text = markdown(done, args, minutes, (loads, os.getloadavg()[0]))
    (out / "prediction_error.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
