"""The budget argument of the compressors that take one: exactly one of ``macs_ratio``,
``latency_ratio`` (and, for a plan, ``latency_ms``), checked alike by
:func:`~nas_sepconv.conversion.plan_for_budget` and :func:`~nas_sepconv.conversion.prune`.

A ratio is of the original model's MACs or measured latency; a latency budget needs the
:class:`~.latency.LatencyTable` that says how (runtime, threads, device) latency is measured.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import UserInputError
from .latency import LatencyTable

__all__ = ["check_budget"]


def check_budget(given: dict[str, Any], latency_table: Any, *, whole: bool) -> tuple[str, float]:
    """The one budget of ``given`` (field name -> value, None when not given) as (field name,
    value), checked: a ratio in (0, 1] (``whole``: the whole model allowed) or else (0, 1),
    ``latency_ms`` a positive number of milliseconds; a latency budget needs ``latency_table``.
    Raises :class:`UserInputError` naming the field (``budget`` when not exactly one is given)."""
    named = {k: v for k, v in given.items() if v is not None}
    if len(named) != 1:
        raise UserInputError(
            "budget",
            f"give exactly one of {', '.join(given)} (got {', '.join(named) or 'none'})",
            "e.g. macs_ratio=0.5, or latency_ratio=0.5 with latency_table=ns.latency_table(model, x)",
        )
    ((field, value),) = named.items()
    top = math.inf if field == "latency_ms" else 1.0
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not (0 < value < top or (whole and value == top)):
        raise UserInputError(
            field,
            f"expected a number in (0, {top:g}{']' if whole else ')'}, got {value!r}",
            "use the budget in milliseconds, e.g. 20.0" if field == "latency_ms" else "use e.g. 0.5 for half",
        )
    if field != "macs_ratio" and not isinstance(latency_table, LatencyTable):
        raise UserInputError(
            "latency_table",
            f"{field} needs a latency table, got {type(latency_table).__name__}",
            "pass latency_table=ns.latency_table(model, example_inputs)",
        )
    return field, float(value)
