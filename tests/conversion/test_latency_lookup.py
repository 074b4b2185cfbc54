"""The latency table prices every candidate itself: a prune_r<keep> entry (its site and producer,
pruned versus not) beside the block entries, pruned plans predicted with the same calibration,
the calibration's scales computed once.  Timing is faked (a module's time is its parameter
count): no test times anything, and the expected figures are those the table and
mixed_latency.predict_mixed gave before the table priced pruning itself."""

from __future__ import annotations

import json
import zlib

import pytest
import torch
from conftest import ThreeConvNet  # noqa: E402  (tests/ is on sys.path)

pytest.importorskip("torch_pruning")

import nas_sepconv as ns
import nas_sepconv.conversion.latency_lookup as lookup
import nas_sepconv.conversion.latency_session as ls
from nas_sepconv.conversion import make_mixed_plan
from nas_sepconv.conversion.mixed_latency import predict_mixed, prune_saving_ms
from nas_sepconv.errors import UserInputError

pytestmark = pytest.mark.usefixtures("one_thread")
X = torch.randn(1, 3, 12, 12)
CANDIDATES = ["dwsep_m1", "dwsep_m2", "prune_r0.5", "prune_r0.25"]


def fake_times(modules, settings, *, progress=False):
    """A stand-in for time_modules: the whole model 40 ms, a converted model 30 ms, anything
    else 1 µs per parameter (so a narrowed conv is faster than its site's)."""
    out = []
    for module, _ in modules:
        if isinstance(module, ThreeConvNet):
            ms = 40.0
        elif isinstance(module, torch.fx.GraphModule):
            ms = 30.0
        else:
            ms = 1e-3 * sum(p.numel() for p in module.parameters())
        out.append(dict(median_ms=ms, p10_ms=ms, p90_ms=ms, repeats=1))
    return out


@pytest.fixture(scope="module")
def faked():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ls, "time_modules", fake_times)
        patch.setattr(lookup, "time_modules", fake_times)
        yield


@pytest.fixture
def setup(faked, tmp_path):
    torch.manual_seed(0)
    model = ThreeConvNet().eval()
    kwargs = dict(repeats=1, warmup=0, threads=1, calibrate=1, cache_dir=tmp_path)
    table = ns.latency_table(model, X, candidates=["dwsep_m1", "dwsep_m2"], **kwargs)
    return model, table


@pytest.fixture(scope="module")
def damage():
    torch.manual_seed(0)
    batches = [torch.randn(8, 3, 12, 12)]
    rows = ns.sensitivity(ThreeConvNet().eval(), batches, candidates=CANDIDATES, refit_sites=False)
    # fixed damages (a checksum of the row's name): the choices depend on the savings alone
    rows["damage"] = [(zlib.crc32(f"{n}{s}".encode()) % 1000) / 1000 for n, s in zip(rows["name"], rows["spec"])]
    return rows


@pytest.mark.parametrize(
    "rules, expected",
    [
        ({"conv2": "prune_r0.5"}, 34.804),
        ({"conv2": "prune_r0.5", "conv1": "dwsep_m1", "conv3": "dwsep_m2"}, 29.478825775656325),
        ({"conv3": "prune_r0.25", "conv1": "dwsep_m2"}, 26.44801909307876),
    ],
)
def test_a_pruned_plan_is_predicted_by_the_table_as_predict_mixed_did(setup, rules, expected):
    model, table = setup
    assert table.scales["dwsep_m1"] == pytest.approx(0.5966587112171838)  # a calibration that counts
    plan = make_mixed_plan(model, rules, example_inputs=X)
    assert table.predict(plan) == pytest.approx(expected, rel=1e-12)
    assert predict_mixed(table, plan) == table.predict(plan)  # the kept name, a thin alias
    report = table.annotate(plan).report().set_index("name")
    assert report.loc["conv2", "latency_after_ms"] < report.loc["conv2", "latency_before_ms"]  # narrowed or pruned


