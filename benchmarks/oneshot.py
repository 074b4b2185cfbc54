"""Ranking quality of the one-shot mode (issue 26, item 3): Kendall tau and Spearman rho between
the inherited and the finalised validation accuracy of subnets spread over a space's MACs, for
build spaces and convert spaces.

    python benchmarks/oneshot.py digits [--subnets 24] [--seed 0] [--out results/oneshot]
    python benchmarks/oneshot.py cifar10 --data-root PATH [--subnets 24]
    python benchmarks/oneshot.py cifar10-full --data-root PATH --device cuda
    python benchmarks/oneshot.py digits-convert [--subnets 24]
    python benchmarks/oneshot.py cifar10-convert --data-root PATH [--subnets 24]

For a configuration (:data:`CONFIGS`: a bundled space put in ``search.mode: oneshot``, with
overrides) this trains the space's supernet as a one-shot search does (a build space's:
:func:`~nas_sepconv.search.inherited.prepare_supernet`, sandwich rule; a convert space's: the
trained base with every site's blocks, single-path distillation from the base,
:func:`~nas_sepconv.search.convert_oneshot.prepare_convert_supernet`; into
``OUT/<config>/supernet``: checkpointed every epoch, resumed after a kill), draws ``--pool``
distinct subnets at random (seeded) and keeps ``--subnets`` of them spread evenly over their MACs
range (by rank in MACs, both ends kept). Each subnet is measured with inherited weights, BatchNorm
recalibrated (a one-shot trial's accuracy), and finalised, trained alone from those weights for
``search.finalize_epochs`` (``--from scratch``: from scratch instead), exactly as ``nas-sepconv
search --finalize K`` does (:func:`finalize_candidate`), ``--finalize-repeats`` times (default 2)
with different seeds: the finalised accuracy is their mean (each repeat's is a column), and tau
between repeats 1 and 2 is the ceiling of any ranking against finalisations this noisy (a convert
space's subnet is fine-tuned with distillation from the base, its epochs ``search.finalize_epochs``,
default ``convert.finetune_epochs``). ``--supernet-epochs`` and ``--finalize-epochs`` override the
configuration's (for smoke runs). Each subnet's row is appended to ``OUT/<config>/ranking.csv`` as
soon as it is measured; the same command resumes, skipping the subnets already there and measuring
only the repeats a row lacks (a row of an earlier version, with one finalisation, keeps it as repeat
1: the same seed). ``OUT/<config>/ranking.md`` (oneshot_report.py) has the command, the
configuration, tau and rho (scipy.stats) against the goal (tau >= 0.6) beside the references (MACs
alone; the finalisation's repeatability), and the rows. ``--seed`` seeds the draws, the trials and
the data's subset and validation split, but a configuration with fixed base weights keeps the split
they were trained on (:attr:`Config.data_seed`: cifar10-convert's is 0), so no seed validates on
training images.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared helpers
from oneshot_report import (  # noqa: E402
    REPEAT_SEED_STEP,
    columns,
    correlations,
    read_rows,
    repeat_column,
    with_means,
    write_report,
    write_rows,
)


@dataclass(frozen=True)
class Config:
    """One ranking measurement: the build space (a bundled name or a YAML path), what is
    overridden in it (a deep merge; ``search.mode`` is set to ``oneshot``), where it runs.
    ``data_seed``: the seed of the data's subset and validation split, for a configuration
    whose fixed ``convert.weights`` were trained on one seed's split (their validation images
    are then that seed's held-out ones, whatever ``--seed``); None: ``--seed``."""

    space: str
    overrides: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    note: str = ""
    data_seed: int | None = None

    def data_seed_for(self, seed: int) -> int:
        """The data seed a run with ``--seed seed`` uses."""
        return seed if self.data_seed is None else self.data_seed


