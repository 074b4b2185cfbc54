"""Everything a user types, wrong: one list of cases (it only grows).

Every CLI case must end with exit status 2, exactly one line on stderr that names the field,
no traceback, and nothing created under ``--out`` (bad input fails before ``<out>/<study>``
exists, so there is never a half-written results directory).  Library cases must raise
:class:`UserInputError` whose message starts with the field.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from typer.testing import CliRunner

import nas_sepconv as ns
from nas_sepconv.search import search as run_search
import nas_sepconv.data as nsdata
import nas_sepconv.io as nsio
import nas_sepconv.results as nsresults
from nas_sepconv.cli import app
from nas_sepconv.errors import UserInputError

from conftest import FAST_SPACE  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

TINY: dict[str, Any] = dict(FAST_SPACE)


def tiny_space(**changes: Any) -> dict[str, Any]:
    """TINY with dotted-path changes (``{"build.stages.0.rank": [0.5]}``); value ``DELETE`` drops a key."""
    space = copy.deepcopy(TINY)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node: Any = space
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        key: Any = int(last) if isinstance(node, list) else last
        if value is DELETE:
            del node[key]
        else:
            node[key] = value
    return space


DELETE = object()


@dataclass
class Env:
    """Paths a case can use; ``out`` must still be empty/absent after the case."""

    tmp: Path
    out: Path
    results: Path | None = None  # a real results directory (one finished trial)

    def space_file(self, data: "dict | str", name: str = "space.yaml") -> str:
        path = self.tmp / name
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        return str(path)


@dataclass
class Case:
    id: str
    field: str  # must appear in the message (CLI) / start it (library)
    cli: Callable[[Env], list[str]] | None = None
    lib: Callable[[Env], Any] | None = None
    needs_results: bool = False
    marks: tuple = field(default_factory=tuple)


def _search(*flags: str) -> Callable[[Env], list[str]]:
    return lambda env: ["search", "--space", env.space_file(TINY), "--trials", "1", "--out", str(env.out), *flags]


def _space(data: "dict | str", *flags: str) -> Callable[[Env], list[str]]:
    return lambda env: ["search", "--space", env.space_file(data), "--trials", "1", "--out", str(env.out), *flags]


def _bad_safetensors(env: Env) -> str:
    path = env.tmp / "not_a_model.safetensors"
    path.write_text("hello, I am text\n")
    return str(path)


def _safetensors_without_recipe(env: Env) -> str:
    import torch
    from safetensors.torch import save_file

    path = env.tmp / "bare.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(path))
    return str(path)


def _pickle_renamed(env: Env) -> str:
    import torch

    path = env.tmp / "pickled.safetensors"
    torch.save({"weight": torch.zeros(2, 2)}, path)  # a zip of pickles, whatever its name says
    return str(path)


def _user_module_recipe(env: Env) -> str:
    """A safetensors file whose recipe asks to import ``evil_mod_bad_input:make``."""
    import torch.nn as nn

    from nas_sepconv.io import save_model

    path = env.tmp / "user_model.safetensors"
    save_model(path, nn.Conv2d(3, 4, 3), {"kind": "converted", "model": "evil_mod_bad_input:make", "model_kwargs": {}, "width_mult": 1.0, "input_size": [3, 8, 8]})
    return str(path)


def _junk_journal(env: Env, *, binary: bool) -> str:
    """A ``.log`` file that is no Optuna journal, beside the case's folder (the case may create
    nothing in it)."""
    path = env.tmp.parent / f"{env.tmp.name}-junk-{'bytes' if binary else 'text'}.log"
    if binary:
        path.write_bytes(bytes(range(256)) * 8)
    else:
        path.write_text("2024-01-01 12:00:00 INFO server started\nnot json at all\n")
    return str(path)


def _export(env: Env, *flags: str) -> list[str]:
    return ["export", str(env.results), *flags]


def _make_plan_bad_glob(env: Env) -> Any:
    import torch
    import torchvision

    return ns.make_plan(torchvision.models.resnet18(), {"layer9.*.conv1": "dwsep"}, example_inputs=torch.randn(1, 3, 32, 32))


CASES: list[Case] = [
    # ---- CLI flags: convert / profile
    Case("input-size-letter", "--input-size", cli=lambda e: ["convert", "--model", "torchvision:resnet18", "--input-size", "3,x"]),
    Case("input-size-zero", "--input-size", cli=lambda e: ["convert", "--model", "torchvision:resnet18", "--input-size", "0,32,32"]),
    Case("input-size-profile", "--input-size", cli=lambda e: ["profile", "--model", "torchvision:resnet18", "--input-size", "3,-1,32"]),
    Case(
        "input-size-wrong-for-model",
        "input_size",
        cli=lambda e: ["convert", "--model", "torchvision:resnet18", "--input-size", "3,32"],
    ),
    Case("to-typo", "spec", cli=lambda e: ["convert", "--model", "torchvision:resnet18", "--to", "dwsepp", "--input-size", "3,32,32"]),
    Case("to-bad-option", "spec", cli=lambda e: ["convert", "--model", "torchvision:resnet18", "--to", "dwsep_e6", "--input-size", "3,32,32"]),
    Case("model-unknown-torchvision", "model", cli=lambda e: ["convert", "--model", "torchvision:resnet1800", "--input-size", "3,32,32"]),
    Case("model-missing-package", "model", cli=lambda e: ["convert", "--model", "nosuchpkg.mod:f", "--input-size", "3,32,32"]),
    Case("model-not-a-model", "model", cli=lambda e: ["convert", "--model", "os:getcwd", "--input-size", "3,32,32"]),
    Case("model-no-source", "model", cli=lambda e: ["profile", "--model", "resnet18", "--input-size", "3,32,32"]),
    Case("convert-out-bad-folder", "--out", cli=lambda e: ["convert", "--model", "torchvision:resnet18", "--input-size", "3,32,32", "--out", str(e.tmp / "no" / "such" / "dir" / "x.txt")]),
    # ---- CLI flags: search
    Case("trials-zero", "--trials", cli=lambda e: ["search", "--space", e.space_file(TINY), "--trials", "0", "--out", str(e.out)]),
    Case("workers-zero", "--workers", cli=_search("--workers", "0")),
    Case("timeout-negative", "--timeout", cli=_search("--timeout", "-5")),
    Case("sampler-unknown", "--sampler", cli=_search("--sampler", "foo")),
    Case("device-cuda-absent", "--device", cli=_search("--device", "cuda")),
    Case("device-tpu", "--device", cli=_search("--device", "tpu")),
    Case("study-bad-name", "--study", cli=_search("--study", "a/b")),
    Case("heartbeat-negative", "--heartbeat", cli=_search("--heartbeat", "-1")),
    Case("retries-negative", "--retries", cli=_search("--retries", "-2")),
    Case("trials-not-a-number", "--trials", cli=_search("--trials", "many")),
    Case("unknown-flag", "--colour", cli=_search("--colour", "red")),
    Case("missing-required-flag", "--model", cli=lambda e: ["convert", "--input-size", "3,32,32"]),
    Case("storage-ftp", "--storage", cli=_search("--storage", "ftp://x")),
    Case("storage-sqlite-missing-dir", "--storage", cli=_search("--storage", "sqlite:////nonexistent/dir/x.db")),
    Case("storage-postgres-refused", "--storage", cli=_search("--storage", "postgresql://u:p@127.0.0.1:1/db")),
    Case("space-unknown-name", "space", cli=lambda e: ["search", "--space", "nosuch", "--out", str(e.out)]),
    Case("space-missing-file", "space", cli=lambda e: ["search", "--space", str(e.tmp / "missing.yaml"), "--out", str(e.out)]),
    # ---- issue 17: search, storage, outputs
    Case("storage-sqlite-in-memory", "--storage", cli=_search("--storage", "sqlite://")),
    Case("storage-sqlite-memory-path", "--storage", cli=_search("--storage", "sqlite:///:memory:")),
    Case("storage-sqlite-memory-uri", "--storage", cli=_search("--storage", "sqlite:///file:nas?mode=memory&uri=true")),
    Case("storage-journal-random-bytes", "--storage", cli=lambda e: _search("--storage", _junk_journal(e, binary=True))(e)),
    Case("storage-journal-text", "--storage", cli=lambda e: _search("--storage", _junk_journal(e, binary=False))(e)),
    Case("timeout-nan", "--timeout", cli=_search("--timeout", "nan")),
    Case("workers-thousand", "--workers", cli=_search("--workers", "1000")),
    Case("out-is-a-file", "--out", cli=lambda e: ["search", "--space", e.space_file(TINY), "--trials", "1", "--out", e.space_file(TINY)]),
    Case("out-under-proc", "--out", cli=lambda e: ["search", "--space", e.space_file(TINY), "--trials", "1", "--out", "/proc/x"]),
    Case("convert-out-under-proc", "--out", cli=lambda e: ["convert", "--model", "torchvision:resnet18", "--input-size", "3,32,32", "--out", "/proc/x/y.safetensors"]),
    Case("report-out-under-proc", "--out", cli=lambda e: ["report", str(e.results), "--out", "/proc/x"], needs_results=True),
    Case("lib-search-out-is-a-file", "--out", lib=lambda e: run_search(e.space_file(TINY), trials=1, out=e.space_file(TINY))),
    Case("lib-search-timeout-nan", "--timeout", lib=lambda e: run_search(e.space_file(TINY), trials=1, timeout=float("nan"), out=e.out)),
    # ---- search-space YAML
    Case("yaml-unknown-top-level", "colour", cli=_space(tiny_space(colour="red"))),
    Case("yaml-bad-kind", "kind", cli=_space(tiny_space(kind="bulid"))),
    Case("yaml-option-not-taken", "build.stages[0].rank", cli=_space(tiny_space(**{"build.stages.0.kind": ["inverted_residual"], "build.stages.0.rank": [0.5]}))),
    Case("yaml-option-unknown", "build.stages[0].colour", cli=_space(tiny_space(**{"build.stages.0.colour": [1]}))),
    Case("yaml-unknown-block-kind", "build.stages[0].kind", cli=_space(tiny_space(**{"build.stages.0.kind": ["dwsep", "mobileconv"]}))),
    Case("yaml-bad-sampler", "search.sampler", cli=_space(tiny_space(**{"search.sampler": "cmaes"}))),
    Case("yaml-negative-epochs", "train.epochs", cli=_space(tiny_space(**{"train.epochs": -1}))),
    Case("yaml-range-reversed", "build.width_mult", cli=_space(tiny_space(**{"build.width_mult": {"low": 1.0, "high": 0.5}}))),
    Case("yaml-scalarised-no-target", "target_macs", cli=_space(tiny_space(**{"search.mode": "scalarised"}))),
    Case("yaml-objectives-order", "search.objectives", cli=_space(tiny_space(**{"search.objectives": ["macs", "accuracy"]}))),
    Case("yaml-objective-unknown", "search.objectives", cli=_space(tiny_space(**{"search.objectives": ["accuracy", "flops"]}))),
    Case("yaml-malformed", "space", cli=_space("name: tiny\nkind: build\nbuild: [stages: {\n")),
    Case("yaml-not-a-mapping", "space", cli=_space("- just\n- a list\n")),
    Case("yaml-python-tag", "space", cli=_space("name: !!python/object/apply:os.getcwd []\nkind: build\n")),
    Case("yaml-convert-without-section", "convert", cli=_space(tiny_space(kind="convert", build=DELETE))),
    Case("yaml-build-without-section", "build", cli=_space(tiny_space(build=DELETE))),
    Case("yaml-missing-name", "name", cli=_space(tiny_space(name=DELETE))),
    Case("yaml-stage-zero-channels", "build.stages[0].out_channels", cli=_space(tiny_space(**{"build.stages.0.out_channels": 0}))),
    Case("yaml-rank-out-of-range", "rank", cli=_space(tiny_space(**{"build.stages.0.kind": ["spatial"], "build.stages.0.rank": [1.5], "build.stages.0.expand_ratio": DELETE}))),
    Case("yaml-convert-unknown-model", "convert.model", cli=_space(tiny_space(kind="convert", build=DELETE, convert={"model": "torchvision:resnet1800"}))),
    Case("yaml-convert-missing-weights", "convert.weights", cli=lambda e: _space(tiny_space(kind="convert", build=DELETE, convert={"model": "nas_sepconv:cifar_resnet18", "weights": str(e.tmp / "nope.safetensors")}))(e)),
    # ---- data-set paths
    Case("data-cifar10-root-missing", "data.root", cli=lambda e: _space(tiny_space(**{"data.dataset": "cifar10", "data.root": str(e.tmp / "no_cifar")}))(e)),
    Case("data-unknown-dataset", "data.dataset", cli=_space(tiny_space(**{"data.dataset": "mnistt"}))),
    # ---- report / export
    Case("report-no-source", "--storage", cli=lambda e: ["report"]),
    Case("report-missing-dir", "results", cli=lambda e: ["report", str(e.tmp / "no_results")]),
    Case("export-no-source", "--storage", cli=lambda e: ["export", "--trial", "0", "--out", str(e.tmp / "m.safetensors")]),
    Case("export-no-such-trial", "--trial", cli=lambda e: _export(e, "--trial", "999", "--out", str(e.tmp / "m.safetensors")), needs_results=True),
    Case("export-bad-extension", "--out", cli=lambda e: _export(e, "--trial", "0", "--out", str(e.tmp / "x.txt")), needs_results=True),
    # ---- exported files handed back to us
    Case("file-not-safetensors", "file", cli=lambda e: ["profile", "--model", _bad_safetensors(e), "--input-size", "3,8,8"]),
    Case("file-without-recipe", "file", cli=lambda e: ["profile", "--model", _safetensors_without_recipe(e), "--input-size", "3,8,8"]),
    Case("file-pickle-renamed", "file", cli=lambda e: ["profile", "--model", _pickle_renamed(e), "--input-size", "3,8,8"]),
    Case("file-recipe-imports-user-module", "recipe.model", cli=lambda e: ["profile", "--model", _user_module_recipe(e), "--input-size", "3,8,8"]),
    # ---- library: policies, plans, specs, files
    Case("lib-policy-glob-matches-nothing", "policy.rules", lib=_make_plan_bad_glob),
    Case("lib-policy-bad-type", "policy", lib=lambda e: ns.Policy.from_any(42)),
    Case("lib-policy-min-saving", "policy.min_macs_saving", lib=lambda e: ns.Policy(min_macs_saving=1.5)),
    Case("lib-plan-garbage", "plan", lib=lambda e: ns.Plan.from_json("{not json")),
    Case("lib-plan-wrong-json", "plan", lib=lambda e: ns.Plan.from_json(json.dumps({"hello": 1}))),
    Case("lib-plan-bad-entries", "plan.entries", lib=lambda e: ns.Plan.from_json(json.dumps({"format": 1, "entries": [{"x": 1}], "model": "m", "input_shapes": []}))),
    Case("lib-spec-typo", "spec", lib=lambda e: ns.BlockSpec.parse("dwsepp")),
    Case("lib-load-not-safetensors", "file", lib=lambda e: nsio.load_model(_bad_safetensors(e))),
    Case("lib-load-pickle-renamed", "file", lib=lambda e: nsio.load_model(_pickle_renamed(e))),
    Case("lib-load-no-recipe", "file", lib=lambda e: nsio.load_model(_safetensors_without_recipe(e))),
    Case("lib-load-user-module", "recipe.model", lib=lambda e: nsio.load_model(_user_module_recipe(e))),
    Case("lib-dataset-cifar10-root-missing", "dataset.root", lib=lambda e: nsdata.load_dataset("cifar10", root=e.tmp / "nothing_here")),
    Case("lib-search-trials-zero", "--trials", lib=lambda e: run_search(e.space_file(TINY), trials=0, out=e.out)),
    Case("lib-results-load-nothing", "source", lib=lambda e: nsresults.load(e.tmp / "nothing_here")),
]


def test_the_matrix_is_big_enough():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    """A real results directory holding one finished trial."""
    root = tmp_path_factory.mktemp("bad_input_results")
    space = root / "tiny.yaml"
    space.write_text(yaml.safe_dump(TINY))
    run_search(str(space), trials=1, out=root / "results", heartbeat=0)
    return root / "results" / "tiny"


def _env(tmp_path: Path, case: Case, request) -> Env:
    env = Env(tmp=tmp_path, out=tmp_path / "out")
    if case.needs_results:
        env.results = request.getfixturevalue("results_dir")
    return env


def _assert_one_line(stderr: str, case: Case) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, f"{case.id}: expected one line on stderr, got:\n{stderr}"
    assert case.field in lines[0], f"{case.id}: {case.field!r} not named in {lines[0]!r}"
    return lines[0]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, request, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written relative to the working dir lands here
    env = _env(tmp_path, case, request)
    before = sorted(p.name for p in tmp_path.iterdir())
    if case.lib is not None:
        with pytest.raises(UserInputError) as info:
            case.lib(env)
        message = str(info.value)
        assert message.startswith(case.field), f"{case.id}: {message!r} does not start with {case.field!r}"
        assert "\n" not in message
    else:
        args = case.cli(env)
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, f"{case.id}: exit {result.exit_code}\nstdout:{result.stdout}\nstderr:{result.stderr}\n{result.exception!r}"
        _assert_one_line(result.stderr, case)
    # nothing half-written: no --out folder, no results/ in the working directory, no study.db
    assert not env.out.exists(), f"{case.id}: left {sorted(p.relative_to(env.out) for p in env.out.rglob('*'))}"
    created = set(p.name for p in tmp_path.iterdir()) - set(before)
    assert not (created - {"space.yaml", "not_a_model.safetensors", "bare.safetensors", "pickled.safetensors", "user_model.safetensors"}), created


@pytest.mark.parametrize(
    "args, field",
    [
        (["convert", "--model", "torchvision:resnet18", "--input-size", "3,x"], "--input-size"),
        (["search", "--space", "SPACE", "--trials", "1", "--out", "OUT", "--storage", "ftp://x"], "--storage"),
        (["search", "--space", "BADSPACE", "--trials", "1", "--out", "OUT"], "search.sampler"),
    ],
    ids=["input-size", "storage", "yaml-sampler"],
)
def test_bad_input_real_process(args, field, tmp_path):
    """The installed entry point, in a real process: one line on the real stderr, status 2."""
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(TINY))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tiny_space(**{"search.sampler": "cmaes"})))
    args = [{"SPACE": str(space), "BADSPACE": str(bad), "OUT": str(tmp_path / "out")}.get(a, a) for a in args]
    proc = subprocess.run([sys.executable, "-m", "nas_sepconv.cli", *args], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    assert field in lines[0]
    assert not (tmp_path / "out").exists()


def test_debug_flag_shows_the_traceback():
    result = CliRunner().invoke(app, ["--debug", "convert", "--model", "torchvision:resnet18", "--input-size", "3,x"])
    assert result.exit_code != 0
    assert isinstance(result.exception, UserInputError)
