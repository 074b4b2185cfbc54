"""The regression a refit solves: the patches a convolution multiplies (:func:`conv_patches`)
and the normal equations XᵀX, XᵀY accumulated over batches in float64."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["NormalEquations", "conv_patches"]


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


class NormalEquations:
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
