"""Example inputs: reading them, checking them against a model's first convolution, and the
activation memory of one forward (estimated on the meta device)."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from ..errors import UserInputError

__all__ = [
    "ACTIVATION_BUDGET",
    "activation_bytes",
    "as_inputs",
    "check_example_size",
    "eval_mode",
    "first_conv",
    "input_mismatch",
    "meta_copy",
    "model_device",
    "output_tensors",
    "wrong_input",
]

ACTIVATION_BUDGET = 4 * 2**30  # bytes of activations for one example the CLI allocates at most
#: an example input of fewer bytes is not estimated: its forward would need over 1024 times its size
_ESTIMATED_FROM = ACTIVATION_BUDGET // 1024


def output_tensors(output: Any) -> list[torch.Tensor]:
    """The tensors of a model output: a tensor, or tuples/lists/dicts of them (in order)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for v in output.values() for t in output_tensors(v)]
    if isinstance(output, (list, tuple)):
        return [t for v in output for t in output_tensors(v)]
    return []


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f}" if n < 2**40 else f"{n / 2**30:,.0f}"


def as_inputs(example_inputs: Any) -> tuple:
    """Example inputs as a tuple of tensors.  A tuple/list of ints is read as an input size
    ``(C, H, W)`` (batch 1 is added) or ``(N, C, H, W)``, refused when the input alone would
    take more than :data:`ACTIVATION_BUDGET`; a tensor of batch 0 is refused."""
    if isinstance(example_inputs, torch.Tensor):
        return as_inputs((example_inputs,))
    if isinstance(example_inputs, (tuple, list)) and example_inputs and all(isinstance(v, int) for v in example_inputs):
        if any(v <= 0 for v in example_inputs):
            raise UserInputError(
                "input_size", f"sizes must be positive, got {tuple(example_inputs)}", "use e.g. 3,224,224"
            )
        shape = (1, *example_inputs) if len(example_inputs) <= 3 else tuple(example_inputs)
        need = 4 * math.prod(shape)
        if need > ACTIVATION_BUDGET:  # refused before it is allocated
            raise UserInputError(
                "input_size",
                f"{tuple(example_inputs)} is {_gib(need)} GiB for the input alone, "
                f"above the budget of {_gib(ACTIVATION_BUDGET)} GiB",
                f"use a smaller input size, e.g. {shape[1]},224,224",
            )
        return (torch.randn(shape),)
    if isinstance(example_inputs, (tuple, list)) and all(isinstance(v, torch.Tensor) for v in example_inputs):
        if not example_inputs:
            raise UserInputError("example_inputs", "holds no tensor", "pass a tensor, e.g. torch.randn(1, 3, 224, 224)")
        empty = [tuple(t.shape) for t in example_inputs if t.ndim and t.shape[0] == 0]
        if empty:
            raise UserInputError(
                "example_inputs",
                f"an input of shape {empty[0]} holds no example",
                "give inputs of batch 1 or more (batch dimension first)",
            )
        return tuple(example_inputs)
    raise UserInputError(
        "example_inputs", f"expected a tensor, a tuple of tensors or an input size, got {type(example_inputs).__name__}"
    )


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (the CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """``models`` in eval mode for the duration (BatchNorm statistics untouched), every module's
    own flag restored afterwards."""
    flags = {m: m.training for model in models for m in model.modules()}
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for m, flag in flags.items():
            m.training = flag


class _Reached(Exception):
    """Ends a probing forward at the first convolution."""


def first_conv(model: nn.Module, inputs: tuple) -> tuple[str, nn.Module, tuple[int, ...]] | None:
    """The first convolution module a forward of ``model`` on ``inputs`` reaches, and the shape of
    the input it is given (the forward stops there); ``None`` if the forward fails or ends first."""
    names = {m: n for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}
    seen: list[tuple[str, nn.Module, tuple[int, ...]]] = []

    def hook(module: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], torch.Tensor):
            seen.append((names[module], module, tuple(args[0].shape)))
        raise _Reached

    handles = [m.register_forward_pre_hook(hook) for m in names]
    try:
        with eval_mode(model), torch.no_grad():
            model(*inputs)
    except Exception:  # _Reached, or the forward failed before any convolution
        pass
    finally:
        for h in handles:
            h.remove()
    return seen[0] if seen else None


_SPATIAL = {1: "L", 2: "H,W", 3: "D,H,W"}


