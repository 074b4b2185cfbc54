"""Robust statistics of timed rounds: stalls rejected, the median kept, interleaved order.
No test times anything real: the times are given."""

from __future__ import annotations

import pytest

from nas_sepconv.measure import reject_stalls, summarise, time_rounds


def test_a_stall_of_tens_of_ms_is_rejected_and_fast_times_never():
    times = [1.0, 1.02, 0.98, 1.01, 0.99, 35.0, 1.0, 0.5]
    kept = reject_stalls(times)
    assert 35.0 not in kept and 0.5 in kept and len(kept) == len(times) - 1


def test_a_tight_spread_is_not_a_stall():
    times = [1.0, 1.0, 1.0, 1.0, 1.1]  # MAD 0: the floor (a quarter of the median) keeps 1.1
    assert reject_stalls(times) == times


def test_too_few_times_are_kept_as_they_are():
    assert reject_stalls([1.0, 50.0]) == [1.0, 50.0]


def test_summary_ignores_the_stalls():
    times = [2.0] * 9 + [80.0]
    s = summarise(times)
    assert s["median_ms"] == 2.0 and s["p90_ms"] == 2.0 and s["p10_ms"] == 2.0


def test_rounds_interleave_and_alternate_their_order():
    order = []
    forwards = [lambda i=i: order.append(i) for i in range(3)]
    times = time_rounds(forwards, repeats=2, warmup=1)
    assert order == [0, 1, 2, 2, 1, 0, 0, 1, 2]  # A B C, C B A, A B C: each sees the others between its calls
    assert [len(t) for t in times] == [2, 2, 2]


@pytest.mark.parametrize("times", [[3.0, 1.0, 2.0, 4.0], [5.0]])
def test_summary_is_ordered(times):
    s = summarise(times)
    assert s["p10_ms"] <= s["median_ms"] <= s["p90_ms"]
