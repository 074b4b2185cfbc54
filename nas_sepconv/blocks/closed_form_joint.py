"""Joint least-squares refit of every factor of a depthwise-separable block, from patch statistics.

:func:`nas_sepconv.conversion.refit` re-solves a block's last linear part with the earlier parts
fixed.  For ``dwsep`` the depthwise filters then stay where the SVD of the *weights* put them
(:func:`nas_sepconv.blocks.closed_form.init_dwsep`), although the calibration data says which filter
directions matter.  This module re-solves them too.

A linear ``dwsep`` block with depthwise filters D (C_in, m, K²) and pointwise weights
P (C_out, C_in, m) computes the dense kernel ``W[(i,t), o] = Σ_j D[i,j,t] · P[o,i,j]`` (per input
channel, a rank-m factorisation).  On calibration patches X (rows × C_in·K², the block's input in
the converted model) with targets Y (the original convolution's output in the original model),
the squared error is a quadratic in W,

    ‖XW − Y‖² = tr(WᵀAW) − 2·tr(WᵀB) + ‖Y‖²,   A = XᵀX,  B = XᵀY,

so it is linear least squares in P for fixed D and in D for fixed P: alternating the two
closed-form solves (alternating least squares) never increases it, and only A and B are needed
(no activations are kept, no gradient steps are taken).  With A = I and B = W_original the
problem is the weight-space one, whose optimum is the truncated SVD (Eckart–Young); the data
weighting is what Zhang et al. (2016, "Accelerating Very Deep Convolutional Networks for
Classification and Detection", TPAMI) use for their low-rank layers, applied here to the
per-channel rank-m structure of a depthwise-separable block (Howard et al., 2017, "MobileNets").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from .geometry import ConvGeometry

__all__ = ["JointRefit", "DWSEP", "conjugate_gradients", "refit_dwsep"]

#: D-steps with at most this many unknowns are solved directly (Cholesky); larger ones by
#: conjugate gradients warm-started at the current filters (H is never formed).
DIRECT_MAX = 4608
#: largest C_in·K² for which the patch statistics (a (C_in·K²)² float64 matrix) are gathered.
MAX_PATCH_DIM = 8192


@dataclass(frozen=True)
class JointRefit:
    """How :func:`nas_sepconv.conversion.refit` re-solves all of a kind's factors.

    ``input_layer``: the block's first sub-layer (its input is the block's input, observed there
    so that blocks inlined by fx are still seen); ``unsupported(block, g)``: a reason the block
    cannot be refit jointly (the last-linear refit is used instead), or ``None``;
    ``solve(block, g, xtx, xty, ridge=, iterations=)``: re-solve in place from the patch
    statistics of the source geometry (a ones column last when the block has a bias)."""

    input_layer: str
    unsupported: Callable[[nn.Module, ConvGeometry], str | None]
    solve: Callable[..., None]


def _dwsep_unsupported(block: nn.Module, g: ConvGeometry) -> str | None:
    if g.transposed:
        return "transposed source"
    if g.groups != 1:
        return "grouped source"
    if not isinstance(block.norm_dw, nn.Identity) or not isinstance(block.act_dw, nn.Identity):
        return "mid norm/activation make the block non-linear"
    dw = block.conv_dw
    padding = dw.padding if isinstance(dw.padding, str) else tuple(dw.padding)
    if (tuple(dw.kernel_size), tuple(dw.stride), tuple(dw.dilation), padding, dw.padding_mode) != (
        g.kernel_size,
        g.stride,
        g.dilation,
        g.padding,
        g.padding_mode,
    ):
        return "the depthwise kernel differs from the source's"
    if g.in_channels * math.prod(g.kernel_size) > MAX_PATCH_DIM:
        return f"C_in·K² > {MAX_PATCH_DIM}"
    return None


def _ridge_solve(a: torch.Tensor, b: torch.Tensor, ridge: float) -> torch.Tensor:
    """(A + λI)⁻¹B with λ = ridge · mean diagonal of A; pseudo-inverse when singular."""
    lam = ridge * a.diagonal().mean().clamp_min(1e-300)
    a = a + lam * torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    try:
        return torch.cholesky_solve(b, torch.linalg.cholesky(a))
    except RuntimeError:
        return torch.linalg.pinv(a, hermitian=True) @ b


def conjugate_gradients(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    x: torch.Tensor,
    *,
    precondition: Callable[[torch.Tensor], torch.Tensor] = lambda r: r,
    steps: int = 100,
    tol: float = 1e-10,
) -> torch.Tensor:
    """Solve H x = rhs for symmetric positive (semi-)definite H from ``x`` by preconditioned
    conjugate gradients (``precondition`` applies M⁻¹ for a symmetric positive definite M ≈ H);
    every step lowers ½xᵀHx − rhsᵀx, so stopping early is still a descent step."""
    r = rhs - matvec(x)
    z = precondition(r)
    p = z.clone()
    rz = (r * z).sum()
    stop = tol * (rhs * rhs).sum()
    for _ in range(steps):
        if (r * r).sum() <= stop:
            break
        hp = matvec(p)
        curv = (p * hp).sum()
        if curv <= 0 or rz <= 0:
            break
        alpha = rz / curv
        x = x + alpha * p
        r = r - alpha * hp
        z = precondition(r)
        rz_new = (r * z).sum()
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x


def _pointwise_step(a4: torch.Tensor, b3: torch.Tensor, d: torch.Tensor, ridge: float) -> torch.Tensor:
    """The P-step: the pointwise weights (C_out, C_in, m) of least error for the depthwise
    filters ``d`` (C_in, m, K²) fixed, from the statistics A (C_in, K², C_in, K²) and
    B (C_in, K², C_out)."""
    cin, m, _ = d.shape
    cout = b3.shape[2]
    zz = torch.einsum("ijt,itsu,sku->ijsk", d, a4, d).reshape(cin * m, cin * m)
    zy = torch.einsum("ijt,ito->ijo", d, b3).reshape(cin * m, cout)
    return _ridge_solve(zz, zy, ridge).T.reshape(cout, cin, m)


def _depthwise_step(a4: torch.Tensor, b3: torch.Tensor, p: torch.Tensor, d: torch.Tensor, ridge: float) -> torch.Tensor:
    """The D-step: the depthwise filters (C_in, m, K²) of least error for the pointwise weights
    ``p`` fixed, from the statistics A (C_in, K², C_in, K²) and B (C_in, K², C_out); solved
    directly up to :data:`DIRECT_MAX` unknowns, else by block-Jacobi preconditioned conjugate
    gradients warm-started at the current filters ``d``."""
    cin, m, k = d.shape
    gram = torch.einsum("oij,osk->ijsk", p, p)  # (C_in, m, C_in, m)
    rhs = torch.einsum("ito,oij->ijt", b3, p)  # (C_in, m, K²)
    size = cin * m * k
    if size <= DIRECT_MAX:
        h = torch.einsum("itsu,ijsk->ijtsku", a4, gram).reshape(size, size)
        return _ridge_solve(h, rhs.reshape(size, 1), ridge).reshape(cin, m, k)
    # the same ridge as _ridge_solve: ridge · mean diagonal of H, from the diagonals of A and G
    lam = ridge * torch.einsum("itit,ijij->ijt", a4, gram).mean().clamp_min(1e-300)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        t = torch.einsum("ijsk,sku->ijsu", gram, v)
        return torch.einsum("itsu,ijsu->ijt", a4, t) + lam * v

    # block-Jacobi preconditioner: H's (m·K²)² diagonal block of each input channel,
    # A[i,:,i,:] ⊗ G[i,:,i,:] + λI, factorised once per D-step (C_in small Cholesky factors)
    idx = torch.arange(cin)
    blocks = torch.einsum("itu,ijk->ijtku", a4[idx, :, idx, :], gram[idx, :, idx, :]).reshape(cin, m * k, m * k)
    blocks = blocks + lam * torch.eye(m * k, dtype=blocks.dtype, device=blocks.device)
    factor, info = torch.linalg.cholesky_ex(blocks)
    if bool((info != 0).any()):
        return conjugate_gradients(matvec, rhs, d)

    def precondition(r: torch.Tensor) -> torch.Tensor:
        return torch.cholesky_solve(r.reshape(cin, m * k, 1), factor).reshape(cin, m, k)

    return conjugate_gradients(matvec, rhs, d, precondition=precondition)


def refit_dwsep(
    block: nn.Module,
    g: ConvGeometry,
    xtx: torch.Tensor,
    xty: torch.Tensor,
    *,
    ridge: float = 1e-5,
    iterations: int = 10,
) -> None:
    """Re-solve a linear ``dwsep`` block's depthwise filters and pointwise weights (and the
    pointwise bias, if any) by alternating least squares on the patch statistics ``xtx``
    (d × d) and ``xty`` (d × C_out) of the source geometry, d = C_in·K² (+1 for the bias
    column).  Starts from the block's current factors, keeps the best of ``iterations`` rounds
    (each a pointwise solve then a depthwise solve), and balances the scale of each
    depthwise filter and its pointwise column at the end."""
    cin, cout, k = g.in_channels, g.out_channels, math.prod(g.kernel_size)
    m = block.conv_dw.out_channels // cin
    has_bias = block.conv_pw.bias is not None
    a, b = xtx.double(), xty.double()
    if has_bias:  # eliminate the bias: centred statistics, bias = mean(y) − Wᵀ mean(x) at the end
        n = a[-1, -1].clamp_min(1.0)
        sx, sy = a[:-1, -1], b[-1]
        a = a[:-1, :-1] - torch.outer(sx, sx) / n
        b = b[:-1] - torch.outer(sx, sy) / n
    d = block.conv_dw.weight.detach().double().reshape(cin, m, k)
    p = block.conv_pw.weight.detach().double().reshape(cout, cin, m)
    a4, b3 = a.reshape(cin, k, cin, k), b.reshape(cin, k, cout)

    def loss(d: torch.Tensor, p: torch.Tensor) -> float:
        w = torch.einsum("ijt,oij->ito", d, p).reshape(cin * k, cout)
        return ((w * (a @ w)).sum() - 2 * (w * b).sum()).item()

    best = (loss(d, p), d, p)
    for _ in range(iterations):
        p = _pointwise_step(a4, b3, d, ridge)
        d = _depthwise_step(a4, b3, p, d, ridge)
        current = loss(d, p)
        if current < best[0]:
            best = (current, d, p)
    _, d, p = best
    # balance: ‖depthwise filter‖ = ‖its pointwise column‖ (the product is unchanged)
    dn, pn = d.norm(dim=2), p.norm(dim=0)  # (C_in, m) each
    scale = torch.where((dn > 0) & (pn > 0), (pn / dn.clamp_min(1e-300)).sqrt(), torch.ones_like(dn))
    d, p = d * scale.unsqueeze(-1), p / scale
    block.conv_dw.weight.copy_(d.reshape(block.conv_dw.weight.shape))
    block.conv_pw.weight.copy_(p.reshape(block.conv_pw.weight.shape))
    if has_bias:
        w = torch.einsum("ijt,oij->ito", d, p).reshape(cin * k, cout)
        block.conv_pw.bias.copy_((sy - w.T @ sx) / n)


DWSEP = JointRefit(input_layer="conv_dw", unsupported=_dwsep_unsupported, solve=refit_dwsep)
