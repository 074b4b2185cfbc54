"""Closed-form initialisation of the kinds with stacked depthwise stages: ``dw_spatial`` and
``inverted_residual``.

Neither is a single truncated SVD: ``dw_spatial`` splits the ``dwsep`` SVD filters into
separable ones and re-solves the pointwise part by least squares (EffNet, Flattened networks);
``inverted_residual`` (MobileNetV2/V3) builds a ± construction around the non-linear acts that
is exact at full rank.  The shared factorisations are in :mod:`.closed_form`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .closed_form import copy_param, dense_weight, per_channel_matrices, pointwise_from_columns, svd_factors
from .geometry import ConvGeometry
from .modules import SqueezeExcite

__all__ = ["init_dw_spatial", "init_inverted_residual"]

# -- dw_spatial ------------------------------------------------------------------------------


def _rank1(filters: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-1 split of (…, Kh, Kw) filters: vertical u·√s (…, Kh), horizontal √s·v (…, Kw)."""
    u, s, vh = torch.linalg.svd(filters, full_matrices=False)
    root = s[..., :1].sqrt()
    return u[..., :, 0] * root, vh[..., 0, :] * root


def init_dw_spatial(block: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, g: ConvGeometry) -> None:
    """Depthwise Kh×1, depthwise 1×Kw, pointwise, from the source weights.

    Per input channel i the C_out/groups × (Kh·Kw) matrix M_i of its filters must become
    P_i F_i, where the m rows of F_i are *separable* filters v_t h_tᵀ (the block's two depthwise
    parts) and P_i the pointwise columns.  Candidate filter sets, per channel:

    1. the rank-m SVD of M_i as in ``dwsep`` (Eckart–Young), then each of the m K×K filters
       replaced by its best rank-1 factorisation (SVD of the Kh×Kw matrix: vertical u·√s,
       horizontal √s·v);
    2. when ``m >= C_out/groups``: the source filters themselves, each split the same way;
    3. when ``m >= Kh·Kw``: the Kh·Kw one-hot filters (each is separable).

    For each candidate the pointwise columns are re-solved by least squares given the filters
    (P_i = M_i F_i⁺, the projection of M_i on their span, never worse than the SVD's own
    columns) and the candidate with the smaller Frobenius error is kept.

    Achieves: exact when ``m >= Kh·Kw`` (any filters), and when ``m >= C_out/groups`` and the
    source filters are separable; otherwise (1) is the product of two optimal truncations
    followed by the optimal pointwise, which is *not* jointly optimal (the best sum of m
    separable terms is a CP-type problem with no closed form); its error lies between the
    ``dwsep`` Eckart–Young bound and the error of plain rank-1 truncation of the SVD filters.
    Bias goes to the pointwise conv.
    """
    kh, kw = g.kernel_size
    k = kh * kw
    cin = g.in_channels
    m = block.conv_dwv.out_channels // cin
    mats = per_channel_matrices(weight, g).double()  # (C_in, n, k)
    n = mats.shape[1]
    candidates = [_rank1(svd_factors(mats, m)[1].reshape(cin, m, kh, kw))]
    if m >= n:
        candidates.append(_rank1(F.pad(mats, (0, 0, 0, m - n)).reshape(cin, m, kh, kw)))
    if m >= k:
        v = mats.new_zeros(cin, m, kh)
        h = mats.new_zeros(cin, m, kw)
        for j in range(k):
            v[:, j, j // kw] = 1.0
            h[:, j, j % kw] = 1.0
        candidates.append((v, h))
    best = None
    for v, h in candidates:
        filters = (v.unsqueeze(-1) * h.unsqueeze(-2)).reshape(cin, m, k)
        cols = mats @ torch.linalg.pinv(filters)  # (C_in, n, m)
        err = (mats - cols @ filters).square().sum((-2, -1))
        if best is None:
            best = [v, h, cols, err]
            continue
        take = err < best[3]
        for slot, value in enumerate((v, h, cols, err)):
            mask = take.reshape(-1, *([1] * (value.dim() - 1)))
            best[slot] = torch.where(mask, value, best[slot])
    v, h, cols, _ = best
    copy_param(block.conv_dwv.weight, v.reshape(cin * m, 1, kh, 1))
    copy_param(block.conv_dwh.weight, h.reshape(cin * m, 1, 1, kw))
    copy_param(block.conv_pw.weight, pointwise_from_columns(cols, g, m))
    if bias is not None:
        copy_param(block.conv_pw.bias, bias)


# -- inverted residual -----------------------------------------------------------------------

# Channel patterns of one rank component (expansion sign, depthwise filter sign, projection
# sign), by the number of expanded channels it uses.
_PATTERNS = {
    1: ((1,), (1,), (1,)),
    2: ((1, -1), (1, 1), (1, -1)),
    4: ((1, -1, 1, -1), (1, 1, -1, -1), (1, -1, -1, 1)),
}


def _act_kind(module: nn.Module) -> str:
    if isinstance(module, nn.Identity):
        return "none"
    if isinstance(module, nn.ReLU6):
        return "relu6"
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, nn.Hardswish):
        return "hswish"
    return type(module).__name__


