"""The solver of the joint depthwise-separable refit (blocks/closed_form_joint.py); its use by
``refit`` is tested in tests/conversion/test_refit.py."""

from __future__ import annotations

import torch

from nas_sepconv.blocks.closed_form_joint import conjugate_gradients


def test_block_jacobi_preconditioner_speeds_up_conjugate_gradients():
    """On a system whose diagonal blocks dominate (as the depthwise step's, channel by channel),
    a few preconditioned steps get much closer than the same number of plain ones."""
    gen = torch.Generator().manual_seed(0)
    blocks = []
    for scale in torch.logspace(-2, 2, 8, dtype=torch.float64):  # badly scaled, well-conditioned blocks
        q = torch.randn(6, 6, generator=gen, dtype=torch.float64)
        blocks.append(scale * (q @ q.T + 6 * torch.eye(6, dtype=torch.float64)))
    h = torch.block_diag(*blocks) + 1e-3 * torch.ones(48, 48, dtype=torch.float64)
    rhs = torch.randn(48, generator=gen, dtype=torch.float64)
    exact = torch.linalg.solve(h, rhs)
    inverse = torch.block_diag(*[torch.linalg.inv(b) for b in blocks])

    def err(x):
        return ((x - exact).norm() / exact.norm()).item()

    plain = conjugate_gradients(lambda v: h @ v, rhs, torch.zeros(48, dtype=torch.float64), steps=5)
    pre = conjugate_gradients(
        lambda v: h @ v, rhs, torch.zeros(48, dtype=torch.float64), steps=5, precondition=lambda r: inverse @ r
    )
    assert err(pre) < 1e-3 < err(plain)
