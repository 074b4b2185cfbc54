"""``search.mode: oneshot``: trials take their subnet's weights from a supernet trained once per
study, recalibrate BatchNorm, and say so in ``trials.csv``."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from conftest import FAST_SPACE

import nas_sepconv as ns
from nas_sepconv.errors import UserInputError
from nas_sepconv.oneshot import MANIFEST, read_checkpoint
from nas_sepconv.results.modes import SEARCH_MODES
from nas_sepconv.search import load_space, parse_space
from nas_sepconv.search.inherited import SUPERNET_DIR


def _space(tmp_path, **search) -> str:
    spec = json.loads(json.dumps(FAST_SPACE))
    spec["search"].update(mode="oneshot", **search)
    path = tmp_path / "oneshot.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_oneshot_trials_inherit_weights_from_one_supernet(tmp_path):
    path = _space(tmp_path, supernet_epochs=2)
    out = tmp_path / "results"
    study = ns.search(path, trials=2, out=out, seed=0, threads=1)
    assert study.user_attrs["mode"] == "oneshot"
    folder = out / "tiny" / SUPERNET_DIR
    assert read_checkpoint(folder).epoch == 2
    trained_at = (folder / MANIFEST).stat().st_mtime_ns
    trials = pd.read_csv(out / "tiny" / "trials.csv")
    assert list(trials["accuracy_source"]) == ["inherited", "inherited"]
    assert (trials["epochs"] == 0).all() and trials["accuracy"].between(0, 1).all()
    assert (trials["macs"] > 0).all() and (trials["params"] > 0).all()
    ns.search(path, trials=3, out=out, seed=0, threads=1)  # resumed: the supernet is loaded, not trained again
    assert (folder / MANIFEST).stat().st_mtime_ns == trained_at
    assert len(pd.read_csv(out / "tiny" / "trials.csv")) == 3


def test_the_oneshot_mode_is_a_record_and_needs_a_build_space(tmp_path):
    assert SEARCH_MODES["oneshot"].accuracy_source == "inherited"
    assert {m.accuracy_source for n, m in SEARCH_MODES.items() if n != "oneshot"} == {"trained"}
    text = load_space("digits_convert").text + "\n"
    with pytest.raises(UserInputError, match="search.mode"):
        parse_space(text.replace("search:\n", "search:\n  mode: oneshot\n", 1))
