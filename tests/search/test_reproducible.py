"""Issue 15: a search that is resumed never re-draws a configuration because of seeding and stays
reproducible from its seed; pruned trials keep their metrics; a trial re-trained from its
parameters and seed reproduces its recorded accuracy; over-budget trials are marked infeasible;
the outputs are readable by everyone."""

from __future__ import annotations

import os
import stat

import optuna
import pytest
import torch
import yaml
from conftest import FAST_SPACE  # noqa: E402  (tests/ is on sys.path)
from safetensors.torch import load_file

import nas_sepconv as ns
from nas_sepconv.export import export_trial


def _space(tmp_path, name: str, **search) -> str:
    """FAST_SPACE with a continuous width (so that only seeding can repeat a configuration)."""
    space = {**FAST_SPACE, "search": {**FAST_SPACE["search"], **search}}
    space["build"] = {**FAST_SPACE["build"], "width_mult": {"low": 0.5, "high": 1.0}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space))
    return str(path)


def _params(study: optuna.Study) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in sorted(study.trials, key=lambda t: t.number)]


@pytest.mark.parametrize("sampler", ["random", "nsga2"])
def test_a_resumed_search_draws_new_configurations_and_is_reproducible(tmp_path, sampler):
    space = _space(tmp_path, sampler, sampler=sampler)
    runs = []
    for out in ("a", "b"):
        for trials in (3, 4, 5):  # the search, resumed twice
            study = ns.search(space, trials=trials, out=tmp_path / out, seed=7)
        runs.append(_params(study))
    assert len(runs[0]) == 5 and len(set(runs[0])) == 5, runs[0]
    assert runs[0] == runs[1]  # the same commands with the same seed: the same trials


def test_pruned_trials_keep_their_metrics(tmp_path, monkeypatch):
    space = _space(tmp_path, "s", mode="scalarised", target_macs=200000, pruner="median", sampler="tpe")
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: self.number >= 1)
    ns.search(space, trials=2, out=tmp_path / "r")
    df = ns.results.load(tmp_path / "r" / "tiny")
    pruned = df[df["state"] == "PRUNED"]
    assert len(pruned) == 1
    row = pruned.iloc[0]
    assert 0.0 <= row["accuracy"] <= 1.0 and row["macs"] > 0 and row["params"] > 0 and row["epochs"] == 1


def test_a_retrained_trial_reproduces_its_recorded_accuracy(tmp_path):
    space = _space(tmp_path, "r", trials=1)
    ns.search(space, trials=1, out=tmp_path / "r", seed=3)
    folder = tmp_path / "r" / "tiny"
    saved = load_file(folder / "weights" / "trial_0.safetensors")
    (folder / "weights" / "trial_0.safetensors").unlink()
    torch.manual_seed(12345)  # whatever the process did before must not matter
    info = export_trial(folder, 0, out=tmp_path / "m.safetensors")
    assert info["how"].startswith("re-trained")
    assert info["accuracy"] == info["recorded_accuracy"]
    again = load_file(tmp_path / "m.safetensors")
    assert saved.keys() == again.keys() and all(torch.equal(saved[k], again[k]) for k in saved)


def test_over_budget_trials_are_marked_infeasible(tmp_path):
    space = _space(tmp_path, "b", max_macs=1)
    ns.search(space, trials=2, out=tmp_path / "r")
    df = ns.results.load(tmp_path / "r" / "tiny")
    assert str(df["feasible"].dtype) == "boolean" and not df["feasible"].any()
    assert ns.results.pareto_front(df).empty


def test_outputs_are_readable_by_everyone(tmp_path):
    old = os.umask(0o022)
    try:
        ns.search(_space(tmp_path, "m"), trials=2, out=tmp_path / "r")
    finally:
        os.umask(old)
    folder = tmp_path / "r" / "tiny"
    files = [folder / n for n in ("trials.csv", "pareto.csv", "pareto.png", "meta.json", "study.db")]
    files += list((folder / "weights").glob("*.safetensors")) + list((folder / "pareto").glob("*.json"))
    assert len(files) >= 6
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, (path.name, oct(path.stat().st_mode))