def _identity_norm(norm: nn.Module) -> None:
    """A BatchNorm that is the identity in eval mode (weight 1, bias 0, mean 0, var 1 − eps)."""
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm):
        return
    if norm.affine:
        norm.weight.fill_(1.0)
        norm.bias.zero_()
    if norm.track_running_stats:
        norm.running_mean.zero_()
        norm.running_var.fill_(1.0 - norm.eps)


def _unit_l1_factors(mats: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The rank-``rank`` SVD factors (columns, filters) of per-channel matrices, each filter
    rescaled to unit L1 norm with Σf ≥ 0 (the scale and sign go to its column)."""
    cols, rows = svd_factors(mats, rank)
    l1 = rows.abs().sum(-1, keepdim=True)
    l1 = torch.where(l1 > 0, l1, torch.ones_like(l1))
    sign = torch.where(rows.sum(-1, keepdim=True) < 0, -1.0, 1.0).double()
    return cols * (sign * l1).transpose(-1, -2), rows * sign / l1


def _constant_gate(block: nn.Module, gate_offset: float) -> float:
    """Set an SE's gate to the constant (6 − ``gate_offset``)/6 and return it (1 without SE)."""
    if not isinstance(block.se, SqueezeExcite):
        return 1.0
    block.se.conv_expand.weight.zero_()
    block.se.conv_expand.bias.fill_(3.0 - gate_offset)
    return (6.0 - gate_offset) / 6.0


def _write_projection(block: nn.Module, pwl: torch.Tensor, bias: torch.Tensor | None) -> None:
    """The projection's first ``pwl.shape[1]`` input columns from ``pwl`` (C_out, used), the rest
    zero; its bias from ``bias`` (zero when there is none)."""
    cout, used = pwl.shape
    block.conv_pwl.weight.zero_()
    copy_param(block.conv_pwl.weight[:, :used], pwl.reshape(cout, used, *block.conv_pwl.weight.shape[2:]))
    if block.conv_pwl.bias is not None:
        if bias is None:
            block.conv_pwl.bias.zero_()
        else:
            copy_param(block.conv_pwl.bias, bias)


def init_inverted_residual(
    block: nn.Module,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    g: ConvGeometry,
    *,
    relu6_range: float = 6.0,
    gate_offset: float = 0.5,
) -> None:
    """Expand 1×1 → act → depthwise K×K → act → [SE] → project 1×1, from the source weights.

    Start from the ``dwsep`` factors: per input channel i the rank-k SVD of its C_out×K² filter
    matrix gives depthwise filters f_{i,t} (rescaled to unit L1 norm, sign chosen so that
    Σf ≥ 0; the scale and sign go to the column) and pointwise columns p_{i,t}, t < k.

    Exact construction (``expand_ratio >= 4``, act relu, hswish or relu6): four expanded
    channels per (i, t), k = min(⌊mid / (4·C_in)⌋, C_out/groups, K²):

    * expansion weights (c, −c, c, −c) on x_i: after the act the channels are (α, β, α, β) with
      α = φ(c·x_i), β = φ(−c·x_i) and α − β = c·x_i, because φ(z) − φ(−z) = z for relu and for
      hswish (for every z), and = clip(z, −6, 6) for relu6;
    * depthwise filters (f, f, −f, −f) give (f*α, f*β, −f*α, −f*β); after the act the same
      identity gives A1 − A3 = f*α and A2 − A4 = f*β;
    * projection coefficients (+p, −p, −p, +p)/c sum to p·(f*α − f*β)/c = p·(f*x_i).

    Summed over (i, t) this is the rank-k ``dwsep`` approximation, so at full rank
    (k = min(C_out/groups, K²)) the block equals the source convolution.  Mid BatchNorms are
    set to the identity in eval mode (weight 1, bias 0, running mean 0, running var 1 − eps): the
    construction is exact in **eval mode** only.  SE: ``conv_expand`` weight 0 and bias
    3 − ``gate_offset``, so the hard-sigmoid gate is the constant (6 − δ)/6 (inside its linear
    range, non-zero gradient); the projection is divided by it.  Padding of every mode commutes
    with the 1×1 maps, so zero/reflect/circular padding stay exact.

    relu6: c = 6 / ``relu6_range`` (default 6, so c = 1).  Since the filters have unit L1 norm
    and 0 ≤ α, β ≤ 6, the second act never clips; the block computes exactly the source
    convolution of clip(x, −relu6_range, relu6_range): exact while |c·x| ≤ 6.

    Unused expanded channels (mid not a multiple of 4·C_in, or beyond 4·k·C_in) get zero
    projection columns, so they do not change the output; their expansion and depthwise
    weights keep the fresh initialisation so that they can learn (zero weights would leave
    dead relu channels).

    Below ``expand_ratio`` 4 (approximate; refit recommended):

    * 2 ≤ e < 4 (relu/relu6/hswish): two channels (c, −c) per (i, t), filters (f, f),
      projection (+p, −p)/c.  The first stage is exact; the output is
      p·(φ(f*α) − φ(f*β))/c, equal to p·(f*x) wherever φ is the identity on f*α and f*β (relu:
      both non-negative, which the sign choice Σf ≥ 0 favours on smooth inputs).
    * e < 2 or ``expand_ratio == 1`` (no expansion conv): one channel per input channel,
      rank 1: output p·φ(f*φ(c·x)) (or p·φ(f*x)), the rank-1 ``dwsep`` term through the acts.
    * act ``none``: the block is linear and the construction (one channel per (i, t),
      k = min(⌊mid / C_in⌋, C_out/groups, K²)) is the ``dwsep`` optimum, exact at full rank.

    Bias goes to the projection.
    """
    cin, cout = g.in_channels, g.out_channels
    expand = not isinstance(block.conv_pw, nn.Identity)
    mid = block.conv_dw.out_channels
    act = _act_kind(block.act_dw)
    k = weight[0, 0].numel()
    mats = dense_weight(weight, g).reshape(cout, cin, k).permute(1, 0, 2)  # (C_in, C_out, k)
    n = 1 if not expand or act == "none" else 4 if mid >= 4 * cin else 2 if mid >= 2 * cin else 1  # channels per (i, t)
    rank = max(1, min(mid // (n * cin), cout // g.groups, k))
    cols, rows = _unit_l1_factors(mats, rank)  # (C_in, C_out, r), (C_in, r, k)
    c = 6.0 / relu6_range if act == "relu6" else 1.0
    gate = _constant_gate(block, gate_offset)
    es, fs, ps = (torch.tensor(v, dtype=torch.float64) for v in _PATTERNS[n])
    used = cin * rank * n  # channel (i, t, j) is (i·rank + t)·n + j
    ones = [1] * g.dims
    if expand:
        w_pw = torch.zeros(used, cin, dtype=torch.float64)
        w_pw[torch.arange(used), torch.arange(cin).repeat_interleave(rank * n)] = c * es.repeat(cin * rank)
        copy_param(block.conv_pw.weight[:used], w_pw.reshape(used, cin, *ones))
    dw = rows.unsqueeze(2) * fs.reshape(1, 1, n, 1)  # (C_in, r, n, k)
    copy_param(block.conv_dw.weight[:used], dw.reshape(used, 1, *g.kernel_size))
    pwl = cols.unsqueeze(-1) * ps / (c * gate)  # (C_in, C_out, r, n)
    _write_projection(block, pwl.permute(1, 0, 2, 3).reshape(cout, used), bias)
    _identity_norm(block.norm_pw)
    _identity_norm(block.norm_dw)
