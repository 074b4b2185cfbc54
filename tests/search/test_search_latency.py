"""The search's latency objective: predicted from the base model's latency table (convert
spaces, the default) or measured, and the DataFrame's latency_source column saying which."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

import nas_sepconv as ns
from nas_sepconv.errors import UserInputError
from nas_sepconv.measure import latency_cache_dir
from nas_sepconv.search import parse_space

pytestmark = pytest.mark.usefixtures("one_thread")
SPACE = Path(__file__).resolve().parents[2] / "search_spaces" / "digits_convert.yaml"


def _space(tmp_path: Path, **search) -> Path:
    spec = yaml.safe_load(SPACE.read_text())
    spec["data"]["subset"] = 300
    spec["train"]["epochs"] = 1
    spec["convert"].update(
        base_epochs=1,
        finetune_epochs=0,
        width_mult=[1.0],
        calibration_images=64,
        choices={"kind": ["keep", "dwsep"], "dw_mult": [1]},
    )
    spec["search"] = {"trials": 2, "sampler": "random", "objectives": ["accuracy", "macs", "latency_ms"], **search}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("source", ["predicted", "measured"])
def test_latency_objective_says_where_it_came_from(tmp_path, source):
    search = {} if source == "predicted" else {"latency": "measured"}
    study = ns.search(_space(tmp_path, **search), trials=2, out=tmp_path / "r", heartbeat=0)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2, [t.user_attrs.get("fail_reason") for t in study.trials]
    df = ns.results.load(tmp_path / "r" / "digits_convert")
    assert list(df["latency_source"]) == [source, source]
    assert (df["latency_ms"] > 0).all()
    if source == "predicted":  # the base model's table was cached on disk for the next search
        assert list(latency_cache_dir().glob("*.json"))


def test_latency_runtime_is_checked_with_the_space():
    text = SPACE.read_text().replace("population_size: 6", "population_size: 6\n  latency_runtime: tvm")
    with pytest.raises(UserInputError) as info:
        parse_space(text, source="test")
    assert info.value.field.endswith("latency_runtime") and "onnxruntime" in info.value.fix
