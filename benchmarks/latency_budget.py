"""Plans for a latency budget against plans for a MACs budget (ns.plan_for_budget with a latency table).

    python benchmarks/latency_budget.py --data /path/to/cifar10-jpeg.tar.gz \
        --reference results/fidelity/original_cifar10_n20000_w32_stem2_e15_s0.safetensors --width 32 --stem-stride 2 \
        --runtimes onnxruntime eager --threads 1 --budgets 0.7 0.5 0.35 --out results/latency_budget

Part 1, CIFAR-10 (the width-32 ResNet-18 reference of results/fidelity/, trained there): one
``ns.sensitivity`` table (each site converted alone to each candidate, SVD + refit of that site,
damage = KL on held-out validation images), then per runtime one ``ns.latency_table`` (batch 1).
For each latency budget r: the plan ``plan_for_budget(latency_ratio=r)`` chooses, and the plan
``plan_for_budget(macs_ratio=m)`` (every distinct plan of a 0.01 grid of m) whose measured
latency is the largest at most the latency plan's: the original, the latency plan and every
MACs plan are timed in one interleaved loop, so the MACs plan gets at most the same time.  The damage table is written to
``OUT/sensitivity_cifar.csv`` and read back by a re-run.  Both are converted with SVD and refit
on calibration images (no gradient steps) and evaluated on the test split.

Part 2, torchvision ResNet-18 and ResNet-50 at 224 (random weights; latency only): every conv
but the stem is a site (the 1x1 convs too, with grouped candidates: ResNet-50's 3x3 convs alone
hold too little of its time for these budgets); the damage is ``ns.sensitivity`` on two random
images without refit (it only orders the candidates), and for each budget r the latency plan is
converted and measured against the original, interleaved.

Writes ``OUT/budget_cifar.md`` + ``.csv`` (+ ``sensitivity_cifar.csv``) and
``OUT/budget_torchvision.md`` + ``.csv``; ``--parts`` runs one of them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

import nas_sepconv as ns
from nas_sepconv.data import calibration_batches, load_dataset
from nas_sepconv.measure import find_runtime, prepare_forward, processor_name, summarise, time_rounds, torch_threads
from nas_sepconv.models import cifar_resnet18
from nas_sepconv.train import evaluate

CANDIDATES = ["dwsep_m1", "dwsep_m2", "dwsep_m4", "spatial_r0.0625", "spatial_r0.125", "spatial_r0.25"]
TV_CANDIDATES = ["dwsep_m1", "dwsep_m2", "spatial_r0.125", "grouped_g2", "grouped_g4"]
TV_POLICY = ns.Policy(default="grouped_g2", skip_pointwise=False)  # the sites: every conv but the stem, 1x1 included


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def measure(models: list, x: torch.Tensor, runtime: str, args: argparse.Namespace) -> list[float]:
    """Median ms of each model, timed together in interleaved rounds."""
    record = find_runtime(runtime)
    with torch_threads(args.threads):
        with torch.no_grad():
            forwards = [
                prepare_forward(
                    m.eval(), (x,), runtime=record, threads=args.threads, device=torch.device("cpu"), dtype=None
                )
                for m in models
            ]
        with torch.inference_mode():
            times = time_rounds(forwards, repeats=args.repeats, warmup=args.warmup)
    return [summarise(t)["median_ms"] for t in times]


def macs_plans(original, damage, x) -> list[tuple[float, ns.Plan]]:
    """The distinct plans ``plan_for_budget(macs_ratio=m)`` chooses on a 0.01 grid of m."""
    plans = {}
    for m in np.arange(0.01, 1.0, 0.01):
        try:
            plan = ns.plan_for_budget(original, damage, macs_ratio=round(float(m), 2), example_inputs=x)
        except ns.UserInputError:
            continue
        plans.setdefault(tuple(str(e.spec) for e in plan.entries), (round(float(m), 2), plan))
    return list(plans.values())


def macs_plan_of_equal_latency(original, lat_model, candidates, x, runtime, args):
    """Original, latency plan and every MACs plan timed in one interleaved loop; the MACs plan
    with the largest measured latency at most the latency plan's (the fastest if none is).
    Returns (MACs ratio, plan, its ms), the latency plan's ms, the original's ms."""
    models = [original, lat_model] + [ns.apply_plan(original, plan, init="random") for _, plan in candidates]
    times = measure(models, x, runtime, args)
    orig_ms, lat_ms, rest = times[0], times[1], times[2:]
    fitting = [i for i, t in enumerate(rest) if t <= lat_ms]
    i = max(fitting, key=lambda j: rest[j]) if fitting else min(range(len(rest)), key=lambda j: rest[j])
    return (*candidates[i], rest[i]), lat_ms, orig_ms


def converted_and_refit(original, plan, calib):
    """SVD initialisation, then the closed-form refit on the calibration images (no gradient steps)."""
    model = ns.apply_plan(original, plan, init="svd")
    ns.refit(model, original, calib, plan=plan)
    return model.eval()


def cifar(args: argparse.Namespace) -> pd.DataFrame:
    data = load_dataset("cifar10", root=args.data, subset=args.subset, seed=0)
    original = cifar_resnet18(num_classes=10, width=args.width, stem_stride=args.stem_stride)
    original.load_state_dict(load_file(args.reference))
    original.eval()
    x = torch.zeros(1, 3, 32, 32)
    test = data.test
    calib = calibration_batches(data, n=args.calib, batch_size=128, split="train", seed=0)
    held = calibration_batches(data, n=args.held_out, batch_size=128, split="val", seed=0)
    acc = lambda m: 100 * evaluate(m, test, data=data, device="cpu")  # noqa: E731
    base_acc = acc(original)
    log(f"reference: {base_acc:.2f}% test accuracy; sensitivity of {len(CANDIDATES)} candidates ...")
    saved = Path(args.out) / "sensitivity_cifar.csv"  # the damage table: kept, and reused by a re-run
    if saved.is_file():
        damage = pd.read_csv(saved)
        log(f"sensitivity read from {saved}")
    else:
        damage = ns.sensitivity(
            original, calib, candidates=CANDIDATES, example_inputs=x, eval_batches=held, progress=True
        )
        damage.to_csv(saved, index=False)
    rows = []
    for runtime in args.runtimes:
        table = ns.latency_table(
            original,
            x,
            candidates=CANDIDATES,
            runtime=runtime,
            threads=args.threads,
            repeats=args.repeats,
            warmup=args.warmup,
            cache_dir=args.cache,
            progress=True,
        )
        log(f"[{runtime}] table: whole model {table.model_ms:.3f} ms, remainder {table.remainder_ms:.3f} ms")
        candidates = macs_plans(original, damage, x)
        for r in args.budgets:
            try:
                lat_plan = ns.plan_for_budget(original, damage, latency_ratio=r, latency_table=table, example_inputs=x)
            except ns.UserInputError as exc:
                log(f"[{runtime}] budget {r}: {exc}")
                rows.append(dict(runtime=runtime, budget=r, plan="latency", note=str(exc)))
                continue
            lat_model = converted_and_refit(original, lat_plan, calib)
            (m, macs_plan, macs_ms), lat_ms, orig_ms = macs_plan_of_equal_latency(
                original, lat_model, candidates, x, runtime, args
            )
            macs_model = converted_and_refit(original, macs_plan, calib)
            for kind, plan, model, ms, note in (
                ("latency", lat_plan, lat_model, lat_ms, f"latency_ratio={r}"),
                ("macs", macs_plan, macs_model, macs_ms, f"macs_ratio={m} (of {len(candidates)} timed)"),
            ):
                rows.append(
                    dict(
                        runtime=runtime,
                        budget=r,
                        plan=kind,
                        chosen_by=note,
                        accuracy=round(acc(model), 2),
                        delta_points=None,
                        macs_ratio=round(plan.macs_after / plan.model_macs, 3),
                        predicted_ms=round(table.predict(plan), 3),
                        measured_ms=round(ms, 3),
                        original_ms=round(orig_ms, 3),
                        measured_ratio=round(ms / orig_ms, 3),
                        sites=" ".join(str(e.spec) if e.spec else "keep" for e in plan.entries),
                    )
                )
                rows[-1]["delta_points"] = round(rows[-1]["accuracy"] - base_acc, 2)
            log(
                f"[{runtime}] budget {r}: "
                + "; ".join(f"{q['plan']} {q['accuracy']}% {q['measured_ratio']}x" for q in rows[-2:])
            )
    df = pd.DataFrame(rows)
    df.attrs["base_acc"] = base_acc
    return df


def torchvision_part(args: argparse.Namespace) -> pd.DataFrame:
    rows = []
    for name in args.tv_models:
        torch.manual_seed(0)
        model = ns.model_from_name(f"torchvision:{name}").eval()
        x = torch.randn(1, 3, 224, 224)
        damage = ns.sensitivity(
            model,
            [torch.randn(2, 3, 224, 224)],
            candidates=TV_CANDIDATES,
            policy=TV_POLICY,
            example_inputs=x,
            refit_sites=False,
            progress=True,
        )
        for runtime in args.runtimes:
            table = ns.latency_table(
                model,
                x,
                candidates=TV_CANDIDATES,
                policy=TV_POLICY,
                runtime=runtime,
                threads=args.threads,
                repeats=args.tv_repeats,
                warmup=args.warmup,
                cache_dir=args.cache,
                progress=True,
            )
            for r in args.budgets:
                try:
                    plan = ns.plan_for_budget(model, damage, latency_ratio=r, latency_table=table, example_inputs=x)
                except ns.UserInputError as exc:
                    rows.append(dict(model=name, runtime=runtime, budget=r, note=str(exc)))
                    continue
                converted = ns.apply_plan(model, plan, init="random")
                orig_ms, conv_ms = measure(
                    [model, converted], x, runtime, argparse.Namespace(**{**vars(args), "repeats": args.tv_repeats})
                )
                rows.append(
                    dict(
                        model=name,
                        runtime=runtime,
                        budget=r,
                        macs_ratio=round(plan.macs_after / plan.model_macs, 3),
                        predicted_ratio=round(table.predict(plan) / table.model_ms, 3),
                        original_ms=round(orig_ms, 2),
                        converted_ms=round(conv_ms, 2),
                        measured_ratio=round(conv_ms / orig_ms, 3),
                        within_1_1r=conv_ms / orig_ms <= 1.1 * r,
                        converted_sites=len(plan.converted),
                    )
                )
                log(
                    f"[{name} {runtime}] budget {r}: measured {rows[-1]['measured_ratio']}x, MACs {rows[-1]['macs_ratio']}x"
                )
    return pd.DataFrame(rows)


def markdown(df: pd.DataFrame) -> str:
    if df.empty:
        return "(not run)\n"
    head = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns) + "\n"
    return (
        head
        + "\n".join(
            "| " + " | ".join("" if (isinstance(v, float) and np.isnan(v)) else str(v) for v in row) + " |"
            for row in df.itertuples(index=False)
        )
        + "\n"
    )


def goals(cf: pd.DataFrame, tv: pd.DataFrame) -> list[str]:
    lines = []
    if not cf.empty and "accuracy" in cf:
        for runtime, g in cf.dropna(subset=["accuracy"]).groupby("runtime", sort=False):
            acc = g.pivot_table(index="budget", columns="plan", values="accuracy").sort_index(ascending=False)
            ms = g.pivot_table(index="budget", columns="plan", values="measured_ms")
            slower = [b for b in acc.index if ms.loc[b, "macs"] > ms.loc[b, "latency"]]  # no MACs plan was as fast
            pairs = acc.drop(index=slower)
            diffs = ", ".join(
                f"r={b:g}: {row.latency:.2f} vs {row.macs:.2f} ({row.latency - row.macs:+.2f})"
                for b, row in pairs.iterrows()
            )
            ok = (pairs["latency"] >= pairs["macs"]).all()
            lines.append(
                f"- [{runtime}] latency-chosen at least as accurate as the MACs-chosen plan of equal measured latency at every budget: "
                f"**{'met' if ok else 'NOT met'}** ({diffs or 'no budget with a MACs plan as fast'})."
            )
            for b in slower:
                lines.append(
                    f"- [{runtime}] r={b:g}: no MACs-chosen plan is as fast as the latency-chosen one (measured "
                    f"{ms.loc[b, 'latency']:.3f} ms): the fastest of them measures {ms.loc[b, 'macs']:.3f} ms "
                    "(fewer MACs, more time here), so the two are not compared on accuracy."
                )
            lat = g[g.plan == "latency"]
            ok = (lat.measured_ratio <= 1.1 * lat.budget).all()
            lines.append(
                f"- [{runtime}] CIFAR latency plans measure at most 1.1·r: **{'met' if ok else 'NOT met'}** ("
                + ", ".join(f"r={b:g}: {v:.3f}" for b, v in zip(lat.budget, lat.measured_ratio))
                + ")."
            )
    if not tv.empty and "measured_ratio" in tv:
        ok = tv.dropna(subset=["measured_ratio"])["within_1_1r"].astype(bool)
        lines.append(
            f"- torchvision plans measure at most 1.1·r: **{'met' if ok.all() else 'NOT met'}** ({int(ok.sum())}/{len(ok)} plans)."
        )
    return lines


def header(title: str, args: argparse.Namespace, minutes: float, loads: tuple, repeats: int) -> list[str]:
    argv = [a for a in sys.argv[1:]]
    return [
        f"# {title}",
        "",
        f"Command: `{' '.join(shlex.quote(a) for a in ['python', 'benchmarks/latency_budget.py', *argv])}`",
        "",
        f"- torch {torch.__version__}; " + ", ".join(f"{r}: {find_runtime(r).version()}" for r in args.runtimes),
        f"- machine: {os.cpu_count()} logical CPUs ({processor_name(torch.device('cpu'))}), shared with other jobs: load average "
        f"{loads[0]:.1f} before, {loads[1]:.1f} after; {args.threads} thread(s), batch 1; wall time {minutes:.1f} min",
        f"- latency: medians of {repeats} interleaved rounds after {args.warmup} warm-up rounds; every latency table measured in this run (fresh cache)",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--parts", nargs="+", default=["cifar", "torchvision"], help="cifar (needs --data) and/or torchvision"
    )
    p.add_argument("--data", default=None, help="CIFAR-10 root (folder or .tar.gz)")
    p.add_argument("--reference", default="results/fidelity/original_cifar10_n20000_w32_stem2_e15_s0.safetensors")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--stem-stride", type=int, default=2)
    p.add_argument(
        "--subset", type=int, default=20000, help="the reference's training pool (its validation split is held out)"
    )
    p.add_argument("--calib", type=int, default=1024)
    p.add_argument("--held-out", type=int, default=1024)
    p.add_argument("--runtimes", nargs="+", default=["onnxruntime"])
    p.add_argument("--budgets", nargs="+", type=float, default=[0.7, 0.5, 0.35])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--tv-repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--tv-models", nargs="*", default=["resnet18", "resnet50"])
    p.add_argument("--cache", default=None, help="latency cache folder (default: a fresh temporary one)")
    p.add_argument("--out", default="results/latency_budget")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.cache = args.cache or tempfile.mkdtemp(prefix="latency_cache_")  # every figure measured in this run
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if "cifar" in args.parts:
        start, load0 = time.perf_counter(), os.getloadavg()[0]
        cf = cifar(args)
        cf.to_csv(out / "budget_cifar.csv", index=False)
        text = header(
            "Latency budgets on CIFAR-10: plans chosen for measured latency vs for MACs",
            args,
            (time.perf_counter() - start) / 60,
            (load0, os.getloadavg()[0]),
            args.repeats,
        )
        text += [
            f"- candidates: {', '.join(CANDIDATES)} (default policy: every 3x3 conv after the stem)",
            "",
            "## Goals",
            "",
            *goals(cf, pd.DataFrame()),
            "",
            "## CIFAR-10 ResNet-18 (width 32, stem stride 2; SVD + refit, no gradient steps)",
            "",
            f"Reference test accuracy {cf.attrs['base_acc']:.2f}% on 10000 test images; per-site blocks in budget_cifar.csv.",
            "",
            markdown(cf.drop(columns=["sites"], errors="ignore")),
        ]
        (out / "budget_cifar.md").write_text("\n".join(text))
        print("\n".join(text))
    if "torchvision" in args.parts and args.tv_models:
        start, load0 = time.perf_counter(), os.getloadavg()[0]
        tv = torchvision_part(args)
        tv.to_csv(out / "budget_torchvision.csv", index=False)
        text = header(
            "Latency budgets on torchvision ResNets at 224 (random weights; latency only)",
            args,
            (time.perf_counter() - start) / 60,
            (load0, os.getloadavg()[0]),
            args.tv_repeats,
        )
        text += [
            f"- candidates: {', '.join(TV_CANDIDATES)}, at every conv but the stem (1x1 convs included: grouped); "
            "damage from ns.sensitivity on 2 random images without refit (it only orders the candidates)",
            "",
            "## Goals",
            "",
            *goals(pd.DataFrame(), tv),
            "",
            markdown(tv),
        ]
        (out / "budget_torchvision.md").write_text("\n".join(text))
        print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
