"""Closed-form initialisation of replacement blocks from the original convolution's weights.

Each kind's initialiser (registered in :mod:`nas_sepconv.specs`) has the signature
``init(block, weight, bias, g)`` where ``g`` is the geometry the block was built with and
``weight`` has already been brought to that kernel size by :func:`initialise` (zero-padded
centrally when the kernel grows, which is exact; centrally cropped when it shrinks).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .geometry import ConvGeometry

__all__ = ["initialise", "init_keep", "init_dwsep", "init_spatial", "init_dw_spatial", "init_inverted_residual", "init_grouped", "resize_kernel"]


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


def _copy(param: torch.Tensor, value: torch.Tensor) -> None:
    param.copy_(value.reshape(param.shape).to(param.dtype))


def init_keep(block: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, g: ConvGeometry) -> None:
    """The original weights (kernel resized if the spec asks)."""
    _copy(block.weight, weight)
    if bias is not None:
        _copy(block.bias, bias)


def _per_channel_matrices(weight: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    """(C_in, C_out/groups, prod(K)): for each input channel, the matrix of its filters to the
    output channels of its group."""
    k = weight[0, 0].numel()
    if g.transposed:  # (C_in, C_out/g, *K)
        return weight.reshape(g.in_channels, g.out_channels // g.groups, k)
    cin_g, cout_g = g.in_channels // g.groups, g.out_channels // g.groups
    w = weight.reshape(g.groups, cout_g, cin_g, k).permute(0, 2, 1, 3)  # (g, cin_g, cout_g, k)
    return w.reshape(g.in_channels, cout_g, k)


def _pointwise_from_columns(cols: torch.Tensor, g: ConvGeometry, m: int) -> torch.Tensor:
    """Pointwise weight (C_out, C_in*m/groups) from per-channel columns (C_in, C_out/g, m)."""
    cin_g, cout_g = g.in_channels // g.groups, g.out_channels // g.groups
    p = cols.reshape(g.groups, cin_g, cout_g, m).permute(0, 2, 1, 3)  # (g, cout_g, cin_g, m)
    return p.reshape(g.out_channels, cin_g * m)


def _truncated_svd(mats: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced rank-``rank`` factors A (…, n, rank), B (…, rank, p) with A@B the best
    Frobenius approximation (Eckart–Young); zero columns beyond the matrix rank."""
    u, s, vh = torch.linalg.svd(mats.double(), full_matrices=False)
    r = min(rank, s.shape[-1])
    root = s[..., :r].sqrt()
    a = u[..., :, :r] * root.unsqueeze(-2)
    b = root.unsqueeze(-1) * vh[..., :r, :]
    if r < rank:
        a = F.pad(a, (0, rank - r))
        b = F.pad(b, (0, 0, 0, rank - r))
    return a.float(), b.float()


def init_dwsep(block: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, g: ConvGeometry) -> None:
    """Per input channel i, the C_out×K² matrix of its filters is replaced by its best rank-m
    approximation (truncated SVD, Eckart–Young): the m right factors are the depthwise filters
    of channel i and the left factors their pointwise columns.  Exact when
    ``m >= min(C_out/groups, K²)``.  Bias goes to the pointwise conv."""
    m = block.conv_dw.out_channels // g.in_channels
    mats = _per_channel_matrices(weight, g)  # (C_in, cout_g, k)
    cols, rows = _truncated_svd(mats, m)  # (C_in, cout_g, m), (C_in, m, k)
    _copy(block.conv_dw.weight, rows.reshape(g.in_channels * m, *g.kernel_size))
    _copy(block.conv_pw.weight, _pointwise_from_columns(cols, g, m))
    if bias is not None:
        _copy(block.conv_pw.bias, bias)


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
    _copy(block.conv_v.weight, vertical.reshape(g.groups * r, cin_g, kh, 1))
    _copy(block.conv_h.weight, horizontal.reshape(g.out_channels, r, 1, kw))
    if bias is not None:
        _copy(block.conv_h.bias, bias)


def init_dw_spatial(block: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, g: ConvGeometry) -> None:
    raise NotImplementedError("dw_spatial initialisation: being written")


def init_inverted_residual(block: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, g: ConvGeometry) -> None:
    raise NotImplementedError("inverted_residual initialisation: being written")


def init_grouped(block: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, g: ConvGeometry) -> None:
    raise NotImplementedError("grouped initialisation: being written")
