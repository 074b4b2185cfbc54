"""The multi-fidelity mode (MO-ASHA): rungs, the rung decision by non-dominated sorting, its
validation, and short real searches on the embedded digits (stopped trials, resume, a trial
promoted to the end equal to the same trial trained in one go)."""

from __future__ import annotations

import json
from itertools import product

import numpy as np
import optuna
import pytest
import torch
import yaml
from conftest import FAST_SPACE
from typer.testing import CliRunner

import nas_sepconv as ns
from nas_sepconv.cli import app
from nas_sepconv.io import load_model
from nas_sepconv.search import (
    TrialContext,
    crowding_distance,
    load_space,
    nondominated_fronts,
    parse_space,
    promotes,
    run_candidate,
    rung_epochs,
    with_multi_fidelity,
)
from nas_sepconv.search.asha import RungLadder, StopAtRung

pytestmark = pytest.mark.usefixtures("one_thread")
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _space(tmp_path, *, epochs=3, mf={"min_epochs": 1, "eta": 3}, **search):
    spec = json.loads(json.dumps(FAST_SPACE))
    spec["train"]["epochs"] = epochs
    spec["search"].update(search)
    if mf is not None:
        spec["search"]["multi_fidelity"] = mf
    path = tmp_path / "mf.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# ------------------------------------------------------------------ rungs and the rung decision
def test_rungs_are_geometric_in_epochs_up_to_the_full_budget():
    assert rung_epochs(1, 3, 5) == (1, 3, 5)
    assert rung_epochs(1, 3, 9) == (1, 3, 9)
    assert rung_epochs(1, 3, 10) == (1, 3, 9, 10)
    assert rung_epochs(2, 2, 10) == (2, 4, 8, 10)
    assert rung_epochs(1, 2, 2) == (1, 2)


def _brute_fronts(losses):
    """Non-dominated sorting by its definition: peel off the rows nothing left dominates."""
    n = len(losses)
    fronts, left, level = [-1] * n, set(range(n)), 0
    while left:
        top = {
            i
            for i in left
            if not any(all(losses[j] <= losses[i]) and any(losses[j] < losses[i]) for j in left if j != i)
        }
        for i in top:
            fronts[i] = level
        left -= top
        level += 1
    return fronts


def test_nondominated_fronts_match_the_definition_on_random_populations():
    rng = np.random.default_rng(0)
    for n, k in product((1, 2, 5, 17), (1, 2, 3)):
        losses = rng.integers(0, 4, size=(n, k)).astype(float)  # small integers: many ties and copies
        assert nondominated_fronts(losses).tolist() == _brute_fronts(losses), (n, k)


def test_nondominated_fronts_of_a_known_population():
    # (accuracy to maximise as -accuracy, MACs): a front of three, one dominated once, one twice
    losses = np.array([[-0.9, 300], [-0.8, 200], [-0.7, 100], [-0.75, 250], [-0.6, 260]])
    assert nondominated_fronts(losses).tolist() == [0, 0, 0, 1, 2]


def test_crowding_distance_is_nsga2s():
    losses = np.array([[0.0, 4.0], [1.0, 3.0], [3.0, 1.0], [4.0, 0.0]])
    d = crowding_distance(losses)
    assert np.isinf(d[0]) and np.isinf(d[3])
    assert d[1] == pytest.approx((3 - 0) / 4 + (4 - 1) / 4)  # neighbours 0 and 2 in both objectives
    assert d[2] == pytest.approx((4 - 1) / 4 + (3 - 0) / 4)
    assert np.isinf(crowding_distance(np.array([[1.0, 2.0], [2.0, 1.0]]))).all()


def test_promotion_takes_the_best_third_by_front_then_crowding():
    # nine results at a rung, eta 3: three go on
    losses = np.array(
        [
            [-0.95, 400],
            [-0.90, 200],
            [-0.80, 100],  # front 0 (the extremes have infinite crowding)
            [-0.85, 250],
            [-0.70, 150],  # front 1
            [-0.60, 500],
            [-0.50, 600],
            [-0.40, 700],
            [-0.30, 800],
        ]
    )
    went_on = [promotes(losses, i, eta=3) for i in range(len(losses))]
    assert went_on == [True, True, True] + [False] * 6
    # with eta 9 only one would go on: the two extremes of front 0 tie (infinite crowding), both go
    assert [promotes(losses, i, eta=9) for i in range(3)] == [True, False, True]


