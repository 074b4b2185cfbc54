"""Inference-time optimisation of a (converted or original) model, for fair latency numbers.

:func:`optimize_for_inference` applies the same steps to any ``nn.Module`` so that an original
network and its separable conversion are measured under the same treatment:

1. **Eval copy.**  The model is deep-copied and put in eval mode; the input is never changed.
2. **Inline and tidy.**  The copy is traced with plain ``torch.fx.symbolic_trace``, whose tracer
   treats only ``torch.nn`` modules as leaves: our blocks (``DepthwiseSeparable``,
   ``InvertedResidual``, ...) are inlined into their plain ``conv_dw`` / ``norm_dw`` /
   ``conv_pw`` calls, so the folding below sees through them.  ``nn.Identity`` calls (the
   blocks' absent parts) and ``nn.Dropout`` calls (no-ops in eval) are removed from the graph.
3. **Fold BatchNorm** (``fold_bn``).  Every ``call_module`` BatchNorm whose only input is a
   ``call_module`` convolution (or transposed convolution) with no other user, whose
   convolution module is called nowhere else, and which tracks running statistics, is folded
   into a new convolution (``torch.nn.utils.fusion.fuse_conv_bn_eval``: ``W' = W·γ/σ``,
   ``b' = (b-μ)·γ/σ + β``) and its node removed.  In a converted ResNet that folds the
   network's BN into each block's last linear part (``conv_pw``), exactly as it folds into the
   plain conv in the original.  A model that cannot be traced is folded by module: a conv
   directly followed by a BatchNorm inside an ``nn.Sequential``.
4. **channels_last** (``channels_last``).  4-D parameters and buffers are stored NHWC and a
   ``contiguous(memory_format=torch.channels_last)`` is put on every 4-D input, so oneDNN
   convolutions run without reordering activations to and from NCHW at every layer.
5. **Compile** (``compile``).  ``torch.compile`` with inductor and ``freezing`` (weights are
   treated as constants: BN folding, weight pre-packing for oneDNN, pointwise epilogue fusion
   when run under ``torch.no_grad``/``inference_mode``).  The compiled module is run once on
   ``example_inputs`` so that failures surface here, as a ``RuntimeError`` (inductor on CPU
   needs a working C++ compiler).

Depthwise and pointwise parts are *not* merged back into one convolution: that would undo the
conversion (the merged kernel has the original's MACs).  PyTorch exposes no fused
depthwise→pointwise kernel on CPU; under ``compile`` the two stay two oneDNN calls.

Steps 1-4 keep outputs equal to the input model's in eval mode up to float rounding
(``tests/test_optimize.py`` checks ``allclose``).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .inputs import as_inputs

__all__ = ["optimize_for_inference", "fold_batchnorm"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_NO_OPS = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        isinstance(conv, _CONVS)
        and isinstance(bn, _NORMS)
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.num_features == conv.out_channels
    )


def _fuse(conv: nn.Module, bn: nn.Module) -> nn.Module:
    return fuse_conv_bn_eval(conv.eval(), bn.eval(), transpose=isinstance(conv, nn.modules.conv._ConvTransposeNd))


def _fold_graph(gm: fx.GraphModule) -> int:
    """Drop no-op calls and fold conv→BN pairs in place; the number of BNs folded."""
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in list(gm.graph.nodes):
        if (
            node.op == "call_module"
            and isinstance(modules[node.target], _NO_OPS)
            and len(node.args) == 1
            and not node.kwargs
        ):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    folded = 0
    for node in list(gm.graph.nodes):
        if (
            node.op != "call_module"
            or not isinstance(modules[node.target], _NORMS)
            or len(node.args) != 1
            or node.kwargs
        ):
            continue
        src = node.args[0]
        if not (
            isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1 and calls.get(src.target) == 1
        ):
            continue
        conv, bn = modules[src.target], modules[node.target]
        if not _foldable(conv, bn):
            continue
        fused = _fuse(conv, bn)
        gm.set_submodule(src.target, fused)
        modules[src.target] = fused
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return folded


def _fold_sequential(model: nn.Module) -> int:
    """Fallback for untraceable models: fold a conv directly followed by a BN in a Sequential."""
    uses: dict[int, int] = {}
    for parent in model.modules():
        for child in parent._modules.values():
            if child is not None:
                uses[id(child)] = uses.get(id(child), 0) + 1
    folded = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        keys = list(seq._modules)
        for a, b in zip(keys, keys[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if _foldable(conv, bn) and uses[id(conv)] == 1 and uses[id(bn)] == 1:
                seq._modules[a] = _fuse(conv, bn)
                seq._modules[b] = nn.Identity()
                folded += 1
    return folded


def _eval_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode.  A GraphModule's ``meta`` (for ours, the Plan) is shared, not
    copied: it describes the model and is never changed by these passes."""
    memo: dict[int, Any] = {}
    meta = getattr(model, "meta", None)
    if isinstance(meta, dict):
        memo[id(meta)] = dict(meta)
    return copy.deepcopy(model, memo).eval()


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every BatchNorm that directly follows a convolution
    folded into it (steps 1-3 of :func:`optimize_for_inference`).  Returns an
    ``fx.GraphModule`` when the model can be traced, else a copy folded by module."""
    model = _eval_copy(model)
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - torch.fx raises many types
        warnings.warn(
            f"{type(model).__name__} cannot be traced ({type(exc).__name__}); folding conv→BN pairs inside "
            "nn.Sequential only"
        )
        _fold_sequential(model)
        return model
    gm.eval()
    _fold_graph(gm)
    return gm


class _ChannelsLast(nn.Module):
    """Calls ``inner`` with every 4-D tensor input made channels_last (untraceable models)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        def fix(t: Any) -> Any:
            is_4d = isinstance(t, torch.Tensor) and t.dim() == 4
            return t.contiguous(memory_format=torch.channels_last) if is_4d else t

        return self.inner(*map(fix, args), **{k: fix(v) for k, v in kwargs.items()})


