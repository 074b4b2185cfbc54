"""Per-site fidelity of a converted model (:func:`fidelity`): how far it is from the original,
in weight space (the dense kernel of a linear block against the original kernel) and in output
space (accumulated and local).  Batches and sites: :mod:`.calibration`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import pandas as pd
import torch
import torch.nn as nn

from ..blocks import ConvGeometry, dense_weight, effective_weight, resize_kernel
from ..measure.inputs import eval_mode
from .calibration import (
    CalibrationSite,
    batch_list,
    calibration_sites,
    forward_order,
    has_forward,
    last_linear_layer,
    on_device,
    resolve_device,
    run_hooked,
)

__all__ = ["fidelity"]


def _rel_weight_error(site: CalibrationSite) -> float:
    if site.original is None or site.channels is not None:  # narrowed by pruning: another kernel
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

    One row per converted site (forward order; pruned sites have none, a converted producer
    narrowed by pruning is compared on the channels it keeps): ``name``, ``kind``,

    * ``rel_weight_error``: ‖W_eff − W‖ / ‖W‖ where W_eff is the dense kernel the block computes
      (:func:`~nas_sepconv.blocks.effective_weight`) and W the original kernel (both
      ``groups=1``, compared at the larger of the two kernel sizes, zero-padded centrally);
      NaN for blocks that are not linear (``inverted_residual``, ``dwsep`` with mid norm/act);
    * ``rel_output_error``: ‖y_converted − y_original‖ / ‖y_original‖ at the site over the
      batches, each model fed its own activations (the error accumulated up to this site);
    * ``rel_output_error_local``: the same with the block fed the original convolution's input
      (the error of this site alone).

    Runs on the device of ``converted``'s parameters, in eval mode; nothing is changed.
    """
    dev = resolve_device(converted, None)
    original = on_device(original, dev)
    data = batch_list(batches, dev)
    sites = calibration_sites(converted, original, plan)
    sums = {s.name: [0.0, 0.0, 0.0] for s in sites}  # accumulated err², local err², ref²
    with eval_mode(converted, original):
        sites = forward_order(original, sites, data[0])
        live = [s for s in sites if s.calls]
        channels = {s.name: s.channels for s in live}
        for batch in data:
            seen: dict[str, list] = {s.name: [] for s in live}
            outs: dict[str, list] = {s.name: [] for s in live}

            def orig_hook(name: str):
                def fn(module, args, output):
                    kept = channels[name]  # a producer narrowed by pruning: its kept outputs
                    seen[name].append((args[0].detach(), output.detach() if kept is None else output[:, list(kept)]))

                return fn

            def conv_hook(name: str):
                def fn(module, args, output):
                    outs[name].append(output.detach())

                return fn

            run_hooked(original, batch, [s.original.register_forward_hook(orig_hook(s.name)) for s in live])
            run_hooked(converted, batch, [last_linear_layer(s).register_forward_hook(conv_hook(s.name)) for s in live])
            for s in live:
                acc = sums[s.name]
                callable_block = has_forward(s.block)
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
        whole = s.block is not None and has_forward(s.block)
        rows.append(
            dict(
                name=s.name,
                kind=s.spec.kind,
                rel_weight_error=_rel_weight_error(s) if whole else math.nan,
                rel_output_error=math.sqrt(err / ref) if ok else math.nan,
                rel_output_error_local=math.sqrt(local / ref) if ok and whole else math.nan,
            )
        )
    columns = ["name", "kind", "rel_weight_error", "rel_output_error", "rel_output_error_local"]
    return pd.DataFrame(rows, columns=columns)
