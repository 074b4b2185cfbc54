#!/usr/bin/env python
"""Weight-preserving conversion benchmark: how much accuracy survives converting a trained
ResNet's 3×3 convolutions to separable blocks, with and without data and gradient steps.

One trained reference network (``cifar_resnet18(width=W)`` trained with ``ns.train.fit``, the
library's defaults: SGD, one-cycle, label smoothing, crop+flip augmentation), then for every
conversion (``dwsep_m{1,2,4}``; ``spatial_r{0.25,0.5}`` without training rows; ``budget_B``: the
mix of blocks ``ns.plan_for_budget`` chooses for a MACs ratio B from ``ns.sensitivity``) the
test accuracy and whole-model MACs ratio of

* ``random init + fine-tune``: fresh blocks, then the same training budget as the distillation
  row (plain cross-entropy training with ``fit``);
* ``SVD only``: closed-form initialisation, no data;
* ``SVD + BN re-estimation``: BatchNorm statistics recomputed on the calibration images;
* ``SVD + refit of the last linear part only`` (``dwsep``): ``ns.refit(iterations=0)``, the
  pointwise convs re-solved by least squares with the SVD's depthwise filters kept;
* ``SVD + refit``: ``ns.refit`` (least squares on the calibration images, no gradient steps;
  for ``dwsep`` the depthwise and pointwise weights re-solved together);
* ``SVD + refit + BN re-estimation``: the same, then BatchNorm statistics recomputed;
* ``SVD + refit + distillation``: the refit model distilled from the original (``ns.distill``,
  softened logits);
* ``SVD + refit + feature distillation`` (with ``--feature-weight``): the same with hints
  (``ns.distill(features="converted")``: the activations after the converted sites, too).

Outputs in ``--out``: ``fidelity.csv`` (one row per conversion and method), ``fidelity.md`` (the
table, the command, the set-up, the targets), ``fidelity.png`` (accuracy vs MACs ratio),
``refit_sites.csv`` (per-site output errors before/after each refit), with ``--budgets`` also
``sensitivity.csv`` (per site and candidate block) and ``budget_plans.csv`` (the block chosen per
site), and the trained reference weights (``original_*.safetensors`` in ``--reference-dir``,
default ``--out``; reused unless ``--retrain``).

    python benchmarks/fidelity.py --data /tmp/cifar10 --subset 20000 --epochs 10 --width 16
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

import nas_sepconv as ns
from nas_sepconv.data import Dataset, Split, calibration_batches, load_dataset
from nas_sepconv.train import TrainConfig, distill, evaluate, fit, reestimate_batchnorm

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared helpers
from reference import arch_text, cache_path, trained_reference  # noqa: E402

ORIGINAL = "original"
RANDOM_FT = "random init + fine-tune"
SVD = "SVD only"
SVD_BN = "SVD + BN re-estimation"
REFIT_LAST = "SVD + refit of the last linear part only"
REFIT = "SVD + refit"
REFIT_BN = "SVD + refit + BN re-estimation"
DISTILL = "SVD + refit + distillation"
FEATURE_DISTILL = "SVD + refit + feature distillation"
METHODS = (RANDOM_FT, SVD, SVD_BN, REFIT_LAST, REFIT, REFIT_BN, DISTILL, FEATURE_DISTILL)
DISTILLED = (DISTILL, FEATURE_DISTILL)
NO_GRADIENT = (SVD, SVD_BN, REFIT_LAST, REFIT, REFIT_BN)

BUDGET_CANDIDATES = ("dwsep_m1", "dwsep_m2", "dwsep_m4", "spatial_r0.0625", "spatial_r0.125", "spatial_r0.25")

COLUMNS = [
    "conversion",
    "family",
    "param",
    "method",
    "train_epochs",
    "calib_images",
    "test_accuracy",
    "delta_points",
    "macs",
    "macs_ratio",
    "params",
    "seconds",
]


@dataclass
class BenchConfig:
    """What :func:`run_benchmark` does (the CLI flags, one to one)."""

    width: int = 16
    stem_stride: int = 1
    epochs: int = 10
    batch_size: int = 128
    dw_mults: tuple[int, ...] = (1, 2, 4)
    spatial_ranks: tuple[float, ...] = (0.25, 0.5)
    budgets: tuple[float, ...] = ()  # MACs ratios for ns.plan_for_budget
    budget_candidates: tuple[str, ...] = BUDGET_CANDIDATES
    sensitivity_held_out: int = 0  # > 0: ns.sensitivity measures damage on this many validation images
    reference_dir: str | None = None  # where the reference weights are cached (default: the output folder)
    calib: int = 512
    finetune_epochs: int = 1
    finetune_batch_size: int | None = None  # random-init and distillation rows (default: batch_size)
    finetune_lrs: tuple[float, ...] = (0.05,)  # several: the best on the validation split is kept
    distill_lrs: tuple[float, ...] = (0.05,)
    feature_weight: float = 0.0  # > 0: also the feature distillation row (hints at this weight)
    feature_lrs: tuple[float, ...] | None = None  # its peak lrs (default: distill_lrs)
    logit_distill: bool = True  # the plain (logits only) distillation row
    train_conversions: tuple[str, ...] | None = (
        None  # conversions with training rows (default: every dwsep and budget one)
    )
    test_subset: int | None = None
    seed: int = 0
    retrain: bool = False
    device: str = "cpu"  # where everything runs ("cuda": training with the library's AMP default)


@dataclass
class BenchResult:
    table: pd.DataFrame  # COLUMNS, one row per (conversion, method), "original" first
    refit_sites: pd.DataFrame  # per-site refit report of every refit, with a "conversion" column
    original_accuracy: float  # percent, on the evaluation split
    test_images: int
    train_seconds: float  # training the reference (0 when loaded from the cache)
    cached: bool  # the reference was loaded from the cache
    seconds: float  # the whole run
    meta: dict = field(default_factory=dict)


# -- helpers ---------------------------------------------------------------------------------


def _test_split(data: Dataset, n: int | None, seed: int) -> Split:
    """The whole test split, or a seeded class-stratified subset of ``n`` images."""
    test = data.test
    if n is None or n >= len(test):
        return test
    gen = torch.Generator().manual_seed(seed)
    classes = test.y.unique()
    per = [torch.nonzero(test.y == c).flatten() for c in classes]
    take = []
    for i, idx in enumerate(per):  # n // C each, the remainder to the first classes
        k = n // len(per) + (i < n % len(per))
        take.append(idx[torch.randperm(len(idx), generator=gen)[:k]])
    idx = torch.cat(take).sort().values
    return Split(test.x[idx], test.y[idx])


def _cache_path(out: Path, data: Dataset, cfg: BenchConfig) -> Path:
    return cache_path(out, data, width=cfg.width, stem_stride=cfg.stem_stride, epochs=cfg.epochs, seed=cfg.seed)


def _reference(
    data: Dataset, cfg: BenchConfig, out: Path, log: Callable[[str], None], progress: bool = False
) -> tuple[torch.nn.Module, float, bool, dict]:
    """The trained reference network: from the cache, or trained with ``fit`` and cached."""
    return trained_reference(
        data,
        out,
        width=cfg.width,
        stem_stride=cfg.stem_stride,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        retrain=cfg.retrain,
        device=cfg.device,
        log=log,
        progress=progress,
    )


def _arch(cfg: BenchConfig) -> str:
    return arch_text(cfg.width, cfg.stem_stride)


def _clone(model: torch.nn.Module, original: torch.nn.Module, plan: ns.Plan) -> torch.nn.Module:
    """A copy of a converted model.  Not ``copy.deepcopy``: a converted GraphModule keeps its
    Plan in ``meta``, and ``BlockSpec`` cannot be copied (its immutability guard also rejects
    the ``setattr`` that ``copy``/``pickle`` restore slots with)."""
    twin = ns.apply_plan(original, plan, init="random")
    twin.load_state_dict(model.state_dict())
    return twin.train(model.training)


def _best_on_validation(
    train: Callable[[float], torch.nn.Module],
    lrs: tuple[float, ...],
    data: Dataset,
    spec: str,
    method: str,
    selections: list[dict],
    log: Callable[[str], None],
    device: torch.device,
) -> torch.nn.Module:
    """``train(lr)`` for each lr; the model with the best validation accuracy (never the test
    split), every lr's validation accuracy appended to ``selections``."""
    best, best_acc = None, -1.0
    for lr in lrs:
        model = train(lr)
        val = 100.0 * evaluate(model, data.val, data=data, device=device)
        selections.append(dict(conversion=spec, method=method, lr=lr, val_accuracy=val))
        log(f"  {method} lr {lr:g}: validation {val:.2f}%")
        if val > best_acc:
            best, best_acc = model, val
    for row in selections[-len(lrs) :]:
        row["chosen"] = row["val_accuracy"] == best_acc
    return best


