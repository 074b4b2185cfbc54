"""Data-aware refit of converted blocks, and per-site fidelity of a converted model.

:func:`refit` improves the closed-form initialisation (:mod:`nas_sepconv.decompose`) with a few
batches of calibration inputs: for each converted site in forward order it re-solves the
block's last linear part (the kind's ``last_linear`` sub-layer) by ridge-regularised linear
least squares, so that the block's output in the *converted* model matches the original
convolution's output in the *original* model; kinds with a ``joint_refit`` (``dwsep``) have all
their factors re-solved, by alternating least squares (:mod:`nas_sepconv.joint_refit`).
Inputs are the converted model's own activations with the earlier sites already refit, so
each site also compensates the error accumulated before it; ``layers="all"`` also re-solves
the conv and linear layers the plan kept (shortcuts, the classifier), which see the converted
model's activations too.  It is closed form (normal equations accumulated over batches in
float64, closed-form solves), no gradient steps.

:func:`fidelity` measures, per converted site, how far the converted model is from the
original: in weight space (the dense kernel of a linear block against the original kernel) and
in output space (accumulated and local).

Both take ``batches``: an iterable of input tensors, or of tuples/lists whose first element is
the input (what a ``DataLoader`` yields), or of dicts of keyword inputs.  It is materialised
as a list (it is read once per site).  Both models run in eval mode (BatchNorm with its running
statistics; modes are restored afterwards) and under ``torch.no_grad``.

Sites are the plan's converted entries whose name is a module of the original model; sites of
functional ``F.convNd`` calls get a row of NaNs (no module to observe).
"""

from __future__ import annotations

import copy
from collections import abc
import math
from dataclasses import dataclass
from typing import Any, Iterable

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..blocks import dense_weight, effective_weight, resize_kernel
from ..errors import UserInputError
from ..blocks import CONV_TYPES, ConvGeometry
from ..blocks import BlockSpec, as_spec

__all__ = ["refit", "fidelity", "conv_patches"]

META_KEY = "nas_sepconv.plan"


class _Stop(Exception):
    """Raised from a hook to end a forward pass once the site of interest has run."""


@dataclass
class _Site:
    name: str
    spec: BlockSpec | None  # None: a layer the plan left as it was (refit with layers="all")
    original: nn.Module | None  # the conv in the original model
    block: nn.Module | None  # the block in the converted model
    calls: int = 0  # calls per forward pass


# -- plumbing --------------------------------------------------------------------------------


def _plan_entries(converted: nn.Module, plan: Any) -> list:
    if plan is None:
        meta = getattr(converted, "meta", None)
        plan = meta.get(META_KEY) if isinstance(meta, dict) else None
        if plan is None:
            raise UserInputError(
                "plan", "the converted model carries no plan", "pass plan= (the Plan that apply_plan was given)"
            )
    entries = getattr(plan, "entries", None)
    if entries is None:
        raise UserInputError("plan", f"expected a Plan with .entries, got {type(plan).__name__}", "use ns.make_plan")
    return list(entries)


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _sites(converted: nn.Module, original: nn.Module, plan: Any, *, unconverted: bool = False) -> list[_Site]:
    """The plan's converted sites; with ``unconverted``, also every conv and linear layer of
    the original model that the converted model still has, unchanged in type, at the same name."""
    sites, taken = [], set()
    for entry in _plan_entries(converted, plan):
        if entry.spec is None or not getattr(entry, "converted", True):
            continue
        conv = _submodule(original, entry.name)
        block = _submodule(converted, entry.name)
        if not isinstance(conv, CONV_TYPES) or getattr(entry, "source", "module") != "module":
            conv = block = None
        sites.append(_Site(entry.name, as_spec(entry.spec), conv, block))
        taken.add(entry.name)
    if unconverted:
        for name, layer in original.named_modules():
            if name in taken or not isinstance(layer, (*CONV_TYPES, nn.Linear)) or getattr(layer, "transposed", False):
                continue
            twin = _submodule(converted, name)
            if type(twin) is type(layer):
                sites.append(_Site(name, None, layer, twin))
    return sites


