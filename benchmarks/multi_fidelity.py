"""Hypervolume against training epochs spent: the full-budget search and the same search in the
multi-fidelity mode (MO-ASHA, ``nas_sepconv.search.asha``).

    python benchmarks/multi_fidelity.py [--space default] [--seeds 0] [--trials 24]
        [--mf-trials 48] [--min-epochs 1] [--eta 3] [--threads 1] [--out results/multi_fidelity]

For each seed: the space's search with ``--trials`` trials trained to the full budget, then the
same search (space, sampler, seed) with ``multi_fidelity={"min_epochs", "eta"}`` and
``--mf-trials`` trials.  Each study is read back in the order its trials finished (one worker);
after each trial: the training epochs spent so far (the sum of ``epochs_trained``) and the
hypervolume of the front of the full-budget trials finished so far (trials stopped early are
never on it), on validation accuracy x log10(MACs), with one reference point for both studies:
the worst values over both studies' full-budget trials, pushed out by 1% of their range
(``nas_sepconv.results.compare``'s default).

Writes under --out: ``hv_vs_epochs.csv`` (one row per study and trial), ``hv_vs_epochs.png``
and ``summary.md``: per seed the full-budget search's final hypervolume and epochs, and the
epochs the multi-fidelity search took to reach that hypervolume.  Goal: at most half.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def run_pair(space: str, seed: int, *, trials: int, mf_trials: int, min_epochs: int, eta: int, threads: int, work: Path) -> dict[str, pd.DataFrame]:
    """The two studies of one seed, as frames (with their wall times in ``attrs``)."""
    import nas_sepconv as ns

    frames = {}
    for method, n, mf in (("full budget", trials, False), ("multi-fidelity", mf_trials, {"min_epochs": min_epochs, "eta": eta})):
        study = f"{'mf' if mf else 'full'}_seed{seed}"
        start = time.perf_counter()
        ns.search(space, trials=n, seed=seed, out=work, study=study, threads=threads, multi_fidelity=mf)
        df = ns.results.load(work / study)
        df.attrs["wall_s"] = time.perf_counter() - start
        frames[method] = df
    return frames


def curves(frames: dict[str, pd.DataFrame], seed: int) -> pd.DataFrame:
    """Per study and finished trial: cumulative epochs and the hypervolume of the full-budget
    trials so far (accuracy x log10 MACs, the common reference of ``results.compare``)."""
    from nas_sepconv import results

    reference = results.compare(frames).attrs["reference"]  # log10 MACs
    rows = []
    for method, df in frames.items():
        done = df[df["state"] == "COMPLETE"].sort_values(["datetime_complete", "number"])
        logged = done.assign(macs=np.log10(done["macs"].astype("float64")))
        spent = done["epochs_trained"].fillna(0).astype("int64").cumsum().to_numpy()
        for i in range(len(done)):
            hv = results.hypervolume(logged.iloc[: i + 1], reference=reference) if reference else 0.0
            row = done.iloc[i]
            rows.append({"seed": seed, "method": method, "trial": int(row["number"]), "epochs_trained": int(row["epochs_trained"] or 0),
                         "stopped_early": bool(row["stopped_early"]), "cumulative_epochs": int(spent[i]), "hypervolume_logmacs": hv})
    return pd.DataFrame(rows)


def summarise(curve: pd.DataFrame, frames: dict[str, pd.DataFrame], seed: int) -> dict:
    full, mf = curve[curve["method"] == "full budget"], curve[curve["method"] == "multi-fidelity"]
    target, budget = float(full["hypervolume_logmacs"].iloc[-1]), int(full["cumulative_epochs"].iloc[-1])
    reached = mf[mf["hypervolume_logmacs"] >= target - 1e-12]
    epochs = int(reached["cumulative_epochs"].iloc[0]) if len(reached) else None
    return {
        "seed": seed, "full_trials": len(full), "full_epochs": budget, "full_hypervolume": target,
        "full_wall_s": frames["full budget"].attrs["wall_s"],
        "mf_trials": len(mf), "mf_full_budget_trials": int((~mf["stopped_early"]).sum()), "mf_epochs": int(mf["cumulative_epochs"].iloc[-1]),
        "mf_hypervolume": float(mf["hypervolume_logmacs"].iloc[-1]), "mf_wall_s": frames["multi-fidelity"].attrs["wall_s"],
        "mf_epochs_to_reach_full": epochs, "ratio": None if epochs is None else epochs / budget,
        "goal_met": epochs is not None and epochs <= budget / 2,
    }


def plot(curve: pd.DataFrame, summary: pd.DataFrame, path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for (seed, method), part in curve.groupby(["seed", "method"], sort=False):
        ax.plot(part["cumulative_epochs"], part["hypervolume_logmacs"], drawstyle="steps-post", color="tab:blue" if method == "full budget" else "tab:orange",
                label=f"{method} (seed {seed})", alpha=0.9)
    for _, row in summary.iterrows():
        ax.axhline(row["full_hypervolume"], color="tab:blue", linestyle=":", linewidth=0.8)
        ax.axvline(row["full_epochs"] / 2, color="gray", linestyle="--", linewidth=0.8)
    ax.set_xlabel("training epochs spent (cumulative)")
    ax.set_ylabel("hypervolume, accuracy x log10 MACs (full-budget trials)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path, dpi=120)


def markdown(df: pd.DataFrame) -> str:
    """A markdown table (numbers to 4 significant digits)."""
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="default")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--trials", type=int, default=24, help="trials of the full-budget search")
    parser.add_argument("--mf-trials", type=int, default=48, help="trials of the multi-fidelity search")
    parser.add_argument("--min-epochs", type=int, default=1)
    parser.add_argument("--eta", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None, help="where the studies go (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=Path("results/multi_fidelity"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from nas_sepconv.search import quiet_optuna

    quiet_optuna()
    work = args.work or Path(tempfile.mkdtemp(prefix="nas_sepconv_mf_"))
    args.out.mkdir(parents=True, exist_ok=True)
    all_curves, rows = [], []
    for seed in args.seeds:
        frames = run_pair(args.space, seed, trials=args.trials, mf_trials=args.mf_trials, min_epochs=args.min_epochs, eta=args.eta, threads=args.threads, work=work)
        curve = curves(frames, seed)
        all_curves.append(curve)
        rows.append(summarise(curve, frames, seed))
    curve, summary = pd.concat(all_curves, ignore_index=True), pd.DataFrame(rows)
    curve.to_csv(args.out / "hv_vs_epochs.csv", index=False)
    command = (f"python benchmarks/multi_fidelity.py --space {args.space} --seeds {' '.join(map(str, args.seeds))} --trials {args.trials} "
               f"--mf-trials {args.mf_trials} --min-epochs {args.min_epochs} --eta {args.eta} --threads {args.threads} --out {args.out}")
    plot(curve, summary, args.out / "hv_vs_epochs.png", f"{args.space}: full budget vs multi-fidelity (min_epochs {args.min_epochs}, eta {args.eta})")
    text = f"# Multi-fidelity mode vs full-budget search: hypervolume against epochs\n\nMade by `{command}`.\n\n{markdown(summary)}\n"
    (args.out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
