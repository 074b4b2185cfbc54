"""Closed-form initialisation of replacement blocks from the original convolution's weights.

Each kind's initialiser (registered in :data:`nas_sepconv.blocks.KINDS`) has the signature
``init(block, weight, bias, g)`` where ``g`` is the geometry the block was built with and
``weight`` has already been brought to that kernel size by :func:`initialise` (zero-padded
centrally when the kernel grows, which is exact; centrally cropped when it shrinks).

What each initialiser achieves (details in its docstring):

=====================  ======================================================================
``keep``               the original weights: exact
``dwsep``              per input channel the Eckart–Young optimum of rank ``dw_mult``: exact
                       at ``dw_mult >= min(C_out/groups, K²)``
``spatial``            per group the Eckart–Young optimum of the (C_in·Kh)×(C_out·Kw) matrix
                       (Tai et al. 2016): exact at full rank
``dw_spatial``         rank-m SVD then a rank-1 split of each filter (and two exact special
                       cases), pointwise re-solved by least squares: not jointly optimal
``inverted_residual``  a closed-form ± construction: exact (eval mode) at full rank for relu
                       and hswish with ``expand_ratio >= 4``, and for relu6 on inputs within
                       ``±relu6_range``; approximate below ``expand_ratio`` 4
``grouped``            the block-diagonal part of the (shuffled) weight: the Frobenius-optimal
                       grouped weight
=====================  ======================================================================

This module holds the shared factorisations and the kinds that are one truncated SVD (or a
projection) away from the source: ``keep``, ``dwsep``, ``spatial``, ``grouped``; ``dw_spatial``
and ``inverted_residual`` are in :mod:`.closed_form_stacked`.

:func:`effective_weight` gives the dense kernel a linear block computes (what
:func:`nas_sepconv.conversion.fidelity` compares with the original), :func:`dense_weight` the
``groups=1`` kernel of a grouped weight.  Data-aware refinement is in
:func:`nas_sepconv.conversion.refit`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .geometry import ConvGeometry
from .modules import DepthwiseSeparable, DepthwiseSpatial, GroupedShuffle, SpatialSeparable

__all__ = [
    "initialise",
    "init_keep",
    "init_dwsep",
    "init_spatial",
    "init_grouped",
    "resize_kernel",
    "dense_weight",
    "effective_weight",
    "copy_param",
    "per_channel_matrices",
    "pointwise_from_columns",
    "svd_factors",
    "effective_conv",
    "effective_dwsep",
    "effective_spatial",
    "effective_dw_spatial",
    "effective_grouped",
]


def resize_kernel(weight: torch.Tensor, kernel_size: tuple[int, ...]) -> torch.Tensor:
    """Zero-pad or crop a weight's spatial dimensions centrally to ``kernel_size``."""
    pads: list[int] = []
    for have, want in reversed(list(zip(weight.shape[2:], kernel_size))):
        pads += [(want - have) // 2, (want - have) // 2]
    return F.pad(weight, pads) if any(pads) else weight


@torch.no_grad()
def initialise(block: nn.Module, spec, source: ConvGeometry, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Initialise ``block`` (built by ``spec`` for ``source``) from the source weights, in place."""
    g = spec.geometry_for(source)
    weight = resize_kernel(weight.detach().float(), g.kernel_size)
    bias = None if bias is None else bias.detach().float()
    spec.info.init(block, weight, bias, g)


def copy_param(param: torch.Tensor, value: torch.Tensor) -> None:
    """Copy ``value`` into ``param`` in place, in its shape and dtype."""
    param.copy_(value.reshape(param.shape).to(param.dtype))


def init_keep(block: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, g: ConvGeometry) -> None:
    """The original weights (kernel resized if the spec asks)."""
    copy_param(block.weight, weight)
    if bias is not None:
        copy_param(block.bias, bias)


def per_channel_matrices(weight: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    """(C_in, C_out/groups, prod(K)): for each input channel, the matrix of its filters to the
    output channels of its group."""
    k = weight[0, 0].numel()
    if g.transposed:  # (C_in, C_out/g, *K)
        return weight.reshape(g.in_channels, g.out_channels // g.groups, k)
    cin_g, cout_g = g.in_channels // g.groups, g.out_channels // g.groups
    w = weight.reshape(g.groups, cout_g, cin_g, k).permute(0, 2, 1, 3)  # (g, cin_g, cout_g, k)
    return w.reshape(g.in_channels, cout_g, k)


def pointwise_from_columns(cols: torch.Tensor, g: ConvGeometry, m: int) -> torch.Tensor:
    """Pointwise weight (C_out, C_in*m/groups) from per-channel columns (C_in, C_out/g, m)."""
    cin_g, cout_g = g.in_channels // g.groups, g.out_channels // g.groups
    p = cols.reshape(g.groups, cin_g, cout_g, m).permute(0, 2, 1, 3)  # (g, cout_g, cin_g, m)
    return p.reshape(g.out_channels, cin_g * m)


def _truncated_svd(mats: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced rank-``rank`` factors A (…, n, rank), B (…, rank, p) with A@B the best
    Frobenius approximation (Eckart–Young); zero columns beyond the matrix rank."""
    a, b = svd_factors(mats, rank)
    return a.float(), b.float()


def svd_factors(mats: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_truncated_svd` in float64."""
    u, s, vh = torch.linalg.svd(mats.double(), full_matrices=False)
    r = min(rank, s.shape[-1])
    root = s[..., :r].sqrt()
    a = u[..., :, :r] * root.unsqueeze(-2)
    b = root.unsqueeze(-1) * vh[..., :r, :]
    if r < rank:
        a = F.pad(a, (0, rank - r))
        b = F.pad(b, (0, 0, 0, rank - r))
    return a, b


def init_dwsep(block: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, g: ConvGeometry) -> None:
    """Per input channel i, the C_out×K² matrix of its filters is replaced by its best rank-m
    approximation (truncated SVD, Eckart–Young): the m right factors are the depthwise filters
    of channel i and the left factors their pointwise columns.  Exact when
    ``m >= min(C_out/groups, K²)``.  Bias goes to the pointwise conv."""
    m = block.conv_dw.out_channels // g.in_channels
    mats = per_channel_matrices(weight, g)  # (C_in, cout_g, k)
    cols, rows = _truncated_svd(mats, m)  # (C_in, cout_g, m), (C_in, m, k)
    copy_param(block.conv_dw.weight, rows.reshape(g.in_channels * m, *g.kernel_size))
    copy_param(block.conv_pw.weight, pointwise_from_columns(cols, g, m))
    if bias is not None:
        copy_param(block.conv_pw.bias, bias)


def init_spatial(block: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, g: ConvGeometry) -> None:
    """Tai et al. (ICLR 2016): per group, W reshaped to a (C_in·Kh)×(C_out·Kw) matrix, its SVD
    truncated at the rank; the left factors are the vertical K×1 filters and the right factors
    the horizontal 1×K filters.  Exact when ``rank >= min(C_in·Kh, C_out·Kw)`` per group."""
    kh, kw = g.kernel_size
    cin_g, cout_g = g.in_channels // g.groups, g.out_channels // g.groups
    r = block.conv_v.out_channels // g.groups
    w = weight.reshape(g.groups, cout_g, cin_g, kh, kw)
    mats = w.permute(0, 2, 3, 1, 4).reshape(g.groups, cin_g * kh, cout_g * kw)
    a, b = _truncated_svd(mats, r)  # (g, cin_g*kh, r), (g, r, cout_g*kw)
    vertical = a.reshape(g.groups, cin_g, kh, r).permute(0, 3, 1, 2)  # (g, r, cin_g, kh)
    horizontal = b.reshape(g.groups, r, cout_g, kw).permute(0, 2, 1, 3)  # (g, cout_g, r, kw)
    copy_param(block.conv_v.weight, vertical.reshape(g.groups * r, cin_g, kh, 1))
    copy_param(block.conv_h.weight, horizontal.reshape(g.out_channels, r, 1, kw))
    if bias is not None:
        copy_param(block.conv_h.bias, bias)


# -- dense kernels ---------------------------------------------------------------------------


def _ungroup(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A grouped weight (A, b, *K) as the block-diagonal (A, groups·b, *K): group ``gi`` owns
    rows ``gi·A/groups …`` and columns ``gi·b …``."""
    if groups == 1:
        return weight
    a, b = weight.shape[0] // groups, weight.shape[1]
    out = weight.new_zeros(weight.shape[0], groups * b, *weight.shape[2:])
    for gi in range(groups):
        out[gi * a : (gi + 1) * a, gi * b : (gi + 1) * b] = weight[gi * a : (gi + 1) * a]
    return out


def dense_weight(weight: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    """The ``groups=1`` kernel equal to a (grouped) convolution of geometry ``g``:
    (C_out, C_in, *K), or (C_in, C_out, *K) for a transposed convolution; zero across groups."""
    return _ungroup(weight, g.groups)


def _shuffle_perm(shuffle: nn.Module, channels: int) -> torch.Tensor:
    """``perm`` with ``shuffle(x)[:, j] == x[:, perm[j]]``."""
    probe = torch.arange(channels, dtype=torch.float64).reshape(1, channels, 1)
    return shuffle(probe).reshape(channels).round().long()


def _compose_pointwise(filters: torch.Tensor, pw: nn.Module, g: ConvGeometry) -> torch.Tensor:
    """Dense kernel of per-channel filters (C_in, m, k) followed by the pointwise conv ``pw``."""
    cin, m, _ = filters.shape
    p = _ungroup(pw.weight.reshape(pw.out_channels, -1), pw.groups).reshape(pw.out_channels, cin, m)
    pattern = "oit,itk->iok" if g.transposed else "oit,itk->oik"
    w = torch.einsum(pattern, p.double(), filters.double())
    return w.reshape(*w.shape[:2], *g.kernel_size)


def effective_conv(block: nn.Module, g: ConvGeometry) -> torch.Tensor:
    return _ungroup(block.weight.double(), block.groups)


def effective_dwsep(block: DepthwiseSeparable, g: ConvGeometry) -> torch.Tensor | None:
    if not (isinstance(block.norm_dw, nn.Identity) and isinstance(block.act_dw, nn.Identity)):
        return None  # not linear
    cin = g.in_channels
    filters = block.conv_dw.weight.reshape(cin, -1, block.conv_dw.weight[0, 0].numel())
    return _compose_pointwise(filters, block.conv_pw, g)


def effective_spatial(block: SpatialSeparable, g: ConvGeometry) -> torch.Tensor:
    kh, kw = g.kernel_size
    v = _ungroup(block.conv_v.weight.double().reshape(block.conv_v.out_channels, -1, kh), block.conv_v.groups)
    h = _ungroup(block.conv_h.weight.double().reshape(block.conv_h.out_channels, -1, kw), block.conv_h.groups)
    return torch.einsum("osx,siy->oiyx", h, v)


def effective_dw_spatial(block: DepthwiseSpatial, g: ConvGeometry) -> torch.Tensor:
    kh, kw = g.kernel_size
    cin = g.in_channels
    v = block.conv_dwv.weight.double().reshape(cin, -1, kh)
    h = block.conv_dwh.weight.double().reshape(cin, -1, kw)
    filters = torch.einsum("imy,imx->imyx", v, h).reshape(cin, v.shape[1], kh * kw)
    return _compose_pointwise(filters, block.conv_pw, g)


def effective_grouped(block: GroupedShuffle, g: ConvGeometry) -> torch.Tensor:
    shuffled = _ungroup(block.conv.weight.double(), block.conv.groups)
    w = torch.zeros_like(shuffled)
    w[:, _shuffle_perm(block.shuffle, g.in_channels)] = shuffled
    return w


@torch.no_grad()
def effective_weight(block: nn.Module, spec, g: ConvGeometry) -> torch.Tensor | None:
    """The dense kernel of a linear block, ``None`` when the block is not linear
    (``inverted_residual``; ``dwsep`` with ``mid_norm``/``mid_act``).

    ``g`` is the geometry of the replaced convolution (or the block's own; the spec's kernel
    size is applied either way).  The result has the ``groups=1`` layout of that convolution at
    the block's kernel size, (C_out, C_in, *K) or (C_in, C_out, *K) when transposed, float64: a
    ``groups=1`` convolution with this weight, the block's bias and the source's
    stride/padding/dilation computes what the block computes.  Compare it with
    ``dense_weight(resize_kernel(weight, K), g)``.  The kind's ``effective`` entry computes it;
    ``spec=None`` means a layer the plan kept: a convolution's own kernel, ``None`` otherwise.
    """
    if spec is None:
        return effective_conv(block, g) if isinstance(block, nn.modules.conv._ConvNd) else None
    effective = spec.info.effective
    return None if effective is None else effective(block, spec.geometry_for(g))


# -- grouped ---------------------------------------------------------------------------------


def init_grouped(block: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, g: ConvGeometry) -> None:
    """Channel shuffle then a conv with ``groups`` G: keep the block-diagonal part.

    The conv sees the shuffled input ``x[:, perm]``, so the dense weight it should equal is
    ``W[:, perm]`` (a grouped source is first expanded to its dense, block-diagonal
    C_out×C_in form).  Keeping its G diagonal blocks and dropping the rest is the orthogonal
    projection onto the grouped weights (a coordinate subspace), hence the Frobenius-optimal
    grouped weight.  Retained energy fraction: Σ_blocks ‖W_b‖² / ‖W‖² (about 1/G for a dense
    weight with no structure; ``fidelity``'s ``rel_weight_error`` is √(1 − fraction)).
    Bias is copied.
    """
    conv = block.conv
    groups = conv.groups
    shuffled = dense_weight(weight, g)[:, _shuffle_perm(block.shuffle, g.in_channels)]
    a, b = g.out_channels // groups, g.in_channels // groups
    diagonal = [shuffled[gi * a : (gi + 1) * a, gi * b : (gi + 1) * b] for gi in range(groups)]
    copy_param(conv.weight, torch.cat(diagonal, 0))
    if bias is not None:
        copy_param(conv.bias, bias)
