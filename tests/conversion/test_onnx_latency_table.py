"""``ns.latency_table`` of an ``.onnx`` file (issue 25, item 5): one row per Conv node of the
graph, named by node name, timed by ONNX Runtime's profiler, and the whole model from the same
session; the prediction for the model as it is, no site converted, is the whole-model time."""

from __future__ import annotations

import math

import onnx
import pytest
import torch

import nas_sepconv as ns
from nas_sepconv.conversion.latency import DEFAULT_CANDIDATES, TABLE_COLUMNS
from nas_sepconv.errors import UserInputError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny ResNet converted with dwsep, written with the default (dynamo) exporter."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    model = ns.convert(ns.models.cifar_resnet18(width=8).eval(), "dwsep", example_inputs=x)
    path = ns.to_onnx(model, x, tmp_path_factory.mktemp("onnx") / "m.onnx")
    return model, x, path


def test_the_sites_are_the_graphs_conv_nodes_each_timed(exported):
    model, x, path = exported
    table = ns.latency_table(str(path), threads=1, repeats=3, warmup=1)
    convs = [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    frame = table.frame
    assert list(frame.columns) == TABLE_COLUMNS and list(frame["name"]) == convs
    assert set(frame["spec"]) == {"keep"} and set(frame["calls"]) == {1}
    timed = frame["latency_ms"].dropna()
    assert len(timed) == len(convs)  # the extended level fuses activations into convs, never a conv away
    assert (frame["p10_ms"] <= frame["latency_ms"]).all() and (frame["latency_ms"] <= frame["p90_ms"]).all()
    assert int(frame["macs"].sum()) == ns.count_macs(model, x) - 64 * 10  # all but the classifier's Linear
    assert 0 < table.model_p10_ms <= table.model_ms <= table.model_p90_ms
    assert 0 < table.remainder_ms < table.model_ms
    assert table.context["runtime"] == "onnxruntime" and table.context["model"] == str(path)
    assert convs[0] in frame.to_string()  # printable as a model's table is


def test_predict_of_the_original_is_the_whole_model_time(exported, tmp_path):
    model, x, path = exported
    table = ns.latency_table(path, threads=1, repeats=2, warmup=0)  # a Path as well as a str
    kept = ns.make_plan(model, {}, example_inputs=x)
    assert kept.converted == [] and table.predict(kept) == table.model_ms
    assert math.isclose(table.annotate(kept).entries[0].latency_before_ms or 0.0, 0.0)  # no site of this graph


def test_example_inputs_of_another_size_are_refused(exported):
    _, _, path = exported
    with pytest.raises(UserInputError, match="runs at") as info:
        ns.latency_table(path, torch.randn(1, 3, 32, 32), threads=1, repeats=1, warmup=0)
    assert info.value.field == "example_inputs"
    table = ns.latency_table(path, torch.randn(1, 3, 16, 16), threads=1, repeats=1, warmup=0)
    assert len(table.frame) > 0


def test_a_missing_file_and_a_model_without_inputs_are_refused(tmp_path):
    with pytest.raises(UserInputError, match="cannot read the ONNX file") as info:
        ns.latency_table(tmp_path / "none.onnx", threads=1)
    assert info.value.field == "model"
    with pytest.raises(UserInputError) as info:
        ns.latency_table(ns.models.tiny_convnet())  # a module still needs its example inputs
    assert info.value.field == "example_inputs"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"candidates": ["dwsep_m1"]}, "candidates"),
        ({"policy": "spatial"}, "policy"),
        ({"runtime": "compile"}, "runtime"),
        ({"device": "cuda"}, "device"),
        ({"calibrate": 0}, "calibrate"),
        ({"cache_dir": "somewhere"}, "cache_dir"),
    ],
)
def test_arguments_an_onnx_table_does_not_use_are_refused(exported, kwargs, field):
    _, _, path = exported
    with pytest.raises(UserInputError, match="not used for an .onnx file") as info:
        ns.latency_table(path, threads=1, repeats=1, warmup=0, **kwargs)
    assert info.value.field == field and "\n" not in str(info.value)


def test_the_defaults_spelled_out_are_accepted(exported):
    _, _, path = exported
    table = ns.latency_table(
        path, threads=1, repeats=1, warmup=0, candidates=list(DEFAULT_CANDIDATES), runtime="onnxruntime"
    )
    assert len(table.frame) > 0


def test_predicting_a_converted_plan_with_an_onnx_table_says_why_not(exported):
    model, x, path = exported
    table = ns.latency_table(path, threads=1, repeats=1, warmup=0)
    plan = ns.make_plan(ns.models.cifar_resnet18(width=8).eval(), "dwsep", example_inputs=x)
    with pytest.raises(UserInputError, match="per-node and whole-model times only") as info:
        table.predict(plan)
    assert info.value.field == "latency_table" and "\n" not in str(info.value)
    with pytest.raises(UserInputError, match="per-node and whole-model times only"):
        table.ensure([("conv1", "dwsep_m1")])
