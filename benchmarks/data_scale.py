#!/usr/bin/env python
"""Data scale: peak memory and training throughput of searches held in memory and streamed.

Two synthetic ImageFolder trees of JPEG images (10 classes; each image a smooth random field
tinted by its class, so that there is something to learn), generated once under ``--work``:

* ``small``: 20,000 images at 128x128 (19,000 train, 1,000 test), 983 MB decoded as ``uint8``:
  the data set of issue #27;
* ``large``: ``--large-images`` images at 224x224 (default 170,000: 25.6 GB decoded, more than a
  24 GB machine's memory).

Each run is one ``nas-sepconv search`` (a subprocess, 2 trials, 1 epoch) of a build space derived
from the bundled ``mobilenetv3_cifar10`` with its choices fixed (width 0.25, depth 0.5, stem
stride 2, batch 128; trained at a quarter of the decoded size: 32 px for ``small``, 56 px for
``large``: sized for 2 CPU cores; and width 0.5 at 64 px, about 8x the cost per image, for the
``-w0.5r64`` pair), so that every run of a pair trains the same model on the same images:

* ``small`` in memory and streamed (``data.stream: false`` / ``true``), with 1 and 2 workers;
* ``large`` with the path chosen automatically (it streams: over the memory budget), 1 worker.

For each run: the peak memory of the search's processes (PSS summed over the process tree, as the
search reports it in ``meta.json``), the machine's memory, and the throughput: training images per
second of a trial (the training split times the epochs, over the trial's ``wall_time_s``, which
includes building, validating and testing it: the same for both paths).  Written to ``--out``:
``data_scale.csv`` (one row per run, appended as each finishes: a killed benchmark resumes at the
next run) and ``data_scale.md`` (the table, the ratios against the goals, the command).

    python benchmarks/data_scale.py --work /tmp/data_scale --out results/data_scale
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from nas_sepconv.data.memory import machine_memory

CLASSES = 10
SETS = {  # name -> (train images, test images, side)
    "small": (19_000, 1_000, 128),
}
RUNS = [  # (run name, data set, stream, workers)
    ("small-memory-1w", "small", False, 1),
    ("small-memory-2w", "small", False, 2),
    ("small-stream-1w", "small", True, 1),
    ("small-stream-2w", "small", True, 2),
    ("large-auto-1w", "large", "auto", 1),
    # a model 8x as costly per image (width 0.5, 64 px): decoding weighs less against training
    ("small-memory-1w-w0.5r64", "small", False, 1),
    ("small-stream-1w-w0.5r64", "small", True, 1),
]


def _write_images(job: tuple[str, int, int, int, int]) -> int:
    """Images ``lo..hi`` of one class folder (seeded by class and index)."""
    from PIL import Image

    folder, label, lo, hi, side = job
    tint = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], np.float32)
    for i in range(lo, hi):
        rng = np.random.default_rng(label * 10_000_000 + i)
        small = rng.integers(0, 256, (8, 8, 3)).astype(np.float32)
        field = np.asarray(Image.fromarray(small.astype(np.uint8)).resize((side, side), Image.BILINEAR), np.float32)
        pixels = np.clip(0.6 * field + 0.4 * tint, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(f"{folder}/{i:07d}.jpg", quality=85)
    return hi - lo


def make_tree(root: Path, n_train: int, n_test: int, side: int, processes: int) -> Path:
    """The synthetic ImageFolder tree (made once; ``.complete`` marks a finished one)."""
    if (root / ".complete").is_file():
        return root
    jobs = []
    for split, n in (("train", n_train), ("test", n_test)):
        per_class = n // CLASSES
        for label in range(CLASSES):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for lo in range(0, per_class, 2000):
                jobs.append((str(folder), label, lo, min(per_class, lo + 2000), side))
    started = time.perf_counter()
    with Pool(processes) as pool:
        done = 0
        for n in pool.imap_unordered(_write_images, jobs):
            done += n
            print(f"  {root.name}: {done}/{n_train + n_test} images, {time.perf_counter() - started:.0f}s", flush=True)
    (root / ".complete").write_text("done\n")
    return root


def space_file(path: Path, tree: Path, side: int, stream: bool | str, *, heavy: bool = False) -> Path:
    """The benchmark's space: mobilenetv3_cifar10's blocks with every choice fixed."""
    from nas_sepconv.search import load_space

    spec = load_space("mobilenetv3_cifar10").spec.model_dump(mode="json", exclude_none=True)
    stages = [{k: (v[:1] if isinstance(v, list) else v) for k, v in stage.items()} for stage in spec["build"]["stages"]]
    doc = {
        "name": path.stem,
        "description": "data-scale benchmark: mobilenetv3_cifar10's blocks, every choice fixed",
        "kind": "build",
        "data": {"dataset": f"imagefolder:{tree}", "image_size": side, "val_fraction": 0.1, "stream": stream},
        "train": {"epochs": 1, "batch_size": 128, "optimizer": "sgd", "lr": 0.1, "schedule": "onecycle"},
        "search": {"trials": 2, "sampler": "random", "objectives": ["accuracy", "macs"]},
        "build": {
            **{k: spec["build"][k] for k in ("head_channels", "act", "dropout")},
            "stem_channels": 16,
            "stem_stride": 2,
            "stages": stages,
            "width_mult": [0.5 if heavy else 0.25],
            "depth_mult": [0.5],
            "resolution_mult": [0.5 if heavy else 0.25],
        },
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_one(name: str, tree: Path, side: int, stream: bool | str, workers: int, work: Path) -> dict:
    (work / "spaces").mkdir(parents=True, exist_ok=True)
    space = space_file(work / "spaces" / f"{name}.yaml", tree, side, stream, heavy=name.endswith("w0.5r64"))
    out = work / "runs"
    cmd = [
        sys.executable, "-m", "nas_sepconv.cli", "search", "--space", str(space),
        "--trials", "2", "--workers", str(workers), "--out", str(out), "--study", name, "--seed", "0",
    ]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "NAS_SEPCONV_PROGRESS_INTERVAL": "60"}
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{name}: the search failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    meta = json.loads((out / name / "meta.json").read_text())
    trials = pd.read_csv(out / name / "trials.csv")
    done = trials[trials["state"] == "COMPLETE"]
    n_train = int(meta["data"]["train_images"])
    return {
        "run": name,
        "data_set": tree.name,
        "images": int(meta["data"]["images"]),
        "decoded_GB": round(meta["data"]["decoded_bytes"] / 1e9, 3),
        "path": "streamed" if meta["data"]["streamed"] else "in memory",
        "workers": workers,
        "trials": len(done),
        "peak_memory_GB": round(meta["peak_memory_bytes"] / 1e9, 3),
        "machine_memory_GB": round(machine_memory() / 1e9, 1),
        "train_images_per_s": round(float((n_train / done["wall_time_s"]).mean()), 1),
        "val_accuracy": round(float(done["accuracy"].mean()), 4),
        "search_wall_s": round(wall, 1),
        "command": shlex.join(cmd),
    }


def report(rows: pd.DataFrame, out: Path, command: str) -> str:
    def row(name: str) -> pd.Series | None:
        hit = rows[rows["run"] == name]
        return None if hit.empty else hit.iloc[0]

    lines = ["# Data scale: memory and throughput, in memory and streamed", "", f"Command: `{command}`", ""]
    lines += [markdown_table(rows.drop(columns=["command"])), "", "## Goals", ""]
    m1, m2, s1, big = row("small-memory-1w"), row("small-memory-2w"), row("small-stream-1w"), row("large-auto-1w")
    if m1 is not None and m2 is not None:
        ratio = m2["peak_memory_GB"] / m1["peak_memory_GB"]
        lines.append(f"- 2 workers / 1 worker peak memory, in memory: {ratio:.2f} (goal <= 1.3: {_met(ratio <= 1.3)})")
    if m1 is not None and s1 is not None:
        ratio = s1["train_images_per_s"] / m1["train_images_per_s"]
        lines.append(f"- streamed / in-memory throughput, 1 worker: {ratio:.2f} (goal >= 0.8: {_met(ratio >= 0.8)})")
    mh, sh = row("small-memory-1w-w0.5r64"), row("small-stream-1w-w0.5r64")
    if mh is not None and sh is not None:
        ratio = sh["train_images_per_s"] / mh["train_images_per_s"]
        lines.append(
            f"- streamed / in-memory throughput, 1 worker, width 0.5 at 64 px: {ratio:.2f} (goal >= 0.8: {_met(ratio >= 0.8)})"
        )
    s2 = row("small-stream-2w")
    if m2 is not None and s2 is not None:
        ratio = s2["train_images_per_s"] / m2["train_images_per_s"]
        lines.append(f"- streamed / in-memory throughput, 2 workers: {ratio:.2f} (goal >= 0.8: {_met(ratio >= 0.8)})")
    if big is not None:
        share = big["peak_memory_GB"] / big["machine_memory_GB"]
        lines.append(
            f"- data set of {big['decoded_GB']:.1f} GB decoded on a {big['machine_memory_GB']:.1f} GB machine: "
            f"{big['trials']} trials, {big['path']}, peak memory {big['peak_memory_GB']:.2f} GB = {share:.2f} of the "
            f"machine (goal: 2 trials, < 0.5: {_met(big['trials'] == 2 and share < 0.5)})"
        )
    lines += [
        "",
        "Peak memory: PSS summed over the search's process tree (a shared page counts once), as the search",
        "writes it to meta.json.  Throughput: training images per second of a trial's wall time (which",
        "includes building, validating and testing it).  One run per row, on this machine as it was: compare",
        "rows of one invocation only.  With 1 worker the search runs in its own process; with 2 it starts",
        "2 worker processes beside it, each with its own torch runtime and batches: the images themselves",
        "are file-backed pages of the decoded cache, shared (tests/data/test_stream.py).",
    ]
    text = "\n".join(lines) + "\n"
    (out / "data_scale.md").write_text(text)
    return text


def markdown_table(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(df.columns) + " |"
    rule = "|" + "---|" * len(df.columns)
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="where the image trees and the searches go")
    ap.add_argument("--out", type=Path, default=Path("results/data_scale"))
    ap.add_argument("--large-images", type=int, default=170_000, help="images of the large tree (at 224x224)")
    ap.add_argument("--runs", nargs="*", default=[r[0] for r in RUNS], help="which runs (default: all)")
    ap.add_argument("--processes", type=int, default=len(os.sched_getaffinity(0)), help="to write the images")
    args = ap.parse_args()
    command = shlex.join(["python", "benchmarks/data_scale.py", *sys.argv[1:]])
    args.out.mkdir(parents=True, exist_ok=True)
    sets = {**SETS, "large": (args.large_images - 2_000, 2_000, 224)}
    csv = args.out / "data_scale.csv"
    rows = pd.read_csv(csv) if csv.is_file() else pd.DataFrame()
    for name, data_set, stream, workers in RUNS:
        if name not in args.runs or (not rows.empty and name in set(rows["run"])):
            continue
        n_train, n_test, side = sets[data_set]
        tree = make_tree(args.work / data_set, n_train, n_test, side, args.processes)
        print(f"{name}: searching ...", flush=True)
        row = run_one(name, tree, side, stream, workers, args.work)
        print(f"  {row}", flush=True)
        rows = pd.concat([rows, pd.DataFrame([row])], ignore_index=True)
        rows.to_csv(csv, index=False)
    print(report(rows, args.out, command))


if __name__ == "__main__":
    main()
