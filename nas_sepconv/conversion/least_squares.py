"""Data-aware refit of converted blocks (:func:`refit`).

:func:`refit` improves the closed-form initialisation (:mod:`nas_sepconv.blocks.closed_form`)
with a few batches of calibration inputs: for each converted site in forward order it re-solves
the block's last linear part (the kind's ``last_linear`` sub-layer) by ridge-regularised linear
least squares, so that the block's output in the *converted* model matches the original
convolution's output in the *original* model; kinds with a ``joint_refit`` (``dwsep``) have all
their factors re-solved, by alternating least squares (:mod:`nas_sepconv.blocks.closed_form_joint`).
Inputs are the converted model's own activations with the earlier sites already refit, so
each site also compensates the error accumulated before it; ``layers="all"`` also re-solves
the conv and linear layers the plan kept (shortcuts, the classifier), which see the converted
model's activations too.  It is closed form (normal equations accumulated over batches in
float64, closed-form solves), no gradient steps.  Batches and sites: :mod:`.calibration`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import pandas as pd
import torch
import torch.nn as nn

from ..blocks import CONV_TYPES, ConvGeometry, effective_weight
from ..errors import UserInputError
from ..measure.inputs import eval_mode
from ..progress import progress as show_progress
from .calibration import (
    CalibrationSite,
    StopForward,
    batch_list,
    calibration_sites,
    forward_order,
    has_forward,
    last_linear_layer,
    on_device,
    resolve_device,
    run_batch,
    run_hooked,
)
from .normal_equations import NormalEquations

__all__ = ["refit"]

#: the columns of :func:`refit`'s report, one row per site
REFIT_COLUMNS = [
    "name",
    "kind",
    "method",
    "rel_output_error_before",
    "rel_output_error_after",
    "refit_applied",
    "rows",
    "note",
]


def _observe(
    site: CalibrationSite,
    original: nn.Module,
    converted: nn.Module,
    batches: list,
    entry: nn.Module,
    acc: NormalEquations,
) -> tuple[float, float]:
    """Accumulate the regression of ``acc``: X from the input of ``entry`` (a sub-layer of the
    block) in the converted model, Y from the original conv's output in the original model.
    Returns Σ‖block output − Y‖² and Σ‖Y‖² before any change."""
    linear = last_linear_layer(site)
    err = ref = 0.0
    for batch in batches:
        targets: list[torch.Tensor] = []
        inputs: list[torch.Tensor] = []
        outputs: list[torch.Tensor] = []

        def target_hook(module, args, output):
            targets.append(output.detach() if site.channels is None else output.detach()[:, list(site.channels)])
            if len(targets) == site.calls:
                raise StopForward

        def input_hook(module, args):
            inputs.append(args[0].detach())

        def output_hook(module, args, output):
            outputs.append(output.detach())
            if len(outputs) == site.calls:
                raise StopForward

        handles = [site.original.register_forward_hook(target_hook)]
        try:
            run_batch(original, batch)
        finally:
            handles.pop().remove()
        # the last linear part is the block's last operation: its output is the block's output
        # (hooked there, so that a block inlined by re-tracing is still observed)
        run_hooked(
            converted, batch, [entry.register_forward_pre_hook(input_hook), linear.register_forward_hook(output_hook)]
        )
        for x, y, out in zip(inputs, targets, outputs):
            acc.add(x, y)
            err += (out.double() - y.double()).square().sum().item()
            ref += y.double().square().sum().item()
    return err, ref


def _joint_problem(site: CalibrationSite, iterations: int) -> tuple[Any, ConvGeometry] | None:
    """The kind's joint refit and the source geometry, when it applies to this site."""
    joint = None if site.spec is None else site.spec.info.joint_refit
    if joint is None or iterations == 0 or not has_forward(site.block):
        return None
    g = ConvGeometry.from_module(site.original)
    return (joint, g) if joint.unsupported(site.block, g) is None else None