def _one_epoch_config(cfg: BenchConfig, lr: float) -> TrainConfig:
    # one short run: a fifth of it warming up (the default one-epoch warm-up would end at the peak)
    return TrainConfig(
        epochs=cfg.finetune_epochs,
        batch_size=cfg.finetune_batch_size or cfg.batch_size,
        lr=lr,
        warmup_epochs=0.2 * cfg.finetune_epochs,
        seed=cfg.seed,
    )


# -- the benchmark ---------------------------------------------------------------------------


def run_benchmark(
    data: Dataset, cfg: BenchConfig, out: str | Path, *, log: Callable[[str], None] = print, progress: bool = False
) -> BenchResult:
    """Train (or load) the reference, convert it every way, and measure; returns the table.

    Writes nothing but the cached reference weights; :func:`write_outputs` writes the rest.
    ``progress``: the long calls (training, sensitivity, refit, distillation) show their progress
    on stderr (:mod:`nas_sepconv.progress`: plain lines every few seconds off a terminal)."""
    start = time.perf_counter()
    out = Path(out)
    dev = torch.device(cfg.device)  # data, models and every library call live there
    test = _test_split(data, cfg.test_subset, cfg.seed).to(dev)
    data = data.to(dev)
    original, train_seconds, cached, info = _reference(data, cfg, Path(cfg.reference_dir or out), log, progress)
    x = torch.zeros(1, *data.input_shape, device=dev)
    base_macs = ns.count_macs(original, x)
    calib = calibration_batches(data, n=cfg.calib, batch_size=128, split="train", seed=cfg.seed)
    n_calib = sum(len(b) for b in calib)

    def acc(model: torch.nn.Module) -> float:
        return 100.0 * evaluate(model, test, data=data, device=dev)

    t = time.perf_counter()
    original_acc = acc(original)
    rows = [
        dict(
            conversion=ORIGINAL,
            family=ORIGINAL,
            param=math.nan,
            method=ORIGINAL,
            train_epochs=cfg.epochs,
            calib_images=0,
            test_accuracy=original_acc,
            delta_points=0.0,
            macs=base_macs,
            macs_ratio=1.0,
            params=ns.count_params(original),
            seconds=float(info.get("train_seconds", math.nan)),
        )
    ]
    log(
        f"original: {original_acc:.2f}% on {len(test)} test images ({time.perf_counter() - t:.0f} s), {base_macs / 1e6:.2f} M MACs"
    )

    conversions = [(f"dwsep_m{m}", "dwsep", float(m), True) for m in cfg.dw_mults]
    conversions += [(f"spatial_r{r:g}", "spatial", float(r), False) for r in cfg.spatial_ranks]
    conversions += [(f"budget_{b:g}", "budget", float(b), True) for b in cfg.budgets]
    if cfg.train_conversions is not None:
        conversions = [(c, f, p, t and c in cfg.train_conversions) for c, f, p, t in conversions]
    site_reports = []
    selections: list[dict] = []
    sensitivity, budget_plans = pd.DataFrame(), []
    if cfg.budgets:
        t = time.perf_counter()
        held_out = (
            calibration_batches(data, n=cfg.sensitivity_held_out, batch_size=128, split="val", seed=cfg.seed)
            if cfg.sensitivity_held_out
            else None
        )
        sensitivity = ns.sensitivity(
            original,
            calib,
            candidates=cfg.budget_candidates,
            example_inputs=x,
            eval_batches=held_out,
            device=dev,
            progress=progress,
        )
        log(
            f"sensitivity of {sensitivity.name.nunique()} sites x {len(cfg.budget_candidates)} candidates "
            f"in {time.perf_counter() - t:.0f} s"
        )
    for spec, family, param, train_rows in conversions:
        if family == "budget":
            plan = ns.plan_for_budget(original, sensitivity, macs_ratio=param, example_inputs=x)
            budget_plans += [
                dict(conversion=spec, name=e.name, spec=str(e.spec) if e.spec else "keep") for e in plan.entries
            ]
        else:
            plan = ns.make_plan(original, spec, example_inputs=x)
        probe = ns.apply_plan(original, plan, init="random")
        macs, params = ns.count_macs(probe, x), ns.count_params(probe)
        del probe
        log(f"{spec}: {len(plan.converted)} sites converted, MACs ratio {macs / base_macs:.4f}")

        def record(method: str, model: torch.nn.Module, seconds: float, epochs: int = 0, calib_images: int = 0) -> None:
            t = time.perf_counter()
            a = acc(model)
            rows.append(
                dict(
                    conversion=spec,
                    family=family,
                    param=param,
                    method=method,
                    train_epochs=epochs,
                    calib_images=calib_images,
                    test_accuracy=a,
                    delta_points=a - original_acc,
                    macs=macs,
                    macs_ratio=macs / base_macs,
                    params=params,
                    seconds=seconds,
                )
            )
            log(
                f"  {method:32s} {a:6.2f}%  ({a - original_acc:+.2f})  [{seconds:.0f} s + eval {time.perf_counter() - t:.0f} s]"
            )

        if train_rows:
            t = time.perf_counter()

            def fine_tune(lr: float) -> torch.nn.Module:
                torch.manual_seed(cfg.seed)  # the fresh blocks, independent of what ran before
                model = ns.apply_plan(original, plan, init="random")
                fit(model, data, config=_one_epoch_config(cfg, lr), evaluate_test=False, device=dev, progress=progress)
                return model

            model = _best_on_validation(fine_tune, cfg.finetune_lrs, data, spec, RANDOM_FT, selections, log, dev)
            record(RANDOM_FT, model, time.perf_counter() - t, epochs=cfg.finetune_epochs)
            del model

        t = time.perf_counter()
        svd = ns.apply_plan(original, plan, init="svd").eval()
        record(SVD, svd, time.perf_counter() - t)

        t = time.perf_counter()
        model = _clone(svd, original, plan)
        reestimate_batchnorm(model, calib, device=dev)
        record(SVD_BN, model, time.perf_counter() - t, calib_images=n_calib)
        del model

        if family == "dwsep":  # the ablation of the joint (depthwise + pointwise) refit
            t = time.perf_counter()
            model = _clone(svd, original, plan)
            ns.refit(model, original, calib, plan=plan, iterations=0, device=dev, progress=progress)
            record(REFIT_LAST, model, time.perf_counter() - t, calib_images=n_calib)
            del model

        t = time.perf_counter()
        refitted = svd  # refit in place: the SVD model is not needed any more
        report = ns.refit(refitted, original, calib, plan=plan, device=dev, progress=progress)
        refit_seconds = time.perf_counter() - t
        site_reports.append(report.assign(conversion=spec))
        record(REFIT, refitted, refit_seconds, calib_images=n_calib)

        t = time.perf_counter()
        model = _clone(refitted, original, plan)
        reestimate_batchnorm(model, calib, device=dev)
        record(REFIT_BN, model, refit_seconds + time.perf_counter() - t, calib_images=n_calib)
        del model

        variants = [(DISTILL, None, cfg.distill_lrs)] if cfg.logit_distill else []
        if cfg.feature_weight > 0:
            variants.append((FEATURE_DISTILL, "converted", cfg.feature_lrs or cfg.distill_lrs))
        for method, features, lrs in variants if train_rows else []:
            t = time.perf_counter()

            def distilled(lr: float) -> torch.nn.Module:
                student = _clone(refitted, original, plan)  # noqa: F821 - deleted only after the loop that calls this
                distill(
                    student,
                    original,
                    data,
                    config=_one_epoch_config(cfg, lr),
                    features=features,
                    feature_weight=cfg.feature_weight,
                    device=dev,
                    progress=progress,
                )
                return student

            student = _best_on_validation(distilled, lrs, data, spec, method, selections, log, dev)
            record(
                method,
                student,
                refit_seconds + (time.perf_counter() - t) / len(lrs),
                epochs=cfg.finetune_epochs,
                calib_images=n_calib,
            )
            del student
        del refitted, svd

    table = pd.DataFrame(rows, columns=COLUMNS)
    sites = pd.concat(site_reports, ignore_index=True) if site_reports else pd.DataFrame()
    return BenchResult(
        table=table,
        refit_sites=sites,
        original_accuracy=original_acc,
        test_images=len(test),
        train_seconds=train_seconds if not cached else float(info.get("train_seconds", math.nan)),
        cached=cached,
        seconds=time.perf_counter() - start,
        meta={
            "calib_images": n_calib,
            "base_macs": base_macs,
            "reference": info,
            "train_images": len(data.train),
            "val_images": len(data.val),
            "input_shape": data.input_shape,
            "selections": selections,
            "sensitivity": sensitivity,
            "budget_plans": pd.DataFrame(budget_plans),
        },
    )


