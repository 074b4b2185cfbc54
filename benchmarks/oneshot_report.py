"""The rows (ranking.csv) and the report of benchmarks/oneshot.py: Kendall tau and Spearman rho
between inherited and finalised accuracy, the reference of MACs alone, the repeatability of the
finalisation (the ceiling any inherited ranking can reach against it), and ``ranking.md``."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

GOAL_TAU = 0.6  # Kendall tau between inherited and finalised accuracy, per space (issue 26)
REPEAT_SEED_STEP = 1000  # the seed of finalisation repeat k of subnet i: seed + i + REPEAT_SEED_STEP * (k - 1)

KEYS = (
    "kendall_tau",
    "spearman_rho",
    "macs_kendall_tau",
    "repeat_kendall_tau",
    "repeat_spearman_rho",
    "kendall_tau_r1",
)
COLUMNS = [
    "subnet",
    "arch",
    "params_json",
    "macs",
    "resolution",
    "inherited_accuracy",
    "inherited_test_accuracy",
    "finalized_accuracy",
    "finalized_test_accuracy",
    "finalized_from",
    "finalize_epochs",
    "seconds",
]


def repeat_column(k: int, *, test: bool = False) -> str:
    """The column of finalisation repeat ``k`` (1-based): validation or test accuracy."""
    return f"finalized_{'test_' if test else ''}accuracy_r{k}"


def with_means(row: dict[str, Any], repeats: int) -> dict[str, Any]:
    """``row`` with ``finalized_accuracy`` and ``finalized_test_accuracy``: the means of its
    ``repeats`` finalisations (a test accuracy that was not measured is left out)."""
    for test in (False, True):
        values = [row.get(repeat_column(k, test=test)) for k in range(1, repeats + 1)]
        values = [float(v) for v in values if v is not None and v == v]
        row["finalized_test_accuracy" if test else "finalized_accuracy"] = sum(values) / len(values) if values else None
    return row


def columns(repeats: int) -> list[str]:
    """ranking.csv's columns for ``repeats`` finalisations."""
    per_repeat = [repeat_column(k, test=t) for k in range(1, repeats + 1) for t in (False, True)]
    return COLUMNS + per_repeat


def read_rows(csv: Path, repeats: int) -> pd.DataFrame:
    """The rows measured so far, in ``repeats``' columns.  A CSV of an earlier version (one
    finalisation, no repeat columns) takes its finalisation as repeat 1 (the same seed); the
    repeats it lacks are then measured by :func:`run`.  A CSV with more repeats than
    ``repeats`` is refused (its means would mix)."""
    if not csv.is_file():
        return pd.DataFrame(columns=columns(repeats))
    done = pd.read_csv(csv)
    if len(done) and repeat_column(1) not in done:
        print(f"{csv}: no repeat columns; its finalisations are taken as repeat 1 (same seed)", file=sys.stderr)
        done[repeat_column(1)] = done["finalized_accuracy"]
        done[repeat_column(1, test=True)] = done["finalized_test_accuracy"]
    more = [c for c in done if c.startswith("finalized_accuracy_r") and int(c.rsplit("_r", 1)[1]) > repeats]
    if more and done[more].notna().any().any():
        most = max(int(c.rsplit("_r", 1)[1]) for c in more)
        raise SystemExit(f"{csv} holds {most} finalisation repeats: pass --finalize-repeats {most} or another --out")
    return done.reindex(columns=columns(repeats))


def write_rows(csv: Path, rows: pd.DataFrame) -> None:
    """``rows`` to ``csv``, replacing it at once (a kill leaves the old or the new file)."""
    partial = csv.with_suffix(".csv.partial")
    rows.to_csv(partial, index=False)
    os.replace(partial, csv)


