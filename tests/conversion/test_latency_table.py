"""Latency tables: rows, the on-disk cache (hits, misses, corruption), prediction and the plan
report's latency columns.  Structure and caching only: no test asserts a speed."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn as nn

import nas_sepconv as ns
import nas_sepconv.conversion.latency as lt
import nas_sepconv.conversion.latency_lookup as lookup
import nas_sepconv.conversion.latency_session as ls
from nas_sepconv.conversion.latency import TABLE_COLUMNS
from nas_sepconv.errors import UserInputError
from nas_sepconv.measure import latency_cache_dir

pytestmark = pytest.mark.usefixtures("one_thread")
X = torch.randn(1, 3, 12, 12)
FAST = dict(repeats=2, warmup=0, threads=1, calibrate=0)


class Net(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.conv1 = nn.Conv2d(width, 24, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(24)
        self.conv2 = nn.Conv2d(24, 24, 3, stride=2, padding=1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(torch.relu(self.stem(x)))))
        return self.fc(torch.relu(self.conv2(x)).mean((2, 3)))


class Other(Net):
    """Another model with the same layer shapes (and another head)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(24, 3)


@pytest.fixture
def counted(monkeypatch):
    """The number of forwards of each interleaved loop the table builder times."""
    calls = []
    real = ls.time_rounds

    def counting(forwards, **kwargs):
        calls.append(len(forwards))
        return real(forwards, **kwargs)

    monkeypatch.setattr(ls, "time_rounds", counting)
    return calls


def test_rows_remainder_and_prediction(tmp_path):
    model = Net().eval()
    table = ns.latency_table(model, X, candidates=["dwsep_m1", "spatial_r0.25"], cache_dir=tmp_path, **FAST)
    df = table.frame
    assert list(df.columns) == TABLE_COLUMNS
    # every site kept; candidates only where the policy converts (not the 3-channel stem)
    assert list(zip(df["name"], df["spec"])) == [
        ("stem", "keep"),
        ("conv1", "keep"),
        ("conv1", "dwsep_m1"),
        ("conv1", "spatial_r0.25"),
        ("conv2", "keep"),
        ("conv2", "dwsep_m1"),
        ("conv2", "spatial_r0.25"),
    ]
    assert (df["source"] == "measured").all() and (df["latency_ms"] > 0).all() and (df["p10_ms"] <= df["p90_ms"]).all()
    assert df.loc[1, "input_shape"] == (1, 16, 12, 12) and df.loc[2, "macs"] < df.loc[1, "macs"]
    assert table.remainder_ms == pytest.approx(table.model_ms - df[df["spec"] == "keep"]["latency_ms"].sum())
    plan = ns.make_plan(model, {"conv1": "dwsep_m1"}, example_inputs=X)
    expected = table.model_ms - table.ms("conv1", None) + table.ms("conv1", "dwsep_m1")
    assert table.predict(plan) == pytest.approx(expected)
    assert ns.predict_latency(ns.apply_plan(model, plan), table) == pytest.approx(expected)
    assert table.predict(ns.make_plan(model, {}, example_inputs=X)) == table.model_ms
    assert (
        table.context["runtime"] == "eager"
        and table.context["threads"] == 1
        and table.context["memory_format"] == "contiguous"
    )
    assert not model.training


def test_one_session_is_reused_whole_or_timed_afresh_whole(tmp_path, counted):
    model = Net().eval()
    first = ns.latency_table(model, X, candidates=["dwsep_m1"], cache_dir=tmp_path, **FAST)
    # one interleaved loop: stem, conv1, conv1 as dwsep_m1, conv2, conv2 as dwsep_m1, the whole model
    assert counted == [6]
    again = ns.latency_table(model, X, candidates=["dwsep_m1"], cache_dir=tmp_path, **FAST)
    assert counted == [6] and (again.frame["source"] == "cache").all()  # entries and whole model: the same session
    assert again.model_ms == first.model_ms and again.frame["latency_ms"].tolist() == first.frame["latency_ms"].tolist()
    # another model, even with the same layer shapes, never mixes its whole-model time with these entries
    other = ns.latency_table(Other().eval(), X, candidates=["dwsep_m1"], cache_dir=tmp_path, **FAST)
    assert counted == [6, 6] and (other.frame["source"] == "measured").all()
    # asking for a candidate the session lacks times the whole session again
    ns.latency_table(model, X, candidates=["dwsep_m1", "dwsep_m2"], cache_dir=tmp_path, **FAST)
    assert counted == [6, 6, 8]