@pytest.mark.parametrize(
    "name, keep, expected",
    [("conv1", 0.5, 1.952), ("conv1", 0.25, 2.928), ("conv2", 0.5, 5.196), ("conv3", 0.25, 12.12)],
)
def test_a_prune_entry_is_what_its_site_and_producer_save(setup, name, keep, expected):
    model, table = setup
    spec = f"prune_r{keep}"
    assert table.ms(name, spec) is None
    assert table.saving(name, spec) * table.sites[name].calls == pytest.approx(expected, rel=1e-12)
    row = table.frame[(table.frame["name"] == name) & (table.frame["spec"] == spec)].iloc[0]
    assert row.latency_ms == pytest.approx(table.ms(name, None) - expected) and row.source == "measured"
    assert prune_saving_ms(table, model, name, spec, X) == pytest.approx(expected, rel=1e-12)


def test_a_prune_entry_is_stored_in_the_session_record(setup, tmp_path):
    _, table = setup
    saved = table.saving("conv2", "prune_r0.5")
    (path,) = tmp_path.glob("*.json")
    (session,) = json.loads(path.read_text())["entries"].values()  # the one session record
    ops = {k: json.loads(k) for k in session["entries"]}
    ((key, op),) = [(k, op) for k, op in ops.items() if op["block"] == "prune_r0.5"]
    assert op["producer"]["geometry"]["out_channels"] == 24  # conv1, whose outputs go with conv2's inputs
    record = session["entries"][key]
    assert record["saving_ms"] == pytest.approx(saved) and record["median_ms"] > 0
    assert any("@" in op["block"] for op in ops.values())  # the narrowed layers it was priced from


@pytest.mark.parametrize(
    "ratio, choices",
    [
        (0.9, {"conv2": "prune_r0.5"}),
        (0.8, {"conv3": "prune_r0.5"}),
        (0.7, {"conv2": "prune_r0.25", "conv3": "dwsep_m1"}),
    ],
)
def test_plan_for_budget_with_prune_candidates_chooses_as_before(setup, damage, ratio, choices):
    model, table = setup
    plan = ns.plan_for_budget(model, damage, latency_ratio=ratio, latency_table=table, example_inputs=X, measure=False)
    chosen = {e.name: str(e.prune or e.spec) for e in plan.entries if e.prune or e.converted}
    assert chosen == choices
    assert table.predict(plan) <= ratio * table.model_ms
    assert any(n.startswith("latency table: predicted") for n in plan.notes)


def test_a_budget_the_choices_cannot_reach_is_refused_as_before(setup, damage):
    model, table = setup
    with pytest.raises(UserInputError, match=r"^latency_ratio: 0\.6 is below what these candidates reach \(0\.429"):
        ns.plan_for_budget(model, damage, latency_ratio=0.6, latency_table=table, example_inputs=X, measure=False)


def test_a_table_without_its_model_cannot_price_pruning(setup):
    _, table = setup
    table.model = None
    with pytest.raises(UserInputError, match="^latency_table: has no model"):
        table.saving("conv2", "prune_r0.5")


def test_the_calibration_is_fitted_once_per_table_and_again_when_its_entries_change(setup, monkeypatch):
    model, table = setup
    plan = make_mixed_plan(model, {"conv2": "prune_r0.5", "conv1": "dwsep_m1"}, example_inputs=X)
    table.predict(plan)  # its narrowed entries measured (added entries: a new fit, rightly)
    table.__dict__.pop("scales", None)  # fitted afresh under the counter below
    calls = []
    real = lookup.fit_scales

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(lookup, "fit_scales", counting)
    for _ in range(3):
        table.saving("conv1", "dwsep_m1"), table.saving("conv3", "dwsep_m2"), table.predict(plan)
    assert len(calls) == 1
    table.ensure([("conv3", "spatial_r0.5")])  # a new entry: the fit is made again when next asked
    assert table.scales == real(table.frame, table.calibration, table.sites, table.model_ms) and len(calls) == 2
    table.model_ms = 50.0
    assert table.scales["dwsep_m1"] != pytest.approx(0.5966587112171838) and len(calls) == 3


def test_a_pruned_plan_made_at_another_batch_size_is_refused(setup):
    """The narrowed entries are keyed by their channels alone: a pruned plan made at another
    input shape would be priced from (and would overwrite) the table's-shape entries."""
    model, table = setup
    plan = make_mixed_plan(model, {"conv2": "prune_r0.5"}, example_inputs=torch.randn(8, 3, 12, 12))
    with pytest.raises(UserInputError) as info:
        table.predict(plan)
    assert info.value.field == "plan" and "same example_inputs" in str(info.value)
