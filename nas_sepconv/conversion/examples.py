"""Example inputs: what ``example_inputs`` may be (a tensor, a tuple of tensors, an input size,
or :class:`ExampleInputs` of several, each run on its own), read into argument tuples, checked
against the activation budget and run on the model, with an error about one of several naming
which it is.  :mod:`.sites` finds the conv sites those inputs reach.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..errors import UserInputError
from ..measure import as_inputs, wrong_input
from ..measure.inputs import check_example_size, eval_mode

__all__ = ["ExampleInputs", "check_examples", "example_list", "naming_item", "run_each"]


@dataclass(frozen=True, init=False)
class ExampleInputs:
    """Several example inputs, each passed to the model on its own:
    ``ns.make_plan(model, policy, example_inputs=ns.ExampleInputs(x1, x2))``.

    Each item is what ``example_inputs`` takes alone: a tensor, a tuple of tensors (the
    positional arguments of a model with several), or an input size.  A plain tuple or list of
    tensors stays what it was, the arguments of one call, so the two can never be confused.
    Use several inputs when a model cannot be traced and its ``forward`` branches on the data:
    a site any input reaches is found (with the shapes of the first input that reaches it);
    the totals of a plan (model MACs, calls per site) are those of the first input.  Every
    input must run: one the model does not run on, or whose forward would need more than
    :data:`~nas_sepconv.measure.ACTIVATION_BUDGET` of activations, is refused by its position.
    """

    items: tuple

    def __init__(self, *items: Any) -> None:
        if not items:
            raise UserInputError(
                "example_inputs", "ExampleInputs() holds no input", "pass at least one, e.g. ns.ExampleInputs(x1, x2)"
            )
        if any(isinstance(i, ExampleInputs) for i in items):
            raise UserInputError(
                "example_inputs",
                "ExampleInputs inside ExampleInputs",
                "list every input once: ns.ExampleInputs(x1, x2, x3)",
            )
        object.__setattr__(self, "items", tuple(items))


def example_list(example_inputs: Any) -> list[tuple]:
    """The example inputs as a list of argument tuples: one per item of an
    :class:`ExampleInputs`, else the one that ``as_inputs`` reads."""
    if isinstance(example_inputs, ExampleInputs):
        items = example_inputs.items
        examples = []
        for i, item in enumerate(items):
            with naming_item(i, len(items)):
                examples.append(as_inputs(item))
        return examples
    return [as_inputs(example_inputs)]


@contextlib.contextmanager
def naming_item(i: int, n: int):
    """An error about one of several example inputs says which (item ``i`` of ``n``, 0-based)."""
    try:
        yield
    except UserInputError as exc:
        if n == 1:
            raise
        raise UserInputError("example_inputs", f"ExampleInputs item {i + 1} of {n}: {exc.problem}", exc.fix) from exc


def check_examples(model: nn.Module, examples: list[tuple]) -> None:
    """Each example input within the activation budget, before any runs
    (:func:`~nas_sepconv.measure.inputs.check_example_size`)."""
    for i, inputs in enumerate(examples):
        with naming_item(i, len(examples)):
            check_example_size(model, inputs)


def run_each(model: nn.Module, examples: list[tuple], *, start: int) -> None:
    """Run the model on each example from ``start`` on (eval mode, no gradients), so that one it
    does not run on is named, not dropped; raises :func:`~nas_sepconv.measure.wrong_input`'s error."""
    if start >= len(examples):
        return
    with eval_mode(model):
        for i, inputs in enumerate(examples[start:], start):
            with naming_item(i, len(examples)), torch.no_grad():
                try:
                    model(*inputs)
                except Exception as exc:
                    raise wrong_input(model, inputs, exc) from exc
