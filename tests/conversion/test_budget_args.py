"""The one budget check shared by plan_for_budget and prune."""

from __future__ import annotations

import pytest

from nas_sepconv.conversion.budget_args import check_budget
from nas_sepconv.errors import UserInputError


@pytest.mark.parametrize(
    ("given", "whole", "expected"),
    [
        (dict(macs_ratio=0.5, latency_ratio=None), False, ("macs_ratio", 0.5)),
        (dict(macs_ratio=1, latency_ratio=None, latency_ms=None), True, ("macs_ratio", 1.0)),
    ],
)
def test_the_one_budget_given_is_returned(given, whole, expected):
    assert check_budget(given, None, whole=whole) == expected


@pytest.mark.parametrize(
    ("given", "whole", "field"),
    [
        (dict(macs_ratio=None, latency_ratio=None), False, "budget"),
        (dict(macs_ratio=0.5, latency_ratio=0.5), False, "budget"),
        (dict(macs_ratio=1, latency_ratio=None), False, "macs_ratio"),  # prune: pruning nothing is no budget
        (dict(macs_ratio=float("nan"), latency_ratio=None), True, "macs_ratio"),
        (dict(macs_ratio=True, latency_ratio=None), True, "macs_ratio"),
        (dict(macs_ratio=None, latency_ms=-1.0), True, "latency_ms"),
        (dict(macs_ratio=None, latency_ratio=0.5), True, "latency_table"),
    ],
)
def test_a_bad_budget_is_one_line_naming_its_field(given, whole, field):
    with pytest.raises(UserInputError) as info:
        check_budget(given, None, whole=whole)
    assert info.value.field == field and "\n" not in str(info.value)