@pytest.mark.parametrize("change", [dict(threads=2), dict(runtime="channels_last"), dict(dtype=torch.float64)])
def test_a_change_of_context_misses_the_cache(tmp_path, counted, change):
    ns.latency_table(Net().eval(), X, candidates=["dwsep_m1"], cache_dir=tmp_path, **FAST)
    table = ns.latency_table(Net().eval(), X, candidates=["dwsep_m1"], cache_dir=tmp_path, **{**FAST, **change})
    assert counted == [6, 6] and (table.frame["source"] == "measured").all()
    assert len(list(tmp_path.glob("*.json"))) == 2  # one file per context


def test_another_input_shape_misses_the_cache(tmp_path, counted):
    ns.latency_table(Net().eval(), X, candidates=["dwsep_m1"], cache_dir=tmp_path, **FAST)
    table = ns.latency_table(
        Net().eval(), torch.randn(2, 3, 12, 12), candidates=["dwsep_m1"], cache_dir=tmp_path, **FAST
    )
    assert (table.frame["source"] == "measured").all() and table.frame.loc[0, "input_shape"] == (2, 3, 12, 12)


def test_cache_file_is_plain_json_keyed_by_context_and_op(tmp_path):
    ns.latency_table(Net().eval(), X, candidates=["dwsep_m1"], cache_dir=tmp_path, **FAST)
    (path,) = tmp_path.glob("*.json")
    data = json.loads(path.read_text())
    assert set(data["context"]) == {
        "device",
        "processor",
        "threads",
        "runtime",
        "runtime_version",
        "torch",
        "dtype",
        "memory_format",
    }
    assert data["format"] == 2
    (session,) = data["entries"].values()  # one record: the whole model with its entries
    assert {"median_ms", "p10_ms", "p90_ms", "entries", "calibration"} <= set(session)
    assert set(session["op"]) == {"session", "input_shapes"} and session["op"]["input_shapes"] == [[1, 3, 12, 12]]
    ops = [json.loads(k) for k in session["entries"]]
    assert {o["block"] for o in ops} == {"keep", "dwsep_m1"} and all({"geometry", "input_shape"} <= set(o) for o in ops)
    assert len(ops) == 5  # stem, conv1 and conv2 kept; conv1 and conv2 as dwsep_m1
    assert {tuple(o["tail"]) for o in ops} == {("ReLU",), ("BatchNorm2d", "ReLU")}  # timed with their neighbours


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": 99, "entries": {}}), json.dumps([1, 2])])
def test_a_corrupted_cache_file_is_ignored_with_a_warning_and_rewritten(tmp_path, content):
    ns.latency_table(Net().eval(), X, candidates=["dwsep_m1"], cache_dir=tmp_path, **FAST)
    (path,) = tmp_path.glob("*.json")
    path.write_text(content)
    with pytest.warns(UserWarning, match="latency cache .* is ignored"):
        table = ns.latency_table(Net().eval(), X, candidates=["dwsep_m1"], cache_dir=tmp_path, **FAST)
    assert (table.frame["source"] == "measured").all()
    (session,) = json.loads(path.read_text())["entries"].values()
    assert len(session["entries"]) == 5


