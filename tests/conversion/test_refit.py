"""Data-aware refit and fidelity on small random-weight CNNs.

Converted models are built by hand here (deepcopy + setattr of the blocks at the conv paths)
with a stand-in plan that has ``.entries`` of (name, spec, converted) records, so these tests
need nothing but decompose and the blocks.
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

from nas_sepconv.blocks import BlockSpec, ConvGeometry
from nas_sepconv.blocks import closed_form as decompose
from nas_sepconv.conversion import conv_patches, fidelity, refit
from nas_sepconv.errors import UserInputError

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: see conftest


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.bn3 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean((2, 3)))


def digits(n: int = 192) -> torch.Tensor:
    try:
        from sklearn.datasets import load_digits

        return torch.tensor(load_digits().images[:n], dtype=torch.float32).unsqueeze(1) / 16
    except ImportError:  # smooth random images
        x = torch.nn.functional.avg_pool2d(torch.rand(n, 1, 10, 10), 3, 1)
        return x / x.amax()


@pytest.fixture(scope="module")
def data() -> list[torch.Tensor]:
    return list(digits().split(64))


@pytest.fixture(scope="module")
def net(data) -> Net:
    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():  # BatchNorm running statistics from the data
        for x in data:
            model(x)
    return model.eval()


def convert(model: nn.Module, spec: str, names: list[str]) -> tuple[nn.Module, SimpleNamespace]:
    converted = copy.deepcopy(model)
    entries = []
    for name in names:
        conv = model.get_submodule(name)
        g = ConvGeometry.from_module(conv)
        s = BlockSpec.parse(spec)
        block = s.build(g)
        decompose.initialise(block, s, g, conv.weight, conv.bias)
        parent, _, leaf = name.rpartition(".")
        setattr(converted.get_submodule(parent) if parent else converted, leaf, block.train(conv.training))
        entries.append(SimpleNamespace(name=name, spec=s, converted=True))
    return converted, SimpleNamespace(entries=entries)


SITES = ["conv2", "conv3"]


def test_refit_dwsep_m1_reduces_error_substantially(net, data):
    converted, plan = convert(net, "dwsep_m1", SITES)
    with torch.no_grad():
        logits_before = (converted(data[0]) - net(data[0])).norm() / net(data[0]).norm()
    df = refit(converted, net, data, plan=plan)
    assert list(df["name"]) == SITES
    assert set(df.columns) >= {"name", "kind", "rel_output_error_before", "rel_output_error_after"}
    assert (df["kind"] == "dwsep").all() and df["refit_applied"].all()
    assert (df["rel_output_error_after"] <= df["rel_output_error_before"]).all()
    assert (df["rel_output_error_after"] < 0.7 * df["rel_output_error_before"]).all()
    with torch.no_grad():
        logits_after = (converted(data[0]) - net(data[0])).norm() / net(data[0]).norm()
    assert logits_after < logits_before


@pytest.mark.parametrize(
    "spec", ["spatial_r0.25", "dw_spatial_m1", "grouped_g4", "ir_e4_relu", "ir_e2_se0.25_hswish", "dwsep_m2_bn_relu"]
)
def test_refit_never_increases_error(net, data, spec):
    converted, plan = convert(net, spec, SITES)
    df = refit(converted, net, data, plan=plan)
    assert (df["rel_output_error_after"] <= df["rel_output_error_before"] + 1e-12).all()
    assert (df["rel_output_error_after"] < df["rel_output_error_before"]).any()
    after = fidelity(converted, net, data, plan=plan)
    # the error reported after refit is the error the model now has at each site
    assert after["rel_output_error"].to_numpy() == pytest.approx(
        df["rel_output_error_after"].to_numpy(), rel=1e-3, abs=1e-6
    )


def test_refit_keeps_old_weights_when_solve_would_hurt(net, data):
    converted, plan = convert(net, "dwsep_m1", SITES)
    before = {k: v.clone() for k, v in converted.state_dict().items()}
    df = refit(converted, net, data, plan=plan, ridge=1e8, iterations=0)  # the last-linear solve
    assert not df["refit_applied"].any()
    assert df["note"].str.contains("old weights kept").all()
    assert (df["rel_output_error_after"] == df["rel_output_error_before"]).all()
    for k, v in converted.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_joint_refit_beats_last_linear_refit(net, data):
    last, plan = convert(net, "dwsep_m1", SITES)
    joint = copy.deepcopy(last)
    a = refit(last, net, data, plan=plan, iterations=0)
    b = refit(joint, net, data, plan=plan)
    assert (a["method"] == "last linear").all() and b["method"].str.startswith("joint").all()
    # same start, and the joint solve's first pointwise step is the last-linear solve
    assert b["rel_output_error_before"].iloc[0] == pytest.approx(a["rel_output_error_before"].iloc[0], rel=1e-9)
    assert b["rel_output_error_after"].iloc[0] < 0.95 * a["rel_output_error_after"].iloc[0]
    fid = fidelity(joint, net, data, plan=plan)
    assert fid["rel_output_error"].to_numpy() == pytest.approx(
        b["rel_output_error_after"].to_numpy(), rel=1e-3, abs=1e-6
    )


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("stride, dilation", [(1, 1), (2, 2)])
def test_joint_refit_recovers_separable_conv_from_wrong_factors(bias, stride, dilation):
    """The original conv *is* a dwsep_m2 block; the converted block starts from random factors
    (the last-linear refit cannot fix the depthwise filters); alternating least squares finds
    an exact fit."""
    torch.manual_seed(5)
    g = ConvGeometry.from_module(nn.Conv2d(6, 8, 3, stride=stride, dilation=dilation, padding=dilation, bias=bias))
    spec = BlockSpec.parse("dwsep_m2")
    truth = spec.build(g)
    original = nn.Sequential(nn.Conv2d(6, 8, 3, stride=stride, dilation=dilation, padding=dilation, bias=bias))
    with torch.no_grad():
        original[0].weight.copy_(decompose.effective_weight(truth, spec, g))
        if bias:
            original[0].bias.normal_()
    converted = nn.Sequential(spec.build(g))  # random factors
    plan = SimpleNamespace(entries=[SimpleNamespace(name="0", spec=spec, converted=True)])
    batches = [torch.randn(16, 6, 11, 11) for _ in range(2)]
    last = copy.deepcopy(converted)
    assert refit(last, original, batches, plan=plan, iterations=0)["rel_output_error_after"].iloc[0] > 0.05
    df = refit(converted, original, batches, plan=plan, iterations=50, ridge=0.0)
    assert df["rel_output_error_before"].iloc[0] > 0.5
    assert df["rel_output_error_after"].iloc[0] < 1e-4
    with torch.no_grad():
        x = torch.randn(2, 6, 11, 11)  # not calibration data: the block equals the conv
        torch.testing.assert_close(converted(x), original(x), rtol=1e-3, atol=1e-4)


def test_joint_refit_conjugate_gradients_match_direct_solve(net, data, monkeypatch):
    """Large depthwise steps (C_in·m·K² > DIRECT_MAX) are solved by conjugate gradients."""
    from nas_sepconv.blocks import closed_form_joint as joint_refit

    direct, plan = convert(net, "dwsep_m2", SITES)
    iterative = copy.deepcopy(direct)
    want = refit(direct, net, data, plan=plan, iterations=3)
    monkeypatch.setattr(joint_refit, "DIRECT_MAX", 0)
    got = refit(iterative, net, data, plan=plan, iterations=3)
    assert got["rel_output_error_after"].to_numpy() == pytest.approx(
        want["rel_output_error_after"].to_numpy(), rel=1e-3
    )


def test_joint_refit_keeps_old_weights_when_solve_would_hurt(net, data, monkeypatch):
    import dataclasses

    from nas_sepconv.blocks import kinds as specs

    def harmful(block, g, xtx, xty, **options):
        with torch.no_grad():
            block.conv_pw.weight.zero_()

    kind = specs.KINDS["dwsep"]
    monkeypatch.setitem(
        specs.KINDS,
        "dwsep",
        dataclasses.replace(kind, joint_refit=dataclasses.replace(kind.joint_refit, solve=harmful)),
    )
    converted, plan = convert(net, "dwsep_m1", SITES)
    before = {k: v.clone() for k, v in converted.state_dict().items()}
    df = refit(converted, net, data, plan=plan)
    assert not df["refit_applied"].any() and df["note"].str.contains("old weights kept").all()
    for k, v in converted.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_joint_refit_skips_blocks_it_cannot_solve(net, data):
    for spec in ("dwsep_m1_bn_relu", "dwsep_m1_k5"):
        converted, plan = convert(net, spec, SITES)
        df = refit(converted, net, data, plan=plan)
        assert (df["method"] == "last linear").all(), spec


def test_refit_all_layers_also_resolves_kept_layers(net, data):
    converted, plan = convert(net, "dwsep_m1", ["conv2"])
    only = copy.deepcopy(converted)
    refit(only, net, data, plan=plan)
    df = refit(converted, net, data, plan=plan, layers="all")
    assert list(df["name"]) == ["conv1", "conv2", "conv3", "fc"]
    assert list(df["kind"]) == ["unconverted", "dwsep", "unconverted", "unconverted"]
    assert (df["rel_output_error_after"] <= df["rel_output_error_before"] + 1e-12).all()
    assert df["rel_output_error_before"].iloc[0] < 1e-6  # conv1 sees the same input in both models
    torch.testing.assert_close(converted.conv1.weight, net.conv1.weight, rtol=1e-4, atol=1e-5)
    x = torch.cat(data)
    with torch.no_grad():
        err_all = (converted(x) - net(x)).norm()
        err_converted = (only(x) - net(x)).norm()
    assert err_all < 0.9 * err_converted


def test_refit_recovers_a_perturbed_linear_layer():
    torch.manual_seed(6)
    original = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(1), nn.Linear(4 * 4 * 4, 5))
    converted = copy.deepcopy(original)
    with torch.no_grad():
        converted[2].weight.add_(torch.randn_like(converted[2].weight))
    plan = SimpleNamespace(entries=[])
    df = refit(converted, original, [torch.randn(256, 2, 6, 6)], plan=plan, layers="all", ridge=0.0)
    assert list(df["name"]) == ["0", "2"]
    assert df["rel_output_error_before"].iloc[1] > 0.1 and df["rel_output_error_after"].iloc[1] < 1e-5
    torch.testing.assert_close(converted[2].weight, original[2].weight, rtol=1e-3, atol=1e-4)


def test_refit_restores_modes_and_leaves_original_alone(net, data):
    converted, plan = convert(net, "dwsep_m1", SITES)
    converted.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    refit(converted, net, data, plan=plan)
    assert all(m.training for m in converted.modules())
    assert not net.training
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)


def test_refit_follows_forward_order_and_tuple_batches(net, data):
    converted, plan = convert(net, "dwsep_m1", ["conv3", "conv2"])
    batches = [(x, torch.zeros(len(x), dtype=torch.long)) for x in data]  # DataLoader style
    df = refit(converted, net, batches, plan=plan)
    assert list(df["name"]) == ["conv2", "conv3"]


def test_refit_reads_plan_from_graphmodule_meta(net, data):
    converted, plan = convert(net, "dwsep_m1", SITES)
    gm = fx.symbolic_trace(net)  # as apply_plan does: blocks set at the conv nodes' targets
    for name in SITES:
        gm.set_submodule(name, copy.deepcopy(converted.get_submodule(name)))
    gm.recompile()
    with pytest.raises(UserInputError, match="plan"):
        refit(gm, net, data)
    gm.meta["nas_sepconv.plan"] = plan
    df = refit(gm, net, data)
    assert df["refit_applied"].all()
    assert set(fidelity(gm, net, data)["name"]) == set(SITES)


def test_refit_observes_blocks_inlined_by_retracing(net, data):
    converted, plan = convert(net, "dwsep_m1", SITES)
    gm = fx.symbolic_trace(converted)  # the blocks' parts become call_module nodes of their own
    df = refit(gm, net, data, plan=plan)
    assert df["refit_applied"].all()
    fid = fidelity(gm, net, data, plan=plan)
    assert fid["rel_output_error"].to_numpy() == pytest.approx(df["rel_output_error_after"].to_numpy(), rel=1e-3)
    assert fid["rel_output_error_local"].isna().all()


def test_refit_missing_site_gives_nan_row(net, data):
    converted, plan = convert(net, "dwsep_m1", SITES)
    plan.entries.append(SimpleNamespace(name="nowhere", spec=BlockSpec.parse("dwsep"), converted=True))
    plan.entries.append(SimpleNamespace(name="conv1", spec=None, converted=False))
    df = refit(converted, net, data, plan=plan)
    assert list(df["name"]) == ["conv2", "conv3", "nowhere"]
    assert math.isnan(df["rel_output_error_after"].iloc[-1])
    assert math.isnan(fidelity(converted, net, data, plan=plan)["rel_weight_error"].iloc[-1])


def test_refit_rejects_bad_arguments(net, data):
    converted, plan = convert(net, "dwsep_m1", SITES)
    with pytest.raises(UserInputError, match="ridge"):
        refit(converted, net, data, plan=plan, ridge=-1)
    with pytest.raises(UserInputError, match="batches"):
        refit(converted, net, [], plan=plan)
    with pytest.raises(UserInputError, match="iterations"):
        refit(converted, net, data, plan=plan, iterations=-1)
    with pytest.raises(UserInputError, match="layers"):
        refit(converted, net, data, plan=plan, layers="some")


# -- the regression itself --------------------------------------------------------------------

GEOMETRIES = [
    lambda: nn.Conv2d(4, 6, 3, padding=1),
    lambda: nn.Conv2d(4, 6, (3, 5), stride=2, dilation=(2, 1), padding=(2, 1), padding_mode="reflect", groups=2),
    lambda: nn.Conv2d(4, 6, (2, 3), padding="same", padding_mode="circular", bias=False),
    lambda: nn.Conv1d(4, 6, 3, stride=2, padding="valid"),
    lambda: nn.Conv3d(2, 4, 3, padding=1, dilation=2, padding_mode="replicate"),
]


@pytest.mark.parametrize("make", GEOMETRIES)
def test_conv_patches_reproduce_conv(make):
    torch.manual_seed(1)
    conv = make()
    x = torch.randn(2, conv.in_channels, *([9] * len(conv.kernel_size)))
    p = conv_patches(conv, x)
    groups = conv.groups
    w = conv.weight.reshape(groups, conv.out_channels // groups, -1)
    y = torch.cat([p.reshape(p.shape[0], groups, -1)[:, gi] @ w[gi].T for gi in range(groups)], 1)
    if conv.bias is not None:
        y = y + conv.bias
    with torch.no_grad():
        want = conv(x).movedim(1, -1).reshape(-1, conv.out_channels)
    torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("make", GEOMETRIES)
def test_refit_recovers_a_perturbed_conv_exactly(make):
    torch.manual_seed(2)
    original = nn.Sequential(make())
    converted = copy.deepcopy(original)
    with torch.no_grad():
        for p in converted.parameters():
            p.add_(0.5 * torch.randn_like(p))
    conv = original[0]
    batches = [torch.randn(8, conv.in_channels, *([9] * len(conv.kernel_size))) for _ in range(2)]
    plan = SimpleNamespace(entries=[SimpleNamespace(name="0", spec=BlockSpec("keep"), converted=True)])
    df = refit(converted, original, batches, plan=plan, ridge=0.0)
    assert df["rel_output_error_before"].iloc[0] > 0.1
    assert df["rel_output_error_after"].iloc[0] < 1e-4
    torch.testing.assert_close(converted[0].weight, conv.weight, rtol=1e-3, atol=1e-4)


def test_refit_spatial_k_tap_part_recovers_full_rank():
    torch.manual_seed(3)
    original = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect", stride=(1, 2)))
    converted, plan = convert(original, "spatial_r1.0", ["0"])
    with torch.no_grad():
        converted[0].conv_h.weight.mul_(torch.rand_like(converted[0].conv_h.weight))
    batches = [torch.randn(8, 4, 9, 9) for _ in range(2)]
    df = refit(converted, original, batches, plan=plan)
    assert df["rel_output_error_before"].iloc[0] > 0.1
    assert df["rel_output_error_after"].iloc[0] < 1e-3


# -- fidelity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["dwsep_m9", "spatial_r1.0", "dw_spatial_m9", "keep"])
def test_fidelity_zero_at_full_rank(net, data, spec):
    converted, plan = convert(net, spec, SITES)
    df = fidelity(converted, net, data, plan=plan)
    assert list(df.columns) == ["name", "kind", "rel_weight_error", "rel_output_error", "rel_output_error_local"]
    assert list(df["name"]) == SITES
    assert (df[["rel_weight_error", "rel_output_error", "rel_output_error_local"]] < 1e-4).all().all()


def test_fidelity_consistent_with_refit_and_decompose(net, data):
    converted, plan = convert(net, "dwsep_m2", SITES)
    fid = fidelity(converted, net, data, plan=plan)
    # first site: same input in both models, so accumulated == local
    assert fid["rel_output_error"].iloc[0] == pytest.approx(fid["rel_output_error_local"].iloc[0], rel=1e-6)
    # weight error is the Eckart–Young error of decompose
    conv = net.conv2
    g = ConvGeometry.from_module(conv)
    mats = decompose.per_channel_matrices(conv.weight.detach(), g).double()
    s = torch.linalg.svdvals(mats)
    want = (s[:, 2:].square().sum() / s.square().sum()).sqrt().item()
    assert fid["rel_weight_error"].iloc[0] == pytest.approx(want, rel=1e-4)
    df = refit(converted, net, data, plan=plan)
    assert df["rel_output_error_before"].iloc[0] == pytest.approx(fid["rel_output_error"].iloc[0], rel=1e-5)


def test_fidelity_nan_weight_error_for_inverted_residual(net, data):
    converted, plan = convert(net, "ir_e4_relu", SITES)
    df = fidelity(converted, net, data, plan=plan)
    assert df["rel_weight_error"].isna().all()
    assert (df["rel_output_error"] > 0).all()


def test_fidelity_counts_cropped_kernel_as_error():
    torch.manual_seed(4)
    original = nn.Sequential(nn.Conv2d(4, 6, 5, padding=2))
    converted, plan = convert(original, "keep_k3", ["0"])
    df = fidelity(converted, original, [torch.randn(2, 4, 8, 8)], plan=plan)
    w = original[0].weight
    want = ((w.square().sum() - w[:, :, 1:4, 1:4].square().sum()) / w.square().sum()).sqrt().item()
    assert df["rel_weight_error"].iloc[0] == pytest.approx(want, rel=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_refit_on_cuda_matches_cpu(net, data):
    on_cpu, plan = convert(net, "dwsep_m1", SITES)
    on_gpu = copy.deepcopy(on_cpu)
    want = refit(on_cpu, net, data, plan=plan)
    got = refit(on_gpu, net, data, plan=plan, device="cuda")
    assert next(net.parameters()).device.type == "cpu"  # the original is copied, not moved
    assert next(on_gpu.parameters()).device.type == "cuda"
    assert got["rel_output_error_after"].to_numpy() == pytest.approx(
        want["rel_output_error_after"].to_numpy(), rel=1e-3
    )


def test_refit_shows_progress_only_when_asked(capsys):
    """progress=True: plain lines with done/total on a stderr that is not a terminal (issue 19);
    without it the library prints nothing."""
    import nas_sepconv as ns
    from nas_sepconv.models import tiny_convnet

    torch.manual_seed(0)
    original = tiny_convnet().eval()
    x = torch.randn(8, 1, 16, 16)
    converted = ns.convert(original, "dwsep", example_inputs=x[:1])
    sites = len(ns.plan_of(converted).converted)
    refit(converted, original, [x], iterations=1)
    assert capsys.readouterr().err == ""
    table = refit(converted, original, [x], iterations=1, progress=True)
    err = capsys.readouterr().err
    assert f"refit: {sites}/{sites} sites" in err and len(table) == sites, err
