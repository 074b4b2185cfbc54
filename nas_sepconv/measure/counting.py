"""MACs and parameters (latency: :mod:`.latency`; example inputs: :mod:`.inputs`).

MACs (contract, DESIGN.md section 3): multiply-accumulates of convolution and linear weights
plus those of activation-by-activation matrix products (attention), bias excluded;
elementwise operations (norms, activations, scaling, softmax, adds) are not counted.
Counted from shapes by a ``TorchFunctionMode`` that sees every torch function call, with one
rule per function in ``_RULES``, per call

* convolution (``F.convNd``): ``C_out·H_out·W_out·(C_in/groups)·Kh·Kw`` (any dims, stride,
  dilation, groups); transposed (``F.conv_transposeNd``): ``C_in·H_in·W_in·(C_out/groups)·Kh·Kw``;
* linear (``F.linear``): ``in_features·out_features`` per output row;
* matrix products (``matmul`` / ``@``, ``mm``, ``bmm``, ``baddbmm``, ``addmm``, ``mv``, ``dot``,
  ... as functions and tensor methods): ``batch·m·n·k``; ``einsum`` and ``tensordot`` as torch
  contracts them;
* ``F.scaled_dot_product_attention``: ``batch·heads·L·S·(E + E_v)`` (Q·Kᵀ and A·V);
* ``F.multi_head_attention_forward`` (``nn.MultiheadAttention``): its four projections and its
  two products.

These are ``torch.utils.flop_counter``'s formulas, FLOPs = 2·MACs.  A call is counted once:
while the mode runs a function torch turns the mode off, so what a counted function calls
inside (``multi_head_attention_forward``'s ``F.linear`` and ``bmm``, ``@``'s ``torch.matmul``)
is not seen again; by the same token a torch function without a rule that multiplies inside
(``torch.cdist``, the recurrent layers' kernels) counts nothing.  Because calls are seen at the
functional level, ``F.conv2d`` calls made in a ``forward`` and subclasses of ``nn.Conv2d`` are
counted like modules (no module-type tables); ``tests/measure/test_measure.py`` checks every
formula, checks the counter against ``torch.utils.flop_counter.FlopCounterMode``, and
(``-m slow``) against the multiply-adds torchvision publishes for each of its classifiers.
Shapes are all that matter, so counting runs on the meta device when asked (no arithmetic).
"""

from __future__ import annotations

import inspect
import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .inputs import as_inputs, eval_mode, wrong_input

__all__ = ["count_macs", "count_params", "profile"]


def _arg(args: tuple, kwargs: dict, index: int, name: str) -> Any:
    """The argument a call passed at ``index`` or as ``name``."""
    return args[index] if len(args) > index else kwargs[name]


