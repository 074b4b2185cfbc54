"""MACs, parameters and latency.

MACs (contract, DESIGN.md section 3): multiply-accumulates of convolution and linear weights,
bias excluded.  Counted from shapes by a ``TorchFunctionMode`` that sees every ``F.convNd``,
``F.conv_transposeNd`` and ``F.linear`` call (what ``nn.ConvNd`` and ``nn.Linear`` call), per call

* convolution: ``C_out·H_out·W_out·(C_in/groups)·Kh·Kw`` (any dims, stride, dilation, groups);
* transposed convolution: ``C_in·H_in·W_in·(C_out/groups)·Kh·Kw``;
* linear: ``in_features·out_features`` per output row;

FLOPs = 2·MACs.  Activation-by-activation matmuls (attention's ``bmm``) carry no weights and
are not counted.  Because calls are seen at the functional level, ``F.conv2d`` calls made in a
``forward`` and subclasses of ``nn.Conv2d`` are counted like modules (no module-type tables);
``tests/test_profile.py`` checks every formula, and checks the counter against
``torch.utils.flop_counter.FlopCounterMode`` on whole torchvision models.
Shapes are all that matter, so counting runs on the meta device when asked (no arithmetic).
"""

from __future__ import annotations

import copy
from collections import defaultdict
import statistics
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..errors import UserInputError

__all__ = ["count_macs", "count_params", "profile", "measure_latency", "as_inputs"]

ACTIVATION_BUDGET = 4 * 2**30  # bytes of activations for one example the CLI allocates at most
MAX_THREADS = 256  # more intra-op threads than this is a typo, not a latency measurement



