"""Hypervolume against training epochs spent: the full-budget search and the same search in the
multi-fidelity mode (MO-ASHA, ``nas_sepconv.search.asha``).

    python benchmarks/multi_fidelity.py [--space default] [--seeds 0] [--trials 24]
        [--mf-trials 48] [--rungs 1x3 ...] [--threads 1] [--work DIR] [--out results/multi_fidelity]

For each seed: the space's search with ``--trials`` trials trained to the full budget, then the
same search (space, sampler, seed) in the multi-fidelity mode with ``--mf-trials`` trials, once
per ``--rungs`` setting ``MINxETA`` (``1x3``: ``multi_fidelity={"min_epochs": 1, "eta": 3}``).
Each study is read back in the order its trials finished (one worker); after each trial: the
training epochs spent so far (the sum of ``epochs_trained``) and the hypervolume of the front of
the full-budget trials finished so far (trials stopped early are never on it), on validation
accuracy x log10(MACs), with one reference point for all the studies of a seed: the worst
values over their full-budget trials, pushed out by 1% of the range
(``nas_sepconv.results.compare``'s default).  With ``--work DIR`` the studies are kept there, and
a second run with the same arguments reuses them (a finished study is resumed: nothing to do).

Writes under --out: ``hv_vs_epochs.csv`` (one row per study and trial), ``hv_vs_epochs.png``
and ``summary.md``: per seed and setting, the full-budget search's final hypervolume and
epochs, the epochs the multi-fidelity search took to reach that hypervolume (goal: at most
half), and both hypervolumes at half the full search's epochs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

FULL = "full budget"


def run_studies(
    space: str, seed: int, *, trials: int, mf_trials: int, rungs: list[tuple[int, int]], threads: int, work: Path
) -> dict[str, pd.DataFrame]:
    """The studies of one seed, as frames by method name (their trials' total time in ``attrs``)."""
    import nas_sepconv as ns

    runs = [(FULL, f"full_seed{seed}", trials, False)]
    runs += [(f"MO-ASHA {m}x{e}", f"mf{m}x{e}_seed{seed}", mf_trials, {"min_epochs": m, "eta": e}) for m, e in rungs]
    frames = {}
    for method, study, n, mf in runs:
        ns.search(space, trials=n, seed=seed, out=work, study=study, threads=threads, multi_fidelity=mf)
        df = ns.results.load(work / study)
        df.attrs["wall_s"] = float(df["duration_s"].sum())  # the trials' own time (a reused study's too)
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
            rows.append(
                {
                    "seed": seed,
                    "method": method,
                    "trial": int(row["number"]),
                    "epochs_trained": int(row["epochs_trained"] or 0),
                    "stopped_early": bool(row["stopped_early"]),
                    "cumulative_epochs": int(spent[i]),
                    "hypervolume_logmacs": hv,
                }
            )
    return pd.DataFrame(rows)


def summarise(curve: pd.DataFrame, frames: dict[str, pd.DataFrame], seed: int) -> list[dict]:
    """One row per multi-fidelity setting of the seed, against its full-budget search."""
    full = curve[curve["method"] == FULL]
    target, budget = float(full["hypervolume_logmacs"].iloc[-1]), int(full["cumulative_epochs"].iloc[-1])
    full_at_half = float(full[full["cumulative_epochs"] <= budget / 2]["hypervolume_logmacs"].max())
    rows = []
    for method in frames:
        mf = curve[curve["method"] == method]
        if method == FULL or not len(mf):
            continue
        reached = mf[mf["hypervolume_logmacs"] >= target - 1e-12]
        epochs = int(reached["cumulative_epochs"].iloc[0]) if len(reached) else None
        rows.append(
            {
                "seed": seed,
                "method": method,
                "full_trials": len(full),
                "full_epochs": budget,
                "full_hv": target,
                "full_trials_s": frames[FULL].attrs["wall_s"],
                "mf_trials": len(mf),
                "mf_full_budget_trials": int((~mf["stopped_early"]).sum()),
                "mf_epochs": int(mf["cumulative_epochs"].iloc[-1]),
                "mf_hv": float(mf["hypervolume_logmacs"].iloc[-1]),
                "mf_trials_s": frames[method].attrs["wall_s"],
                "mf_epochs_to_full_hv": epochs,
                "ratio": None if epochs is None else epochs / budget,
                "full_hv_at_half": full_at_half,
                "mf_hv_at_half": float(mf[mf["cumulative_epochs"] <= budget / 2]["hypervolume_logmacs"].max()),
                "goal_met": epochs is not None and epochs <= budget / 2,
            }
        )
    return rows


def plot(curve: pd.DataFrame, summary: pd.DataFrame, path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    colours = iter(["tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink"])
    ax = fig.add_subplot()
    for (seed, method), part in curve.groupby(["seed", "method"], sort=False):
        ax.plot(
            part["cumulative_epochs"],
            part["hypervolume_logmacs"],
            drawstyle="steps-post",
            color="tab:blue" if method == FULL else next(colours, "tab:gray"),
            linewidth=2.0 if method == FULL else 1.3,
            label=f"{method} (seed {seed})",
        )
    for _, row in summary.drop_duplicates("seed").iterrows():
        ax.axhline(row["full_hv"], color="tab:blue", linestyle=":", linewidth=0.8)
        ax.axvline(row["full_epochs"] / 2, color="gray", linestyle="--", linewidth=0.8)
    ax.set_xlabel("training epochs spent (cumulative); dashed: half the full-budget search's")
    ax.set_ylabel("hypervolume, accuracy x log10 MACs")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path, dpi=120)


def markdown(df: pd.DataFrame) -> str:
    """A markdown table (numbers to 4 significant digits; a missing one: not reached)."""
    cell = lambda v: "not reached" if v is None or v != v else f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _rungs(text: str) -> tuple[int, int]:
    low, _, eta = text.partition("x")
    return int(low), int(eta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="default")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--trials", type=int, default=24, help="trials of the full-budget search")
    parser.add_argument("--mf-trials", type=int, default=48, help="trials of each multi-fidelity search")
    parser.add_argument(
        "--rungs",
        type=_rungs,
        nargs="+",
        default=[(1, 3)],
        metavar="MINxETA",
        help="multi-fidelity settings, e.g. 1x3 2x2",
    )
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
        frames = run_studies(
            args.space,
            seed,
            trials=args.trials,
            mf_trials=args.mf_trials,
            rungs=args.rungs,
            threads=args.threads,
            work=work,
        )
        curve = curves(frames, seed)
        all_curves.append(curve)
        rows += summarise(curve, frames, seed)
    curve, summary = pd.concat(all_curves, ignore_index=True), pd.DataFrame(rows)
    curve.to_csv(args.out / "hv_vs_epochs.csv", index=False)
    rungs = " ".join(f"{m}x{e}" for m, e in args.rungs)
    command = (
        f"python benchmarks/multi_fidelity.py --space {args.space} --seeds {' '.join(map(str, args.seeds))} --trials {args.trials} "
        f"--mf-trials {args.mf_trials} --rungs {rungs} --threads {args.threads} --out {args.out}"
    )
    plot(curve, summary, args.out / "hv_vs_epochs.png", f"{args.space}: full-budget search vs the multi-fidelity mode")
    text = f"# Multi-fidelity mode vs full-budget search: hypervolume against epochs\n\nMade by `{command}`.\n\n{markdown(summary)}\n"
    (args.out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