def test_a_dominated_result_stops_even_in_a_small_rung():
    # fewer than eta results: only the best go on (Optuna's SuccessiveHalvingPruner's bootstrap)
    assert promotes(np.array([[-0.5, 100.0]]), 0, eta=3)  # the first result of a rung goes on
    pair = np.array([[-0.9, 100.0], [-0.8, 200.0]])  # the second is dominated
    assert promotes(pair, 0, eta=3) and not promotes(pair, 1, eta=3)
    trade_off = np.array([[-0.9, 200.0], [-0.8, 100.0]])  # neither dominates: both boundary points
    assert promotes(trade_off, 0, eta=3) and promotes(trade_off, 1, eta=3)


def test_the_decision_reads_other_workers_results_from_the_storage(tmp_path):
    # two handles on one SQLite study stand for two worker processes
    url = f"sqlite:///{tmp_path / 's.db'}"
    one = optuna.create_study(storage=url, study_name="s", directions=["maximize", "minimize"])
    two = optuna.load_study(storage=url, study_name="s")
    a, b = one.ask(), two.ask()
    first = RungLadder(a, rungs=(1, 3, 9), eta=3, objectives=("accuracy", "macs"))
    first.on_epoch(1, 0.9, {"macs": 100})  # a's result is in the storage now
    second = RungLadder(b, rungs=(1, 3, 9), eta=3, objectives=("accuracy", "macs"))
    with pytest.raises(StopAtRung) as stop:  # b is dominated by a: two results, one goes on
        second.on_epoch(1, 0.5, {"macs": 200})
    assert stop.value.epoch == 1 and stop.value.accuracy == 0.5
    recorded = one._storage.get_trial(b._trial_id).user_attrs["rung_results"]
    assert recorded == [{"epoch": 1, "accuracy": 0.5, "macs": 200, "population": 2, "promoted": False}]
    assert second.attrs(1) == {"stopped_early": True, "epochs_trained": 1, "rung_results": recorded}
    first.on_epoch(2, 0.95, {"macs": 100})  # not a rung: nothing recorded
    first.on_epoch(3, 0.95, {"macs": 100})
    assert [e["epoch"] for e in first.results] == [1, 3] and first.results[1]["population"] == 1


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "mf, field, words",
    [
        ({"min_epochs": 1, "eta": 1}, "search.multi_fidelity.eta", "greater than or equal to 2"),
        ({"min_epochs": 0}, "search.multi_fidelity.min_epochs", "greater than or equal to 1"),
        ({"min_epochs": 3}, "search.multi_fidelity.min_epochs", "not below the 3 epochs"),
        ({"rungs": 3}, "search.multi_fidelity.rungs", "unknown field"),
        ({"min_epochs": True}, "search.multi_fidelity.min_epochs", "expected a number, got true"),  # (was taken as 1)
    ],
)
def test_bad_settings_fail_in_one_line_naming_the_field(tmp_path, mf, field, words):
    with pytest.raises(ns.UserInputError) as info:
        load_space(_space(tmp_path, mf=mf))
    assert info.value.field == field and words in str(info.value) and "\n" not in str(info.value)
    if "rungs" not in mf:  # the same through the Python API's mapping
        with pytest.raises(ns.UserInputError, match=field):
            with_multi_fidelity(load_space(_space(tmp_path, mf=None)), mf)


def test_the_mode_needs_pareto_mode_and_a_convert_space_that_fine_tunes(tmp_path):
    with pytest.raises(ns.UserInputError, match="search.multi_fidelity: needs mode pareto"):
        load_space(_space(tmp_path, mode="scalarised", target_macs=1e5))
    text = load_space("digits_convert").text.replace("search:\n", "search:\n  multi_fidelity: {min_epochs: 1}\n", 1)
    with pytest.raises(
        ns.UserInputError,
        match=r"search.multi_fidelity.min_epochs: 1 is not below the 1 epochs a candidate trains \(convert.finetune_epochs\)",
    ):
        parse_space(text)  # the bundled convert space fine-tunes each candidate for one epoch
    space = parse_space(text.replace("finetune_epochs: 1", "finetune_epochs: 4"))
    assert space.spec.search.multi_fidelity.rungs(4) == (1, 3, 4)