def _is_batch(batch: Any) -> bool:
    """An input tensor, a tuple/list whose first element is one, or a dict of keyword inputs."""
    if isinstance(batch, torch.Tensor):
        return True
    if isinstance(batch, (tuple, list)):
        return bool(batch) and isinstance(batch[0], torch.Tensor)
    return isinstance(batch, dict) and any(isinstance(v, torch.Tensor) for v in batch.values())


def _batches(batches: Iterable[Any], device: torch.device) -> list[Any]:
    fix = "pass an iterable of input tensors, (x, y) tuples or dicts of tensors (or a DataLoader)"
    if isinstance(batches, (str, bytes)) or not isinstance(batches, abc.Iterable):
        raise UserInputError("batches", f"expected calibration batches, got {type(batches).__name__}", fix)
    out = list(batches)
    if not out:
        raise UserInputError("batches", "no calibration batches", fix)
    for i, batch in enumerate(out):
        if not _is_batch(batch):
            raise UserInputError("batches", f"item {i} is a {type(batch).__name__}, not an input tensor", fix)
    return [_to(b, device) for b in out]


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def _run(model: nn.Module, batch: Any) -> Any:
    """One forward pass on a batch (a tensor, ``(x, y)`` or keyword inputs); returns the output,
    or None when a hook ended the pass early by raising :class:`_Stop`."""
    try:
        if isinstance(batch, dict):
            return model(**batch)
        if isinstance(batch, (tuple, list)):
            return model(batch[0])
        return model(batch)
    except _Stop:
        return None


