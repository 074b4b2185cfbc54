"""MACs equal the seeds' analytic formulas, layer by layer (DESIGN.md section 3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import nas_sepconv as ns
from nas_sepconv.blocks import BlockSpec, ConvGeometry, resolve_rank


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


# Activation-by-activation products (attention): counted with torch.utils.flop_counter's formulas.


class Call(nn.Module):
    """A module whose forward is one call of ``fn`` on its inputs."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def randn(*shapes):
    return tuple(torch.randn(s) for s in shapes)


@pytest.mark.parametrize(
    "fn, shapes, macs",
    [
        (torch.matmul, [(5, 4), (4, 6)], 5 * 6 * 4),
        (torch.matmul, [(2, 1, 3, 4), (5, 4, 6)], 2 * 5 * 3 * 6 * 4),  # broadcast batch
        (torch.matmul, [(4,), (2, 4, 6)], 2 * 6 * 4),  # vector times a batch of matrices
        (lambda a, b: a @ b, [(3, 5, 4), (3, 4, 6)], 3 * 5 * 6 * 4),
        (lambda a, b: a.matmul(b), [(3, 5, 4), (4, 6)], 3 * 5 * 6 * 4),
        (torch.linalg.matmul, [(5, 4), (4, 6)], 5 * 6 * 4),
        (torch.mm, [(5, 4), (4, 6)], 5 * 6 * 4),
        (torch.bmm, [(3, 5, 4), (3, 4, 6)], 3 * 5 * 6 * 4),
        (torch.mv, [(5, 4), (4,)], 5 * 4),
        (torch.dot, [(4,), (4,)], 4),
        (lambda c, a, b: torch.baddbmm(c, a, b), [(3, 5, 6), (3, 5, 4), (3, 4, 6)], 3 * 5 * 6 * 4),
        (lambda c, a, b: c.addmm(a, b), [(5, 6), (5, 4), (4, 6)], 5 * 6 * 4),
        (lambda c, a, b: torch.addbmm(c, a, b), [(5, 6), (3, 5, 4), (3, 4, 6)], 3 * 5 * 6 * 4),
        (lambda a, b: torch.tensordot(a, b, dims=([1, 2], [0, 1])), [(2, 3, 4), (3, 4, 5)], 2 * 5 * 3 * 4),
        (lambda a, b: torch.tensordot(a, b, dims=1), [(2, 3, 4), (4, 5)], 2 * 3 * 5 * 4),
    ],
    ids=[
        "matmul",
        "matmul-broadcast",
        "matmul-vector",
        "@",
        "Tensor.matmul",
        "linalg.matmul",
        "mm",
        "bmm",
        "mv",
        "dot",
        "baddbmm",
        "Tensor.addmm",
        "addbmm",
        "tensordot-lists",
        "tensordot-int",
    ],
)
def test_matrix_product_formula(fn, shapes, macs):
    assert ns.count_macs(Call(fn), randn(*shapes)) == macs


@pytest.mark.parametrize(
    "equation, shapes, macs",
    [
        ("bhqd,bhkd->bhqk", [(2, 3, 5, 8), (2, 3, 7, 8)], 2 * 3 * 5 * 7 * 8),  # attention scores
        ("ij,jk->i", [(3, 4), (4, 5)], 3 * 4),  # k is summed before the product
        ("ij,jk", [(3, 4), (4, 5)], 3 * 4 * 5),  # implicit output ik
        ("...ij,...jk->...ik", [(2, 1, 3, 4), (5, 4, 6)], 2 * 5 * 3 * 4 * 6),
        ("bij,bjk,bkl->bil", [(2, 3, 4), (2, 4, 5), (2, 5, 6)], 2 * 3 * 5 * 4 + 2 * 3 * 6 * 5),  # left to right
        ("ii->i", [(4, 4)], 0),  # one operand: no product
    ],
)
def test_einsum_formula(equation, shapes, macs):
    assert ns.count_macs(Call(lambda *xs: torch.einsum(equation, *xs)), randn(*shapes)) == macs


def test_einsum_operand_list_and_sublist_forms():
    a, b = randn((2, 3, 4), (2, 4, 5))
    assert ns.count_macs(Call(lambda a, b: torch.einsum("bij,bjk->bik", [a, b])), (a, b)) == 2 * 3 * 5 * 4
    sublists = Call(lambda a, b: torch.einsum(a, [0, 1, 2], b, [0, 2, 3], [0, 1, 3]))
    assert ns.count_macs(sublists, (a, b)) == 2 * 3 * 5 * 4