def _conv_macs(args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    weight = _arg(args, kwargs, 1, "weight")
    return out.numel() * weight[0].numel()  # N·C_out·prod(out) · (C_in/groups)·prod(K)


def _conv_transpose_macs(args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    x, weight = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
    return x.numel() * weight[0].numel()  # N·C_in·prod(in) · (C_out/groups)·prod(K)


def _linear_macs(args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    return out.numel() * _arg(args, kwargs, 1, "weight").shape[-1]


def _product(left: int, name: str) -> Callable[[tuple, dict, Any], int]:
    """The rule of a matrix product whose left operand is argument ``left`` (or ``name``): every
    output element accumulates ``k`` products, k the left operand's last size (batch·m·n·k for
    ``bmm``, broadcast batch dimensions and vectors included for ``matmul``)."""

    def rule(args: tuple, kwargs: dict, out: torch.Tensor) -> int:
        return out.numel() * _arg(args, kwargs, left, name).shape[-1]

    return rule


def _addbmm_macs(args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    batch1, batch2 = _arg(args, kwargs, 1, "batch1"), _arg(args, kwargs, 2, "batch2")
    return batch1.numel() * batch2.shape[-1]  # b·m·k · n (the b products are summed into one m×n)


def _tensordot_macs(args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    a = _arg(args, kwargs, 0, "a")
    dims = args[2] if len(args) > 2 else kwargs.get("dims", 2)
    if isinstance(dims, torch.Tensor):
        dims = dims.tolist()
    if isinstance(dims, int):
        contracted = range(a.dim() - dims, a.dim())
    else:
        contracted = [dims[0]] if isinstance(dims[0], int) else dims[0]
    return out.numel() * math.prod(a.shape[d] for d in contracted)


def _einsum_indices(spec: str, ndim: int, ellipsis: int) -> list[str]:
    """An einsum term's indices, ``...`` written out as ``ellipsis`` broadcast indices of which
    the term's own ``ndim - letters`` are the last."""
    if "..." not in spec:
        return list(spec)
    head, tail = spec.split("...")
    own = ndim - len(head) - len(tail)
    return [*head, *(f"...{i}" for i in range(ellipsis - own, ellipsis)), *tail]


def _einsum_macs(args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    """``torch.einsum`` as torch contracts it (two operands at a time, left to right, as it does
    without ``opt_einsum``): an index only one side has and nothing later needs is summed out
    first; each product then costs the product of the sizes of the indices either side keeps."""
    equation, operands = args[0].replace(" ", ""), args[1:]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    inputs, _, output = equation.partition("->")
    specs = inputs.split(",")
    ellipsis = max((t.dim() - len(s) + 3 for s, t in zip(specs, operands) if "..." in s), default=0)
    terms = [_einsum_indices(s, t.dim(), ellipsis) for s, t in zip(specs, operands)]
    sizes: dict[str, int] = {}
    for term, t in zip(terms, operands):
        for index, size in zip(term, t.shape):
            sizes[index] = max(sizes.get(index, 1), size)
    if "->" in equation:
        kept = set(_einsum_indices(output, ellipsis + len(output) - 3, ellipsis))
    else:  # implicit output: the indices that occur once, and the broadcast ones
        flat = [i for term in terms for i in term]
        kept = {i for i in flat if flat.count(i) == 1 or i.startswith("...")}
    macs, left = 0, set(terms[0]) if terms else set()
    for n, term in enumerate(terms[1:], start=1):
        needed = kept.union(*terms[n + 1 :])
        right = set(term)
        product = {i for i in left | right if i in needed or (i in left and i in right)}
        macs += math.prod(sizes[i] for i in product)
        left = (left | right) & needed
    return macs


def _sdpa_macs(args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    """``F.scaled_dot_product_attention``: Q·Kᵀ and A·V, batch·heads·L·S·(E + E_v) (the causal
    mask does not change the count, as in ``torch.utils.flop_counter``)."""
    query, key = _arg(args, kwargs, 0, "query"), _arg(args, kwargs, 1, "key")
    return math.prod(out.shape[:-1]) * key.shape[-2] * (query.shape[-1] + out.shape[-1])


_MHA_SIGNATURE = inspect.signature(F.multi_head_attention_forward)


def _mha_macs(args: tuple, kwargs: dict, out: Any) -> int:
    """``nn.MultiheadAttention``'s functional form: its q, k, v and output projections and the
    two products of the attention over its S keys (one more for ``bias_k``, one more for
    ``add_zero_attn``; ``static_k``'s length when given)."""
    a = _MHA_SIGNATURE.bind(*args, **kwargs).arguments
    q, k, v = a["query"], a["key"], a["value"]
    e = q.shape[-1]
    rows_q, rows_k, rows_v = (math.prod(t.shape[:-1]) for t in (q, k, v))
    projections = 2 * rows_q * e * e + rows_k * e * k.shape[-1] + rows_v * e * v.shape[-1]
    static_k = a.get("static_k")
    keys = static_k.shape[1] if static_k is not None else k.shape[0] + (a["bias_k"] is not None)
    keys += bool(a["add_zero_attn"])
    return projections + 2 * rows_q * keys * e


# matrix products: name -> the index and keyword of the left operand (torch.name, Tensor.name, Tensor.name_)
_PRODUCTS = {
    "matmul": (0, "input"),
    "mm": (0, "input"),
    "bmm": (0, "input"),
    "mv": (0, "input"),
    "dot": (0, "input"),
    "vdot": (0, "input"),
    "inner": (0, "input"),
    "addmm": (1, "mat1"),
    "addmv": (1, "mat"),
    "baddbmm": (1, "batch1"),
}


def _forms(name: str) -> list[Callable]:
    """The functions and methods a call of torch's ``name`` reaches the mode as."""
    owners = ((torch, name), (torch.Tensor, name), (torch.Tensor, name + "_"))
    return [getattr(owner, attr) for owner, attr in owners if hasattr(owner, attr)]


_RULES: dict[Callable, Callable[[tuple, dict, Any], int]] = {
    **{f: _conv_macs for f in (F.conv1d, F.conv2d, F.conv3d)},
    **{f: _conv_transpose_macs for f in (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)},
    F.linear: _linear_macs,
    **{f: _product(*operand) for name, operand in _PRODUCTS.items() for f in _forms(name)},
    torch.linalg.matmul: _product(0, "input"),
    **{f: _addbmm_macs for f in _forms("addbmm")},
    torch.einsum: _einsum_macs,
    torch.tensordot: _tensordot_macs,
    F.scaled_dot_product_attention: _sdpa_macs,
    F.multi_head_attention_forward: _mha_macs,
}


class _MacCounter(TorchFunctionMode):
    """Counts the MACs of every call with a rule, attributed to the innermost module."""

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
        with eval_mode(model), torch.no_grad(), counter:
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
    """Multiply-accumulates of conv and linear weights and of activation-by-activation matrix
    products (attention) for one forward on ``example_inputs`` (bias excluded; FLOPs = 2·MACs)."""
    return _counts(model, example_inputs).get("", 0)


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def profile(model: nn.Module, example_inputs: Any) -> pd.DataFrame:
    """One row per layer that has weights or does MACs: ``name``, ``op`` (module class, or
    ``functional`` for MACs of calls made directly in a parent's forward: an ``F.conv2d``, the
    attention of an ``nn.MultiheadAttention``, a ``q @ k``), ``macs``,
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
