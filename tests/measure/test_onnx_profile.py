"""Profiling an ONNX file: MACs per node from its graph agree with count_macs of the model it was
exported from; ``nas-sepconv profile --model m.onnx`` takes what ``convert --out m.onnx`` writes."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from nas_sepconv.cli import app
from nas_sepconv.conversion import convert
from nas_sepconv.errors import UserInputError
from nas_sepconv.measure import count_macs
from nas_sepconv.measure.onnx import to_onnx
from nas_sepconv.measure.onnx_profile import onnx_input_shape, onnx_latency, onnx_node_latency, onnx_profile
from nas_sepconv.models import cifar_resnet18, tiny_convnet

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
runner = CliRunner()


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: convert(tiny_convnet(), "dwsep", example_inputs=torch.randn(1, 1, 16, 16)), (1, 1, 16, 16)),
        (lambda: cifar_resnet18(width=8), (1, 3, 32, 32)),
    ],
    ids=["converted-tiny", "resnet18"],
)
def test_the_graph_counts_the_macs_count_macs_counts(tmp_path, make, shape):
    model = make().eval()
    x = torch.randn(*shape)
    path = to_onnx(model, x, tmp_path / "m.onnx")
    frame = onnx_profile(path)
    assert int(frame["macs"].sum()) == count_macs(model, x)
    assert onnx_input_shape(path) == shape
    assert set(frame.columns) == {"layer", "op", "output_shape", "macs", "params"}
    lat = onnx_latency(path, threads=1, repeats=3, warmup=1)
    assert 0 < lat["p10_ms"] <= lat["median_ms"] <= lat["p90_ms"]


def test_profile_takes_the_onnx_file_convert_wrote(tmp_path):
    onnx_path, st_path = tmp_path / "m.onnx", tmp_path / "m.safetensors"
    totals = []
    for path in (onnx_path, st_path):
        torch.manual_seed(0)
        args = ["convert", "--model", "nas_sepconv:tiny_convnet", "--input-size", "1,16,16", "--out", str(path)]
        assert runner.invoke(app, args).exit_code == 0
        result = runner.invoke(app, ["profile", "--model", str(path), *(["--latency"] if path == onnx_path else [])])
        assert result.exit_code == 0, result.output
        totals.append(next(ln for ln in result.stdout.splitlines() if ln.startswith("total MACs")).split(" (")[0])
        if path == onnx_path:
            assert "latency (onnxruntime, batch 1" in result.stdout
            assert "latency per Conv node" in result.stdout and "the same session, whole model" in result.stdout
            convs = [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
            assert convs and all(name in result.stdout for name in convs)  # every Conv node, by name
    assert totals[0] == totals[1]  # the same MACs from the graph as from the module


def test_an_onnx_file_refuses_other_runtimes_input_sizes_and_garbage(tmp_path):
    path = to_onnx(tiny_convnet().eval(), torch.randn(1, 1, 16, 16), tmp_path / "m.onnx")
    for extra, flag in ((["--runtime", "channels_last"], "--runtime"), (["--input-size", "1,8,8"], "--input-size")):
        result = runner.invoke(app, ["profile", "--model", str(path), *extra])
        assert result.exit_code == 2 and result.stderr.startswith(f"error: {flag}:"), result.stderr
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(UserInputError, match="cannot read the ONNX file"):
        onnx_profile(bad)
    result = runner.invoke(app, ["profile", "--model", str(bad)])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_node_latency_of_a_legacy_export_names_its_conv_nodes(tmp_path):
    """The TorchScript exporter names nodes by module path (``/conv1/Conv``): the same table."""
    model = tiny_convnet().eval()
    path = to_onnx(model, torch.randn(1, 1, 16, 16), tmp_path / "m.onnx", exporter="torchscript")
    frame, whole, context = onnx_node_latency(path, threads=1, repeats=3, warmup=1)
    convs = [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    assert list(frame["name"]) == convs and frame["latency_ms"].notna().all()
    assert all(frame["op"].str.startswith("Conv ")) and all(frame["input_shape"].map(len) == 4)
    assert 0 < whole["p10_ms"] <= whole["median_ms"] <= whole["p90_ms"]
    assert context["threads"] == 1 and context["runtime"] == "onnxruntime"
    with pytest.raises(UserInputError, match="runs at"):
        onnx_node_latency(path, torch.randn(1, 3, 16, 16), threads=1, repeats=1, warmup=0)
