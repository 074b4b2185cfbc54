"""``search.mode: oneshot`` on a convert space: the base model's convert supernet, trained once by
single-path distillation; each trial's converted model inherits its weights; ``--finalize``
fine-tunes the front into plain converted models that ``load_model`` loads."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

import nas_sepconv as ns
from nas_sepconv.cli import app
from nas_sepconv.conversion import apply_plan, plan_of
from nas_sepconv.errors import UserInputError
from nas_sepconv.oneshot import MANIFEST, read_checkpoint
from nas_sepconv.search import load_space, parse_space
from nas_sepconv.search.inherited import SUPERNET_DIR

SPACE = {
    "name": "tinyconv",
    "kind": "convert",
    "data": {"dataset": "digits", "subset": 300},
    "train": {"epochs": 1, "batch_size": 128},
    "search": {"trials": 3, "sampler": "random", "mode": "oneshot", "supernet_epochs": 1, "finalize_epochs": 1},
    "convert": {
        "model": "nas_sepconv:tiny_convnet",
        "model_kwargs": {"width": 8},
        "base_epochs": 1,
        "groups": "all",
        "choices": {"kind": ["keep", "dwsep", "spatial"], "rank": [0.5]},
        "resolution_mult": [0.75, 1.0],
        "calibration_images": 64,
    },
}


def _space(tmp_path, **convert) -> str:
    spec = yaml.safe_load(yaml.safe_dump(SPACE))
    spec["convert"].update(convert)
    path = tmp_path / "tinyconv.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


@pytest.mark.slow
def test_a_oneshot_convert_search_through_the_cli_inherits_then_finalises(tmp_path):
    path, out = _space(tmp_path), tmp_path / "results"
    args = ["search", "--space", path, "--trials", "3", "--out", str(out), "--seed", "0", "--threads", "1"]
    result = CliRunner().invoke(app, [*args, "--finalize", "1"])
    assert result.exit_code == 0, result.output
    folder = out / "tinyconv"
    assert read_checkpoint(folder / SUPERNET_DIR).epoch == 1
    trained_at = (folder / SUPERNET_DIR / MANIFEST).stat().st_mtime_ns
    trials = pd.read_csv(folder / "trials.csv")
    assert len(trials) == 3 and trials["accuracy"].between(0, 1).all()
    assert (trials["macs"] > 0).all() and (trials["params"] > 0).all()
    finalized = trials[trials["accuracy_source"] == "finalized"]
    assert len(finalized) == 1 and set(trials["accuracy_source"]) <= {"inherited", "finalized"}
    assert (trials.loc[trials["accuracy_source"] == "inherited", "epochs"] == 0).all()
    row = finalized.iloc[0]
    assert row["epochs"] == 1 and row["inherited_accuracy"] >= 0
    # the finalised weights: a plain converted model, loaded without supernet code
    model = ns.load_model(folder / "weights" / f"trial_{int(row['number'])}.safetensors")
    assert not any("choices" in name for name, _ in model.named_modules())
    assert plan_of(model) is not None
    data = load_space(path).spec.data.load(seed=0)
    res = int(row["resolution"])
    assert ns.train.evaluate(model, data.val, data=data, resolution=res) == pytest.approx(row["accuracy"])
    assert model(torch.randn(1, 1, res, res)).shape == (1, 10)
    # resumed: the supernet is loaded, not trained again
    result = CliRunner().invoke(app, [*args[:3], "--trials", "4", *args[5:]])
    assert result.exit_code == 0, result.output
    assert (folder / SUPERNET_DIR / MANIFEST).stat().st_mtime_ns == trained_at
    assert len(pd.read_csv(folder / "trials.csv")) == 4


def test_an_inherited_trial_is_the_supernet_path_with_recalibrated_batchnorm(tmp_path):
    from nas_sepconv.search.candidates import TrialContext, run_candidate
    from nas_sepconv.search.suggestion import StoredTrial

    space = load_space(_space(tmp_path))
    ctx = TrialContext.for_rebuild(space, device="cpu", out_dir=tmp_path / "r")
    names = [s.name for s in ctx.sites()]
    params = {"width_mult": 1.0, "resolution_mult": 1.0}
    for i, name in enumerate(names):
        group = name.replace(".", "_")
        params[f"{group}.kind"] = ["dwsep", "spatial", "keep"][i % 3]
        params[f"{group}.rank"] = 0.5
    candidate = ctx.suggest(StoredTrial(params, number=0, source="test"))
    model, metrics = run_candidate(ctx, candidate, seed=0)
    assert metrics["accuracy_source"] == "inherited" and metrics["epochs"] == 0
    plan = plan_of(model)
    assert {e.name for e in plan.converted} == {n for n, r in candidate.recipe.rules.items() if r is not None}
    assert metrics["macs"] < ns.count_macs(ctx.base(), torch.zeros(1, 1, 16, 16))
    supernet = ctx.supernet()
    for entry in plan.converted:  # the supernet's weights of the path, copied out
        site = supernet.site(entry.name)
        held = site.choices[site.key(candidate.recipe.rules[entry.name])]
        for (name, p), q in zip(model.get_submodule(entry.name).named_parameters(), held.parameters()):
            assert torch.equal(p, q), f"{entry.name}.{name}"


def test_oneshot_convert_spaces_need_width_mult_one_and_discrete_options(tmp_path):
    text = load_space("digits_convert").text + "\n"
    with pytest.raises(UserInputError, match="convert.width_mult"):
        parse_space(text.replace("search:\n", "search:\n  mode: oneshot\n", 1))
    fixed = text.replace("search:\n", "search:\n  mode: oneshot\n", 1).replace(
        "width_mult: [0.5, 1.0]", "width_mult: 1.0"
    )
    assert parse_space(fixed).spec.search.mode == "oneshot"
    with pytest.raises(UserInputError, match="convert.choices.rank"):
        load_space(_space(tmp_path, choices={"kind": ["spatial"], "rank": {"low": 0.25, "high": 0.5}}))
    assert load_space(_space(tmp_path, choices={"kind": ["spatial"], "rank": {"low": 0.25, "high": 0.5, "step": 0.25}}))


def test_an_inherited_convert_trial_recalibrates_batchnorm_with_the_trial_seed(tmp_path, monkeypatch):
    from nas_sepconv.search import candidates
    from nas_sepconv.search.candidates import TrialContext, run_candidate
    from nas_sepconv.search.suggestion import StoredTrial

    space = load_space(_space(tmp_path))
    ctx = TrialContext.for_rebuild(space, device="cpu", out_dir=tmp_path / "r", data_seed=3)
    params = {"width_mult": 1.0, "resolution_mult": 1.0}
    for site in ctx.sites():
        params |= {f"{site.name.replace('.', '_')}.kind": "dwsep", f"{site.name.replace('.', '_')}.rank": 0.5}
    candidate = ctx.suggest(StoredTrial(params, number=0, source="test"))
    seeds = []

    class Drawn(Exception):
        pass

    def extract(supernet, base, candidate, data, *, images, seed):
        seeds.append(seed)
        raise Drawn

    monkeypatch.setattr(ctx, "supernet", lambda: None)  # (not trained: the extraction is what is looked at)
    monkeypatch.setattr(candidates, "extract_candidate", extract)
    with pytest.raises(Drawn):
        run_candidate(ctx, candidate, seed=7)
    assert seeds == [7]  # the trial's seed, not the study's (3), as a build space's subnet is recalibrated


def test_the_convert_supernet_compute_counts_the_largest_side_it_trains_at(tmp_path):
    from nas_sepconv.search.candidates import TrialContext
    from nas_sepconv.search.convert_oneshot import convert_supernet_compute

    space = load_space(_space(tmp_path, resolution_mult=[1.0, 1.5]))
    ctx = TrialContext.for_rebuild(space, device="cpu", out_dir=tmp_path / "r")
    base = ns.models.tiny_convnet(width=8).train()
    spent = convert_supernet_compute(ctx.settings, ctx.data, base)
    macs = ns.count_macs(base, torch.zeros(1, 1, 24, 24))  # 16 x 1.5: the supernet trains paths at 24 too
    assert spent == space.spec.search.supernet_epochs * len(ctx.data.train) * macs
    assert spent > space.spec.search.supernet_epochs * len(ctx.data.train) * ns.count_macs(base, (1, 16, 16))
    assert base.training  # the caller's model is left as it was


def test_a_candidates_plan_is_made_on_the_base_where_it_is(tmp_path):
    from nas_sepconv.search.candidates import TrialContext
    from nas_sepconv.search.convert_oneshot import candidate_plan
    from nas_sepconv.search.suggestion import StoredTrial

    space = load_space(_space(tmp_path))
    ctx = TrialContext.for_rebuild(space, device="cpu", out_dir=tmp_path / "r")
    base = ns.models.tiny_convnet(width=8).train()
    params = {"width_mult": 1.0, "resolution_mult": 0.75}
    for site in ctx.sites():
        params |= {f"{site.name.replace('.', '_')}.kind": "dwsep", f"{site.name.replace('.', '_')}.rank": 0.5}
    candidate = ctx.suggest(StoredTrial(params, number=0, source="test"))
    plan = candidate_plan(base, candidate)
    assert plan.converted and all(candidate.recipe.rules[e.name] == "dwsep" for e in plan.converted)
    converted = apply_plan(base, plan, init="random")
    assert plan.macs_after == ns.count_macs(converted, torch.zeros(1, 1, 12, 12))  # at 16 x 0.75
    assert all(m.training for m in base.modules())