def _device(model: nn.Module, device: Any) -> torch.device:
    if device is not None:
        return torch.device(device)
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _on(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` if it already lives on ``device``, else a copy there (the user's model is not moved)."""
    if all(t.device == device for t in [*model.parameters(), *model.buffers()]):
        return model
    return copy.deepcopy(model).to(device)


class _EvalMode:
    """Put models in eval mode and restore every module's own flag afterwards."""

    def __init__(self, *models: nn.Module):
        self.modules = [m for model in models for m in model.modules()]

    def __enter__(self) -> None:
        self.flags = [m.training for m in self.modules]
        for m in self.modules:
            m.training = False

    def __exit__(self, *exc: Any) -> None:
        for m, flag in zip(self.modules, self.flags):
            m.training = flag


def _forward_order(original: nn.Module, sites: list[_Site], batch: Any) -> list[_Site]:
    """The sites in the order the original convolutions first run, with their call counts;
    sites that do not run (or have no module) go last with ``calls == 0``."""
    seen: list[str] = []
    counts: dict[str, int] = {}

    def hook(name: str):
        def fn(module, args, output):
            counts[name] = counts.get(name, 0) + 1
            if name not in seen:
                seen.append(name)
        return fn

    handles = [s.original.register_forward_hook(hook(s.name)) for s in sites if s.original is not None]
    try:
        _run(original, batch)
    finally:
        for h in handles:
            h.remove()
    for s in sites:
        s.calls = counts.get(s.name, 0) if s.block is not None else 0
    rank = {name: i for i, name in enumerate(seen)}
    return sorted(sites, key=lambda s: rank.get(s.name, len(rank)) if s.calls else len(rank))


# -- patches ---------------------------------------------------------------------------------


def _explicit_padding(conv: nn.Module) -> list[int]:
    """F.pad argument (last dimension first) of a conv's padding, 'same'/'valid' resolved as
    PyTorch does ('same': total d·(k−1), the extra one on the right)."""
    dims = len(conv.kernel_size)
    if conv.padding == "valid":
        return [0] * (2 * dims)
    pads: list[int] = []
    for i in reversed(range(dims)):
        if conv.padding == "same":
            total = conv.dilation[i] * (conv.kernel_size[i] - 1)
            pads += [total // 2, total - total // 2]
        else:
            pads += [conv.padding[i], conv.padding[i]]
    return pads


def conv_patches(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The patches a (non-transposed) ``nn.ConvNd`` multiplies: (N·prod(out), C_in·prod(K)),
    rows in (batch, *output position) order, columns in (channel, *kernel tap) order, so that
    ``conv(x)`` equals ``patches @ weight.reshape(C_out, -1).T`` per group (plus the bias).
    Honours stride, dilation, padding (ints, 'same', 'valid') and padding_mode."""
    pads = _explicit_padding(conv)
    if any(pads):
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        x = F.pad(x, pads, mode=mode)
    dims = len(conv.kernel_size)
    for i in range(dims):
        k, d, s = conv.kernel_size[i], conv.dilation[i], conv.stride[i]
        x = x.unfold(2 + i, d * (k - 1) + 1, s)
        if d > 1:
            x = x[..., ::d]
    # (N, C, *out, *K) -> (N, *out, C, *K)
    order = [0, *range(2, 2 + dims), 1, *range(2 + dims, 2 + 2 * dims)]
    x = x.permute(order)
    rows = math.prod(x.shape[: 1 + dims])
    return x.reshape(rows, -1)


class _NormalEquations:
    """XᵀX, XᵀY and ‖Y‖² per group of a conv's (or a linear layer's) regression, accumulated
    in float64."""

    def __init__(self, conv: nn.Module):
        self.conv = conv
        self.linear = isinstance(conv, nn.Linear)
        self.groups = 1 if self.linear else conv.groups
        fan_in = conv.in_features if self.linear else conv.in_channels // self.groups * math.prod(conv.kernel_size)
        self.d = fan_in + (conv.bias is not None)
        self.cout_g = (conv.out_features if self.linear else conv.out_channels) // self.groups
        dev = conv.weight.device
        self.xtx = torch.zeros(self.groups, self.d, self.d, dtype=torch.float64, device=dev)
        self.xty = torch.zeros(self.groups, self.d, self.cout_g, dtype=torch.float64, device=dev)
        self.yy = torch.zeros(self.groups, dtype=torch.float64, device=dev)
        self.rows = 0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.linear:  # (…, in) → rows of in; outputs (…, out)
            p = x.reshape(-1, self.conv.in_features).double()
            y = y.reshape(-1, 1, self.cout_g)
        else:
            p = conv_patches(self.conv, x).double()
            y = y.movedim(1, -1)
        rows = p.shape[0]
        xg = p.reshape(rows, self.groups, -1).transpose(0, 1)  # (G, rows, d0)
        if self.conv.bias is not None:
            xg = torch.cat([xg, xg.new_ones(self.groups, rows, 1)], -1)
        yg = y.double().reshape(rows, self.groups, self.cout_g).transpose(0, 1)
        self.xtx += xg.transpose(1, 2) @ xg
        self.xty += xg.transpose(1, 2) @ yg
        self.yy += yg.square().sum((1, 2))
        self.rows += rows

    def current(self) -> torch.Tensor:
        """The conv's parameters as the regression's Θ (G, d, C_out/G)."""
        w = self.conv.weight.detach().double().reshape(self.groups, self.cout_g, -1).transpose(1, 2)
        if self.conv.bias is not None:
            b = self.conv.bias.detach().double().reshape(self.groups, 1, self.cout_g)
            w = torch.cat([w, b], 1)
        return w

    def sse(self, theta: torch.Tensor) -> torch.Tensor:
        """Σ‖XΘ − Y‖² per group."""
        quad = (theta * (self.xtx @ theta)).sum((1, 2))
        return quad - 2 * (theta * self.xty).sum((1, 2)) + self.yy

    def solve(self, ridge: float) -> torch.Tensor:
        """(XᵀX + λI)⁻¹XᵀY per group, λ = ridge · mean diagonal of XᵀX (min-norm least squares
        when ``ridge == 0`` or the system is singular)."""
        eye = torch.eye(self.d, dtype=torch.float64, device=self.xtx.device)
        scale = self.xtx.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-300)
        a = self.xtx + ridge * scale.reshape(-1, 1, 1) * eye
        if ridge > 0:
            try:
                chol = torch.linalg.cholesky(a)
                return torch.cholesky_solve(self.xty, chol)
            except RuntimeError:
                pass
        return torch.linalg.pinv(a, hermitian=True) @ self.xty

    def write(self, theta: torch.Tensor, take: torch.Tensor) -> None:
        """Write Θ into the conv for the groups where ``take`` is true."""
        conv = self.conv
        has_bias = conv.bias is not None
        weight = theta[:, : self.d - has_bias].transpose(1, 2)  # (G, cout_g, d0)
        for gi in torch.nonzero(take).flatten().tolist():
            rows = slice(gi * self.cout_g, (gi + 1) * self.cout_g)
            conv.weight[rows] = weight[gi].reshape(conv.weight[rows].shape).to(conv.weight.dtype)
            if has_bias:
                conv.bias[rows] = theta[gi, -1].to(conv.bias.dtype)


# -- refit -----------------------------------------------------------------------------------


def _has_forward(module: nn.Module) -> bool:
    """False for the plain containers torch.fx leaves when it inlines a block."""
    return type(module).forward is not nn.Module.forward


def _last_linear(site: _Site) -> nn.Module:
    path = "" if site.spec is None else site.spec.info.last_linear
    return site.block if path == "" else site.block.get_submodule(path)


def _observe(site: _Site, original: nn.Module, converted: nn.Module, batches: list, entry: nn.Module,
             acc: _NormalEquations) -> tuple[float, float]:
    """Accumulate the regression of ``acc``: X from the input of ``entry`` (a sub-layer of the
    block) in the converted model, Y from the original conv's output in the original model.
    Returns Σ‖block output − Y‖² and Σ‖Y‖² before any change."""
    linear = _last_linear(site)
    err = ref = 0.0
    for batch in batches:
        targets: list[torch.Tensor] = []
        inputs: list[torch.Tensor] = []
        outputs: list[torch.Tensor] = []

        def target_hook(module, args, output):
            targets.append(output.detach())
            if len(targets) == site.calls:
                raise _Stop

        def input_hook(module, args):
            inputs.append(args[0].detach())

        def output_hook(module, args, output):
            outputs.append(output.detach())
            if len(outputs) == site.calls:
                raise _Stop

        handles = [site.original.register_forward_hook(target_hook)]
        try:
            _run(original, batch)
        finally:
            handles.pop().remove()
        # the last linear part is the block's last operation: its output is the block's output
        # (hooked there, so that a block inlined by re-tracing is still observed)
        handles = [entry.register_forward_pre_hook(input_hook), linear.register_forward_hook(output_hook)]
        try:
            _run(converted, batch)
        finally:
            for h in handles:
                h.remove()
        for x, y, out in zip(inputs, targets, outputs):
            acc.add(x, y)
            err += (out.double() - y.double()).square().sum().item()
            ref += y.double().square().sum().item()
    return err, ref


def _joint_problem(site: _Site, iterations: int) -> tuple[Any, ConvGeometry] | None:
    """The kind's joint refit and the source geometry, when it applies to this site."""
    joint = None if site.spec is None else site.spec.info.joint_refit
    if joint is None or iterations == 0 or not _has_forward(site.block):
        return None
    g = ConvGeometry.from_module(site.original)
    return (joint, g) if joint.unsupported(site.block, g) is None else None


def _theta(site: _Site, g: ConvGeometry) -> torch.Tensor:
    """The block's dense kernel (and bias) as the source conv's regression Θ (1, d, C_out)."""
    w = effective_weight(site.block, site.spec, g).double()
    theta = w.reshape(g.out_channels, -1).T
    bias = _last_linear(site).bias
    if bias is not None:
        theta = torch.cat([theta, bias.detach().double().reshape(1, -1)], 0)
    return theta.unsqueeze(0)


def _refit_site(site: _Site, original: nn.Module, converted: nn.Module, batches: list, ridge: float,
                iterations: int) -> dict:
    row = dict(name=site.name, kind="unconverted" if site.spec is None else site.spec.kind, method="", rel_output_error_before=math.nan,
               rel_output_error_after=math.nan, refit_applied=False, rows=0, note="")
    if site.calls == 0:
        row["note"] = "not run by the model on these batches" if site.block is not None else "functional or missing site"
        return row
    linear = _last_linear(site)
    if not isinstance(linear, (*CONV_TYPES, nn.Linear)) or getattr(linear, "transposed", False):
        row["note"] = f"last linear part {type(linear).__name__} is not refit"
        return row
    joint = _joint_problem(site, iterations)
    if joint is not None:
        kind, g = joint
        acc = _NormalEquations(site.original)  # patches of the block's input, source geometry
        err, ref = _observe(site, original, converted, batches, site.block.get_submodule(kind.input_layer), acc)
        if acc.rows == 0:
            row["note"] = "the block did not run"
            return row
        saved = {k: v.clone() for k, v in site.block.state_dict().items()}
        old = acc.sse(_theta(site, g)).sum()
        kind.solve(site.block, g, acc.xtx[0], acc.xty[0], ridge=ridge, iterations=iterations)
        new = acc.sse(_theta(site, g)).sum()
        applied = bool(new < old)
        if not applied:
            site.block.load_state_dict(saved)
        after = min(err, new.clamp_min(0).item()) if applied else err
        note = "" if applied else "the solve would not lower the error: old weights kept"
        method = f"joint ({iterations} alternating rounds)"
    else:
        acc = _NormalEquations(linear)
        err, ref = _observe(site, original, converted, batches, linear, acc)
        if acc.rows == 0:
            row["note"] = "the block's last linear part did not run"
            return row
        old = acc.current()
        new = acc.solve(ridge)
        delta = new - old
        # change of Σ‖XΘ − Y‖² from old to new, per group (well conditioned when the change is small)
        gain = (delta * (acc.xtx @ delta)).sum((1, 2)) + 2 * (delta * (acc.xtx @ old - acc.xty)).sum((1, 2))
        take = gain < 0
        acc.write(new, take)
        # after: Σ‖XΘ − Y‖² from the normal equations (float64; err + gain would lose the digits of a
        # near-exact fit to float32 rounding of the measured err), never above the measured before
        after = err
        if take.any():
            after = min(err, torch.where(take, acc.sse(new), acc.sse(old)).sum().clamp_min(0).item())
        applied = bool(take.any())
        note = "" if take.all() else "the solve would not lower the error: old weights kept" + ("" if not take.any() else " in some groups")
        method = "last linear"
    ref = max(ref, 1e-300)
    row.update(
        method=method,
        rel_output_error_before=math.sqrt(err / ref),
        rel_output_error_after=math.sqrt(after / ref),
        refit_applied=applied,
        rows=acc.rows,
        note=note,
    )
    return row


@torch.no_grad()
def refit(
    converted: nn.Module,
    original: nn.Module,
    batches: Iterable[Any],
    *,
    plan: Any = None,
    ridge: float = 1e-5,
    iterations: int = 10,
    layers: str = "converted",
    device: Any = None,
) -> pd.DataFrame:
    """Re-solve each converted block (its last linear part, or all its factors) on calibration
    data, in place.

    For each converted site, in the order the original convolutions run: the inputs X are
    the activations entering the block's last linear part (``spec.info.last_linear``, e.g.
    ``conv_pw`` of ``dwsep``, ``conv_h`` of ``spatial``, ``conv`` of ``grouped``, the block
    itself for ``keep``) in the **converted** model, with every earlier site already refit, so
    earlier approximation error is compensated; the targets Y are the original convolution's
    outputs in the **original** model on the same batches.  The normal equations XᵀX, XᵀY are
    accumulated over batches in float64 (activations are not kept); a 1×1 part is a per-pixel
    regression, a K-tap part (``spatial``'s 1×K, ``grouped``'s K×K) regresses on the unfolded
    patches (:func:`conv_patches`: stride, dilation, padding and padding_mode honoured); one
    solve per group, with a ones column for the bias when the part has one.  The solve is
    ridge-regularised, λ = ``ridge`` · mean diagonal of XᵀX.

    Joint refit (``iterations`` > 0 and the kind has a ``joint_refit``; today linear ``dwsep``
    blocks of an ungrouped, non-transposed conv with their source's kernel): X are the unfolded
    patches of the *block's* input in the source conv's geometry, and the depthwise filters,
    the pointwise weights and the bias are re-solved together by ``iterations`` rounds of
    alternating least squares from XᵀX and XᵀY (:func:`nas_sepconv.joint_refit.refit_dwsep`).
    The first round's pointwise step is the last-linear solve, so the joint result is at least
    as good; ``iterations=0`` re-solves only the last linear part.

    ``layers="all"``: also every conv and linear layer of the original model that the plan did
    not convert and the converted model still has at the same name (a ``kind`` of
    ``"unconverted"`` in the report), each re-solved like a last linear part, in the same
    forward order.

    The error at a site never increases on the calibration data: a group whose solve would
    not lower Σ‖XΘ − Y‖² (possible with a large ``ridge``) keeps its old weights
    (``refit_applied`` False, and a note).  Transposed last linear parts and functional sites
    are left as they are (a note says so).

    ``plan``: a :class:`~nas_sepconv.plan.Plan` (anything with ``.entries`` of records with
    ``.name``, ``.spec`` and ``.converted``); default: ``converted.meta["nas_sepconv.plan"]``,
    where ``apply_plan`` keeps it.  ``device``: where to run (default: where ``converted``'s
    parameters are; ``converted`` is moved there, ``original`` is copied there if it lives
    elsewhere and is never changed).

    Returns one row per site in forward order: ``name``, ``kind``, ``method`` (``"last
    linear"`` or ``"joint (N alternating rounds)"``), ``rel_output_error_before``, ``rel_output_error_after`` (‖y_converted − y_original‖ /
    ‖y_original‖ at that site on the calibration data, before and after its refit; the
    "after" value is computed from the normal equations), ``refit_applied``, ``rows``
    (regression samples), ``note``.
    """
    if not isinstance(ridge, (int, float)) or isinstance(ridge, bool) or not ridge >= 0:
        raise UserInputError("ridge", f"expected a number >= 0, got {ridge!r}", "use e.g. 1e-5")
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 0:
        raise UserInputError("iterations", f"expected an integer >= 0, got {iterations!r}", "use e.g. 10, or 0 to refit only the last linear part")
    dev = _device(converted, device)
    converted.to(dev)
    original = _on(original, dev)
    data = _batches(batches, dev)
    if layers not in ("converted", "all"):
        raise UserInputError("layers", f"expected 'converted' or 'all', got {layers!r}",
                             "use 'all' to also re-solve the conv and linear layers the plan kept")
    sites = _sites(converted, original, plan, unconverted=layers == "all")
    rows = []
    with _EvalMode(converted, original):
        for site in _forward_order(original, sites, data[0]):
            rows.append(_refit_site(site, original, converted, data, ridge, iterations))
    columns = ["name", "kind", "method", "rel_output_error_before", "rel_output_error_after", "refit_applied", "rows", "note"]
    return pd.DataFrame(rows, columns=columns)


# -- fidelity --------------------------------------------------------------------------------


def _rel_weight_error(site: _Site) -> float:
    if site.original is None:
        return math.nan
    g = ConvGeometry.from_module(site.original)
    eff = effective_weight(site.block, site.spec, g)
    if eff is None:
        return math.nan
    ref = dense_weight(site.original.weight.detach().double(), g)
    # compare at the larger kernel, so that cropping a kernel counts as error
    size = tuple(max(a, b) for a, b in zip(ref.shape[2:], eff.shape[2:]))
    ref, eff = resize_kernel(ref, size), resize_kernel(eff.to(ref.device), size)
    return ((eff - ref).norm() / ref.norm().clamp_min(1e-300)).item()


@torch.no_grad()
def fidelity(converted: nn.Module, original: nn.Module, batches: Iterable[Any], *, plan: Any = None) -> pd.DataFrame:
    """How close each converted site is to the original convolution.

    One row per converted site (forward order): ``name``, ``kind``,

    * ``rel_weight_error``: ‖W_eff − W‖ / ‖W‖ where W_eff is the dense kernel the block computes
      (:func:`~nas_sepconv.decompose.effective_weight`) and W the original kernel (both
      ``groups=1``, compared at the larger of the two kernel sizes, zero-padded centrally);
      NaN for blocks that are not linear (``inverted_residual``, ``dwsep`` with mid norm/act);
    * ``rel_output_error``: ‖y_converted − y_original‖ / ‖y_original‖ at the site over the
      batches, each model fed its own activations (the error accumulated up to this site);
    * ``rel_output_error_local``: the same with the block fed the original convolution's input
      (the error of this site alone).

    Runs on the device of ``converted``'s parameters, in eval mode; nothing is changed.
    """
    dev = _device(converted, None)
    original = _on(original, dev)
    data = _batches(batches, dev)
    sites = _sites(converted, original, plan)
    sums = {s.name: [0.0, 0.0, 0.0] for s in sites}  # accumulated err², local err², ref²
    with _EvalMode(converted, original):
        sites = _forward_order(original, sites, data[0])
        live = [s for s in sites if s.calls]
        for batch in data:
            seen: dict[str, list] = {s.name: [] for s in live}
            outs: dict[str, list] = {s.name: [] for s in live}

            def orig_hook(name: str):
                def fn(module, args, output):
                    seen[name].append((args[0].detach(), output.detach()))
                return fn

            def conv_hook(name: str):
                def fn(module, args, output):
                    outs[name].append(output.detach())
                return fn

            handles = [s.original.register_forward_hook(orig_hook(s.name)) for s in live]
            try:
                _run(original, batch)
            finally:
                for h in handles:
                    h.remove()
            handles = [_last_linear(s).register_forward_hook(conv_hook(s.name)) for s in live]
            try:
                _run(converted, batch)
            finally:
                for h in handles:
                    h.remove()
            for s in live:
                acc = sums[s.name]
                callable_block = _has_forward(s.block)
                for (x, y), out in zip(seen[s.name], outs[s.name]):
                    y = y.double()
                    acc[0] += (out.double() - y).square().sum().item()
                    if callable_block:
                        acc[1] += (s.block(x).double() - y).square().sum().item()
                    acc[2] += y.square().sum().item()
    rows = []
    for s in sites:
        err, local, ref = sums[s.name]
        ok = s.calls > 0 and ref > 0
        whole = s.block is not None and _has_forward(s.block)
        rows.append(dict(
            name=s.name,
            kind=s.spec.kind,
            rel_weight_error=_rel_weight_error(s) if whole else math.nan,
            rel_output_error=math.sqrt(err / ref) if ok else math.nan,
            rel_output_error_local=math.sqrt(local / ref) if ok and whole else math.nan,
        ))
    columns = ["name", "kind", "rel_weight_error", "rel_output_error", "rel_output_error_local"]
    return pd.DataFrame(rows, columns=columns)
