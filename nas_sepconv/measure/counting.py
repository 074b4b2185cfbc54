"""MACs and parameters (latency: :mod:`.latency`; example inputs: :mod:`.inputs`).

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

from collections import defaultdict
from typing import Any, Callable

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .inputs import _eval_mode, as_inputs, wrong_input

__all__ = ["count_macs", "count_params", "profile"]


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
