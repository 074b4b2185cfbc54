"""The multiple-choice knapsack that :func:`~.budget.plan_for_budget` solves: one option per
site (keep, a block, a pruning), each with a saving and a damage, the least total damage whose
total saving reaches the budget; exact dynamic programming over the saving in ``resolution``
steps (the per-layer selection under a whole-model budget of X. Zhang et al., TPAMI 2016,
arXiv:1505.06798).
"""

from __future__ import annotations

import numpy as np

__all__ = ["Exclusion", "choose", "choose_apart"]


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


#: A pair of option sets that no choice takes together: ``(group a, its options, group b, its options)``.
Exclusion = tuple[int, frozenset[int], int, frozenset[int]]


def choose_apart(
    options: list[list[tuple[int, float]]],
    required: int,
    *,
    exclusions: list[Exclusion],
    resolution: int = 4000,
) -> list[int] | None:
    """:func:`choose`, never taking both sides of an exclusion (two options whose savings do not
    add up, such as pruning a site's input channels and converting the conv that produces them).
    Where the best choice takes both, each side is banned in turn and the one whose best choice
    has the lesser damage is kept; at most one round per exclusion, so each is settled once.
    Option 0 of a group (keep) is never banned."""
    banned: set[tuple[int, int]] = set()
    for _ in range(len(exclusions) + 1):
        chosen = _choose_allowed(options, required, banned, resolution)
        if chosen is None:
            return None
        clash = next((x for x in exclusions if chosen[x[0]] in x[1] and chosen[x[2]] in x[3]), None)
        if clash is None:
            return chosen
        a, side_a, b, side_b = clash
        tries = [banned | {(a, j) for j in side_a if j}, banned | {(b, j) for j in side_b if j}]
        found = [(t, _choose_allowed(options, required, t, resolution)) for t in tries]
        found = [(t, c) for t, c in found if c is not None]
        if not found:
            return None
        banned = min(found, key=lambda tc: sum(options[i][j][1] for i, j in enumerate(tc[1])))[0]
    return None


def _choose_allowed(
    options: list[list[tuple[int, float]]], required: int, banned: set[tuple[int, int]], resolution: int
) -> list[int] | None:
    """:func:`choose` over the options not ``banned`` ((group, option) pairs), as indices of ``options``."""
    allowed = [[j for j in range(len(g)) if (i, j) not in banned] for i, g in enumerate(options)]
    chosen = choose([[g[j] for j in keep] for g, keep in zip(options, allowed)], required, resolution=resolution)
    return None if chosen is None else [keep[j] for keep, j in zip(allowed, chosen)]