def _to_channels_last(model: nn.Module) -> nn.Module:
    model = model._apply(lambda t: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t)  # 4-D only
    if not isinstance(model, fx.GraphModule):
        return _ChannelsLast(model)
    graph = model.graph
    for node in [n for n in graph.nodes if n.op == "placeholder"]:
        with graph.inserting_after(node):
            fixed = graph.call_function(_contiguous_channels_last, (node,))
        node.replace_all_uses_with(fixed, delete_user_cb=lambda user: user is not fixed)
    graph.lint()
    model.recompile()
    return model


def _contiguous_channels_last(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _compile(model: nn.Module, inputs: tuple) -> nn.Module:
    try:
        compiled = torch.compile(model, backend="inductor", options={"freezing": True})
        with torch.no_grad():
            compiled(*inputs)
    except Exception as exc:  # noqa: BLE001 - dynamo/inductor raise many types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise RuntimeError(
            f"torch.compile (inductor, CPU) failed on {type(model).__name__}: {type(exc).__name__}: {first}. "
            "Inductor on CPU needs a working C++ compiler (g++ on PATH, or set CXX); "
            "use compile=False to skip this step"
        ) from exc
    return compiled


def optimize_for_inference(
    model: nn.Module,
    example_inputs: Any,
    *,
    fold_bn: bool = True,
    channels_last: bool = True,
    compile: bool = False,
) -> nn.Module:
    """A new eval-mode module computing what ``model`` computes in eval mode, faster on CPU.

    Steps (module docstring has the details): deep copy in eval mode; trace with plain
    ``torch.fx`` so our blocks are inlined, drop ``Identity``/``Dropout`` calls; fold each
    BatchNorm that directly follows a convolution into it (``fold_bn``); store weights and
    inputs channels_last (``channels_last``); ``torch.compile`` with inductor and freezing
    (``compile``, raises ``RuntimeError`` when it fails).  ``example_inputs`` (a tensor, a
    tuple of tensors or an input size) is run through the result once as a check.
    ``model`` is never changed.
    """
    inputs = as_inputs(example_inputs)
    out = fold_batchnorm(model) if fold_bn else _eval_copy(model)
    if channels_last:
        out = _to_channels_last(out)
    out.eval()
    if compile:
        out = _compile(out, inputs)
    else:
        with torch.no_grad():
            out(*inputs)
    return out
