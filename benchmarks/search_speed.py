"""Trials per minute of the main job (`nas-sepconv search` on the bundled default space).

    python benchmarks/search_speed.py [--space default] [--trials 24] [--workers 1 2]
        [--threads auto 1 2] [--load N] [--out results/search]

Runs the real command in a fresh results directory for each worker count and thread count
(``--threads auto``: the search's own choice), times it as a whole process, and reads the study
back: trials finished, failed, wall time, trials per minute, the Pareto front size and the best
validation / test accuracy.  Writes a markdown table and a CSV under --out.  (On a CUDA
machine, add --device cuda.)

``--load N`` measures "a loaded machine": N busy background processes (a one-thread numpy
matmul loop each, bounded by --load-seconds) run during every measurement and are killed at the
end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

#: one busy background process: a one-thread matmul loop that stops by itself after SECONDS
_BUSY = "import time, numpy as np\na = np.random.rand(256, 256)\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    a = a @ a\n    a /= np.abs(a).max()\n"


@contextlib.contextmanager
def background_load(n: int, seconds: float):
    """N busy processes for the block (each bounded by ``seconds``), killed at its end."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", _BUSY.format(seconds=seconds)], env=env) for _ in range(n)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def run(space: str, trials: int, workers: int, device: str, seed: int, threads: str = "auto", load: int = 0) -> dict:
    import nas_sepconv as ns

    scratch = Path(tempfile.mkdtemp(prefix="nas_sepconv_speed_"))
    cmd = [
        sys.executable,
        "-m",
        "nas_sepconv.cli",
        "search",
        "--space",
        space,
        "--trials",
        str(trials),
        "--workers",
        str(workers),
        "--device",
        device,
        "--seed",
        str(seed),
        "--out",
        str(scratch),
    ]
    if threads != "auto":
        cmd += ["--threads", str(threads)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    folder = next(p for p in scratch.iterdir() if p.is_dir())
    df = ns.results.load(folder)
    front = ns.results.pareto_front(df)
    complete = df[df["state"] == "COMPLETE"]
    shutil.rmtree(scratch)
    return {
        "space": space,
        "workers": workers,
        "threads": threads if threads != "auto" else f"auto ({_recorded_threads(df)})",
        "load": load,
        "device": device,
        "trials_finished": int(df["state"].isin(["COMPLETE", "PRUNED"]).sum()),
        "trials_failed": int((df["state"] == "FAIL").sum()),
        "wall_s": round(wall, 1),
        "trials_per_min": round(60 * trials / wall, 2),
        "mean_trial_s": round(float(complete["wall_time_s"].mean()), 2),
        "front_size": len(front),
        "best_val_acc": round(float(complete["accuracy"].max()), 4),
        "best_test_acc": round(float(complete["test_accuracy"].max()), 4),
        "min_macs": int(complete["macs"].min()),
    }


def _recorded_threads(df: pd.DataFrame) -> str:
    """The thread counts the trials recorded (user attr ``threads``), e.g. ``1``."""
    if "threads" not in df.columns:
        return "?"
    return ",".join(str(v) for v in sorted(set(df["threads"].dropna().astype(int))))


def _threads_arg(text: str) -> str:
    if text != "auto" and not (text.isdigit() and int(text) >= 1):
        raise argparse.ArgumentTypeError(f"{text!r}: give 'auto' or a positive integer")
    return text


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub markdown table (pandas' to_markdown needs the optional tabulate package)."""
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="default")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--threads",
        type=_threads_arg,
        nargs="+",
        default=["auto"],
        help="thread counts per worker to compare ('auto': the search's choice)",
    )
    parser.add_argument(
        "--load", type=int, default=0, help="busy background processes during the measurements (a loaded machine)"
    )
    parser.add_argument(
        "--load-seconds", type=float, default=3600.0, help="upper bound on each background process's life"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/search"))
    args = parser.parse_args()
    if args.load < 0:
        parser.error("--load: give 0 or more background processes")
    with background_load(args.load, args.load_seconds):
        rows = [
            run(args.space, args.trials, w, args.device, args.seed, t, args.load)
            for w in args.workers
            for t in args.threads
        ]
    table = pd.DataFrame(rows)
    command = "python benchmarks/search_speed.py " + " ".join(sys.argv[1:])
    text = (
        "# Search speed of the main job\n\n"
        f"Command: `{command.strip()}`\n\n"
        f"Machine: {os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), shared; {args.load} busy background processes; threads per worker as in the table.\n"
        "Each row runs `nas-sepconv search` as a whole process in a fresh results directory "
        "(data loading and interpreter start included).\n\n" + markdown_table(table) + "\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "search_speed.csv", index=False)
    (args.out / "search_speed.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
