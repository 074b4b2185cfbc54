"""Conv sites: where a model's convolutions are, found by torch.fx tracing with shapes
propagated from example inputs (``call_module`` of an ``nn.ConvNd`` and ``F.convNd`` calls on
parameters), or by forward hooks on convolution modules when symbolic tracing fails or drops a
gradient-mode region; and where a site's output goes (:func:`activation_after`).

Every convolution module is a site, reached or not: a module that no example input reaches
(a branch of data-dependent control flow the inputs did not take, a conv ``forward`` never
calls) is listed with ``reached=False`` and no shapes, so that plans can say so instead of
leaving it out.  :class:`~.examples.ExampleInputs` passes several inputs, so that each branch
can be reached.
"""

from __future__ import annotations

import contextlib
import io
import operator
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp
from torch.overrides import TorchFunctionMode

from ..blocks import CONV_TYPES, ConvGeometry
from ..measure import wrong_input
from ..measure.inputs import eval_mode
from .examples import check_examples, example_list, naming_item, run_each

__all__ = [
    "Site",
    "activation_after",
    "dropped_grad_regions",
    "find_sites",
    "functional_conv_args",
    "functional_site_name",
    "is_add",
    "trace",
]

_FUNCTIONAL_CONVS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3, torch.conv1d: 1, torch.conv2d: 2, torch.conv3d: 3}


@dataclass(frozen=True)
class Site:
    """A convolution found in a model: where (module path, or parameter path for functional
    calls), its geometry, the shapes it sees, and how many times it runs per forward (on the
    first example input).  ``reached`` is False for a conv module no example input reached (no
    shapes, no calls); ``grad_enabled`` is False when a call runs with gradients disabled
    (inside ``torch.no_grad()``, ``torch.inference_mode()`` or ``set_grad_enabled(False)``)."""

    name: str
    source: str  # "module" | "functional"
    geometry: ConvGeometry
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    calls: int = 1
    reached: bool = True
    grad_enabled: bool = True


class _Tracer(fx.Tracer):
    """Symbolic tracer that keeps every module call of ours and torch's as a leaf, and records
    in ``node.meta["grad_enabled"]`` whether gradients were enabled when the node was made."""

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        node.meta["grad_enabled"] = torch.is_grad_enabled()
        return node


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model`` (raises whatever torch.fx raises when it cannot).  Tracing
    runs with gradients enabled, so that the nodes made inside a gradient-disabling region of
    ``forward`` are marked (see :func:`dropped_grad_regions`)."""
    tracer = _Tracer()
    with torch.enable_grad():
        graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


_GRAD_MODE_FUNCTIONS = (torch._C._set_grad_enabled, torch.set_grad_enabled)
_OPS = ("call_module", "call_function", "call_method")


def dropped_grad_regions(gm: fx.GraphModule) -> list[str]:
    """The operations of a traced graph that ``forward`` ran with gradients disabled (inside
    ``torch.no_grad()``, ``torch.inference_mode()``, ``set_grad_enabled(False)``) but that
    the GraphModule runs with the caller's gradient mode: symbolic tracing executes those
    context managers without recording them, so the graph would compute gradients there, and
    train parameters the model does not.  Empty when the graph sets the mode itself."""
    if any(n.op == "call_function" and n.target in _GRAD_MODE_FUNCTIONS for n in gm.graph.nodes):
        return []
    return [
        str(n.target) if n.op == "call_module" else n.name
        for n in gm.graph.nodes
        if n.op in _OPS and n.meta.get("grad_enabled") is False
    ]


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
                tuple(weight.shape),
                bias=b is not None,
                stride=a["stride"],
                padding=a["padding"],
                dilation=a["dilation"],
                groups=a["groups"],
            )
        else:
            continue
        grad = node.meta.get("grad_enabled", True)
        if name in found:
            old = found[name]
            found[name] = replace(old, calls=old.calls + 1, grad_enabled=old.grad_enabled and grad)
            continue
        in_meta = node.args[0].meta.get("tensor_meta") if isinstance(node.args[0], fx.Node) else None
        found[name] = Site(
            name,
            source,
            geometry,
            tuple(in_meta.shape) if in_meta else (),
            tuple(meta.shape) if meta else (),
            grad_enabled=grad,
        )
    return list(found.values()), notes


def _unreached(model: nn.Module, found: list[Site]) -> list[Site]:
    """A site with ``reached=False`` for every conv module not among ``found``."""
    seen = {s.name for s in found}
    return [
        Site(n, "module", ConvGeometry.from_module(m), (), (), calls=0, reached=False)
        for n, m in model.named_modules()
        if isinstance(m, CONV_TYPES) and n not in seen
    ]


class _FunctionalConvs(TorchFunctionMode):
    """Records the ``F.convNd`` calls on a model's parameters that no conv module makes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        own = {id(m.weight) for m in model.modules() if isinstance(m, CONV_TYPES)}
        tensors = [*model.named_parameters(), *model.named_buffers()]
        self.names = {
            id(t): n[: -len(".weight")] if n.endswith(".weight") else n for n, t in tensors if id(t) not in own
        }
        self.seen: dict[str, None] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FUNCTIONAL_CONVS:
            name = self.names.get(id(args[1] if len(args) > 1 else kwargs.get("weight")))
            if name is not None:
                self.seen[name] = None
        return func(*args, **kwargs)