# -- reporting -------------------------------------------------------------------------------


def pivot(table: pd.DataFrame) -> pd.DataFrame:
    """Methods as rows, conversions as columns, cells "accuracy (Δ)"; a first row of MACs ratios."""
    conv = table[table.conversion != ORIGINAL]
    order = list(dict.fromkeys(conv.conversion))
    out = {"method": ["MACs ratio (converted/original)"]}
    for c in order:
        out[c] = [
            f"{conv[conv.conversion == c].macs_ratio.iloc[0]:.3f} (1/{1 / conv[conv.conversion == c].macs_ratio.iloc[0]:.1f})"
        ]
    methods = [m for m in METHODS if m in set(conv.method)]
    for m in methods:
        out["method"].append(m)
        for c in order:
            r = conv[(conv.conversion == c) & (conv.method == m)]
            out[c].append("—" if r.empty else f"{r.test_accuracy.iloc[0]:.2f} ({r.delta_points.iloc[0]:+.2f})")
    return pd.DataFrame(out)


def _markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def targets(table: pd.DataFrame, original_acc: float) -> list[str]:
    """The issue's three targets, each as one line saying met / not met and why."""
    lines = []
    conv = table[table.conversion != ORIGINAL]
    cheap = conv[(conv.macs_ratio <= 0.25) & conv.method.isin([REFIT_LAST, REFIT, REFIT_BN])]
    if cheap.empty:
        lines.append(
            "- **≤ 1/4 MACs, no gradient steps, within 1 point: not measured** (no conversion here reaches 1/4 of the MACs)."
        )
    else:
        best = cheap.loc[cheap.test_accuracy.idxmax()]
        met = best.delta_points >= -1.0
        lines.append(
            f"- **≤ 1/4 MACs, no gradient steps (SVD + refit), within 1 point: {'met' if met else 'NOT met'}.** Best: "
            f"{best.conversion} {best.method}, MACs ratio {best.macs_ratio:.3f}, {best.test_accuracy:.2f}% "
            f"({best.delta_points:+.2f} points)."
        )
    no_grad = conv[conv.method.isin([REFIT_LAST, REFIT, REFIT_BN])]
    above = no_grad[no_grad.macs_ratio > 0.25]
    if not above.empty:  # the cheapest conversion just above 1/4, for scale
        nearest = above[above.macs_ratio == above.macs_ratio.min()]
        r = nearest.loc[nearest.test_accuracy.idxmax()]
        lines.append(
            f"  Cheapest conversion above 1/4 of the MACs: {r.conversion} (MACs ratio {r.macs_ratio:.3f}), "
            f"{r.method}, {r.test_accuracy:.2f}% ({r.delta_points:+.2f} points)."
        )
    ok = no_grad[no_grad.delta_points >= -1.0]
    if not ok.empty:
        best = ok.loc[ok.macs_ratio.idxmin()]
        lines.append(
            f"  Cheapest conversion within 1 point with no gradient steps: {best.conversion} {best.method}, "
            f"MACs ratio {best.macs_ratio:.3f} (1/{1 / best.macs_ratio:.1f}), {best.delta_points:+.2f} points."
        )
    distilled = conv[conv.method.isin(DISTILLED)]
    seventh = distilled[distilled.macs_ratio <= 1 / 7]
    m1 = distilled[distilled.conversion == "dwsep_m1"]
    if seventh.empty and m1.empty:
        lines.append("- **≤ 1/7 MACs (dw_mult=1) within 1 point after ≤ 1 epoch of distillation: not measured.**")
    elif seventh.empty:  # dwsep_m1 costs more than 1/7 at this width
        r = m1.loc[m1.test_accuracy.idxmax()]
        lines.append(
            f"- **≤ 1/7 MACs (dw_mult=1), ≤ 1 epoch of distillation, within 1 point: NOT met.** dwsep_m1 {r.method}: "
            f"{r.test_accuracy:.2f}% ({r.delta_points:+.2f} points), but its MACs ratio is "
            f"{r.macs_ratio:.3f} = 1/{1 / r.macs_ratio:.1f} > 1/7 for this width."
        )
    else:
        r = seventh.loc[seventh.test_accuracy.idxmax()]
        verdict = "met" if r.delta_points >= -1.0 else "NOT met"
        lines.append(
            f"- **≤ 1/7 MACs, ≤ {_epochs(r.train_epochs)} of distillation, within 1 point: {verdict}.** "
            f"Best: {r.conversion} {r.method}, {r.test_accuracy:.2f}% ({r.delta_points:+.2f} points), "
            f"MACs ratio {r.macs_ratio:.3f} (1/{1 / r.macs_ratio:.1f})."
        )
        for o in seventh.drop(index=r.name).itertuples():
            lines.append(
                f"  {o.conversion} {o.method}: {o.test_accuracy:.2f}% ({o.delta_points:+.2f} points), "
                f"MACs ratio {o.macs_ratio:.3f}."
            )
    gaps = []
    for c in dict.fromkeys(conv.conversion):
        d = conv[(conv.conversion == c) & conv.method.isin(DISTILLED)]
        rnd = conv[(conv.conversion == c) & (conv.method == RANDOM_FT)]
        if not d.empty and not rnd.empty:
            gaps.append((c, d.test_accuracy.max() - rnd.test_accuracy.iloc[0]))
    if gaps:
        ahead = all(g >= 2.0 for _, g in gaps)
        lines.append(
            f"- **Clearly ahead of random init + the same training budget: {'met' if ahead else 'NOT met'}** "
            "(best distillation row minus random-init row: " + ", ".join(f"{c} {g:+.2f}" for c, g in gaps) + " points)."
        )
    return lines


