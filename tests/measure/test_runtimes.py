"""The runtimes table, latency measured in each runtime, and ONNX export checked against PyTorch
with ONNX Runtime.  Structure only: no test asserts a speed."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

import nas_sepconv as ns
from nas_sepconv.errors import UserInputError
from nas_sepconv.measure import RUNTIMES, find_runtime, onnx_session, run_onnx, time_rounds, to_onnx
from nas_sepconv.models import tiny_convnet

pytestmark = pytest.mark.usefixtures("one_thread")


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).train()


@pytest.mark.parametrize("runtime", list(RUNTIMES))
def test_every_runtime_measures_and_leaves_the_model_alone(runtime):
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    lat = ns.measure_latency(net, torch.randn(1, 3, 12, 12), runtime=runtime, repeats=3, warmup=1, threads=1)
    assert set(lat) == {"median_ms", "p10_ms", "p90_ms"}
    assert 0 < lat["p10_ms"] <= lat["median_ms"] <= lat["p90_ms"]
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert net[0].weight.is_contiguous()  # channels_last was applied to a copy


def test_runtime_records_state_what_they_are():
    assert {"eager", "channels_last", "optimized", "onnxruntime"} <= set(RUNTIMES)
    for record in RUNTIMES.values():
        assert record.memory_format in ("contiguous", "channels_last") and record.description
        assert record.version().split()[0] in ("torch", "onnxruntime")


def test_unknown_and_missing_runtimes_are_user_errors(monkeypatch):
    with pytest.raises(UserInputError, match="unknown runtime 'tvm'") as info:
        ns.measure_latency(_net(), (3, 8, 8), runtime="tvm")
    assert info.value.field == "runtime" and "onnxruntime" in info.value.fix
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails, as when it is not installed
    with pytest.raises(UserInputError, match="not installed") as info:
        find_runtime("onnxruntime", field="--runtime")
    assert info.value.field == "--runtime" and "nas-sepconv[onnx]" in info.value.fix


def test_onnxruntime_refuses_what_it_cannot_run():
    with pytest.raises(UserInputError) as info:
        ns.measure_latency(_net(), (3, 8, 8), runtime="onnxruntime", dtype=torch.float64)
    assert info.value.field == "dtype"


def test_bad_repeats_are_user_errors():
    with pytest.raises(UserInputError) as info:
        ns.measure_latency(_net(), (3, 8, 8), repeats=0)
    assert info.value.field == "repeats"


def test_time_rounds_interleaves_and_alternates_the_order():
    calls: list[str] = []
    times = time_rounds([lambda: calls.append("a"), lambda: calls.append("b")], repeats=3, warmup=1)
    assert [len(t) for t in times] == [3, 3]
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]


def test_onnx_export_of_a_converted_model_matches_pytorch(tmp_path):
    net = tiny_convnet().eval()
    x = torch.randn(1, 1, 16, 16)
    converted = ns.convert(net, "dwsep", example_inputs=x).eval()
    path = to_onnx(converted, x, tmp_path / "m.onnx")
    session = onnx_session(path, threads=1)
    batch = torch.randn(3, 1, 16, 16)  # the batch dimension is dynamic
    (y,) = run_onnx(session, batch)
    with torch.no_grad():
        np.testing.assert_allclose(y, converted(batch).numpy(), rtol=1e-4, atol=1e-5)
    assert [o.name for o in session.get_outputs()] == ["output"]


class _Volume(nn.Module):
    """A Conv3d model (5-D weights), with a Conv2d on a slice when ``mixed``."""

    def __init__(self, mixed: bool = False):
        super().__init__()
        self.conv3d = nn.Conv3d(3, 4, 3, padding=1)
        self.conv2d = nn.Conv2d(4, 4, 3, padding=1) if mixed else None

    def forward(self, x):
        y = self.conv3d(x).mean(2)
        return self.conv2d(y) if self.conv2d is not None else y


def test_channels_last_refuses_a_model_without_4d_weights_and_runs_a_mixed_one():
    x = torch.randn(1, 3, 4, 6, 6)
    with pytest.raises(UserInputError, match="channels_last stores 4-D weights .* _Volume has none") as info:
        ns.measure_latency(_Volume(), x, runtime="channels_last", repeats=2, warmup=1, threads=1)
    assert info.value.field == "runtime" and "eager" in info.value.fix and "channels_last" not in info.value.fix
    lat = ns.measure_latency(_Volume(mixed=True), x, runtime="channels_last", repeats=2, warmup=1, threads=1)
    assert lat["median_ms"] > 0


def test_onnxruntime_refuses_a_model_onnx_cannot_express_and_names_other_runtimes():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d((3, 3)))
    with pytest.raises(UserInputError, match="cannot be exported to ONNX opset 17") as info:
        ns.measure_latency(net, torch.randn(1, 3, 7, 7), runtime="onnxruntime", repeats=2, warmup=1, threads=1)
    assert info.value.field == "model" and info.value.fix.startswith("use another runtime (eager, ")