def test_malformed_entries_are_dropped(tmp_path):
    ns.latency_table(Net().eval(), X, candidates=["dwsep_m1"], cache_dir=tmp_path, **FAST)
    (path,) = tmp_path.glob("*.json")
    data = json.loads(path.read_text())
    (session,) = data["entries"].values()
    inner = next(iter(session["entries"]))
    session["entries"][inner]["median_ms"] = "__import__('os')"  # data, never code: the session is re-timed
    path.write_text(json.dumps(data))
    table = ns.latency_table(Net().eval(), X, candidates=["dwsep_m1"], cache_dir=tmp_path, **FAST)
    assert (table.frame["source"] == "measured").all()
    session["median_ms"] = -1.0
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="1 malformed entries ignored"):
        table = ns.latency_table(Net().eval(), X, candidates=["dwsep_m1"], cache_dir=tmp_path, **FAST)
    assert (table.frame["source"] == "measured").all()


def test_default_cache_dir_is_the_environment_s(tmp_path, monkeypatch):
    monkeypatch.setenv("NAS_SEPCONV_LATENCY_CACHE", str(tmp_path / "lat"))
    assert latency_cache_dir() == tmp_path / "lat"
    ns.latency_table(Net().eval(), X, candidates=[], **FAST)
    assert len(list((tmp_path / "lat").glob("*.json"))) == 1
    monkeypatch.delenv("NAS_SEPCONV_LATENCY_CACHE")
    monkeypatch.setenv("NAS_SEPCONV_CACHE", str(tmp_path / "base"))
    assert latency_cache_dir() == tmp_path / "base" / "latency"


def test_missing_entries_are_measured_when_needed_and_annotate_the_report(tmp_path):
    model = Net().eval()
    table = ns.latency_table(model, X, candidates=["dwsep_m1"], cache_dir=tmp_path, **FAST)
    plan = ns.make_plan(model, "dwsep_m2", example_inputs=X)
    assert table.ms("conv1", "dwsep_m2") is None
    predicted = ns.predict_latency(plan, table)
    assert table.ms("conv1", "dwsep_m2") is not None and predicted > 0
    report = table.annotate(plan).report()
    row = report.set_index("name").loc["conv1"]
    assert row["latency_before_ms"] == table.ms("conv1", None) and row["latency_after_ms"] == table.ms(
        "conv1", "dwsep_m2"
    )
    stem = report.set_index("name").loc["stem"]
    assert stem["latency_before_ms"] == stem["latency_after_ms"]
    assert "latency_before_ms" not in plan.report().columns  # the plan itself is unchanged
    back = ns.Plan.from_json(table.annotate(plan).to_json())
    assert back.entries[1].latency_after_ms == row["latency_after_ms"]


def test_bad_inputs(tmp_path):
    model = Net().eval()
    table = ns.latency_table(model, X, candidates=["dwsep_m1"], cache_dir=tmp_path, **FAST)
    with pytest.raises(UserInputError) as info:
        table.predict(ns.make_plan(model, "dwsep_m1", example_inputs=torch.randn(1, 3, 16, 16)))
    assert info.value.field == "plan" and "input shape" in str(info.value)
    with pytest.raises(UserInputError) as info:
        ns.predict_latency(model, table)
    assert info.value.field == "model"
    for kwargs, field in (
        (dict(runtime="tvm"), "runtime"),
        (dict(dtype=torch.int8), "dtype"),
        (dict(candidates="dwsep"), "candidates"),
        (dict(threads=0), "threads"),
        (dict(repeats=0), "repeats"),
    ):
        with pytest.raises(UserInputError) as info:
            ns.latency_table(model, X, cache_dir=tmp_path, **{**FAST, **kwargs})
        assert info.value.field == field


def test_onnxruntime_table(tmp_path):
    table = ns.latency_table(
        Net().eval(), X, candidates=["dwsep_m1"], runtime="onnxruntime", cache_dir=tmp_path, **{**FAST, "calibrate": 1}
    )
    assert table.context["runtime"] == "onnxruntime" and table.context["runtime_version"].startswith("onnxruntime ")
    assert (table.frame["latency_ms"] > 0).all()
    (record,) = table.calibration  # the converted model, exported and timed in ONNX Runtime too
    assert record["spec"] == "dwsep_m1" and record["median_ms"] > 0 and set(table.scales) <= {"dwsep_m1", "*"}