@pytest.mark.parametrize("lead", [(), (3,), (2, 3)], ids=["no-batch", "heads", "batch-heads"])
@pytest.mark.parametrize("is_causal", [False, True])
def test_scaled_dot_product_attention_formula(lead, is_causal):
    length, keys, e, e_v = 5, 7, 8, 6
    inputs = randn((*lead, length, e), (*lead, keys, e), (*lead, keys, e_v))
    sdpa = Call(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=is_causal))
    batch_heads = int(torch.tensor(lead).prod()) if lead else 1
    # Q·Kᵀ: L·S·E, A·V: L·S·E_v, per batch and head; a causal mask counts the same (as in flop_counter)
    assert ns.count_macs(sdpa, inputs) == batch_heads * length * keys * (e + e_v)


def mha_macs(e, length, keys, batch, kdim=None, vdim=None, extra_keys=0):
    """q and output projections, k and v projections, Q·Kᵀ and A·V."""
    kdim, vdim = kdim or e, vdim or e
    projections = 2 * batch * length * e * e + batch * keys * e * (kdim + vdim)
    return projections + 2 * batch * length * (keys + extra_keys) * e


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])  # the bmm path and the SDPA path
def test_multihead_attention_formula(batch_first, need_weights):
    e, heads, length, keys, batch = 16, 4, 5, 7, 2
    mha = nn.MultiheadAttention(e, heads, batch_first=batch_first)
    q, kv = randn((batch, length, e), (batch, keys, e))
    if not batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    attention = Call(lambda q, kv: mha(q, kv, kv, need_weights=need_weights)[0])
    assert ns.count_macs(attention, (q, kv)) == mha_macs(e, length, keys, batch)
    assert ns.count_macs(Call(lambda q: mha(q, q, q)[0]), q) == mha_macs(e, length, length, batch)  # self-attention


def test_multihead_attention_variants_formula():
    e, length, keys, batch = 8, 5, 7, 2
    other_dims = nn.MultiheadAttention(e, 2, kdim=4, vdim=6, bias=False)
    inputs = randn((length, batch, e), (keys, batch, 4), (keys, batch, 6))
    assert ns.count_macs(other_dims, inputs) == mha_macs(e, length, keys, batch, kdim=4, vdim=6)
    extra = nn.MultiheadAttention(e, 2, add_bias_kv=True, add_zero_attn=True)
    inputs = randn((length, batch, e), (keys, batch, e), (keys, batch, e))
    assert ns.count_macs(extra, inputs) == mha_macs(e, length, keys, batch, extra_keys=2)
    unbatched = randn((length, e), (keys, e), (keys, e))
    assert ns.count_macs(nn.MultiheadAttention(e, 2), unbatched) == mha_macs(e, length, keys, 1)


class TinyBlock(nn.Module):
    """A pre-norm transformer block written by hand: attention by ``@``, an MLP."""

    def __init__(self, d=16, heads=4, hidden=32):
        super().__init__()
        self.heads, self.norm1, self.norm2 = heads, nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))

    def forward(self, x):
        n, length, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(n, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(n, length, d))
        return x + self.mlp(self.norm2(x))


def test_transformer_blocks_formula():
    d, hidden, heads, length, batch = 16, 32, 4, 5, 2
    rows = batch * length
    # q, k, v and output projections; Q·Kᵀ and A·V; the MLP's two layers
    expected = 4 * rows * d * d + 2 * rows * length * d + 2 * rows * d * hidden
    x = torch.randn(batch, length, d)
    assert ns.count_macs(TinyBlock(d, heads, hidden), x) == expected
    assert ns.count_macs(nn.TransformerEncoderLayer(d, heads, hidden, batch_first=True), x) == expected
    df = ns.profile(TinyBlock(d, heads, hidden), x).set_index("name")
    assert df.loc["(root)", "op"] == "functional" and df.loc["(root)", "macs"] == 2 * rows * length * d
    assert df.macs.sum() == expected


