"""Closed-form initialisers: exactness at full rank, Eckart–Young at truncated rank, and the
constructions of dw_spatial, inverted_residual and grouped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from nas_sepconv.blocks import BlockSpec, ConvGeometry, closed_form_stacked
from nas_sepconv.blocks import closed_form as decompose

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: see conftest


def convert(conv: nn.Module, spec: str | BlockSpec) -> tuple[nn.Module, BlockSpec, ConvGeometry]:
    spec = BlockSpec.parse(spec) if isinstance(spec, str) else spec
    g = ConvGeometry.from_module(conv)
    block = spec.build(g)
    decompose.initialise(block, spec, g, conv.weight, conv.bias)
    return block.eval(), spec, g


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def assert_same_output(conv: nn.Module, block: nn.Module, x: torch.Tensor, tol: float = 1e-4) -> None:
    with torch.no_grad():
        want, got = conv(x), block(x)
    assert got.shape == want.shape
    assert rel(got, want) < tol
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * want.abs().max().item())


def weight_error_sq(block, spec, g, weight) -> float:
    eff = decompose.effective_weight(block, spec, g)
    ref = decompose.dense_weight(decompose.resize_kernel(weight.detach().double(), spec.geometry_for(g).kernel_size), g)
    return (eff - ref).square().sum().item()


def seeded(seed: int = 0):
    torch.manual_seed(seed)


# -- full rank: exact -------------------------------------------------------------------------

CASES_2D = [
    ("plain", lambda: nn.Conv2d(6, 8, 3, padding=1), (2, 6, 9, 10)),
    ("stride", lambda: nn.Conv2d(6, 8, 3, stride=2, padding=1), (2, 6, 9, 10)),
    ("dilation", lambda: nn.Conv2d(6, 8, 3, dilation=2, padding=2), (2, 6, 9, 10)),
    ("pad_tuple_nonsquare", lambda: nn.Conv2d(6, 8, (3, 5), stride=(1, 2), padding=(1, 2)), (2, 6, 9, 11)),
    ("same", lambda: nn.Conv2d(6, 8, 3, padding="same"), (2, 6, 9, 10)),
    ("same_even", lambda: nn.Conv2d(6, 8, (2, 4), padding="same"), (2, 6, 9, 10)),
    ("valid", lambda: nn.Conv2d(6, 8, 3, padding="valid"), (2, 6, 9, 10)),
    ("reflect", lambda: nn.Conv2d(6, 8, 3, padding=1, padding_mode="reflect"), (2, 6, 9, 10)),
    ("circular", lambda: nn.Conv2d(6, 8, (3, 5), padding=(1, 2), padding_mode="circular", stride=2), (2, 6, 9, 10)),
    ("no_bias", lambda: nn.Conv2d(6, 8, 3, padding=1, bias=False), (2, 6, 9, 10)),
    ("groups", lambda: nn.Conv2d(6, 8, 3, padding=1, groups=2), (2, 6, 9, 10)),
    (
        "groups_dilation_reflect",
        lambda: nn.Conv2d(6, 9, 3, dilation=(1, 2), padding=(1, 2), groups=3, padding_mode="reflect"),
        (2, 6, 9, 10),
    ),
]


def full_dwsep(conv: nn.Module) -> str:
    g = ConvGeometry.from_module(conv)
    k = int(np.prod(g.kernel_size))
    return f"dwsep_m{min(g.out_channels // g.groups, k)}"


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("make,shape", [c[1:] for c in CASES_2D], ids=[c[0] for c in CASES_2D])
@pytest.mark.parametrize("kind", ["dwsep", "spatial", "dw_spatial"])
def test_full_rank_is_exact_2d(kind, make, shape):
    seeded()
    conv = make()
    x = torch.randn(shape)
    g = ConvGeometry.from_module(conv)
    if kind == "dwsep":
        spec = full_dwsep(conv)
    elif kind == "spatial":
        spec = "spatial_r1.0"
    else:  # dw_spatial with m >= Kh*Kw is exact for any filters
        spec = f"dw_spatial_m{int(np.prod(g.kernel_size))}"
    block, spec, g = convert(conv, spec)
    assert_same_output(conv, block, x)
    assert weight_error_sq(block, spec, g, conv.weight) < 1e-8 * conv.weight.square().sum().item()


@pytest.mark.parametrize(
    "make,shape",
    [
        (lambda: nn.Conv1d(5, 7, 3, stride=2, padding=1), (2, 5, 13)),
        (lambda: nn.Conv1d(4, 6, 5, padding="same", padding_mode="reflect", groups=2), (2, 4, 13)),
        (lambda: nn.Conv3d(3, 5, 3, padding=1, dilation=(1, 1, 2)), (1, 3, 5, 6, 7)),
        (lambda: nn.Conv3d(4, 6, (1, 3, 3), padding=(0, 1, 1), padding_mode="circular", groups=2), (1, 4, 4, 6, 7)),
        (lambda: nn.ConvTranspose2d(6, 8, 3, stride=2, padding=1, output_padding=1), (2, 6, 5, 6)),
        (
            lambda: nn.ConvTranspose2d(
                6, 8, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2, bias=False
            ),
            (2, 6, 5, 6),
        ),
        (lambda: nn.ConvTranspose1d(4, 6, 4, stride=2, padding=1), (2, 4, 9)),
    ],
    ids=[
        "1d",
        "1d_same_reflect_groups",
        "3d",
        "3d_circular_groups",
        "transposed",
        "transposed_groups",
        "transposed_1d",
    ],
)
def test_dwsep_full_rank_is_exact_nd_and_transposed(make, shape):
    seeded(1)
    conv = make()
    block, spec, g = convert(conv, full_dwsep(conv))
    assert_same_output(conv, block, torch.randn(shape))
    assert weight_error_sq(block, spec, g, conv.weight) < 1e-8 * conv.weight.square().sum().item()


@pytest.mark.parametrize("spec", ["dwsep_m9_k5", "spatial_r1.0_k5", "dw_spatial_m25_k5", "keep_k5"])
def test_kernel_grows_exactly(spec):
    seeded(2)
    conv = nn.Conv2d(6, 8, 3, padding=1, stride=2, padding_mode="reflect")
    block, spec, g = convert(conv, spec)
    assert spec.geometry_for(g).kernel_size == (5, 5)
    assert_same_output(conv, block, torch.randn(2, 6, 9, 10))
    assert weight_error_sq(block, spec, g, conv.weight) < 1e-8 * conv.weight.square().sum().item()


def test_kernel_shrink_crops_centrally():
    seeded(3)
    conv = nn.Conv2d(4, 6, 5, padding=2)
    block, spec, g = convert(conv, "keep_k3")
    torch.testing.assert_close(block.weight, conv.weight[:, :, 1:4, 1:4])
    assert block.padding == (1, 1)


# -- truncated rank: Eckart–Young -------------------------------------------------------------


@pytest.mark.parametrize("groups,m", [(1, 1), (1, 3), (2, 2), (4, 1)])
def test_dwsep_truncated_reaches_eckart_young(groups, m):
    seeded(4)
    conv = nn.Conv2d(8, 16, 3, padding=1, groups=groups)
    block, spec, g = convert(conv, f"dwsep_m{m}")
    w = conv.weight.detach().double().numpy()  # (C_out, C_in/g, 3, 3)
    cout_g, cin_g = 16 // groups, 8 // groups
    dropped = 0.0
    for gi in range(groups):
        for i in range(cin_g):
            mat = w[gi * cout_g : (gi + 1) * cout_g, i].reshape(cout_g, 9)
            s = np.linalg.svd(mat, compute_uv=False)
            dropped += float((s[m:] ** 2).sum())
    err = weight_error_sq(block, spec, g, conv.weight)
    assert err == pytest.approx(dropped, rel=1e-4)


def test_dwsep_truncated_transposed_reaches_eckart_young():
    seeded(5)
    conv = nn.ConvTranspose2d(6, 10, 3, stride=2, groups=2)
    block, spec, g = convert(conv, "dwsep_m2")
    w = conv.weight.detach().double().numpy()  # (C_in, C_out/g, 3, 3)
    dropped = sum(float((np.linalg.svd(w[i].reshape(5, 9), compute_uv=False)[2:] ** 2).sum()) for i in range(6))
    assert weight_error_sq(block, spec, g, conv.weight) == pytest.approx(dropped, rel=1e-4)


@pytest.mark.parametrize("groups,rank", [(1, 3), (1, 10), (2, 4), (3, 6)])
def test_spatial_truncated_reaches_eckart_young(groups, rank):
    seeded(6)
    conv = nn.Conv2d(6, 12, (3, 5), padding=(1, 2), groups=groups)
    block, spec, g = convert(conv, f"spatial_r{rank}")
    w = conv.weight.detach().double().numpy()
    cout_g, cin_g = 12 // groups, 6 // groups
    r = rank // groups
    dropped = 0.0
    for gi in range(groups):
        wg = w[gi * cout_g : (gi + 1) * cout_g]  # (cout_g, cin_g, kh, kw)
        mat = wg.transpose(1, 2, 0, 3).reshape(cin_g * 3, cout_g * 5)
        s = np.linalg.svd(mat, compute_uv=False)
        dropped += float((s[r:] ** 2).sum())
    assert weight_error_sq(block, spec, g, conv.weight) == pytest.approx(dropped, rel=1e-4)


# -- dw_spatial ------------------------------------------------------------------------------


def separable_conv(cin: int, cout: int, kh: int, kw: int, groups: int = 1) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, (kh, kw), padding=(kh // 2, kw // 2), groups=groups)
    with torch.no_grad():
        a = torch.randn(cout, cin // groups, kh, 1)
        b = torch.randn(cout, cin // groups, 1, kw)
        conv.weight.copy_(a * b)
    return conv


@pytest.mark.parametrize("groups", [1, 2])
def test_dw_spatial_exact_for_separable_filters(groups):
    seeded(7)
    conv = separable_conv(6, 4, 3, 5, groups=groups)  # C_out/groups <= 4 < Kh*Kw
    block, spec, g = convert(conv, f"dw_spatial_m{4 // groups}")
    assert_same_output(conv, block, torch.randn(2, 6, 9, 10))
    assert weight_error_sq(block, spec, g, conv.weight) < 1e-8 * conv.weight.square().sum().item()


def test_dw_spatial_exact_for_shared_separable_filter_rank1():
    seeded(8)
    conv = nn.Conv2d(5, 7, 3, padding=1, stride=2, padding_mode="reflect")
    with torch.no_grad():  # every filter of input channel i is a multiple of one separable filter
        f = torch.randn(5, 3, 1) * torch.randn(5, 1, 3)
        conv.weight.copy_(torch.randn(7, 5, 1, 1) * f)
    block, spec, g = convert(conv, "dw_spatial_m1")
    assert_same_output(conv, block, torch.randn(2, 5, 9, 10))


@pytest.mark.parametrize("m", [1, 2, 4])
def test_dw_spatial_truncated_between_bounds(m):
    seeded(9)
    conv = nn.Conv2d(6, 12, 3, padding=1)
    block, spec, g = convert(conv, f"dw_spatial_m{m}")
    err = weight_error_sq(block, spec, g, conv.weight)
    dw_block, dw_spec, _ = convert(conv, f"dwsep_m{m}")
    lower = weight_error_sq(dw_block, dw_spec, g, conv.weight)
    # plain product of the two truncations, with the SVD's own pointwise columns
    mats = decompose.per_channel_matrices(conv.weight.detach(), g).double()
    cols, rows = decompose.svd_factors(mats, m)
    v, h = closed_form_stacked._rank1(rows.reshape(6, m, 3, 3))
    plain = (mats - cols @ (v.unsqueeze(-1) * h.unsqueeze(-2)).reshape(6, m, 9)).square().sum().item()
    assert lower * (1 - 1e-6) <= err <= plain * (1 + 1e-6)
    with torch.no_grad():  # the block computes its effective weight
        x = torch.randn(2, 6, 8, 8)
        eff = decompose.effective_weight(block, spec, g).float()
        torch.testing.assert_close(
            block(x), torch.nn.functional.conv2d(x, eff, block.conv_pw.bias, padding=1), rtol=1e-4, atol=1e-4
        )


# -- grouped ---------------------------------------------------------------------------------


@pytest.mark.parametrize("source_groups,groups", [(1, 2), (1, 4), (2, 4), (3, 6)])
def test_grouped_keeps_block_diagonal_part(source_groups, groups):
    seeded(10)
    conv = nn.Conv2d(12, 24, 3, padding=1, groups=source_groups, padding_mode="reflect")
    block, spec, g = convert(conv, f"grouped_g{groups}")
    dense = decompose.dense_weight(conv.weight.detach().double(), g)
    perm = decompose._shuffle_perm(block.shuffle, 12)
    # mask of kept entries in original channel order
    mask = torch.zeros(24, 12, dtype=torch.bool)
    a, b = 24 // groups, 12 // groups
    for gi in range(groups):
        rows = torch.arange(gi * a, (gi + 1) * a)
        cols = perm[gi * b : (gi + 1) * b]
        mask[rows.unsqueeze(1), cols.unsqueeze(0)] = True
    want = dense * mask.reshape(24, 12, 1, 1)
    eff = decompose.effective_weight(block, spec, g)
    torch.testing.assert_close(eff, want)
    # orthogonal projection: ||kept||² + ||dropped||² = ||W||²
    assert eff.square().sum() + (dense - eff).square().sum() == pytest.approx(dense.square().sum().item(), rel=1e-9)
    x = torch.randn(2, 12, 7, 8)
    masked = nn.Conv2d(12, 24, 3, padding=1, padding_mode="reflect")
    with torch.no_grad():
        masked.weight.copy_(want.float())
        masked.bias.copy_(conv.bias)
    assert_same_output(masked, block, x)


def test_grouped_exact_when_source_is_shuffled_block_diagonal():
    seeded(11)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    block, spec, g = convert(conv, "grouped_g2")
    with torch.no_grad():  # make the source exactly what the block can hold
        conv.weight.copy_(decompose.effective_weight(block, spec, g).float())
    block2, _, _ = convert(conv, "grouped_g2")
    assert_same_output(conv, block2, torch.randn(2, 8, 6, 6))


# -- inverted residual -----------------------------------------------------------------------


IR_CASES = [
    # (conv factory, e) with k = floor(e/4) = min(C_out/groups, K²): full rank
    (lambda: nn.Conv2d(6, 2, 3, padding=1), 8),
    (lambda: nn.Conv2d(5, 1, 3, stride=2, padding=1, padding_mode="reflect"), 4),
    (lambda: nn.Conv2d(6, 7, 1), 4),
    (lambda: nn.Conv2d(6, 4, (1, 3), padding=(0, 1), dilation=2, groups=2), 8),
]


@pytest.mark.parametrize("act", ["relu", "hswish"])
@pytest.mark.parametrize("se", [0.0, 0.25])
@pytest.mark.parametrize("case", range(len(IR_CASES)))
def test_inverted_residual_exact_at_full_rank(act, se, case):
    seeded(12)
    make, e = IR_CASES[case]
    conv = make()
    spec = BlockSpec("inverted_residual", expand_ratio=e, se_ratio=se, act=act)
    block, spec, g = convert(conv, spec)
    x = 3 * torch.randn(2, conv.in_channels, 9, 10)  # any scale: relu and hswish are exact
    assert_same_output(conv, block, x)
    assert decompose.effective_weight(block, spec, g) is None


@pytest.mark.parametrize("se", [0.0, 0.25])
def test_inverted_residual_relu6_exact_at_moderate_scale(se):
    seeded(13)
    conv = nn.Conv2d(6, 2, 3, padding=1)
    block, spec, g = convert(conv, BlockSpec("inverted_residual", expand_ratio=8, se_ratio=se, act="relu6"))
    x = torch.randn(2, 6, 9, 10).clamp(-5.9, 5.9)
    assert_same_output(conv, block, x)
    # beyond the range the block is the conv of the clipped input
    big = 4 * torch.randn(2, 6, 9, 10)
    with torch.no_grad():
        torch.testing.assert_close(block(big), conv(big.clamp(-6, 6)), rtol=1e-4, atol=1e-4)


def test_inverted_residual_relu6_range_option():
    seeded(14)
    conv = nn.Conv2d(4, 1, 3, padding=1)
    g = ConvGeometry.from_module(conv)
    spec = BlockSpec("inverted_residual", expand_ratio=4, act="relu6")
    block = spec.build(g)
    with torch.no_grad():
        closed_form_stacked.init_inverted_residual(block, conv.weight.detach(), conv.bias.detach(), g, relu6_range=20.0)
    assert_same_output(conv, block.eval(), 15 * torch.rand(2, 4, 7, 7) - 7.5)


@pytest.mark.parametrize("act", ["relu", "hswish", "relu6"])
def test_inverted_residual_truncated_equals_dwsep(act):
    seeded(15)
    conv = nn.Conv2d(6, 10, 3, padding=1)  # rank 2 of 9: both truncated the same way
    block, _, _ = convert(conv, BlockSpec("inverted_residual", expand_ratio=9, act=act, se_ratio=0.25))
    dw, _, _ = convert(conv, "dwsep_m2")
    x = torch.randn(2, 6, 8, 8).clamp(-5.9, 5.9)
    assert_same_output(dw, block, x)


def test_inverted_residual_linear_act_is_dwsep():
    seeded(16)
    conv = nn.Conv2d(4, 5, 3, padding=1)
    block, _, _ = convert(conv, BlockSpec("inverted_residual", expand_ratio=3, act="none"))
    dw, _, _ = convert(conv, "dwsep_m3")
    assert_same_output(dw, block, torch.randn(2, 4, 7, 7))


@pytest.mark.parametrize("e", [1, 1.5, 2, 3])
@pytest.mark.parametrize("act", ["relu", "hswish", "relu6"])
def test_inverted_residual_below_four_is_finite_approximation(e, act):
    seeded(17)
    conv = nn.Conv2d(6, 8, 3, padding=1)
    block, _, _ = convert(conv, BlockSpec("inverted_residual", expand_ratio=e, act=act))
    x = torch.randn(2, 6, 8, 8)
    with torch.no_grad():
        y, want = block(x), conv(x)
    assert y.shape == want.shape and torch.isfinite(y).all()
    assert rel(y, want) < 1.5


def test_inverted_residual_unused_channels_do_not_change_output():
    seeded(18)
    conv = nn.Conv2d(4, 1, 3, padding=1)
    block, _, _ = convert(conv, BlockSpec("inverted_residual", expand_ratio=5.5, act="relu"))  # mid 22, 16 used
    assert block.conv_pwl.weight[:, 16:].abs().sum() == 0
    assert block.conv_pw.weight[16:].abs().sum() > 0  # fresh init kept so the channels can learn
    assert_same_output(conv, block, torch.randn(2, 4, 7, 7))


def test_inverted_residual_train_mode_is_not_exact_but_runs():
    """The closed form is exact in eval mode (its BatchNorms hold the statistics it chose); in
    train mode they normalise with the batch's own statistics, so the output differs from the
    conv's, and it still trains."""
    seeded(19)
    conv = nn.Conv2d(4, 1, 3, padding=1)
    block, _, _ = convert(conv, BlockSpec("inverted_residual", expand_ratio=4, act="relu"))
    x = torch.randn(2, 4, 7, 7)
    assert_same_output(conv, block, x)  # eval mode: exact
    with torch.no_grad():
        want = conv(x)
    block.train()
    y = block(x)
    assert y.shape == want.shape and rel(y.detach(), want) > 0.01  # train mode: not exact
    y.sum().backward()
    assert block.conv_pw.weight.grad is not None


# -- effective weight -------------------------------------------------------------------------


def test_effective_weight_none_for_nonlinear_dwsep():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    block, spec, g = convert(conv, "dwsep_m2_bn_relu")
    assert decompose.effective_weight(block, spec, g) is None


def test_dense_weight_transposed_groups():
    seeded(20)
    conv = nn.ConvTranspose2d(4, 6, 3, groups=2, stride=2)
    g = ConvGeometry.from_module(conv)
    dense = decompose.dense_weight(conv.weight.detach(), g)
    full = nn.ConvTranspose2d(4, 6, 3, stride=2)
    with torch.no_grad():
        full.weight.copy_(dense)
        full.bias.copy_(conv.bias)
    assert_same_output(conv, full, torch.randn(2, 4, 5, 5))