def test_unwritable_cache_folder_only_warns(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = ns.latency_table(Net().eval(), X, candidates=[], cache_dir=blocker / "sub", **FAST)
    assert table.model_ms > 0 and any("could not be written" in str(w.message) for w in caught)


def test_a_site_no_input_reaches_is_not_timed(tmp_path):
    model = Net().eval()
    model.unused = nn.Conv2d(24, 24, 3, padding=1)  # never called by forward: in the plan, not reached
    table = ns.latency_table(model, X, candidates=["dwsep_m1"], cache_dir=tmp_path, **FAST)
    assert "unused" not in set(table.frame["name"]) and "unused" in table.sites
    assert table.predict(ns.make_plan(model, "dwsep_m1", example_inputs=X)) > 0


@pytest.mark.parametrize(
    "kwargs, x, message",
    [
        (dict(cache_dir=12345), X, r"^cache_dir: expected a folder \(a str or a path\) or None, got int; pass"),
        (dict(device="cuda:99"), X, r"^device: 'cuda:99': (CUDA is not available|this machine has \d+ CUDA device)"),
        (dict(), torch.randn(0, 3, 12, 12), r"^example_inputs: an input of shape \(0, 3, 12, 12\) holds no example; "),
    ],
)
def test_bad_arguments_are_one_line_naming_them(tmp_path, kwargs, x, message):
    with pytest.raises(UserInputError, match=message) as info:
        ns.latency_table(Net().eval(), x, candidates=["dwsep_m1"], **{"cache_dir": tmp_path, **FAST, **kwargs})
    assert "\n" not in str(info.value)


def test_cuda_without_a_gpu_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserInputError, match=r"^device: 'cuda': CUDA is not available on this machine; use device="):
        ns.latency_table(Net().eval(), X, candidates=["dwsep_m1"], device="cuda", cache_dir=tmp_path, **FAST)


def test_settings_hold_the_runtime_record_looked_up_once(tmp_path, monkeypatch):
    looked_up = []
    real = ls.find_runtime

    def counting(name, **kwargs):
        looked_up.append(name)
        return real(name, **kwargs)

    monkeypatch.setattr(ls, "find_runtime", counting)
    table = ns.latency_table(Net(), X, cache_dir=tmp_path, **FAST)
    table.ensure([("conv1", "dwsep_m2")])  # measured later, with the same settings
    assert looked_up == ["eager"]
    assert table.settings.runtime is ns.measure.RUNTIMES["eager"]
    assert table.settings.threads == 1 and table.settings.device == torch.device("cpu")


@pytest.mark.parametrize(
    "change, field",
    [(dict(runtime="nope"), "runtime"), (dict(dtype=torch.int8), "dtype"), (dict(cache_dir=3), "cache_dir")],
)
def test_settings_name_the_argument_that_is_wrong(change, field):
    args = dict(runtime="eager", threads=1, device="cpu", dtype=torch.float32, repeats=2, warmup=0, cache_dir=None)
    with pytest.raises(UserInputError) as info:
        lt.LatencySettings.checked(**{**args, **change})
    assert info.value.field == field


def _fake_times(keep_ms: float = 1.0, block_ms: float = 0.5, model_ms: float = 10.0, converted_ms: float = 8.0):
    """A stand-in for time_modules: a conv site takes ``keep_ms``, any block ``block_ms``, the
    original model ``model_ms`` and any converted model ``converted_ms`` (no real timing)."""

    def fake(modules, settings, *, progress=False):
        out = []
        for module, _ in modules:
            first = module[0] if isinstance(module, nn.Sequential) else module
            if isinstance(module, Net):
                ms = model_ms
            elif isinstance(module, torch.fx.GraphModule):
                ms = converted_ms
            else:
                ms = keep_ms if isinstance(first, nn.Conv2d) else block_ms
            out.append(dict(median_ms=ms, p10_ms=ms, p90_ms=ms, repeats=1))
        return out

    return fake