def flop_counter_macs(model, inputs):
    """FlopCounterMode's FLOPs / 2, with autograd on (in eval and no_grad nn.MultiheadAttention
    takes a fused path FlopCounterMode counts as nothing) and the math attention kernel (the CPU
    flash kernel has no formula there)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        model(*inputs)
    return counter.get_total_flops() // 2


def test_counter_agrees_with_torch_flop_counter_on_attention():
    d, length, batch = 16, 5, 2
    x, memory = torch.randn(batch, length, d), torch.randn(batch, 7, d)
    models = {
        "hand-written": (TinyBlock(d), (x,)),
        "encoder": (nn.TransformerEncoderLayer(d, 4, 32, batch_first=True), (x,)),
        "decoder": (nn.TransformerDecoderLayer(d, 4, 32, batch_first=True), (x, memory)),
        "transformer": (nn.Transformer(d, 4, 1, 1, 32, batch_first=True), (memory, x)),
        "einsum": (Call(lambda q, k: torch.einsum("bqd,bkd->bqk", q, k).softmax(-1)), (x, memory)),
    }
    for name, (model, inputs) in models.items():
        model.eval()
        assert ns.count_macs(model, inputs) == flop_counter_macs(model, inputs) > 0, name


@pytest.mark.parametrize("name, size", [("vit_b_16", 32), ("swin_t", 64), ("swin_v2_t", 64), ("maxvit_t", 224)])
def test_counter_agrees_with_torch_flop_counter_on_torchvision_attention(name, size):
    torchvision = pytest.importorskip("torchvision")
    kwargs = {"image_size": size} if name.startswith("vit") else {}
    with torch.device("meta"):  # shapes only: no weights initialised, no arithmetic
        model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
        x = torch.empty(1, 3, size, size)
    assert ns.count_macs(model, x) == flop_counter_macs(model, (x,))


class Hybrid(nn.Module):
    """Two convolutions, then self-attention over the 8×8 positions, then a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        tokens = self.conv(self.stem(x).relu()).flatten(2).transpose(1, 2)
        return self.head(self.attn(tokens, tokens, tokens)[0].mean(1))


def test_plan_of_a_hybrid_model_counts_its_attention():
    net, x = Hybrid(), torch.randn(1, 3, 16, 16)
    stem, conv = 16 * 16 * 16 * 3 * 9, 32 * 8 * 8 * 16 * 9
    attention, head = mha_macs(32, 64, 64, 1), 32 * 10
    plan = ns.make_plan(net, "dwsep", example_inputs=x)
    assert plan.model_macs == ns.count_macs(net, x) == stem + conv + attention + head
    dwsep = 16 * 9 * 8 * 8 + 16 * 32 * 8 * 8
    assert plan.macs_after == ns.count_macs(ns.apply_plan(net, plan), x) == stem + dwsep + attention + head
    assert f"MACs {stem + conv + attention + head:,} -> {plan.macs_after:,}" in plan.summary()


def _build_on_meta(torchvision, name, **kwargs):
    """``name`` without weights on the meta device (built on the CPU and moved when its builder
    computes with tensors, as the RegNets' does)."""
    try:
        with torch.device("meta"):
            return torchvision.models.get_model(name, weights=None, **kwargs)
    except NotImplementedError:
        return torchvision.models.get_model(name, weights=None, **kwargs).to("meta")


@pytest.mark.slow  # about 50 s on 2 busy CPU cores: 80 classifiers, most built on the meta device
def test_macs_match_torchvision_published_multiply_adds():
    """torchvision's weights metadata carry each classifier's multiply-adds at its input size
    (``_ops``, in G; "GFLOPS" in its tables, multiply-adds in fact: ResNet-50's 4.09)."""
    torchvision = pytest.importorskip("torchvision")
    names = torchvision.models.list_models(module=torchvision.models)
    ratios = {}
    for name in names:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        crop = weights.transforms().crop_size[0]
        kwargs = {"image_size": crop} if name.startswith("vit") else {}
        if name in ("googlenet", "inception_v3"):
            kwargs.update(aux_logits=False, init_weights=False)
        model = _build_on_meta(torchvision, name, **kwargs)
        macs = ns.count_macs(model, torch.empty(1, 3, crop, crop, device="meta"))
        ratios[name] = macs / (weights.meta["_ops"] * 1e9)
    off = {name: round(r, 4) for name, r in ratios.items() if abs(r - 1) > 0.02}
    assert not off, f"count_macs / torchvision's multiply-adds off by more than 2 %: {off}"
    assert len(ratios) == len(names) >= 80 and any(name.startswith("vit") for name in ratios)


def test_a_huge_input_size_is_refused_before_it_is_allocated():
    from nas_sepconv.measure import as_inputs

    message = (
        r"^input_size: \(8, 100000, 100000\) is 298\.0 GiB for the input alone, "
        r"above the budget of 4\.0 GiB; use a smaller input size, e\.g\. 8,224,224$"
    )
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
