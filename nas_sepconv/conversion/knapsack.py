"""The multiple-choice knapsack that :func:`~.budget.plan_for_budget` solves: one option per
site (keep, a block, a pruning), each with a saving and a damage, the least total damage whose
total saving reaches the budget; exact dynamic programming over the saving in ``resolution``
steps (the per-layer selection under a whole-model budget of X. Zhang et al., TPAMI 2016,
arXiv:1505.06798).
"""

from __future__ import annotations

import numpy as np

__all__ = ["choose"]


def choose(options: list[list[tuple[int, float]]], required: int, *, resolution: int = 4000) -> list[int] | None:
    """Multiple-choice knapsack: one option per group, each ``(saving, damage)``, total saving at
    least ``required``, least total damage.  Returns the chosen index per group (None if no
    choice saves enough).  Savings are rounded down to ``required / resolution`` steps."""
    if required <= 0:
        return [min(range(len(g)), key=lambda j: (g[j][1], -g[j][0])) for g in options]
    unit = required / resolution
    inf = float("inf")
    best = np.full(resolution + 1, inf)
    best[0] = 0.0
    steps = []  # per group: the option and the predecessor state that reach each state
    for group in options:
        new = np.full(resolution + 1, inf)
        pick = np.zeros(resolution + 1, dtype=np.int64)
        came = np.zeros(resolution + 1, dtype=np.int64)
        for j, (saving, damage) in enumerate(group):
            s = min(int(saving // unit), resolution)
            cand = np.full(resolution + 1, inf)
            prev = np.arange(resolution + 1)
            cand[s:resolution] = best[: resolution - s] + damage
            prev[s:resolution] = np.arange(resolution - s)
            tail = best[resolution - s :]  # every state from which this saving reaches the budget
            k = int(np.argmin(tail))
            cand[resolution], prev[resolution] = tail[k] + damage, resolution - s + k
            better = cand < new
            new[better], pick[better], came[better] = cand[better], j, prev[better]
        steps.append((pick, came))
        best = new
    if not np.isfinite(best[resolution]):
        return None
    state, chosen = resolution, []
    for pick, came in reversed(steps):
        chosen.append(int(pick[state]))
        state = int(came[state])
    return chosen[::-1]