def plot(table: pd.DataFrame, original_acc: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    conv = table[table.conversion != ORIGINAL]
    markers = dict(zip(METHODS, "os^<Dvp*"))
    for family, style in (("dwsep", "-"), ("spatial", ":"), ("budget", "--")):
        fam = conv[conv.family == family]
        for m in METHODS:
            r = fam[fam.method == m].sort_values("macs_ratio")
            if r.empty:
                continue
            ax.plot(r.macs_ratio, r.test_accuracy, style, marker=markers[m], label=f"{family}: {m}")
    ax.axhline(original_acc, color="black", lw=1, label=f"original ({original_acc:.2f}%)")
    ax.axhline(original_acc - 1, color="grey", lw=0.8, ls="--", label="original − 1 point")
    for frac, lab in ((1 / 7, "1/7"), (1 / 4, "1/4")):
        ax.axvline(frac, color="grey", lw=0.6, ls=":")
        ax.text(frac, ax.get_ylim()[0], f" {lab}", color="grey", va="bottom", fontsize=8)
    ax.set_xlabel("MACs ratio (converted / original, whole model)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(
    result: BenchResult,
    cfg: BenchConfig,
    out: str | Path,
    *,
    command: str,
    dataset_label: str,
    machine: str,
    threads: int,
    subset: int | None,
    notes: list[str] = (),
) -> None:
    """fidelity.csv, fidelity.md, fidelity.png and refit_sites.csv in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = result.table
    table.to_csv(out / "fidelity.csv", index=False, float_format="%.6g")
    if not result.refit_sites.empty:
        result.refit_sites.to_csv(out / "refit_sites.csv", index=False, float_format="%.6g")
    sens, plans = result.meta.get("sensitivity"), result.meta.get("budget_plans")
    if sens is not None and not sens.empty:
        sens.to_csv(out / "sensitivity.csv", index=False, float_format="%.6g")
        plans.to_csv(out / "budget_plans.csv", index=False)
    title = f"{dataset_label}: {_arch(cfg)}, {cfg.epochs} epochs, subset {subset if subset else 'all'}"
    plot(table, result.original_accuracy, out / "fidelity.png", title)

    ref = result.meta.get("reference", {})
    val = ref.get("val_accuracy")
    sites = result.refit_sites
    site_summary = ""
    if not sites.empty:
        g = sites.groupby("conversion", sort=False)
        s = pd.DataFrame(
            {
                "conversion": list(g.groups),
                "median rel. output error before refit": [f"{v:.3f}" for v in g.rel_output_error_before.median()],
                "after": [f"{v:.3f}" for v in g.rel_output_error_after.median()],
                "last site before": [f"{v:.3f}" for v in g.rel_output_error_before.last()],
                "last site after": [f"{v:.3f}" for v in g.rel_output_error_after.last()],
            }
        )
        site_summary = _markdown(s)
    md = [
        "# Weight-preserving conversion: accuracy vs MACs",
        "",
        f"Test accuracy (%) on {result.test_images} {dataset_label} test images, and the difference to the original in "
        "points; MACs are multiply-accumulates of conv and linear weights (bias excluded) for one 1×"
        + "×".join(map(str, result.meta["input_shape"]))
        + " image, whole model.",
        "",
        _markdown(pivot(table)),
        "",
        f"Original: **{result.original_accuracy:.2f}%**, {result.meta['base_macs'] / 1e6:.2f} M MACs, "
        f"{int(table.params.iloc[0]):,} parameters.",
        "",
        "## Targets (issue 3)",
        "",
        *targets(table, result.original_accuracy),
        "",
        "## Set-up",
        "",
        f"- Command: `{command}`",
        f"- Data: {dataset_label}, training subset {subset if subset else 'all'} images (stratified; "
        f"{result.meta['train_images']} train / {result.meta['val_images']} validation), "
        f"evaluated on {result.test_images} test images"
        + (" (seeded class-stratified subset of the test split)" if cfg.test_subset else " (the whole test split)")
        + ".",
        f"- Reference: `{_arch(cfg)}`, {cfg.epochs} epochs of `fit` with the library defaults "
        f"(SGD Nesterov, lr 0.1, one-cycle, label smoothing 0.1, weight decay 5e-4, crop+flip, batch {cfg.batch_size})"
        + (f", validation accuracy {100 * val:.2f}%" if val is not None else "")
        + ".",
        "- Conversions: the default policy (every 3×3 conv after the stem; the stem and the 1×1 shortcuts kept), "
        "linear blocks (no mid norm/activation).",
        f"- Calibration: {result.meta['calib_images']} training images, un-augmented (`calibration_batches`), "
        "for BN re-estimation and `refit` (ridge 1e-5, closed form, no gradient steps; for `dwsep` the depthwise "
        "filters, pointwise weights and bias re-solved together by 10 rounds of alternating least squares, "
        "`nas_sepconv/joint_refit.py`; the last-linear-only row keeps the SVD's depthwise filters). "
        "`SVD + refit + BN re-estimation` recomputes the BatchNorm statistics after the refit; both rows are reported "
        "(no choice made on the test set).",
        f'- `random init + fine-tune`: `apply_plan(init="random")`, then {_epochs(cfg.finetune_epochs)} of `fit` '
        f"(cross-entropy, peak lr {_lrs(cfg.finetune_lrs)}, one-cycle with {0.2 * cfg.finetune_epochs:g} epoch warm-up). "
        + (
            f"`SVD + refit + distillation`: the refit model, {_epochs(cfg.finetune_epochs)} of `distill` against the "
            f"original (T 4, α 0.9, peak lr {_lrs(cfg.distill_lrs)}, same schedule). "
            if cfg.logit_distill
            else ""
        )
        + (
            f"`SVD + refit + feature distillation`: the refit model, {_epochs(cfg.finetune_epochs)} of `distill` against "
            f'the original with hints, `distill(features="converted", feature_weight={cfg.feature_weight:g})` '
            f"(T 4, α 0.9; relative squared error of the activation after each converted site), peak lr "
            f"{_lrs(cfg.feature_lrs or cfg.distill_lrs)}, same schedule. "
            if cfg.feature_weight > 0
            else ""
        )
        + "Same number of steps for all "
        f"(batch {cfg.finetune_batch_size or cfg.batch_size}, {_steps(result, cfg)} steps)."
        + (
            " Where several lrs are listed, each row keeps the lr with the best validation accuracy (chosen per "
            "conversion; the test split is never used to choose): " + _selection_text(result.meta.get("selections", []))
            if len(cfg.finetune_lrs) > 1 or len(cfg.distill_lrs) > 1 or len(cfg.feature_lrs or ()) > 1
            else ""
        ),
        *(
            [
                "- `spatial_r0.5` costs as many MACs as the 3×3 conv it replaces (rank·3·(C_in + C_out) = 9·C_in·C_out at "
                "rank 1.5·C); it is listed for completeness."
            ]
            if 0.5 in cfg.spatial_ranks
            else []
        ),
        *[f"- {n}" for n in notes],
        f"- Machine: {machine}, torch {torch.__version__}, {threads} thread(s), {_device_text(cfg.device)}; "
        "the machine was shared with other jobs.",
        f"- Wall time: {result.seconds / 60:.1f} min for this run"
        + (
            f" (reference loaded from the cache; it took {result.train_seconds / 60:.1f} min to train)"
            if result.cached
            else f", of which {result.train_seconds / 60:.1f} min training the reference"
        )
        + ".",
        "",
        "## Refit: per-site relative output error (calibration data)",
        "",
        "‖y_converted − y_original‖ / ‖y_original‖ at each converted conv, each model fed its own activations "
        "(so it includes the error accumulated before the site); per-site values in `refit_sites.csv`.",
        "",
        site_summary,
        "",
        *_budget_section(result, cfg),
        "Plot: `fidelity.png`; all rows: `fidelity.csv`.",
        "",
    ]
    (out / "fidelity.md").write_text("\n".join(md))


def _budget_section(result: BenchResult, cfg: BenchConfig) -> list[str]:
    """The blocks ``plan_for_budget`` chose per site, and the sensitivity behind them."""
    sens, plans = result.meta.get("sensitivity"), result.meta.get("budget_plans")
    if sens is None or sens.empty:
        return []
    table = sens.pivot(index="name", columns="spec", values="damage").reindex(list(dict.fromkeys(sens.name)))
    table = table[[c for c in cfg.budget_candidates if c in table.columns]]
    chosen = plans.pivot(index="name", columns="conversion", values="spec")
    body = pd.concat([table.map(lambda v: f"{v:.4f}"), chosen.reindex(table.index)], axis=1).reset_index()
    return [
        "## Budget plans: per-site damage and the blocks chosen",
        "",
        "`ns.sensitivity(original, calibration, candidates=...)`: each site converted alone to each candidate (SVD, then "
        "refit of that site), damage = mean KL(original ‖ converted) of the output on "
        + (
            f"{cfg.sensitivity_held_out} held-out validation images (`eval_batches`; the refit sees only the calibration "
            "images, so a site it overfits is not read as harmless). "
            if cfg.sensitivity_held_out
            else "the calibration images. "
        )
        + "`ns.plan_for_budget(original, table, macs_ratio=B)`: the least summed damage with at most B × the MACs "
        "(exact multiple-choice knapsack); every `budget_B` column below is then converted, refit and trained like the "
        "uniform conversions. Candidates: " + ", ".join(f"`{c}`" for c in cfg.budget_candidates) + ". "
        "Values in `sensitivity.csv` and `budget_plans.csv`.",
        "",
        _markdown(body),
        "",
    ]


def _device_text(device: str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"device {device} ({torch.cuda.get_device_name(dev)}, bf16/fp16 autocast in training)"
    return f"device {device}"


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _steps(result: BenchResult, cfg: BenchConfig) -> int:
    return cfg.finetune_epochs * (result.meta["train_images"] // (cfg.finetune_batch_size or cfg.batch_size))


def _lrs(lrs: tuple[float, ...]) -> str:
    return f"{lrs[0]:g}" if len(lrs) == 1 else "one of " + ", ".join(f"{v:g}" for v in lrs)


def _selection_text(selections: list[dict]) -> str:
    parts = []
    for (conv, method), rows in pd.DataFrame(selections).groupby(["conversion", "method"], sort=False):
        vals = ", ".join(
            f"{r.lr:g}: {r.val_accuracy:.2f}%" + (" (chosen)" if r.chosen else "") for r in rows.itertuples()
        )
        parts.append(f"{conv} {method} [{vals}]")
    return "; ".join(parts) + "."


# -- CLI -------------------------------------------------------------------------------------


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--data", required=True, help="data root (the extracted CIFAR-10 folder), or 'digits' for the embedded set"
    )
    p.add_argument("--dataset", default="cifar10", help="load_dataset name")
    p.add_argument(
        "--dataset-label", default=None, help="name in the outputs (default: 'CIFAR-10 (JPEG q75)' for cifar10)"
    )
    p.add_argument("--subset", type=int, default=20000, help="training pool size (train + validation)")
    p.add_argument("--epochs", type=int, default=10, help="epochs of training of the reference")
    p.add_argument("--width", type=int, default=16, help="cifar_resnet18 width")
    p.add_argument("--stem-stride", type=int, default=1, help="cifar_resnet18 stem stride (2: stages on 16×16 maps)")
    p.add_argument("--dw-mults", type=_ints, default=(1, 2, 4), help="comma-separated dw_mult values")
    p.add_argument(
        "--spatial-ranks", type=_floats, default=(0.25, 0.5), help="comma-separated rank fractions ('' for none)"
    )
    p.add_argument(
        "--budgets", type=_floats, default=(), help="comma-separated MACs ratios for ns.plan_for_budget ('' for none)"
    )
    p.add_argument(
        "--budget-candidates",
        default=",".join(BUDGET_CANDIDATES),
        help="comma-separated block specs for ns.sensitivity",
    )
    p.add_argument(
        "--sensitivity-held-out",
        type=int,
        default=0,
        help="validation images on which ns.sensitivity measures damage (0: the calibration images)",
    )
    p.add_argument("--reference-dir", default=None, help="where the trained reference is cached (default: --out)")
    p.add_argument("--calib", type=int, default=512, help="calibration images for refit and BN re-estimation")
    p.add_argument("--finetune-epochs", type=int, default=1, help="epochs for the random-init and distillation rows")
    p.add_argument(
        "--finetune-batch-size",
        type=int,
        default=None,
        help="batch size of the random-init and distillation rows (default: the reference's, 128)",
    )
    p.add_argument(
        "--finetune-lr",
        type=_floats,
        default=(0.05,),
        help="peak lr, random init + fine-tune; comma-separated: the best on the validation split",
    )
    p.add_argument(
        "--distill-lr",
        type=_floats,
        default=(0.05,),
        help="peak lr, distillation; comma-separated: the best on the validation split",
    )
    p.add_argument(
        "--feature-weight",
        type=float,
        default=0.0,
        help="> 0: also a feature distillation row, ns.distill(features='converted', feature_weight=W)",
    )
    p.add_argument(
        "--feature-lr",
        type=_floats,
        default=None,
        help="peak lr, feature distillation; comma-separated: the best on the validation split (default: --distill-lr)",
    )
    p.add_argument("--no-logit-distill", action="store_true", help="leave out the logits-only distillation row")
    p.add_argument(
        "--train-conversions",
        default=None,
        help="comma-separated conversions that get the training rows (default: every dwsep and budget one)",
    )
    p.add_argument("--test-subset", type=int, default=None, help="evaluate on a stratified subset of the test split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument(
        "--device",
        default="cpu",
        help="where to run: cpu, cuda, cuda:1 (training uses the library's AMP default on CUDA)",
    )
    p.add_argument("--retrain", action="store_true", help="train the reference even if cached")
    p.add_argument("--machine", default="2-core CPU")
    p.add_argument(
        "--note", action="append", default=[], help="a line for the set-up section of fidelity.md (repeatable)"
    )
    p.add_argument("--out", default="results/fidelity")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f}s] {msg}", file=sys.stderr, flush=True)

    root = None if args.data == "digits" else args.data
    name = "digits" if args.data == "digits" else args.dataset
    data = load_dataset(name, root=root, subset=args.subset, seed=args.seed)
    log(f"data: {data}")
    label = args.dataset_label or {"cifar10": "CIFAR-10 (JPEG q75)"}.get(name, name)
    cfg = BenchConfig(
        width=args.width,
        stem_stride=args.stem_stride,
        epochs=args.epochs,
        dw_mults=args.dw_mults,
        spatial_ranks=args.spatial_ranks,
        budgets=args.budgets,
        budget_candidates=tuple(v for v in args.budget_candidates.split(",") if v.strip()),
        sensitivity_held_out=args.sensitivity_held_out,
        reference_dir=args.reference_dir,
        calib=args.calib,
        finetune_epochs=args.finetune_epochs,
        finetune_batch_size=args.finetune_batch_size,
        finetune_lrs=args.finetune_lr,
        distill_lrs=args.distill_lr,
        feature_weight=args.feature_weight,
        feature_lrs=args.feature_lr,
        logit_distill=not args.no_logit_distill,
        train_conversions=None
        if args.train_conversions is None
        else tuple(v for v in args.train_conversions.split(",") if v.strip()),
        test_subset=args.test_subset,
        seed=args.seed,
        retrain=args.retrain,
        device=args.device,
    )
    result = run_benchmark(data, cfg, args.out, log=log, progress=True)
    result.seconds = time.perf_counter() - start  # data loading included
    argv_text = sys.argv[1:] if argv is None else argv
    command = " ".join(shlex.quote(a) for a in ["python", "benchmarks/fidelity.py", *argv_text])
    write_outputs(
        result,
        cfg,
        args.out,
        command=command,
        dataset_label=label,
        machine=args.machine,
        threads=args.threads,
        subset=args.subset,
        notes=args.note,
    )
    print(_markdown(pivot(result.table)))
    print()
    print("\n".join(targets(result.table, result.original_accuracy)))
    print(f"\nwall time {result.seconds / 60:.1f} min; outputs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