CONFIGS: dict[str, Config] = {
    "digits": Config(
        "default",
        {"search": {"supernet_epochs": 60, "finalize_epochs": 5}},
        note="the bundled default space on the digits (16x16): supernet 60 epochs (sandwich rule, 2 random "
        "subnets a step; 60 ranked better than 30, whose tau was 0.521), each subnet finalised 5 epochs "
        "(train.epochs) from its inherited weights; 1 thread",
    ),
    "cifar10": Config(
        "mobilenetv3_cifar10",
        {
            "data": {"subset": 5625, "val_fraction": 0.2, "image_size": 16},
            "train": {"epochs": 5, "batch_size": 64, "lr": 0.05, "schedule": "cosine", "warmup_epochs": 0},
            "search": {"supernet_epochs": 20, "finalize_epochs": 5},
        },
        note="CPU-sized like benchmarks/fronts.py cifar10: 5,625 images at 16x16, supernet 20 epochs, "
        "each subnet finalised 5 epochs",
    ),
    "cifar10-full": Config(
        "mobilenetv3_cifar10",
        {"search": {"supernet_epochs": 60, "finalize_epochs": 15}},
        device="cuda",
        note="the bundled space as it is (32x32, 50,000 images): supernet 60 epochs, finalised 15 (train.epochs)",
    ),
    "digits-convert": Config(
        "digits_convert",
        {"convert": {"width_mult": 1.0}, "search": {"supernet_epochs": 10, "finalize_epochs": 1}},
        note="the bundled digits convert space at the base's width (width_mult 1: the one-shot convert mode does "
        "not prune), its base (tiny_convnet, 8 epochs) trained once and cached; supernet 10 epochs of single-path "
        "distillation, each subnet fine-tuned 1 epoch (convert.finetune_epochs) from its inherited weights",
    ),
    "cifar10-convert": Config(
        "resnet18_convert_cifar10",
        {
            "data": {"subset": 20000, "val_fraction": 0.1},
            "train": {"batch_size": 128},
            "convert": {
                "model_kwargs": {"width": 32, "stem_stride": 2},
                "weights": "results/fidelity/original_cifar10_n20000_w32_stem2_e15_s0.safetensors",
                "width_mult": 1.0,
            },
            "search": {"supernet_epochs": 5, "finalize_epochs": 1},
        },
        note="the committed CIFAR-10 ResNet-18 (width 32, stem stride 2, 15 epochs on 20,000 images: "
        "results/fidelity) converted stage by stage (the bundled resnet18_convert_cifar10 groups) at its width; "
        "20,000 images at 32x32, supernet 5 epochs of single-path distillation, each subnet fine-tuned 1 epoch; "
        "data seed 0 whatever --seed (the base was trained on seed 0's split: another seed would validate on "
        "images it trained on)",
        data_seed=0,
    ),
}


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in, dict by dict (a copy)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def space_file(config: Config, folder: Path, data_root: str | None) -> Path:
    """The configuration's space in mode oneshot, written to ``folder/space.yaml``."""
    from nas_sepconv.search import load_space

    spec = yaml.safe_load(load_space(config.space).text)
    spec = merged(spec, merged(config.overrides, {"search": {"mode": "oneshot"}}))
    if data_root is not None:
        spec["data"]["root"] = str(Path(data_root).resolve())
    weights = (spec.get("convert") or {}).get("weights")
    if weights:  # a path of this repository: absolute, since the space file is written elsewhere
        spec["convert"]["weights"] = str(Path(weights).resolve())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def spread_subnets(ctx: Any, *, pool: int, subnets: int, seed: int) -> list[dict[str, Any]]:
    """``subnets`` distinct subnets of ``pool`` random draws (a seeded random sampler), spread
    evenly by rank over their MACs: ``{"params", "macs", "arch"}``, fewest MACs first."""
    from nas_sepconv.io import build_from_recipe
    from nas_sepconv.measure import count_macs
    from nas_sepconv.search.convert_oneshot import candidate_plan

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.RandomSampler(seed=seed)
    study = optuna.create_study(sampler=sampler, directions=["maximize", "minimize"])
    drawn: dict[str, dict[str, Any]] = {}
    for _ in range(pool):
        trial = study.ask()
        candidate = ctx.suggest(trial)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)  # (the draws only)
        if candidate.summary in drawn:
            continue
        if candidate.space_kind.from_base:  # the plan's MACs (a trial's): no model is converted for a draw
            macs = int(candidate_plan(ctx.base(), candidate).macs_after)
        else:
            x = torch.randn(1, ctx.data.input_shape[0], candidate.resolution, candidate.resolution)
            macs = int(count_macs(build_from_recipe(candidate.recipe), x))
        drawn[candidate.summary] = {"params": trial.params, "macs": macs, "arch": candidate.summary}
    ordered = sorted(drawn.values(), key=lambda d: (d["macs"], d["arch"]))
    if len(ordered) <= subnets:
        return ordered
    picks = np.unique(np.round(np.linspace(0, len(ordered) - 1, subnets)).astype(int))
    return [ordered[i] for i in picks]


