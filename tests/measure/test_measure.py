"""MACs equal the seeds' analytic formulas, layer by layer (DESIGN.md section 3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import nas_sepconv as ns
from nas_sepconv.blocks import ConvGeometry
from nas_sepconv.blocks import BlockSpec, resolve_rank


def out_hw(h, k, s, p, d):
    return (h + 2 * p - d * (k - 1) - 1) // s + 1


@pytest.mark.parametrize(
    "cin, cout, k, s, p, d, groups",
    [
        (16, 32, 3, 1, 1, 1, 1),  # standard
        (16, 32, 1, 1, 0, 1, 1),  # pointwise
        (16, 32, 3, 1, 1, 1, 4),  # grouped
        (16, 16, 3, 1, 1, 1, 16),  # depthwise
        (16, 32, 3, 1, 2, 2, 1),  # dilated
        (16, 32, 5, 2, 2, 1, 1),  # strided
        (8, 24, 7, 2, 3, 1, 1),  # stem-like
    ],
)
def test_conv_macs_formula(cin, cout, k, s, p, d, groups):
    conv = nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=groups, bias=True)
    h, w = 17, 20
    ho, wo = out_hw(h, k, s, p, d), out_hw(w, k, s, p, d)
    assert ns.count_macs(conv, torch.randn(1, cin, h, w)) == cout * ho * wo * (cin // groups) * k * k
    assert ns.count_macs(conv, torch.randn(3, cin, h, w)) == 3 * cout * ho * wo * (cin // groups) * k * k


def test_non_square_and_3d_and_1d():
    conv = nn.Conv2d(6, 10, (3, 5), stride=(2, 1), padding=(1, 2))
    ho, wo = out_hw(12, 3, 2, 1, 1), out_hw(12, 5, 1, 2, 1)
    assert ns.count_macs(conv, torch.randn(1, 6, 12, 12)) == 10 * ho * wo * 6 * 15
    c3 = nn.Conv3d(4, 8, 3, padding=1)
    assert ns.count_macs(c3, torch.randn(1, 4, 5, 6, 7)) == 8 * 5 * 6 * 7 * 4 * 27
    c1 = nn.Conv1d(4, 8, 5)
    assert ns.count_macs(c1, torch.randn(1, 4, 20)) == 8 * 16 * 4 * 5


@pytest.mark.parametrize("groups", [1, 2])
def test_transposed_conv_formula(groups):
    conv = nn.ConvTranspose2d(8, 12, 4, stride=2, padding=1, groups=groups)
    h, w = 7, 9
    assert ns.count_macs(conv, torch.randn(1, 8, h, w)) == 8 * h * w * (12 // groups) * 16


def test_linear_formula():
    assert ns.count_macs(nn.Linear(30, 7), torch.randn(5, 30)) == 5 * 30 * 7
    assert ns.count_macs(nn.Linear(30, 7), torch.randn(2, 4, 30)) == 8 * 30 * 7


def test_depthwise_separable_formula():
    cin, cout, k, h, w = 16, 32, 3, 14, 14
    g = ConvGeometry.from_module(nn.Conv2d(cin, cout, k, padding=1))
    block = BlockSpec("dwsep").build(g)
    assert ns.count_macs(block, torch.randn(1, cin, h, w)) == cin * k * k * h * w + cin * cout * h * w
    block2 = BlockSpec("dwsep", dw_mult=2).build(g)
    assert ns.count_macs(block2, torch.randn(1, cin, h, w)) == 2 * cin * k * k * h * w + 2 * cin * cout * h * w


def test_spatially_separable_formula():
    cin, cout, k, h, w = 16, 32, 3, 14, 10
    g = ConvGeometry.from_module(nn.Conv2d(cin, cout, k, stride=2, padding=1))
    r = resolve_rank(g, 0.5)
    block = BlockSpec("spatial", rank=0.5).build(g)
    ho, wo = out_hw(h, k, 2, 1, 1), out_hw(w, k, 2, 1, 1)
    # K x 1 at (ho, w) then 1 x K at (ho, wo)
    assert ns.count_macs(block, torch.randn(1, cin, h, w)) == r * ho * w * cin * k + cout * ho * wo * r * k


def test_functional_conv_and_subclass_are_counted():
    class MyConv(nn.Conv2d):
        pass

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(8, 4, 3, 3))
            self.c = MyConv(8, 8, 3, padding=1)

        def forward(self, x):
            return self.c(F.conv2d(x, self.w, padding=1))

    x = torch.randn(1, 4, 10, 10)
    assert ns.count_macs(Net(), x) == 8 * 100 * 4 * 9 + 8 * 100 * 8 * 9
    df = ns.profile(Net(), x)
    assert df.macs.sum() == ns.count_macs(Net(), x)
    assert set(df.op) == {"MyConv", "functional"}


def test_profile_rows_sum_to_total_and_params():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    x = torch.randn(1, 3, 8, 8)
    df = ns.profile(net, x)
    assert df.macs.sum() == ns.count_macs(net, x) == 8 * 36 * 27 + 288 * 10
    assert df.params.sum() == ns.count_params(net)
    assert list(df.columns) == ["name", "op", "macs", "params", "output_shape"]


def test_counting_leaves_batchnorm_statistics_alone():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).train()
    before = net[1].running_mean.clone()
    ns.count_macs(net, torch.randn(4, 3, 8, 8))
    assert torch.equal(net[1].running_mean, before) and net.training


def test_wrong_input_size_is_a_clear_error():
    with pytest.raises(ns.UserInputError, match="input_size"):
        ns.count_macs(nn.Conv2d(3, 8, 3), torch.randn(1, 4, 8, 8))


def test_latency_returns_positive_median():
    lat = ns.measure_latency(nn.Conv2d(3, 8, 3), torch.randn(1, 3, 16, 16), repeats=3, warmup=1)
    assert lat["median_ms"] > 0


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "googlenet"])
def test_counter_agrees_with_torch_flop_counter(name):
    torchvision = pytest.importorskip("torchvision")
    from torch.utils.flop_counter import FlopCounterMode

    kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    x = torch.randn(1, 3, 64, 64)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    weight_ops = {torch.ops.aten.convolution, torch.ops.aten.addmm, torch.ops.aten.mm}
    flops = sum(v for op, v in counter.get_flop_counts()["Global"].items() if op in weight_ops)
    assert ns.count_macs(model, x) == flops // 2


def test_a_huge_input_size_is_refused_before_it_is_allocated():
    from nas_sepconv.measure import as_inputs

    message = (r"^input_size: \(8, 100000, 100000\) is 298\.0 GiB for the input alone, "
               r"above the budget of 4\.0 GiB; use a smaller input size, e\.g\. 8,224,224$")
    with pytest.raises(ns.UserInputError, match=message):
        as_inputs((8, 100_000, 100_000))
    assert as_inputs((3, 16, 16))[0].shape == (1, 3, 16, 16)


@pytest.mark.parametrize("inputs", [torch.randn(0, 3, 8, 8), (torch.randn(2, 3, 8, 8), torch.randn(0, 4))])
def test_an_input_of_batch_zero_is_refused(inputs):
    from nas_sepconv.measure import as_inputs

    with pytest.raises(ns.UserInputError, match=r"^example_inputs: an input of shape \(0(, \d+)*\) holds no example; "):
        as_inputs(inputs)


def test_no_input_at_all_is_refused():
    from nas_sepconv.measure import as_inputs

    with pytest.raises(ns.UserInputError, match=r"^example_inputs: holds no tensor; pass a tensor"):
        as_inputs(())


def test_check_example_size_estimates_one_example_above_the_gate_only(monkeypatch):
    """A batch of 4 examples of 2 GB of activations each is within the budget (it is per
    example); one example of 4.6 GiB is not; a small input is not estimated at all (no meta
    forward for the usual sizes)."""
    import nas_sepconv.measure.inputs as inputs_mod

    wide = nn.Sequential(nn.Conv2d(3, 1024, 1))
    inputs_mod.check_example_size(wide, (torch.empty(4, 3, 700, 700),))
    message = r"^example_inputs: an input of shape \(1, 3, 1100, 1100\) needs about 4\.6 GiB"
    with pytest.raises(ns.UserInputError, match=message):
        inputs_mod.check_example_size(wide, (torch.empty(1, 3, 1100, 1100),))
    monkeypatch.setattr(inputs_mod, "activation_bytes", lambda *a, **k: pytest.fail("estimated a small input"))
    inputs_mod.check_example_size(wide, (torch.empty(1, 3, 224, 224),))