def correlations(rows: pd.DataFrame) -> dict[str, float]:
    """Kendall tau and Spearman rho between inherited and finalised validation accuracy (the
    mean of the repeats); as references, Kendall tau between MACs alone and finalised accuracy
    (what ranking by size gives without any supernet), Kendall tau and Spearman rho between the
    finalisations of repeats 1 and 2 (their repeatability: the ceiling of a ranking against
    finalisations this noisy), and Kendall tau against repeat 1 alone (one finalisation, as
    measured before repeats). NaN below 3 subnets, when either is constant, or when absent."""
    from scipy import stats

    out = dict.fromkeys(KEYS, float("nan"))
    if len(rows) < 3:
        return out
    a, b = rows["inherited_accuracy"], rows["finalized_accuracy"]
    out["kendall_tau"] = float(stats.kendalltau(a, b).statistic)
    out["spearman_rho"] = float(stats.spearmanr(a, b).statistic)
    out["macs_kendall_tau"] = float(stats.kendalltau(rows["macs"], b).statistic)
    if repeat_column(1) in rows:
        out["kendall_tau_r1"] = float(stats.kendalltau(a, rows[repeat_column(1)]).statistic)
    if repeat_column(2) in rows and rows[repeat_column(2)].notna().all():
        r1, r2 = rows[repeat_column(1)], rows[repeat_column(2)]
        out["repeat_kendall_tau"] = float(stats.kendalltau(r1, r2).statistic)
        out["repeat_spearman_rho"] = float(stats.spearmanr(r1, r2).statistic)
    return out


def markdown_table(df: pd.DataFrame) -> str:
    """``df`` as a Markdown table (numbers to 4 decimals, counts with thousands separators)."""

    def cell(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return "" if v != v else f"{v:.4f}"
        if isinstance(v, (int, np.integer)):
            return f"{v:,}"
        return str(v).replace("|", "\\|")  # an arch's stages are separated by '|'

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def figure(value: float) -> str:
    """A correlation to 3 decimals; a dash for NaN."""
    return "-" if value != value else f"{value:.3f}"


def write_report(
    folder: Path, rows: pd.DataFrame, *, name: str, config: Any, command: str, repeats: int, calibration: int
) -> Path:
    """``ranking.md``: the command, the configuration, tau and rho against the goal beside the
    references (MACs alone, the finalisation's repeatability), the rows."""
    corr = correlations(rows)
    verdict = "met" if corr["kendall_tau"] >= GOAL_TAU else "not met"
    shown = rows.drop(columns=["params_json"]).copy()
    lines = [
        f"# One-shot ranking quality: {name}",
        "",
        f"Command: `{command}`",
        "",
        f"Configuration: space `{config.space}` in mode oneshot, {config.note} "
        f"(device {config.device}; {platform.processor() or platform.machine()}, torch {torch.__version__}).",
        "",
        f"Subnets: {len(rows)}, MACs {rows['macs'].min():,} to {rows['macs'].max():,}.",
        "",
        "| Kendall tau | Spearman rho | goal (tau) | reference: Kendall tau of MACs alone "
        "| ceiling: Kendall tau of finalisation repeat 1 vs 2 | Spearman rho of repeat 1 vs 2 "
        "| Kendall tau against repeat 1 alone |",
        "|---|---|---|---|---|---|---|",
        f"| {figure(corr['kendall_tau'])} | {figure(corr['spearman_rho'])} | >= {GOAL_TAU} ({verdict}) "
        f"| {figure(corr['macs_kendall_tau'])} | {figure(corr['repeat_kendall_tau'])} "
        f"| {figure(corr['repeat_spearman_rho'])} | {figure(corr['kendall_tau_r1'])} |",
        "",
        f"Inherited: the subnet's weights cut from the supernet, BatchNorm recalibrated on {calibration:,} training "
        "images; finalised: trained alone (`search.finalize_from`, `search.finalize_epochs`), "
        f"{repeats} time(s) with different seeds (repeat k: seed + subnet + {REPEAT_SEED_STEP:,}(k - 1)); "
        "`finalized_accuracy` is their mean, and the agreement of repeats 1 and 2 bounds what any ranking "
        "against one noisy finalisation can reach. Validation accuracies.",
        "",
        markdown_table(shown),
        "",
    ]
    path = folder / "ranking.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
