"""The supernet and its subnets: weight sharing, and extracted subnets that are plain models
giving the supernet's outputs."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn as nn

from nas_sepconv.blocks import BlockSpec
from nas_sepconv.errors import UserInputError
from nas_sepconv.models import build_network
from nas_sepconv.oneshot import StageOptions, Supernet, SupernetSpace, extract, weight_key
from nas_sepconv.oneshot.supernet import resize
from nas_sepconv.search import load_space
from nas_sepconv.search.supernet_space import supernet_space


@pytest.fixture(scope="module")
def space() -> SupernetSpace:
    return supernet_space(load_space("default"), input_shape=(1, 16, 16), num_classes=10)


@pytest.fixture(scope="module")
def supernet(space) -> Supernet:
    torch.manual_seed(0)
    net = Supernet(space)
    _perturb_batchnorm(net)
    return net.eval()


def _perturb_batchnorm(net: nn.Module) -> None:
    """Non-trivial BatchNorm weights and statistics, so that slicing them wrongly shows."""
    gen = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=gen) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=gen) * 0.1
            m.running_mean = torch.randn(m.running_mean.shape, generator=gen) * 0.1
            m.running_var = torch.rand(m.running_var.shape, generator=gen) + 0.5


def _archs(space: SupernetSpace, n: int = 8) -> list:
    rng = random.Random(3)
    return [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(n))]


def test_extracted_subnets_give_the_supernets_outputs(space, supernet):
    x = torch.randn(6, 1, 16, 16)
    for arch in _archs(space):
        expected = supernet(x, arch)
        model = extract(supernet, arch)
        torch.testing.assert_close(model(resize(x, arch.input_size)), expected, rtol=0, atol=1e-6)


def test_set_active_runs_that_arch(space, supernet):
    x = torch.randn(2, 1, 16, 16)
    arch = space.smallest()
    supernet.set_active(arch)
    torch.testing.assert_close(supernet(x), supernet(x, arch))


def test_an_extracted_subnet_is_a_plain_network(space, supernet):
    arch = space.sample(random.Random(5))
    model = extract(supernet, arch)
    assert not model.training
    assert not any(type(m).__module__.startswith("nas_sepconv.oneshot") for m in model.modules())
    fresh = build_network(arch)
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert [type(m) for m in fresh.modules()] == [type(m) for m in model.modules()]
    traced = torch.fx.symbolic_trace(model)  # export and profile trace it like any built network
    x = torch.randn(2, 1, arch.input_size, arch.input_size)
    torch.testing.assert_close(traced(x), model(x))


def test_smaller_kernels_widths_and_depths_share_the_largest(space, supernet):
    """OFA: a 3x3 kernel is the centre of the 5x5, fewer channels the first ones, a shallower
    stage its first blocks."""
    big = space.largest()
    ir = BlockSpec("inverted_residual", expand_ratio=4, kernel_size=5)
    small_ir = BlockSpec("inverted_residual", expand_ratio=2, kernel_size=3)
    stages = (big.stages[0].__class__(small_ir, 16, 1, 1), *big.stages[1:])
    small = big.replace(stages=stages, width_mult=0.5, depth_mult=0.5)
    source = supernet.stages[0][0][weight_key(ir)].block.conv_dw.weight
    got = extract(supernet, small).stages[0][0].block.conv_dw.weight
    assert got.shape == (16, 1, 3, 3)  # width 0.5 of 16 channels (8) expanded twice
    torch.testing.assert_close(got, source[:16, :, 1:4, 1:4])
    stem = extract(supernet, small).stem[0].weight
    torch.testing.assert_close(stem, supernet.stem[0].weight[:8])
    assert len(extract(supernet, small).stages[1]) == 1 and len(supernet.stages[1]) == 2


def test_kinds_and_se_keep_weight_sets_of_their_own(supernet):
    """SPOS: choices that cannot nest (kind, SE on/off, groups) each hold their own weights."""
    keys = set(supernet.stages[1][0].keys())
    se_on = weight_key(BlockSpec("inverted_residual", se_ratio=0.25))
    se_off = weight_key(BlockSpec("inverted_residual", se_ratio=0.0))
    grouped = {weight_key(BlockSpec("grouped", groups=g)) for g in (2, 4)}
    assert {se_on, se_off, weight_key(BlockSpec("dwsep")), weight_key(BlockSpec("keep"))} | grouped == keys
    assert weight_key(BlockSpec("inverted_residual", se_ratio=0.25, kernel_size=5, act="hswish")) == se_on


def test_a_training_step_reaches_only_the_shared_part(space):
    torch.manual_seed(0)
    net = Supernet(space).train()
    big = space.largest()
    small_ir = BlockSpec("inverted_residual", expand_ratio=2, kernel_size=3)
    arch = big.replace(stages=(big.stages[0].__class__(small_ir, 16, 1, 1), *big.stages[1:]))
    net(torch.randn(4, 1, 16, 16), arch).sum().backward()
    grad = net.stages[0][0][weight_key(small_ir)].block.conv_dw.weight.grad
    assert grad[:32, :, 1:4, 1:4].abs().sum() > 0
    outside = grad.clone()
    outside[:32, :, 1:4, 1:4] = 0
    assert outside.abs().sum() == 0


def _options_space() -> SupernetSpace:
    """A space of the other kinds and options: dw multipliers, ranks, groups, expansion 1, a gdc head."""
    specs = ("dwsep_m1", "dwsep_m2_k5", "spatial_r0.25", "spatial_r0.5_k5", "spatial_r3", "grouped_g2", "ir_e1_k5")
    return SupernetSpace(
        stages=(
            StageOptions(16, 1, 1, tuple(BlockSpec.parse(s) for s in specs), (True, False)),
            StageOptions(24, 2, 2, tuple(BlockSpec.parse(s) for s in ("ir_e1", "ir_e3_se0.25_bn", "grouped_g4"))),
        ),
        widths=(0.5, 1.0),
        depths=(0.5, 1.0),
        resolutions=(10, 16),
        acts=("relu", "hswish"),
        heads=("avgpool", "gdc"),
        stem_channels=8,
        stem_stride=1,
        head_channels=32,
        num_classes=5,
        in_channels=3,
        dropout=0.1,
    )


def test_every_kind_and_head_extracts_exactly():
    space = _options_space()
    torch.manual_seed(0)
    net = Supernet(space)
    _perturb_batchnorm(net)
    net.eval()
    x = torch.randn(3, 3, 16, 16)
    for arch in _archs(space, 24):
        torch.testing.assert_close(extract(net, arch)(resize(x, arch.input_size)), net(x, arch), rtol=0, atol=1e-6)


def test_an_arch_outside_the_space_is_refused(space, supernet):
    x = torch.randn(2, 1, 16, 16)
    big = space.largest()
    with pytest.raises(UserInputError, match="num_classes"):
        supernet(x, big.replace(num_classes=3))
    with pytest.raises(UserInputError, match="supernet holds"):
        supernet(x, big.replace(width_mult=2.0))
    other = BlockSpec("dw_spatial")
    with pytest.raises(UserInputError, match="no weights"):
        supernet(x, big.replace(stages=(big.stages[0].__class__(other, 16, 1, 1), *big.stages[1:])))
    with pytest.raises(UserInputError, match="no subnet"):
        Supernet(space)(x)


def test_fair_sampling_trains_each_stage_weight_set_in_turn(space):
    rng = random.Random(4)
    for stage_index, stage in enumerate(space.stages):
        sets = {weight_key(spec) for spec in stage.specs}
        archs = space.sample_fair(rng, len(sets))
        drawn = [weight_key(arch.stages[stage_index].spec) for arch in archs]
        assert sorted(drawn) == sorted(sets)  # every weight set once, in n = as many subnets as there are sets
    assert len(space.sample_fair(rng, 3)) == 3
    assert all(arch.width_mult in space.widths for arch in space.sample_fair(rng, 5))