def _theta(site: CalibrationSite, g: ConvGeometry) -> torch.Tensor:
    """The block's dense kernel (and bias) as the source conv's regression Θ (1, d, C_out)."""
    w = effective_weight(site.block, site.spec, g).double()
    theta = w.reshape(g.out_channels, -1).T
    bias = last_linear_layer(site).bias
    if bias is not None:
        theta = torch.cat([theta, bias.detach().double().reshape(1, -1)], 0)
    return theta.unsqueeze(0)


def _refit_site(
    site: CalibrationSite, original: nn.Module, converted: nn.Module, batches: list, ridge: float, iterations: int
) -> dict:
    row = dict(
        name=site.name,
        kind="unconverted" if site.spec is None else site.spec.kind,
        method="",
        rel_output_error_before=math.nan,
        rel_output_error_after=math.nan,
        refit_applied=False,
        rows=0,
        note="",
    )
    if site.calls == 0:
        row["note"] = (
            "not run by the model on these batches" if site.block is not None else "functional or missing site"
        )
        return row
    linear = last_linear_layer(site)
    if not isinstance(linear, (*CONV_TYPES, nn.Linear)) or getattr(linear, "transposed", False):
        row["note"] = f"last linear part {type(linear).__name__} is not refit"
        return row
    # a producer narrowed by pruning has another geometry than its original conv: last linear only
    joint = _joint_problem(site, iterations) if site.channels is None else None
    if joint is not None:
        kind, g = joint
        acc = NormalEquations(site.original)  # patches of the block's input, source geometry
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
        acc = NormalEquations(linear)
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
        note = (
            ""
            if take.all()
            else "the solve would not lower the error: old weights kept" + ("" if not take.any() else " in some groups")
        )
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
    progress: bool = False,
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
    alternating least squares from XᵀX and XᵀY (:func:`nas_sepconv.blocks.refit_dwsep`).
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

    ``plan``: a :class:`~nas_sepconv.conversion.Plan` (anything with ``.entries`` of records with
    ``.name``, ``.spec`` and ``.converted``); default: ``converted.meta["nas_sepconv.plan"]``,
    where ``apply_plan`` keeps it.  ``device``: where to run (default: where ``converted``'s
    parameters are; ``converted`` is moved there, ``original`` is copied there if it lives
    elsewhere and is never changed).  ``progress``: show progress on stderr, one step per site
    (default False: nothing is printed; a rich bar on a terminal, else a plain ``done/total``
    line with rate and time left every few seconds and at the end, :mod:`nas_sepconv.progress`).

    Returns one row per site in forward order: ``name``, ``kind``, ``method`` (``"last
    linear"`` or ``"joint (N alternating rounds)"``), ``rel_output_error_before``,
    ``rel_output_error_after`` (‖y_converted − y_original‖ / ‖y_original‖ at that site on the
    calibration data, before and after its refit; the "after" value is computed from the normal
    equations), ``refit_applied``, ``rows`` (regression samples), ``note``.
    """
    _check_arguments(ridge, iterations)
    dev = resolve_device(converted, device)
    converted.to(dev)
    original = on_device(original, dev)
    data = batch_list(batches, dev)
    if layers not in ("converted", "all"):
        raise UserInputError(
            "layers",
            f"expected 'converted' or 'all', got {layers!r}",
            "use 'all' to also re-solve the conv and linear layers the plan kept",
        )
    sites = calibration_sites(converted, original, plan, unconverted=layers == "all", pruned=True)
    rows = []
    with eval_mode(converted, original):
        ordered = forward_order(original, sites, data[0])
        with show_progress(progress, "refit", len(ordered), unit="sites") as bar:
            for site in ordered:
                bar.update(info=site.name)
                rows.append(_refit_site(site, original, converted, data, ridge, iterations))
                bar.update(advance=1)
    return pd.DataFrame(rows, columns=REFIT_COLUMNS)


def _check_arguments(ridge: Any, iterations: Any) -> None:
    if not isinstance(ridge, (int, float)) or isinstance(ridge, bool) or not ridge >= 0:
        raise UserInputError("ridge", f"expected a number >= 0, got {ridge!r}", "use e.g. 1e-5")
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 0:
        raise UserInputError(
            "iterations",
            f"expected an integer >= 0, got {iterations!r}",
            "use e.g. 10, or 0 to refit only the last linear part",
        )