def input_mismatch(model: nn.Module, inputs: tuple) -> UserInputError | None:
    """The error for inputs whose channel count (or number of sizes) the model's first
    convolution does not take, in those words; ``None`` if the first convolution takes them."""
    x, model_name = inputs[0], type(model).__name__
    first = first_conv(model, inputs) if inputs else None
    if first is not None:
        name, conv, shape = first
        cin, d = conv.in_channels, len(conv.kernel_size)
        if len(shape) == d + 2 == x.dim() and shape[1] == x.shape[1] != cin:
            return UserInputError(
                "input_size",
                f"{model_name} expects {cin} input channel(s) (first conv {name} takes {cin}), got {x.shape[1]}",
                f"use input size {cin},{','.join(map(str, x.shape[2:]))}",
            )
        if len(shape) != d + 2:
            return UserInputError(
                "input_size",
                f"{model_name} does not run on inputs of shape {tuple(x.shape)}: its first conv {name} is {d}-D",
                f"give {d + 1} sizes, input size {cin},{_SPATIAL.get(d, '...')}",
            )
    return None


def wrong_input(model: nn.Module, inputs: tuple, exc: Exception) -> UserInputError:
    """The error for a model that does not run on ``inputs``: :func:`input_mismatch`'s, or the
    first line of torch's."""
    mismatch = input_mismatch(model, inputs)
    if mismatch is not None:
        return mismatch
    model_name = type(model).__name__
    # torch.fx's ShapeProp wraps the real error in one that names its graph node
    cause = exc.__cause__ if exc.__cause__ is not None and "ShapeProp" in str(exc) else exc
    text = str(cause).strip()
    first_line = text.splitlines()[0][:200] if text else type(cause).__name__
    shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
    return UserInputError(
        "input_size",
        f"{model_name} does not run on inputs of shape {shapes} ({first_line})",
        "give the input size the model expects",
    )


def meta_copy(module: nn.Module) -> nn.Module:
    """A structural copy on the meta device (no storage), for counting without arithmetic."""
    return copy.deepcopy(module).to("meta")


class _OutputBytes(TorchFunctionMode):
    """Sums the bytes of every tensor a torch function returns."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.total += sum(t.numel() * t.element_size() for t in output_tensors(out))
        return out


def activation_bytes(
    model: nn.Module, input_shape: tuple[int, ...], *, dtype: torch.dtype = torch.float32
) -> int | None:
    """An estimate of the activation memory of one forward on an input of ``input_shape``: the
    input plus every tensor every torch function returns (views and freed intermediates
    included, so an upper bound of the peak), found on the meta device from a structural copy,
    so nothing of that size is allocated.  ``None`` when the model does not run on the meta
    device (data-dependent control flow, an op without a meta kernel); a wrong channel count at
    the first convolution raises :class:`UserInputError` (``input_size``) like :func:`profile`."""
    meta = meta_copy(model)
    x = torch.empty(tuple(input_shape), dtype=dtype, device="meta")
    counter = _OutputBytes()
    try:
        with eval_mode(meta), torch.no_grad(), counter:
            meta(x)
    except Exception as exc:
        mismatch = input_mismatch(meta, (x,))
        if mismatch is not None:
            raise mismatch from exc
        return None
    return x.numel() * x.element_size() + counter.total


def check_example_size(model: nn.Module, inputs: tuple, *, field: str = "example_inputs") -> None:
    """Refuse ``inputs`` when one example's forward (batch 1) would need more than
    :data:`ACTIVATION_BUDGET` bytes of activations, as :func:`activation_bytes` estimates them
    (nothing of that size is allocated), before the model runs on them.  An example input under
    ``ACTIVATION_BUDGET / 1024`` bytes is not estimated (no estimate is made for the usual
    sizes); a model with several inputs, or one that does not run on the meta device, is bound
    by its inputs' bytes alone."""
    per_example = sum(t[:1].numel() * t.element_size() for t in inputs if t.ndim)
    if per_example < _ESTIMATED_FROM:
        return
    need = None
    if len(inputs) == 1 and inputs[0].ndim:
        x = inputs[0]
        need = activation_bytes(model, (1, *x.shape[1:]), dtype=x.dtype if x.is_floating_point() else torch.float32)
    need = per_example if need is None else need
    if need > ACTIVATION_BUDGET:
        shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
        raise UserInputError(
            field,
            f"an input of shape {shapes} needs about {_gib(need)} GiB of activations per example "
            f"(estimated), above the budget of {_gib(ACTIVATION_BUDGET)} GiB",
            "use a smaller input (e.g. 224 x 224 images)",
        )