def test_the_api_and_cli_switch_the_mode(tmp_path):
    space = load_space(_space(tmp_path, mf=None))
    assert space.spec.search.multi_fidelity is None
    on = with_multi_fidelity(space, True).spec.search.multi_fidelity
    assert (on.min_epochs, on.eta, on.rungs(3)) == (1, 3, (1, 3))
    assert with_multi_fidelity(with_multi_fidelity(space, {"eta": 2}), False).spec.search.multi_fidelity is None
    assert with_multi_fidelity(space, None) is space
    result = CliRunner().invoke(
        app,
        [
            "search",
            "--space",
            str(_space(tmp_path, epochs=1, mf=None)),
            "--multi-fidelity",
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert result.exit_code == 2 and "search.multi_fidelity.min_epochs" in result.output
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ real searches
def test_search_stops_candidates_early_records_rungs_and_resumes(tmp_path):
    path = _space(tmp_path, sampler="random")
    out = tmp_path / "r"
    seen = []
    study = ns.search(path, trials=4, out=out, seed=0, threads=1, progress=seen.append)
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert study.user_attrs["multi_fidelity"] == {"min_epochs": 1, "eta": 3, "rungs": [1, 3]}
    for t in trials:
        rungs = t.user_attrs["rung_results"]
        assert (
            rungs[0]["epoch"] == 1 and rungs[0]["population"] == t.number + 1
        )  # one worker: every earlier trial is there
        stopped = not rungs[0]["promoted"]
        assert t.user_attrs["stopped_early"] is stopped
        assert t.user_attrs["epochs_trained"] == t.user_attrs["epochs"] == (1 if stopped else 3)
        assert [e["epoch"] for e in rungs] == ([1] if stopped else [1, 3])
        assert t.values[0] == rungs[-1]["accuracy"] == t.user_attrs["accuracy"]  # the last rung's objectives
        assert not (
            stopped and (out / "tiny" / "weights" / f"trial_{t.number}.safetensors").exists()
        )  # never on the front
    assert trials[0].user_attrs["stopped_early"] is False  # the first result of a rung always goes on
    assert any(t.user_attrs["stopped_early"] for t in trials)
    assert any(
        s.last.startswith(f"#{t.number} stopped early at epoch 1 ")
        for s in seen
        for t in trials
        if t.user_attrs["stopped_early"]
    )

    df = ns.results.load(out / "tiny")
    assert df["stopped_early"].tolist() == [t.user_attrs["stopped_early"] for t in trials]
    assert int(df["epochs_trained"].sum()) == sum(t.user_attrs["epochs_trained"] for t in trials) < 4 * 3
    assert df["rung"].tolist() == [0 if s else 1 for s in df["stopped_early"]]
    assert df["accuracy_epoch_1"].notna().all() and df["accuracy_epoch_3"].notna().sum() == (~df["stopped_early"]).sum()
    assert df.attrs["multi_fidelity"]["rungs"] == [1, 3]
    front = ns.results.pareto_front(df)
    assert len(front) and not front["stopped_early"].any()

    again = ns.search(path, trials=5, out=out, seed=0, threads=1)  # resumed: the rung holds the earlier trials
    assert again.get_trials()[4].user_attrs["rung_results"][0]["population"] == 5
    with pytest.raises(ns.UserInputError, match=r"^multi_fidelity: "):
        ns.search(path, trials=6, out=out, multi_fidelity=False)


def test_a_trial_promoted_to_the_end_equals_the_same_trial_trained_in_one_go(tmp_path):
    path = _space(tmp_path, sampler="random", mf={"min_epochs": 1, "eta": 2})  # rungs 1, 2, 3
    study = ns.search(path, trials=1, out=tmp_path / "r", seed=5, threads=1)
    trial = study.get_trials()[0]  # alone in every rung: promoted to the end
    assert [e.get("promoted") for e in trial.user_attrs["rung_results"]] == [True, True, None]
    space = with_multi_fidelity(load_space(path), False)
    ctx = TrialContext.for_rebuild(space, device="cpu", out_dir=tmp_path / "r" / "tiny", data_seed=5)
    candidate = ctx.suggest(optuna.trial.FixedTrial(trial.params, number=trial.number))
    model, metrics = run_candidate(ctx, candidate, seed=trial.user_attrs["seed"])  # one go, no rungs
    assert (
        metrics["accuracy"] == trial.user_attrs["accuracy"]
        and metrics["test_accuracy"] == trial.user_attrs["test_accuracy"]
    )
    saved = load_model(tmp_path / "r" / "tiny" / "weights" / f"trial_{trial.number}.safetensors")
    for name, value in model.state_dict().items():
        assert torch.equal(value.cpu(), saved.state_dict()[name]), name
