"""Conv sites: where a model's convolutions are, found by torch.fx tracing with shapes
propagated from example inputs (``call_module`` of an ``nn.ConvNd`` and ``F.convNd`` calls on
parameters), or by forward hooks on convolution modules when symbolic tracing fails; and where
a site's output goes (:func:`activation_after`).
"""

from __future__ import annotations

import contextlib
import io
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from ..blocks import CONV_TYPES, ConvGeometry
from ..measure import as_inputs, wrong_input

__all__ = ["Site", "activation_after", "find_sites", "functional_conv_args", "functional_site_name", "is_add", "trace"]

_FUNCTIONAL_CONVS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3, torch.conv1d: 1, torch.conv2d: 2, torch.conv3d: 3}


# --------------------------------------------------------------------------------------------
# Sites
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Site:
    """A convolution found in a model: where (module path, or parameter path for functional
    calls), its geometry, the shapes it sees, and how many times it runs per forward."""

    name: str
    source: str  # "module" | "functional"
    geometry: ConvGeometry
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    calls: int = 1


class _Tracer(fx.Tracer):
    """Symbolic tracer that keeps every module call of ours and torch's as a leaf."""


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model`` (raises whatever torch.fx raises when it cannot)."""
    tracer = _Tracer()
    graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def functional_conv_args(node: fx.Node) -> dict[str, Any]:
    """Arguments of an ``F.convNd`` call node, by name."""
    keys = ["input", "weight", "bias", "stride", "padding", "dilation", "groups"]
    defaults = [None, None, None, 1, 0, 1, 1]
    return {k: _arg(node, i, k, d) for i, (k, d) in enumerate(zip(keys, defaults))}


def functional_site_name(node: fx.Node) -> str | None:
    """The site name of an ``F.convNd`` call on a parameter (its weight's path without
    ``.weight``), or ``None`` if the node is not one."""
    if node.op != "call_function" or node.target not in _FUNCTIONAL_CONVS:
        return None
    w = functional_conv_args(node)["weight"]
    if not (isinstance(w, fx.Node) and w.op == "get_attr"):
        return None
    return w.target[: -len(".weight")] if w.target.endswith(".weight") else w.target


def _sites_from_graph(gm: fx.GraphModule) -> tuple[list[Site], list[str]]:
    modules = dict(gm.named_modules())
    found: dict[str, Site] = {}
    notes: list[str] = []
    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        if node.op == "call_module" and isinstance(modules.get(node.target), CONV_TYPES):
            name, source = node.target, "module"
            geometry = ConvGeometry.from_module(modules[node.target])
        elif node.op == "call_function" and node.target in _FUNCTIONAL_CONVS:
            a = functional_conv_args(node)
            w, b = a["weight"], a["bias"]
            if not (isinstance(w, fx.Node) and w.op == "get_attr") or (isinstance(b, fx.Node) and b.op != "get_attr"):
                notes.append(f"{node.name}: functional convolution whose weight is not a parameter; left as is")
                continue
            if any(isinstance(a[k], fx.Node) for k in ("stride", "padding", "dilation", "groups")):
                notes.append(f"{node.name}: functional convolution with computed arguments; left as is")
                continue
            weight = gm.get_parameter(w.target) if w.target in dict(gm.named_parameters()) else gm.get_buffer(w.target)
            name, source = functional_site_name(node), "functional"
            geometry = ConvGeometry.from_call(
                tuple(weight.shape), bias=b is not None, stride=a["stride"], padding=a["padding"], dilation=a["dilation"], groups=a["groups"]
            )
        else:
            continue
        if name in found:
            found[name] = Site(**{**found[name].__dict__, "calls": found[name].calls + 1})
            continue
        in_meta = node.args[0].meta.get("tensor_meta") if isinstance(node.args[0], fx.Node) else None
        found[name] = Site(name, source, geometry, tuple(in_meta.shape) if in_meta else (), tuple(meta.shape) if meta else ())
    return list(found.values()), notes


def _sites_from_hooks(model: nn.Module, inputs: tuple) -> list[Site]:
    found: dict[str, Site] = {}
    names = {m: n for n, m in model.named_modules() if isinstance(m, CONV_TYPES)}

    def hook(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
        name = names[mod]
        if name in found:
            found[name] = Site(**{**found[name].__dict__, "calls": found[name].calls + 1})
        else:
            found[name] = Site(name, "module", ConvGeometry.from_module(mod), tuple(args[0].shape), tuple(out.shape))

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with torch.no_grad():
            flags = {m: m.training for m in model.modules()}
            model.eval()
            model(*inputs)
            for m, f in flags.items():
                m.training = f
    finally:
        for h in handles:
            h.remove()
    return list(found.values())


def find_sites(model: nn.Module, example_inputs: Any) -> tuple[list[Site], bool, list[str]]:
    """All convolution sites of ``model`` in forward order, whether fx tracing worked, notes."""
    inputs = as_inputs(example_inputs)
    try:
        gm = trace(model)
    except Exception as exc:  # torch.fx raises many types (TraceError, TypeError, ...)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        note = f"symbolic tracing failed ({type(exc).__name__}: {first}); convolution modules are swapped in place instead"
        return _sites_from_hooks(model, inputs), False, [note]
    flags = {m: m.training for m in gm.modules()}
    gm.eval()
    try:
        # ShapeProp prints a traceback itself before re-raising; our one-line error replaces it
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            ShapeProp(gm).propagate(*inputs)
    except Exception as exc:
        raise wrong_input(model, inputs, exc) from exc
    finally:
        for m, f in flags.items():
            m.training = f
    sites, notes = _sites_from_graph(gm)
    return sites, True, notes


# --------------------------------------------------------------------------------------------
# Where a site's output goes
# --------------------------------------------------------------------------------------------
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_PASS_THROUGH = (nn.modules.batchnorm._BatchNorm, nn.Identity, nn.Dropout)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.ELU, nn.Mish, nn.PReLU,
                nn.Hardtanh, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh)


def is_add(node: fx.Node) -> bool:
    """A plain two-operand addition node (``a + b``, ``a += b``, ``torch.add(a, b)``, ``a.add(b)``)."""
    if node.kwargs or len(node.args) != 2:  # torch.add(..., alpha=...) is not a plain sum
        return False
    if node.op == "call_function":
        return node.target in _ADD_FUNCTIONS
    return node.op == "call_method" and node.target in ("add", "add_")


def activation_after(gm: fx.GraphModule, name: str) -> str | None:
    """The module name of the first activation that the output of module ``name`` reaches along
    a single path through normalisations, identities and additions (a ResNet branch's
    ``conv → bn → relu`` and ``conv → bn → + shortcut → relu``), or ``None`` (no such path, a
    functional activation, or ``name`` not called exactly once)."""
    modules = dict(gm.named_modules())
    nodes = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == name]
    if len(nodes) != 1:
        return None
    node = nodes[0]
    while len(node.users) == 1:
        node = next(iter(node.users))
        module = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(module, _ACTIVATIONS):
            return node.target
        if not (isinstance(module, _PASS_THROUGH) or is_add(node)):
            return None
    return None