def finalize_repeat(
    ctx: Any, candidate: Any, number: int, repeat: int, *, seed: int, start: Any, epochs: int
) -> dict[str, Any]:
    """Repeat ``repeat`` (1-based) of a subnet's finalisation, seeded ``seed + number +
    REPEAT_SEED_STEP * (repeat - 1)`` (repeat 1 is the single finalisation of earlier versions):
    its columns, validation and test accuracy."""
    from nas_sepconv.search.finalization import finalize_candidate

    seeded = seed + number + REPEAT_SEED_STEP * (repeat - 1)
    _, finalized = finalize_candidate(ctx, candidate, seed=seeded, epochs=epochs, start=start)
    return {
        repeat_column(repeat): finalized["accuracy"],
        repeat_column(repeat, test=True): finalized.get("test_accuracy"),
    }


def measure(
    ctx: Any, number: int, drawn: dict[str, Any], *, seed: int, start: Any, epochs: int, repeats: int
) -> dict[str, Any]:
    """One subnet's row: its inherited accuracies and those of ``repeats`` finalisations
    (validation and test; :func:`with_means` adds their means)."""
    from nas_sepconv.search import StoredTrial
    from nas_sepconv.search.convert_oneshot import extract_candidate
    from nas_sepconv.search.inherited import CALIBRATION_IMAGES, inherited_candidate, inherited_metrics

    started = time.perf_counter()
    candidate = ctx.suggest(StoredTrial(drawn["params"], number=number, source="the benchmark"))
    device = ctx.settings.options.device
    if candidate.space_kind.from_base:  # the converted model of the path, as a one-shot convert trial takes it
        model = extract_candidate(
            ctx.supernet(), ctx.base(), candidate, ctx.data, images=CALIBRATION_IMAGES, seed=seed + number
        )
        inherited = inherited_metrics(model, candidate, ctx.data, device=device)
    else:
        _, inherited = inherited_candidate(ctx.supernet(), candidate, ctx.data, device=device, seed=seed + number)
    row = {
        "subnet": number,
        "arch": drawn["arch"],
        "params_json": json.dumps(drawn["params"], sort_keys=True),
        "macs": drawn["macs"],
        "resolution": candidate.resolution,
        "inherited_accuracy": inherited["accuracy"],
        "inherited_test_accuracy": inherited["test_accuracy"],
        "finalized_from": start.name,
        "finalize_epochs": epochs,
    }
    for k in range(1, repeats + 1):
        row.update(finalize_repeat(ctx, candidate, number, k, seed=seed, start=start, epochs=epochs))
    row["seconds"] = time.perf_counter() - started
    return with_means(row, repeats)


def complete(ctx: Any, row: pd.Series, *, seed: int, start: Any, epochs: int, repeats: int) -> dict[str, Any]:
    """A measured row with the finalisation repeats it lacks measured (and its means anew)."""
    from nas_sepconv.search import StoredTrial

    started = time.perf_counter()
    out = row.to_dict()
    number = int(out["subnet"])
    candidate = ctx.suggest(StoredTrial(json.loads(out["params_json"]), number=number, source="the benchmark"))
    for k in range(1, repeats + 1):
        if out.get(repeat_column(k)) is None or out[repeat_column(k)] != out[repeat_column(k)]:
            out.update(finalize_repeat(ctx, candidate, number, k, seed=seed, start=start, epochs=epochs))
    out["seconds"] = float(out["seconds"]) + time.perf_counter() - started
    return with_means(out, repeats)


def check_row(row: pd.Series, drawn: dict[str, Any], *, csv: Path, start: str, epochs: int) -> None:
    """Refuse to resume a row measured for another subnet (another ``--seed``, ``--pool`` or
    ``--subnets``) or finalised another way: its missing repeats would be averaged with them."""
    number = int(row["subnet"])
    found = [
        ("arch", str(row["arch"]), str(drawn["arch"]), "the same --seed, --pool and --subnets"),
        ("finalize_epochs", int(row["finalize_epochs"]), int(epochs), "the same --finalize-epochs"),
        ("finalized_from", str(row["finalized_from"]), str(start), "the same --from"),
    ]
    for column, was, now, fix in found:
        if was != now:
            raise SystemExit(
                f"{csv}: subnet {number}'s {column} is {was!r}, this run's {now!r}: pass {fix}, or another --out"
            )