def _conv_macs(args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    weight = args[1] if len(args) > 1 else kwargs["weight"]
    return out.numel() * weight[0].numel()  # N·C_out·prod(out) · (C_in/groups)·prod(K)


def _conv_transpose_macs(args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    x, weight = args[0], (args[1] if len(args) > 1 else kwargs["weight"])
    return x.numel() * weight[0].numel()  # N·C_in·prod(in) · (C_out/groups)·prod(K)


def _linear_macs(args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    weight = args[1] if len(args) > 1 else kwargs["weight"]
    return out.numel() * weight.shape[-1]


_RULES: dict[Callable, Callable[[tuple, dict, Any], int]] = {
    **{f: _conv_macs for f in (F.conv1d, F.conv2d, F.conv3d)},
    **{f: _conv_transpose_macs for f in (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)},
    F.linear: _linear_macs,
}


class _MacCounter(TorchFunctionMode):
    """Counts weight MACs of every conv / linear call, attributed to the innermost module."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.own: dict[str, int] = defaultdict(int)
        self.stack = [""]
        self._hooks = []
        for name, module in model.named_modules():
            if name:
                self._hooks.append(module.register_forward_pre_hook(self._enter(name)))
                self._hooks.append(module.register_forward_hook(self._leave))

    def _enter(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple) -> None:
            self.stack.append(name)

        return hook

    def _leave(self, module: nn.Module, args: tuple, output: Any) -> None:  # returns None: output kept
        self.stack.pop()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        rule = _RULES.get(func)
        if rule is not None:
            self.own[self.stack[-1]] += int(rule(args, kwargs, out))
        return out

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()


def output_tensors(output: Any) -> list[torch.Tensor]:
    """The tensors of a model output: a tensor, or tuples/lists/dicts of them (in order)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for v in output.values() for t in output_tensors(v)]
    if isinstance(output, (list, tuple)):
        return [t for v in output for t in output_tensors(v)]
    return []


def as_inputs(example_inputs: Any) -> tuple:
    """Example inputs as a tuple of tensors.  A tuple/list of ints is read as an input size
    ``(C, H, W)`` (batch 1 is added) or ``(N, C, H, W)``."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs and all(isinstance(v, int) for v in example_inputs):
        if any(v <= 0 for v in example_inputs):
            raise UserInputError("input_size", f"sizes must be positive, got {tuple(example_inputs)}", "use e.g. 3,224,224")
        size = tuple(example_inputs)
        return (torch.randn(1, *size) if len(size) <= 3 else torch.randn(*size),)
    if isinstance(example_inputs, (tuple, list)) and all(isinstance(v, torch.Tensor) for v in example_inputs):
        return tuple(example_inputs)
    raise UserInputError(
        "example_inputs", f"expected a tensor, a tuple of tensors or an input size, got {type(example_inputs).__name__}"
    )


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration (BatchNorm statistics untouched), previous flags restored."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags.items():
            m.training = flag


def _run_counted(model: nn.Module, inputs: tuple) -> dict[str, int]:
    """MACs per module path ('' = the root), each including its children, from one forward."""
    counter = _MacCounter(model)
    try:
        with _eval_mode(model), torch.no_grad(), counter:
            model(*inputs)
    finally:
        counter.remove()
    total: dict[str, int] = defaultdict(int)
    for path, macs in counter.own.items():
        parts = path.split(".") if path else []
        for i in range(len(parts) + 1):
            total[".".join(parts[:i])] += macs
    return dict(total)


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
        with _eval_mode(model), torch.no_grad():
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
        "input_size", f"{model_name} does not run on inputs of shape {shapes} ({first_line})", "give the input size the model expects"
    )


def _counts(model: nn.Module, example_inputs: Any) -> dict[str, int]:
    inputs = as_inputs(example_inputs)
    try:
        return _run_counted(model, inputs)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        raise wrong_input(model, inputs, exc) from exc


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """Multiply-accumulates of conv and linear weights for one forward on ``example_inputs``
    (bias excluded; FLOPs = 2·MACs)."""
    return _counts(model, example_inputs).get("", 0)


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def profile(model: nn.Module, example_inputs: Any) -> pd.DataFrame:
    """One row per layer that has weights or does weight MACs: ``name``, ``op`` (module class,
    or ``functional`` for conv/linear calls made directly in a parent's forward), ``macs``,
    ``params`` (own parameters), ``output_shape``.  The ``macs`` column sums to
    :func:`count_macs`."""
    inputs = as_inputs(example_inputs)
    shapes: dict[str, tuple] = {}
    names = {m: n for n, m in model.named_modules()}

    def record(mod: nn.Module, args: tuple, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            shapes.setdefault(names[mod], tuple(output.shape))

    hooks = [m.register_forward_hook(record) for m in names if not list(m.children())]
    try:
        counts = _counts(model, inputs)
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for name, module in model.named_modules():
        children = [f"{name}.{c}" if name else c for c, _ in module.named_children()]
        own_macs = counts.get(name, 0) - sum(counts.get(c, 0) for c in children)
        own_params = sum(p.numel() for p in module.parameters(recurse=False))
        if own_macs == 0 and own_params == 0:
            continue
        leaf = not children
        rows.append(
            dict(
                name=name or "(root)",
                op=type(module).__name__ if leaf else "functional",
                macs=own_macs,
                params=own_params,
                output_shape=shapes.get(name),
            )
        )
    df = pd.DataFrame(rows, columns=["name", "op", "macs", "params", "output_shape"])
    return df.astype({"macs": "int64", "params": "int64"})


def measure_latency(
    model: nn.Module,
    example_inputs: Any,
    *,
    repeats: int = 30,
    warmup: int = 5,
    threads: int | None = None,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Wall-clock latency of one forward (eval mode, no grad): median, p10 and p90 in ms over
    ``repeats`` timed runs after ``warmup`` runs.  ``threads`` sets torch's intra-op threads for
    the measurement (restored after).  On CUDA the device is synchronised around each run."""
    check_threads(threads, "threads")
    inputs = as_inputs(example_inputs)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    inputs = tuple(t.to(device) for t in inputs)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    try:
        with _eval_mode(model), torch.inference_mode():
            for i in range(warmup + repeats):
                sync()
                start = time.perf_counter()
                model(*inputs)
                sync()
                if i >= warmup:
                    times.append((time.perf_counter() - start) * 1000)
    finally:
        torch.set_num_threads(old_threads)
    times.sort()
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]  # noqa: E731
    return {"median_ms": statistics.median(times), "p10_ms": q(0.1), "p90_ms": q(0.9)}


def check_threads(threads: Any, field: str) -> None:
    """``threads`` is ``None`` (torch's setting) or an int in [1, :data:`MAX_THREADS`]."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise UserInputError(field, f"expected an integer in [1, {MAX_THREADS}], got {threads!r}", "use e.g. 1 or the number of CPU cores")


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


def activation_bytes(model: nn.Module, input_shape: tuple[int, ...], *, dtype: torch.dtype = torch.float32) -> int | None:
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
        with _eval_mode(meta), torch.no_grad(), counter:
            meta(x)
    except Exception as exc:
        mismatch = input_mismatch(meta, (x,))
        if mismatch is not None:
            raise mismatch from exc
        return None
    return x.numel() * x.element_size() + counter.total
