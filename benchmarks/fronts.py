"""The searched front against the hand-designed width families (issue 15, deliverable 3).

    python benchmarks/fronts.py digits [--seeds 0 1 2] [--out results/fronts/digits]
    python benchmarks/fronts.py cifar10 --data-root PATH [--seeds 0 1 2] [--multi-fidelity [SEED ...]] [--out results/fronts/cifar10]
    python benchmarks/fronts.py cifar10-full --data-root PATH --device cuda [--out results/fronts/cifar10_cuda]
    python benchmarks/fronts.py cifar10 --data-root PATH --oneshot [SEED ...]   (adds the one-shot pipeline)

For each seed, runs the searched space and each baseline family (bundled spaces: every alpha
of the family once, by the grid sampler) with the same data, training recipe and seed, into
``OUT/seed<N>/<study>/`` (the usual results folder: ``trials.csv``, ``pareto.csv``,
``pareto.png``; the trained weights are deleted, ``nas-sepconv export`` re-trains a trial), and
``OUT/seed<N>/comparison.csv|png`` (what ``nas-sepconv report OUT/seed<N>/<searched>
--baseline ...`` prints and writes).  Then ``OUT/fronts.csv`` (one row per seed and study),
``OUT/fronts.md`` (the table, the hypervolume of the searched front over the best baseline's
per seed, mean +- std, the goal), ``OUT/fronts.png`` (every front, one panel per seed) and
``OUT/hv_by_epochs.csv`` (the searched front's hypervolume after each trial against the
training epochs spent so far: the curve the multi-fidelity mode is compared on).

The protocol (issue 26; :data:`PROTOCOL` says it in ``fronts.md``): each seed validates on its
own split; each front is chosen on validation and scored on the test split (``test_ratio``, the
headline, with a 90% bootstrap interval over the test images, on normalised axes and with the
accuracy reference at chance); and at equal compute: besides the width families, each seed runs
``<family>_grid`` (alpha x resolution) and ``<searched>_random`` (random search of the searched
space) until their summed ``train_compute`` reaches the searched study's
(:func:`run_equal_compute`, :func:`within_budget`; ``--no-equal-compute`` skips them).

Validation hypervolumes (``ratio``) are in accuracy x log10(MACs) (``ns.results.compare``) on ONE
reference point computed from every trial of every study and seed together.  The configurations (which
spaces, what is overridden, identically for all of them) are :data:`CONFIGS`; an overridden
space is written to ``OUT/spaces/<name>.yaml`` and run from there.  Running the command again
resumes (a finished study is left as it is).

``--oneshot [SEED ...]`` adds, after every seed's studies, the one-shot pipeline (issue 26): the
searched space in ``search.mode: oneshot`` (:data:`ONESHOT`: one supernet, 500 subnets searched on
inherited weights, the front's 8 finalised), scored like the others and against the stand-alone
search (``test_ratio_vs_searched``), its compute counting the supernet's training; see
:func:`run_oneshot` and the goals in ``fronts.md``.

``--multi-fidelity [SEED ...]`` adds, after every seed's studies, a run of the searched space in
the multi-fidelity search mode (for the seeds named, else all) and its hypervolume-against-epochs
curve against the full-budget search (``OUT/multi_fidelity.csv``, ``OUT/hv_by_epochs.png``); see
:func:`multi_fidelity_search`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

GOAL = 1.05  # the searched front's hypervolume over the best baseline's, in every seed
MF_GOAL = 0.5  # the multi-fidelity run reaches the full search's hypervolume with at most this share of its epochs


@dataclass(frozen=True)
class Config:
    """One comparison: the searched space, the baseline families, what is overridden in all of
    them (a deep merge into each space file), and where it runs."""

    searched: str
    baselines: tuple[str, ...]
    overrides: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    workers: int = 1  # local worker processes of each search
    note: str = ""
    #: a stricter reference accuracy (MACs as the common reference): the ratio counting only
    #: candidates at least this accurate (``ratio_floor``); None: not computed
    floor: float | None = None
    #: merged into the searched space only, after ``overrides`` (its search budget: never the
    #: baselines', which sweep each alpha once)
    searched_overrides: dict[str, Any] = field(default_factory=dict)
    #: the rungs of the ``--multi-fidelity`` run (``search.multi_fidelity``); None: the space's,
    #: else min_epochs 1, eta 3
    multi_fidelity: dict[str, int] | None = None
    #: the resolution multipliers of the equal-compute family grids (alpha x resolution, the
    #: MobileNet papers' two knobs); None: the searched space's ``build.resolution_mult``
    grid_resolutions: tuple[float, ...] | None = None
    #: merged into the searched space for the ``--oneshot`` run, after :data:`ONESHOT` (its
    #: supernet and finalisation epochs)
    oneshot: dict[str, Any] = field(default_factory=dict)


CONFIGS: dict[str, Config] = {
    "digits": Config(
        "default",
        ("mobilenetv2_width_digits", "mobilenetv3small_width_digits"),
        note="the bundled spaces as they are (24 trials of the default space; 6 + 5 alphas), 1 thread",
        floor=0.9,
        oneshot={"search": {"supernet_epochs": 30, "finalize_epochs": 5}},
    ),
    "cifar10": Config(
        "mobilenetv3_cifar10",
        ("mobilenetv2_width_cifar10", "mobilenetv3small_width_cifar10"),
        overrides={
            "data": {"subset": 5625, "val_fraction": 0.2, "image_size": 16},
            "train": {"epochs": 5, "batch_size": 64, "lr": 0.05, "schedule": "cosine", "warmup_epochs": 0},
        },
        searched_overrides={"search": {"trials": 24, "population_size": 8}},
        multi_fidelity={"min_epochs": 1, "eta": 2},
        workers=2,
        floor=0.35,  # about the middle of the families' accuracies at this size (30-37%, seed 0)
        oneshot={"search": {"supernet_epochs": 20, "finalize_epochs": 5}},
        note="CPU-sized: 5,625 training images (4,500 train + 1,125 validation, drawn per seed; the test split's 10,000 "
        "score the fronts) "
        "at 16x16, 5 epochs at batch 64 (lr 0.05, cosine, no warm-up), for every space alike; 24 trials of the "
        "searched space (NSGA-II, population 8), every alpha of the families once; 2 worker processes",
    ),
    "cifar10-full": Config(
        "mobilenetv3_cifar10",
        ("mobilenetv2_width_cifar10", "mobilenetv3small_width_cifar10"),
        device="cuda",
        oneshot={"search": {"supernet_epochs": 60, "finalize_epochs": 15}},
        note="the bundled spaces as they are (32x32, 50,000 images, 15 epochs), for a GPU",
    ),
}


#: The one-shot pipeline of ``--oneshot`` (issue 26): the searched space in ``search.mode: oneshot``,
#: 500 subnets searched on inherited weights (NSGA-II, population 50), the front's 8 finalised.
ONESHOT = {"search": {"mode": "oneshot", "trials": 500, "population_size": 50}}
ONESHOT_FINALIZE = 8
ONESHOT_ROLE = "searched (one-shot)"
#: Its goals, in every seed: the test-split hypervolume over the stand-alone search's and over
#: the best baseline's (families, grids, random search), the interval's lower end over the best
#: baseline's above 1, and no more compute than the stand-alone search
ONESHOT_GOAL_VS_SEARCHED = 1.2
ONESHOT_GOAL_VS_BASELINES = 1.05


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in, mapping by mapping."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        out[key] = merged(out.get(key) or {}, value) if isinstance(value, dict) else copy.deepcopy(value)
    return out


def space_files(config: Config, out: Path, overrides: dict[str, Any]) -> dict[str, str]:
    """name -> what ``ns.search`` runs: the bundled name, or the overridden copy in ``out/spaces``."""
    from nas_sepconv.search import load_space

    found = {}
    for name in (config.searched, *config.baselines):
        changes = merged(config.overrides, overrides)
        if name == config.searched:
            changes = merged(changes, config.searched_overrides)
        if not changes:
            found[name] = name
            continue
        data = merged(yaml.safe_load(load_space(name).text), changes)
        path = out / "spaces" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        found[name] = str(path)
    return found


def multi_fidelity_search(
    space: str,
    *,
    seed: int,
    out: Path,
    study: str,
    trials: int | None = None,
    rungs: dict[str, int] | None = None,
    **kwargs: Any,
) -> Any:
    """The searched space once more, in the multi-fidelity mode (MO-ASHA, ``search.multi_fidelity``
    of the space or its defaults; ``rungs``: ``{"min_epochs", "eta"}`` instead), as study ``study``
    in ``out``; returns the study.  It runs
    twice the space's trials (``trials``): each stops early at a rung unless it ranks in the best
    1/eta there, so its epochs spent (the frame's ``epochs_trained``) are what it is compared on."""
    import nas_sepconv as ns
    from nas_sepconv.search import load_space

    trials = trials or 2 * load_space(space).spec.search.trials
    study_ = ns.search(
        space,
        seed=seed,
        out=out,
        study=study,
        trials=trials,
        multi_fidelity=rungs or True,
        heartbeat=kwargs.pop("heartbeat", 0),
        **kwargs,
    )
    shutil.rmtree(out / study / "weights", ignore_errors=True)
    return study_


def run_seed(
    config: Config,
    spaces: dict[str, str],
    seed: int,
    out: Path,
    *,
    threads: int | None,
    data_root: str | None,
    log: Any = print,
    report_only: bool = False,
) -> dict[str, dict[str, Any]]:
    """Every study of one seed (run, or resumed: a finished one is left as it is; with
    ``report_only`` only found): name -> {"folder", "role"}."""
    import nas_sepconv as ns

    runs: dict[str, dict[str, Any]] = {}
    for name, space in spaces.items():
        start = time.perf_counter()
        if report_only:
            runs[name] = {"folder": _found(out / name), "role": "searched" if name == config.searched else "baseline"}
            continue
        ns.search(
            space,
            seed=seed,
            out=out,
            device=config.device,
            workers=config.workers,
            threads=threads,
            data_root=data_root,
            heartbeat=0 if config.workers == 1 else 10,
            multi_fidelity=False,
        )
        shutil.rmtree(out / name / "weights", ignore_errors=True)
        runs[name] = {"folder": out / name, "role": "searched" if name == config.searched else "baseline"}
        log(f"seed {seed}: {name} done in {(time.perf_counter() - start) / 60:.1f} min")
    return runs


def _found(folder: Path) -> Path:
    if not (folder / "trials.csv").is_file():
        raise SystemExit(
            f"error: --report-only: {folder} has no trials.csv; run the command without --report-only first"
        )
    return folder


def run_multi_fidelity(
    config: Config,
    spaces: dict[str, str],
    seed: int,
    out: Path,
    *,
    threads: int | None,
    data_root: str | None,
    log: Any = print,
    report_only: bool = False,
) -> dict[str, dict[str, Any]]:
    """The searched space's multi-fidelity run of one seed (:func:`multi_fidelity_search`; with
    ``report_only`` the trials it has finished so far)."""
    name, start = f"{config.searched}_multifidelity", time.perf_counter()
    if report_only:
        return {name: {"folder": _found(out / name), "role": "searched (multi-fidelity)"}}
    multi_fidelity_search(
        spaces[config.searched],
        seed=seed,
        out=out,
        study=name,
        device=config.device,
        threads=threads,
        data_root=data_root,
        rungs=config.multi_fidelity,
        workers=config.workers,
        heartbeat=0 if config.workers == 1 else 10,
    )
    log(f"seed {seed}: {name} done in {(time.perf_counter() - start) / 60:.1f} min")
    return {name: {"folder": out / name, "role": "searched (multi-fidelity)"}}


def oneshot_space(config: Config, spaces: dict[str, str], out: Path) -> str:
    """The searched space as the one-shot pipeline runs it (:data:`ONESHOT`, then
    :attr:`Config.oneshot`), study ``<searched>_oneshot``, written to ``out/spaces``."""
    from nas_sepconv.search import load_space

    name = f"{config.searched}_oneshot"
    data = merged(yaml.safe_load(load_space(spaces[config.searched]).text), merged(ONESHOT, config.oneshot))
    data["name"] = name
    path = out / "spaces" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def run_oneshot(
    config: Config,
    spaces: dict[str, str],
    seed: int,
    out: Path,
    *,
    threads: int | None,
    data_root: str | None,
    log: Any = print,
    report_only: bool = False,
) -> dict[str, dict[str, Any]]:
    """The one-shot pipeline of one seed (:func:`oneshot_space`): its supernet trained once,
    the subnets searched on inherited weights, the front's :data:`ONESHOT_FINALIZE` finalised
    (``--finalize``); with ``report_only`` only found.  The supernet's checkpoint stays in the
    study's folder (git-ignored), so that the command resumes without training it again."""
    import nas_sepconv as ns

    name, start = f"{config.searched}_oneshot", time.perf_counter()
    if not report_only:
        ns.search(
            oneshot_space(config, spaces, out.parent),
            seed=seed,
            out=out,
            device=config.device,
            workers=config.workers,
            threads=threads,
            data_root=data_root,
            heartbeat=0 if config.workers == 1 else 10,
            multi_fidelity=False,
            finalize=ONESHOT_FINALIZE,
        )
        shutil.rmtree(out / name / "weights", ignore_errors=True)
        log(f"seed {seed}: {name} done in {(time.perf_counter() - start) / 60:.1f} min")
    return {name: {"folder": _found(out / name), "role": ONESHOT_ROLE}}


def equal_compute_spaces(config: Config, spaces: dict[str, str], out: Path) -> dict[str, tuple[str, str, int | None]]:
    """The equal-compute baselines: study name -> (space, sampler, most trials).  Random search
    of the searched space (``<searched>_random``, no cap), and each width family as an alpha x
    resolution grid (``<family>_grid``: its ``width_mult`` list by :attr:`Config.grid_resolutions`,
    else the searched space's ``resolution_mult``; the grid sampler, each point once at most),
    written to ``out/spaces/<family>_grid.yaml``."""
    from nas_sepconv.search import load_space

    searched = yaml.safe_load(load_space(spaces[config.searched]).text)
    resolutions = list(config.grid_resolutions or _as_list(searched["build"].get("resolution_mult", 1.0)))
    found: dict[str, tuple[str, str, int | None]] = {
        f"{config.searched}_random": (spaces[config.searched], "random", None)
    }
    for family in config.baselines:
        data = yaml.safe_load(load_space(spaces[family]).text)
        cap = len(_as_list(data["build"]["width_mult"])) * len(resolutions)
        data = merged(
            data,
            {
                "name": f"{family}_grid",
                "build": {"resolution_mult": resolutions},
                "search": {"trials": cap, "sampler": "grid"},
            },
        )
        path = out / "spaces" / f"{family}_grid.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        found[f"{family}_grid"] = (str(path), "grid", cap)
    return found


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _compute(df: pd.DataFrame) -> pd.Series:
    """Each trial's ``train_compute`` in trial order (0 where not recorded)."""
    if "train_compute" not in df.columns:
        return pd.Series(0.0, index=df.index)
    return pd.to_numeric(df["train_compute"], errors="coerce").fillna(0.0).astype("float64")


def _spent(df: pd.DataFrame) -> float:
    """A study's summed ``train_compute``, with its supernet's training for a one-shot study."""
    return float(_compute(df).sum()) + float(df.attrs.get("supernet_compute") or 0)


def within_budget(df: pd.DataFrame, budget: float) -> pd.DataFrame:
    """The trials, in number order, up to and including the first whose summed ``train_compute``
    reaches ``budget``: that last trial is kept (a baseline gets at least the budget, at most one
    trial more), trials run after it (a batch overshoots) are left out of the comparison."""
    ordered = df.sort_values("number")
    reached = (_compute(ordered).cumsum() >= budget).to_numpy().nonzero()[0]
    kept = ordered if not len(reached) else ordered.iloc[: reached[0] + 1]
    kept.attrs = dict(df.attrs)
    return kept


def run_to_budget(
    space: str,
    *,
    study: str,
    sampler: str,
    budget: float,
    cap: int | None,
    seed: int,
    out: Path,
    config: Config,
    threads: int | None,
    data_root: str | None,
) -> Path:
    """Run (or resume) the study, trials added until their summed ``train_compute`` reaches
    ``budget`` (or ``cap`` trials: a grid run once): each round adds the trials the mean compute
    so far says are left (at least one), so the last round may overshoot; see :func:`within_budget`."""
    import nas_sepconv as ns

    folder, finished = out / study, -1
    for _ in range(1000):
        df = ns.results.load(folder) if (folder / "trials.csv").is_file() else None
        done = 0 if df is None else int(df["state"].astype(str).isin(["COMPLETE", "PRUNED"]).sum())
        spent = 0.0 if df is None else float(_compute(df).sum())
        if spent >= budget or (cap is not None and done >= cap) or done == finished:
            break
        finished = done
        more = 1 if spent <= 0 else max(1, math.ceil((budget - spent) / (spent / done)))
        more = more if cap is None else min(more, cap - done)
        ns.search(
            space,
            study=study,
            sampler=sampler,
            trials=done + more,
            seed=seed,
            out=out,
            device=config.device,
            workers=config.workers,
            threads=threads,
            data_root=data_root,
            heartbeat=0 if config.workers == 1 else 10,
            multi_fidelity=False,
        )
        shutil.rmtree(folder / "weights", ignore_errors=True)
    return folder


def run_equal_compute(
    config: Config,
    spaces: dict[str, str],
    seed: int,
    out: Path,
    runs: dict[str, dict[str, Any]],
    *,
    threads: int | None,
    data_root: str | None,
    log: Any = print,
    report_only: bool = False,
) -> dict[str, dict[str, Any]]:
    """The seed's equal-compute baselines (:func:`equal_compute_spaces`), each with the searched
    study's summed ``train_compute`` as its budget (:func:`run_to_budget`)."""
    import nas_sepconv as ns

    budget = float(_compute(ns.results.load(runs[config.searched]["folder"])).sum())
    if budget <= 0:  # a study made before trials recorded train_compute
        log(f"seed {seed}: {config.searched} recorded no train_compute: no equal-compute baselines")
        return {}
    found = {}
    for name, (space, sampler, cap) in equal_compute_spaces(config, spaces, out.parent).items():
        start = time.perf_counter()
        if report_only:
            folder = _found(out / name)
        else:
            folder = run_to_budget(
                space,
                study=name,
                sampler=sampler,
                budget=budget,
                cap=cap,
                seed=seed,
                out=out,
                config=config,
                threads=threads,
                data_root=data_root,
            )
            log(f"seed {seed}: {name} (equal compute) done in {(time.perf_counter() - start) / 60:.1f} min")
        found[name] = {"folder": folder, "role": "baseline", "budget": budget}
    return found


def _epochs(df: pd.DataFrame) -> pd.Series:
    """Training epochs each trial spent (0 where unknown): ``epochs_trained`` (a trial the
    multi-fidelity mode stopped early counts the epochs it trained), else ``epochs``."""
    column = next((c for c in ("epochs_trained", "epochs") if c in df.columns), None)
    if column is None:
        return pd.Series(0, index=df.index)
    return pd.to_numeric(df[column], errors="coerce").fillna(0)


def reference_of(frames: dict[str, pd.DataFrame]) -> dict[str, float]:
    """The one reference point (accuracy, MACs in MACs) of every frame together."""
    import nas_sepconv as ns

    table = ns.results.compare(frames)
    logged = table.attrs["log_scale"]
    return {o: 10.0**v if o in logged else v for o, v in table.attrs["reference"].items()}


def seed_rows(
    seed: int,
    runs: dict[str, dict[str, Any]],
    frames: dict[str, pd.DataFrame],
    reference: dict[str, float],
    floor: float | None = None,
    standalone: str | None = None,
) -> list[dict[str, Any]]:
    """One row per study of a seed: its front, hypervolume on the common reference, ratio (and
    on the seed's own reference; and with the reference accuracy raised to ``floor``); a
    one-shot study's test ratio over the ``standalone`` search's too (``*_vs_searched``, on the
    references of the other columns: the common one, and the test reference of the seed's
    studies together); ``compute_share``: a study's compute over the ``standalone``
    search's (NaN without it)."""
    import nas_sepconv as ns

    searched = {n: frames[n] for n in runs if runs[n]["role"] != "baseline"}
    baselines = {n: frames[n] for n in runs if runs[n]["role"] == "baseline"}
    table = ns.results.compare(searched, baselines=baselines, reference=reference).set_index("name")
    own = ns.results.compare(searched, baselines=baselines, resamples=1).set_index("name")  # `report --baseline`'s
    strict = (
        ns.results.compare(
            searched, baselines=baselines, reference={**reference, "accuracy": floor}, resamples=1
        ).set_index("name")
        if floor is not None
        else None
    )
    searched_compute = _spent(frames[standalone]) if standalone in frames else math.nan
    oneshot = [n for n in runs if runs[n]["role"] == ONESHOT_ROLE]
    versus = (  # every study of the seed: the test reference is the other test columns' (their frames')
        ns.results.compare(
            {n: f for n, f in frames.items() if n in runs and n != standalone},
            baselines={standalone: frames[standalone]},
            reference=reference,
        ).set_index("name")
        if oneshot and standalone in frames
        else None
    )
    rows = []
    for name, run in runs.items():
        df, row = frames[name], table.loc[name]
        rows.append(
            {
                "seed": seed,
                "study": name,
                "role": run["role"],
                "complete": int(row["n_complete"]),
                "front": int(row["front_size"]),
                "best_accuracy": float(row["best_accuracy"]),
                "min_macs": int(row["min_macs"]),
                "hypervolume": float(row["hypervolume_logmacs"]),
                "ratio": float(row["hypervolume_ratio"]),
                "ratio_seed_reference": float(own.loc[name, "hypervolume_ratio"]),
                "ratio_floor": float(strict.loc[name, "hypervolume_ratio"]) if strict is not None else math.nan,
                "best_baseline": table.attrs["best_baseline"],
                "test_ratio": float(row["test_hypervolume_ratio"]),
                "test_ratio_low": float(row["test_ratio_low"]),
                "test_ratio_high": float(row["test_ratio_high"]),
                "test_ratio_unit": float(row["test_ratio_unit"]),
                "test_ratio_chance": float(row["test_ratio_chance"]),
                "train_compute": _spent(df),
                "compute_share": _spent(df) / searched_compute if searched_compute else math.nan,
                **_versus(versus if name in oneshot else None, name),
                "epochs_spent": int(_epochs(df).sum()),
                "trials_min": round(float(pd.to_numeric(df["duration_s"], errors="coerce").sum()) / 60, 2),
            }
        )
    return rows


def _versus(table: pd.DataFrame | None, name: str) -> dict[str, float]:
    """A one-shot study's test ratio (and interval) over the stand-alone search's; NaN for the others."""
    if table is None or name not in table.index:
        return dict.fromkeys(("test_ratio_vs_searched", "test_ratio_vs_searched_low"), math.nan)
    row = table.loc[name]
    return {
        "test_ratio_vs_searched": float(row["test_hypervolume_ratio"]),
        "test_ratio_vs_searched_low": float(row["test_ratio_low"]),
    }


def hv_by_epochs(seed: int, name: str, df: pd.DataFrame, reference: dict[str, float]) -> pd.DataFrame:
    """The study's hypervolume (common reference) after each finished trial, in trial order,
    against the training epochs spent so far."""
    import nas_sepconv as ns

    df = df.sort_values("number")
    finished = df[df["state"].astype(str).isin(["COMPLETE", "PRUNED"])]
    epochs = _epochs(finished).cumsum()
    rows = []
    for k in range(1, len(finished) + 1):
        part = finished.iloc[:k]
        hv = float(ns.results.compare({name: part}, reference=reference)["hypervolume_logmacs"].iloc[0])
        rows.append(
            {"seed": seed, "study": name, "trials": k, "epochs_spent": int(epochs.iloc[k - 1]), "hypervolume": hv}
        )
    return pd.DataFrame(rows)


def multi_fidelity_summary(curves: pd.DataFrame, searched: str) -> pd.DataFrame:
    """Per seed, from :func:`hv_by_epochs`' curves: the full-budget search's final hypervolume
    and the epochs it spent, against the epochs the multi-fidelity run of the same space spent
    until its front (full-budget trials) reached that hypervolume; and both at half the full
    search's epochs.  ``met``: reached within :data:`MF_GOAL` of the epochs."""
    rows = []
    for seed, part in curves.groupby("seed", sort=True):
        full, mf = part[part["study"] == searched], part[part["study"] == f"{searched}_multifidelity"]
        if full.empty or mf.empty:
            continue
        target, budget = float(full["hypervolume"].iloc[-1]), int(full["epochs_spent"].iloc[-1])
        reached = mf[mf["hypervolume"] >= target - 1e-12]
        epochs = int(reached["epochs_spent"].iloc[0]) if len(reached) else None
        rows.append(
            {
                "seed": seed,
                "full_trials": len(full),
                "full_epochs": budget,
                "full_hv": target,
                "mf_trials": len(mf),
                "mf_epochs": int(mf["epochs_spent"].iloc[-1]),
                "mf_hv": float(mf["hypervolume"].iloc[-1]),
                "mf_epochs_to_full_hv": "not reached" if epochs is None else epochs,
                "epochs_ratio": math.nan if epochs is None else round(epochs / budget, 3),
                "full_hv_at_half": float(full[full["epochs_spent"] <= budget / 2]["hypervolume"].max()),
                "mf_hv_at_half": float(mf[mf["epochs_spent"] <= budget / 2]["hypervolume"].max()),
                "met": epochs is not None and epochs <= MF_GOAL * budget,
            }
        )
    return pd.DataFrame(rows)


def plot_hv_by_epochs(curves: pd.DataFrame, path: Path, title: str) -> None:
    """Each searched study's hypervolume against the training epochs spent, one panel per seed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    seeds = sorted(curves["seed"].unique())
    fig = Figure(figsize=(5.0 * len(seeds), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, seed in zip(fig.subplots(1, len(seeds), squeeze=False)[0], seeds):
        for study, part in curves[curves["seed"] == seed].groupby("study", sort=False):
            ax.step(part["epochs_spent"], part["hypervolume"], where="post", label=study)
        ax.set(
            title=f"{title}, seed {seed}", xlabel="training epochs spent", ylabel="hypervolume (accuracy x log10 MACs)"
        )
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per study: hypervolume and ratio, mean +- std over the seeds; the smallest ratio."""
    rows = []
    for (study, role), part in table.groupby(["study", "role"], sort=False):
        hv, ratio, test = part["hypervolume"], part["ratio"], part["test_ratio"]
        rows.append(
            {
                "study": study,
                "role": role,
                "seeds": len(part),
                "test ratio (headline)": f"{test.mean():.3f} +- {test.std(ddof=1) if len(part) > 1 else 0:.3f}",
                "min test ratio": round(float(test.min()), 3),
                "min 5% bound": round(float(part["test_ratio_low"].min()), 3),
                "compute x searched": round(float(part["compute_share"].mean()), 2),
                "hypervolume": f"{hv.mean():.4f} +- {hv.std(ddof=1) if len(part) > 1 else 0:.4f}",
                "val ratio": f"{ratio.mean():.3f} +- {ratio.std(ddof=1) if len(part) > 1 else 0:.3f}",
                "min ratio": round(float(ratio.min()), 3),
                "ratio_floor": f"{part['ratio_floor'].mean():.3f} +- {part['ratio_floor'].std(ddof=1) if len(part) > 1 else 0:.3f}",
                "best accuracy %": f"{100 * part['best_accuracy'].mean():.2f}",
                "min MACs (M)": f"{part['min_macs'].mean() / 1e6:.3f}",
                "epochs spent": int(part["epochs_spent"].mean()),
            }
        )
    return pd.DataFrame(rows)


def markdown_table(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.4g}"
    return str(v)


def plot_all(frames_by_seed: dict[int, dict[str, pd.DataFrame]], roles: dict[str, str], path: Path, title: str) -> None:
    """Every front, one panel per seed (``ns.results.plot_fronts``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    import nas_sepconv as ns

    fig = Figure(figsize=(6.0 * len(frames_by_seed), 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(frames_by_seed), squeeze=False)[0]
    for ax, (seed, frames) in zip(axes, frames_by_seed.items()):
        searched = {n: f for n, f in frames.items() if roles[n] != "baseline"}
        baselines = {n: f for n, f in frames.items() if roles[n] == "baseline"}
        ns.results.plot_fronts(searched, baselines=baselines, ax=ax, title=f"{title}, seed {seed}")
    fig.savefig(path, dpi=120)


#: How fronts.md says the comparison is made (issue 26's protocol).
PROTOCOL = (
    "Protocol (issue 26): every seed holds out its own validation split (the study's seed; the test split is the "
    "same for all).  Each front is chosen on validation accuracy and scored on the test split: `test_ratio` (the "
    "front's test hypervolume over the best baseline's, on the seed's test reference) is the headline, with "
    "`test_ratio_low`-`test_ratio_high`, a 90% bootstrap interval over the test images (1,000 draws, seeded), "
    "`test_ratio_unit` (normalised axes: each objective scaled to [0, 1] over the seed's front points, reference at "
    "the worst) and `test_ratio_chance` (the accuracy reference at chance, 1/classes); `ratio` is the validation "
    "ratio.  Equal compute (unless run with `--no-equal-compute`): each trial records `train_compute` (training images seen x the candidate's forward MACs); "
    "besides the width families (each alpha once), the baselines `<family>_grid` (alpha x resolution, the grid "
    "sampler, each point once at most) and `<searched>_random` (random search of the searched space) are run "
    "until their summed compute reaches the searched study's: the trial that crosses the budget is kept, trials a "
    "batch ran after it are left out (`compute_share`: a study's compute over the searched study's; a grid "
    "smaller than the budget ends below 1).\n\n"
)


def oneshot_section(table: pd.DataFrame) -> str:
    """The one-shot pipeline's part of ``fronts.md`` (its goals, per seed); empty without one."""
    rows = table[table["role"] == ONESHOT_ROLE]
    if rows.empty:
        return ""
    goals = {
        f"test ratio over the stand-alone search >= {ONESHOT_GOAL_VS_SEARCHED}": rows["test_ratio_vs_searched"]
        >= ONESHOT_GOAL_VS_SEARCHED,
        f"test ratio over the best baseline >= {ONESHOT_GOAL_VS_BASELINES}": rows["test_ratio"]
        >= ONESHOT_GOAL_VS_BASELINES,
        "its 90% interval's lower end above 1.0": rows["test_ratio_low"] > 1.0,
        "no more compute than the stand-alone search (supernet and finalisation included)": rows["compute_share"]
        <= 1.0,
    }
    columns = ["seed", "study", "complete", "front", "best_accuracy", "test_ratio", "test_ratio_low"]
    columns += ["test_ratio_high", "test_ratio_vs_searched", "test_ratio_vs_searched_low", "compute_share"]
    return (
        "\n## The one-shot pipeline\n\n"
        f"`<searched>_oneshot`: the searched space in `search.mode: oneshot` ({ONESHOT}, then the configuration's "
        f"supernet and finalisation epochs), its front's {ONESHOT_FINALIZE} candidates finalised (`--finalize`); "
        "its front is the finalised trials' (inherited accuracies rank the subnets only), and its compute counts "
        "the supernet's training (an upper bound) and the finalisations.  Goals, in every seed:\n\n"
        + "\n".join(f"- {goal}: **{'met' if bool(ok.all()) else 'NOT met'}**" for goal, ok in goals.items())
        + "\n\n"
        + markdown_table(rows[columns])
        + "\n"
    )


def write_report(
    table: pd.DataFrame,
    curves: pd.DataFrame,
    config_name: str,
    config: Config,
    out: Path,
    reference: dict[str, float],
    command: str,
) -> str:
    """``fronts.csv``, ``hv_by_epochs.csv`` and ``fronts.md``; returns the markdown."""
    table.to_csv(out / "fronts.csv", index=False)
    curves.to_csv(out / "hv_by_epochs.csv", index=False)
    searched = table[table["role"] == "searched"]
    met = bool((searched["test_ratio"] >= GOAL).all())
    ratios = ", ".join(
        f"seed {r.seed}: {r.test_ratio:.3f} (90% interval {r.test_ratio_low:.3f}-{r.test_ratio_high:.3f}; "
        f"validation {r.ratio:.3f})"
        for r in searched.itertuples()
    )
    text = (
        f"# The searched front against the width families: {config_name}\n\n"
        f"Command: `{command}`\n\n"
        f"Machine: {os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), shared; device {config.device}, "
        f"{config.workers} worker process(es) per search; "
        f"{config.note}; the trials took {table['trials_min'].sum():.0f} min in all (`trials_min`: the sum of a study's trial durations).\n\n"
        f"Spaces: `{config.searched}` (searched) against {', '.join(f'`{b}`' for b in config.baselines)} "
        f"(every alpha once), with the same data, training recipe and seeds"
        + (f"; overridden in all of them: `{config.overrides}`" if config.overrides else "")
        + (
            f"; in the searched space alone (its search budget): `{config.searched_overrides}`"
            if config.searched_overrides
            else ""
        )
        + ".\n\n"
        f"Hypervolume in accuracy x log10(MACs) on one reference point for every study and seed: "
        f"accuracy {100 * reference['accuracy']:.2f}%, MACs {reference['macs'] / 1e6:.3f} M (the worst values of all "
        f"trials, pushed out by 1% of their range).  `ratio`: over the seed's best baseline; "
        f"`ratio_seed_reference`: the same on the seed's own reference (what `nas-sepconv report "
        f"seed<N>/{config.searched} --baseline ...` prints)"
        + (
            f"; `ratio_floor`: the same with the reference accuracy raised to {100 * config.floor:g}% (only candidates "
            f"at least that accurate count: a check that the ratio does not come from cheap, inaccurate models alone)"
            if config.floor is not None
            else ""
        )
        + ".\n\n"
        + PROTOCOL
        + f"**Goal: the searched front's test-split hypervolume at least {GOAL}x the best baseline's in every seed: "
        f"{'met' if met else 'NOT met'}** ({ratios}).\n\n"
        "## Summary over the seeds (mean +- std)\n\n" + markdown_table(summary(table)) + "\n\n"
        "## Per seed\n\n" + markdown_table(table) + "\n\n"
        "Plot: `fronts.png` (every front, one panel per seed); per seed, `seed<N>/comparison.csv|png` and each "
        "study's results folder.  `hv_by_epochs.csv`: the searched front's hypervolume after each trial against "
        "the training epochs spent.\n"
    )
    text += oneshot_section(table)
    mf = multi_fidelity_summary(curves, config.searched)
    if len(mf):
        mf.to_csv(out / "multi_fidelity.csv", index=False)
        plot_hv_by_epochs(curves, out / "hv_by_epochs.png", config_name)
        mf_met = bool(mf["met"].all())
        rungs = config.multi_fidelity or "the space's, else min_epochs 1, eta 3"
        text += (
            "\n## The multi-fidelity mode\n\n"
            f"`{config.searched}_multifidelity`: the searched space in the multi-fidelity mode (MO-ASHA, rungs {rungs}), "
            "twice its trials, same seed; compared on training epochs spent (every trial's, stopped ones included) "
            "with the hypervolume of its full-budget trials on the common reference.  "
            f"**Goal: the full search's final hypervolume reached with at most {MF_GOAL:g}x its epochs in every seed: "
            f"{'met' if mf_met else 'NOT met'}** (epochs ratio "
            + ", ".join(
                f"seed {r.seed}: " + ("not reached" if math.isnan(r.epochs_ratio) else f"{r.epochs_ratio:.3f}")
                for r in mf.itertuples()
            )
            + ").\n\n"
            + markdown_table(mf)
            + "\n\n`multi_fidelity.csv` (this table), `hv_by_epochs.png` (the curves).\n"
        )
    (out / "fronts.md").write_text(text)
    return text


def run(
    config_name: str,
    *,
    seeds: list[int],
    out: Path,
    threads: int | None,
    data_root: str | None,
    device: str | None = None,
    workers: int | None = None,
    overrides: dict[str, Any] | None = None,
    multi_fidelity: bool = False,
    multi_fidelity_seeds: list[int] | None = None,
    equal_compute: bool = True,
    oneshot: bool = False,
    oneshot_seeds: list[int] | None = None,
    report_only: bool = False,
    command: str = "",
    log: Any = print,
) -> pd.DataFrame:
    """The whole comparison of one configuration; returns the per-seed table.  Every seed's
    searched and baseline studies run first, then (``equal_compute``) the equal-compute
    baselines of every seed (:func:`run_equal_compute`), then (``oneshot``) the one-shot
    pipeline (:func:`run_oneshot`, of ``oneshot_seeds`` only if given), then (``multi_fidelity``) the
    multi-fidelity runs, of ``multi_fidelity_seeds`` only if given.  ``report_only``: no study is run or resumed, the
    tables and plots are made from the folders as they are."""
    import nas_sepconv as ns

    config = CONFIGS[config_name]
    if device is not None:
        config = dataclasses.replace(config, device=device)
    if workers is not None:
        config = dataclasses.replace(config, workers=workers)
    out.mkdir(parents=True, exist_ok=True)
    spaces = space_files(config, out, overrides or {})
    runs_by_seed = {
        seed: run_seed(
            config,
            spaces,
            seed,
            out / f"seed{seed}",
            threads=threads,
            data_root=data_root,
            log=log,
            report_only=report_only,
        )
        for seed in seeds
    }
    for seed in seeds if equal_compute else []:
        runs_by_seed[seed] |= run_equal_compute(
            config,
            spaces,
            seed,
            out / f"seed{seed}",
            runs_by_seed[seed],
            threads=threads,
            data_root=data_root,
            log=log,
            report_only=report_only,
        )
    for seed in seeds if oneshot else []:
        if oneshot_seeds is None or seed in oneshot_seeds:
            runs_by_seed[seed] |= run_oneshot(
                config,
                spaces,
                seed,
                out / f"seed{seed}",
                threads=threads,
                data_root=data_root,
                log=log,
                report_only=report_only,
            )
    for seed in seeds if multi_fidelity else []:
        if multi_fidelity_seeds is None or seed in multi_fidelity_seeds:
            runs_by_seed[seed] |= run_multi_fidelity(
                config,
                spaces,
                seed,
                out / f"seed{seed}",
                threads=threads,
                data_root=data_root,
                log=log,
                report_only=report_only,
            )
    frames_by_seed = {seed: {n: _frame(r) for n, r in runs.items()} for seed, runs in runs_by_seed.items()}
    reference = reference_of({f"{n} {s}": f for s, frames in frames_by_seed.items() for n, f in frames.items()})
    rows, curves = [], []
    for seed, runs in runs_by_seed.items():
        frames = frames_by_seed[seed]
        rows += seed_rows(seed, runs, frames, reference, config.floor, standalone=config.searched)
        searched = {n: frames[n] for n in runs if runs[n]["role"] != "baseline"}
        baselines = {n: frames[n] for n in runs if runs[n]["role"] == "baseline"}
        ns.results.write_comparison(searched, out / f"seed{seed}", baselines=baselines)
        trained = [n for n in searched if runs[n]["role"] != ONESHOT_ROLE]  # (a one-shot study trains no trial)
        curves += [hv_by_epochs(seed, n, frames[n], reference) for n in trained]
    table = pd.DataFrame(rows)
    roles = {n: r["role"] for runs in runs_by_seed.values() for n, r in runs.items()}
    plot_all(frames_by_seed, roles, out / "fronts.png", config_name)
    text = write_report(table, pd.concat(curves, ignore_index=True), config_name, config, out, reference, command)
    log(text)
    return table


def _frame(run: dict[str, Any]) -> pd.DataFrame:
    """A study's frame; an equal-compute baseline's cut at its budget (:func:`within_budget`)."""
    import nas_sepconv as ns

    df = ns.results.load(run["folder"])
    return within_budget(df, run["budget"]) if "budget" in run else df


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", choices=list(CONFIGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None, help="default: results/fronts/<config>")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per search (default: the search's choice)"
    )
    parser.add_argument("--data-root", default=None, help="the CIFAR-10 folder or archive (the cifar10 configurations)")
    parser.add_argument("--device", default=None, help="override the configuration's device (cpu, cuda)")
    parser.add_argument(
        "--workers", type=int, default=None, help="override the configuration's worker processes per search"
    )
    parser.add_argument(
        "--multi-fidelity",
        type=int,
        nargs="*",
        default=None,
        metavar="SEED",
        help="also run the searched space in the multi-fidelity mode, after every seed's studies "
        "(for the seeds named, else every seed)",
    )
    parser.add_argument(
        "--oneshot",
        type=int,
        nargs="*",
        default=None,
        metavar="SEED",
        help="also run the one-shot pipeline (supernet, 500 subnets, the front's 8 finalised) after every seed's "
        "studies (for the seeds named, else every seed)",
    )
    parser.add_argument(
        "--no-equal-compute",
        action="store_true",
        help="skip the equal-compute baselines (family alpha x resolution grids, random search of the searched space)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run or resume no study: make the tables and plots from the folders as they are",
    )
    args = parser.parse_args()
    out = args.out or Path("results/fronts") / args.config.replace("-", "_")
    command = "python benchmarks/fronts.py " + " ".join(
        a for a in sys.argv[1:] if a != "--report-only"
    )  # what made the studies
    run(
        args.config,
        seeds=args.seeds,
        out=out,
        threads=args.threads,
        data_root=args.data_root,
        device=args.device,
        workers=args.workers,
        multi_fidelity=args.multi_fidelity is not None,
        multi_fidelity_seeds=args.multi_fidelity or None,
        equal_compute=not args.no_equal_compute,
        oneshot=args.oneshot is not None,
        oneshot_seeds=args.oneshot or None,
        report_only=args.report_only,
        command=command.strip(),
    )


if __name__ == "__main__":
    main()