def test_calibration_scales_the_savings_by_the_converted_models_measured_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(ls, "time_modules", _fake_times())
    model = Net().eval()
    table = ns.latency_table(model, X, candidates=["dwsep_m1"], cache_dir=tmp_path, **{**FAST, "calibrate": 3})
    (record,) = table.calibration  # one candidate: one uniform plan, of conv1 and conv2
    assert record["spec"] == "dwsep_m1" and record["sites"] == ["conv1", "conv2"] and record["median_ms"] == 8.0
    # raw predicted saving 2 x (1.0 - 0.5) = 1.0 ms; measured 10 - 8 = 2.0 ms: scale 2
    assert table.scales == {"dwsep_m1": pytest.approx(2.0), "*": pytest.approx(2.0)}
    plan = ns.make_plan(model, {"conv1": "dwsep_m1"}, example_inputs=X)
    assert table.predict(plan, calibrated=False) == pytest.approx(9.5)
    assert table.predict(plan) == pytest.approx(9.0) and table.saving("conv1", "dwsep_m1") == pytest.approx(1.0)
    # the calibration lives in the cached session: a second table reads it back
    again = ns.latency_table(model, X, candidates=["dwsep_m1"], cache_dir=tmp_path, **{**FAST, "calibrate": 3})
    assert again.calibration == table.calibration and (again.frame["source"] == "cache").all()


def test_without_calibration_plans_the_scale_is_one(tmp_path, monkeypatch):
    monkeypatch.setattr(ls, "time_modules", _fake_times())
    table = ns.latency_table(Net().eval(), X, candidates=["dwsep_m1"], cache_dir=tmp_path, **FAST)
    assert table.calibration == [] and table.scales == {"*": 1.0}
    with pytest.raises(UserInputError, match="^calibrate: "):
        ns.latency_table(Net().eval(), X, cache_dir=tmp_path, **{**FAST, "calibrate": -1})


def test_entries_added_later_are_scaled_to_the_table_s_session(tmp_path, monkeypatch):
    monkeypatch.setattr(ls, "time_modules", _fake_times())
    model = Net().eval()
    table = ns.latency_table(model, X, candidates=["dwsep_m1"], cache_dir=tmp_path, **FAST)
    monkeypatch.setattr(ls, "time_modules", _fake_times(keep_ms=2.0, block_ms=1.2))  # a slower moment
    monkeypatch.setattr(lookup, "time_modules", _fake_times(keep_ms=2.0, block_ms=1.2))
    table.ensure([("conv1", "dwsep_m2")])
    assert table.ms("conv1", "dwsep_m2") == pytest.approx(0.6)  # 1.2 x (1.0 in the table / 2.0 beside it)
    again = ns.latency_table(model, X, candidates=["dwsep_m1", "dwsep_m2"], cache_dir=tmp_path, **FAST)
    assert again.ms("conv1", "dwsep_m2") == pytest.approx(1.2)  # asked at build time: a new session, timed whole


class Shared(nn.Module):
    """conv1's output feeds two layers: no neighbour is fused into it."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv1(x)
        return torch.nn.functional.silu(self.conv2(self.bn(y) + y))


def test_site_tails_follow_only_single_users():
    assert ls.site_tails(Shared()) == {"conv1": (), "conv2": ("SiLU",)}
    assert ls.site_tails(Net()) == {"stem": ("ReLU",), "conv1": ("BatchNorm2d", "ReLU"), "conv2": ("ReLU",)}
    module = ls.site_module(ns.make_plan(Net(), {}, example_inputs=X).entries[1], None, ("BatchNorm2d", "ReLU"))
    assert [type(m).__name__ for m in module] == ["Conv2d", "BatchNorm2d", "ReLU"] and not module.training