def run(
    name: str,
    config: Config,
    *,
    out: Path,
    subnets: int = 24,
    pool: int = 500,
    seed: int = 0,
    start: str | None = None,
    data_root: str | None = None,
    threads: int | None = 1,
    finalize_repeats: int = 2,
    command: str = "",
) -> pd.DataFrame:
    """Measure the configuration into ``out/<name>`` (resumed: a subnet measured is skipped, a
    repeat it lacks is measured); returns the rows."""
    from nas_sepconv.measure import torch_threads
    from nas_sepconv.search import TrialContext, inherited, load_space
    from nas_sepconv.search.finalize_starts import finalize_start
    from nas_sepconv.search.schema import candidate_epochs

    folder = out / name
    space = load_space(space_file(config, folder, data_root))
    search = space.spec.search
    begin = finalize_start(start or search.finalize_from, field="--from")
    epochs = search.finalize_epochs or max(1, candidate_epochs(space.spec))
    csv = folder / "ranking.csv"
    if finalize_repeats < 1:
        raise SystemExit(f"--finalize-repeats must be at least 1, got {finalize_repeats}")
    done = read_rows(csv, finalize_repeats)
    plan = {"seed": seed, "start": begin, "epochs": epochs, "repeats": finalize_repeats}
    repeats = [repeat_column(k) for k in range(1, finalize_repeats + 1)]
    with torch_threads(threads):
        data_seed = config.data_seed_for(seed)
        ctx = TrialContext.for_rebuild(space, device=config.device, out_dir=folder, study=name, data_seed=data_seed)
        ctx.supernet()  # trained (or resumed, or loaded) first
        for number, drawn in enumerate(spread_subnets(ctx, pool=pool, subnets=subnets, seed=seed)):
            at = done.index[done["subnet"] == number]
            if len(at):
                check_row(done.loc[at[0]], drawn, csv=csv, start=begin.name, epochs=epochs)
            if len(at) and done.loc[at, repeats].notna().to_numpy().all():
                continue
            row = complete(ctx, done.loc[at[0]], **plan) if len(at) else measure(ctx, number, drawn, **plan)
            done = pd.concat([done.drop(index=at), pd.DataFrame([row])], ignore_index=True)
            write_rows(csv, done.reindex(columns=columns(finalize_repeats)))
            print(
                f"{name}: subnet {number} {row['macs']:,} MACs: inherited {row['inherited_accuracy']:.4f}, "
                f"finalised {row['finalized_accuracy']:.4f} ({row['seconds']:.0f}s)",
                file=sys.stderr,
            )
    rows = pd.read_csv(csv).sort_values("macs")
    calibration = inherited.CALIBRATION_IMAGES
    write_report(
        folder, rows, name=name, config=config, command=command, repeats=finalize_repeats, calibration=calibration
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", choices=list(CONFIGS))
    parser.add_argument("--subnets", type=int, default=24, help="subnets measured (>= 20 for the goal)")
    parser.add_argument("--pool", type=int, default=500, help="random draws the subnets are spread out of")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--from", dest="start", default=None, help="inherited or scratch (default: the space's)")
    parser.add_argument("--out", type=Path, default=Path("results/oneshot"))
    parser.add_argument("--data-root", default=None, help="the CIFAR-10 folder or archive (cifar10 configurations)")
    parser.add_argument("--device", default=None, help="override the configuration's device")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--supernet-epochs", type=int, default=None, help="override search.supernet_epochs")
    parser.add_argument("--finalize-epochs", type=int, default=None, help="override search.finalize_epochs")
    parser.add_argument(
        "--finalize-repeats",
        type=int,
        default=2,
        help="finalisations per subnet, seeded apart; their mean is ranked against, repeats 1 and 2 give the ceiling",
    )
    args = parser.parse_args()
    config = CONFIGS[args.config]
    if args.device is not None:
        config = replace(config, device=args.device)
    epochs = {"supernet_epochs": args.supernet_epochs, "finalize_epochs": args.finalize_epochs}
    epochs = {k: v for k, v in epochs.items() if v is not None}
    if epochs:
        note = config.note + f" (overridden: {epochs})"
        config = replace(config, overrides=merged(config.overrides, {"search": epochs}), note=note)
    command = "python benchmarks/oneshot.py " + " ".join(sys.argv[1:])
    rows = run(
        args.config,
        config,
        out=args.out,
        subnets=args.subnets,
        pool=args.pool,
        seed=args.seed,
        start=args.start,
        data_root=args.data_root,
        threads=args.threads,
        finalize_repeats=args.finalize_repeats,
        command=command,
    )
    print(json.dumps(correlations(rows)))


if __name__ == "__main__":
    main()