def _sites_from_hooks(model: nn.Module, examples: list[tuple]) -> tuple[list[Site], list[str]]:
    """Sites found by forward hooks on conv modules during an eager forward (eval mode,
    gradients enabled so that the hooks see the regions ``forward`` disables them in) on each
    example; the conv modules no example reaches come last, with ``reached=False``.  Notes name
    the functional convolutions on parameters, which a module swap cannot replace."""
    found: dict[str, Site] = {}
    names = {m: n for n, m in model.named_modules() if isinstance(m, CONV_TYPES)}
    first = [True]

    def hook(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
        name, grad, calls = names[mod], torch.is_grad_enabled(), int(first[0])
        old = found.get(name)
        if old is None:
            found[name] = Site(
                name,
                "module",
                ConvGeometry.from_module(mod),
                tuple(args[0].shape),
                tuple(out.shape),
                calls,
                grad_enabled=grad,
            )
        else:
            found[name] = replace(old, calls=old.calls + calls, grad_enabled=old.grad_enabled and grad)

    handles = [m.register_forward_hook(hook) for m in names]
    functional = _FunctionalConvs(model)
    try:
        with eval_mode(model), torch.enable_grad(), functional:
            for i, inputs in enumerate(examples):
                first[0] = i == 0
                with naming_item(i, len(examples)):
                    try:
                        model(*inputs)
                    except Exception as exc:
                        raise wrong_input(model, inputs, exc) from exc
    finally:
        for h in handles:
            h.remove()
    sites = list(found.values())
    notes = [f"{n}: functional convolution; left as is (only conv modules are swapped)" for n in functional.seen]
    return sites + _unreached(model, sites), notes


def _shape_prop(model: nn.Module, gm: fx.GraphModule, inputs: tuple) -> None:
    try:
        # ShapeProp prints a traceback itself before re-raising; our one-line error replaces it
        with eval_mode(gm), torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            ShapeProp(gm).propagate(*inputs)
    except Exception as exc:
        raise wrong_input(model, inputs, exc) from exc


def find_sites(model: nn.Module, example_inputs: Any) -> tuple[list[Site], bool, list[str]]:
    """All convolution sites of ``model`` (reached ones in forward order, then the conv modules
    no example input reached), whether the plan can rewrite the fx graph, and notes.

    ``example_inputs``: as :func:`~nas_sepconv.measure.as_inputs` reads it, or an
    :class:`~.examples.ExampleInputs` of several.  When symbolic tracing fails, or when the traced graph
    drops a region that ``forward`` runs with gradients disabled (:func:`dropped_grad_regions`:
    the GraphModule would train what the model does not), the sites are found by forward hooks
    on each example and the result says ``traced=False``: conv modules are then swapped in
    place, and the model's own ``forward`` keeps its ``torch.no_grad()`` regions.  A traced
    graph's shapes come from the first example (every input runs the same graph)."""
    examples = example_list(example_inputs)
    check_examples(model, examples)
    try:
        gm = trace(model)
    except Exception as exc:  # torch.fx raises many types (TraceError, TypeError, ...)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        note = (
            f"symbolic tracing failed ({type(exc).__name__}: {first}); convolution modules are swapped in place instead"
        )
    else:
        dropped = dropped_grad_regions(gm)
        if not dropped:
            with naming_item(0, len(examples)):
                _shape_prop(model, gm, examples[0])
            run_each(model, examples, start=1)  # the graph is the same for all, but each input must run
            sites, notes = _sites_from_graph(gm)
            return sites + _unreached(model, sites), True, notes
        shown = ", ".join(dropped[:4]) + (f" and {len(dropped) - 4} more" if len(dropped) > 4 else "")
        note = (
            f"torch.fx drops the gradient-disabled region of forward ({shown}: torch.no_grad() or alike); "
            "convolution modules are swapped in place instead, so that forward keeps it"
        )
    sites, notes = _sites_from_hooks(model, examples)
    return sites, False, [note, *notes]


# --------------------------------------------------------------------------------------------
# Where a site's output goes
# --------------------------------------------------------------------------------------------
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_PASS_THROUGH = (nn.modules.batchnorm._BatchNorm, nn.Identity, nn.Dropout)
_ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardswish,
    nn.SiLU,
    nn.GELU,
    nn.LeakyReLU,
    nn.ELU,
    nn.Mish,
    nn.PReLU,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
)


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
