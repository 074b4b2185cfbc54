"""Reliability: failing trials, killed workers, Ctrl-C, concurrent processes, safe loading.

Searches run a tiny build space (one stage, one epoch on digits: a trial takes 1-2 s) so that
each test is dominated by process start-up.  Faults are injected by trial number through
``NAS_SEPCONV_INJECT_FAILURES`` (see ``nas_sepconv.search._maybe_inject_failure``).
"""

from __future__ import annotations

import ast
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import torch
import torch.nn as nn
import yaml
from conftest import FAST_SPACE  # noqa: E402

import nas_sepconv.results as results
from nas_sepconv.errors import UserInputError
from nas_sepconv.io import load_model, save_model
from nas_sepconv.search import search as run_search
from nas_sepconv.search.spaces import parse_space

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "nas_sepconv"
S = optuna.trial.TrialState

TINY = {**FAST_SPACE, "search": {"trials": 4, "sampler": "random"}}
USER_ATTRS = ("arch", "arch_json", "accuracy", "macs", "params", "seed")


def write_space(folder: Path) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY, sort_keys=False))
    return path


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "nas_sepconv.cli", *args]


def env_with(inject: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NAS_SEPCONV_INJECT_FAILURES", None)
    if inject:
        env["NAS_SEPCONV_INJECT_FAILURES"] = inject
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def run_cli(*args: str, inject: str | None = None, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), env=env_with(inject), cwd=cwd, capture_output=True, text=True, timeout=timeout)


def check_exact(trials: list[optuna.trial.FrozenTrial], n: int) -> None:
    """Exactly ``n`` COMPLETE trials, none counted twice, none RUNNING, none lost."""
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)), f"duplicate trial numbers: {Counter(numbers)}"
    complete = [t for t in trials if t.state == S.COMPLETE]
    assert len(complete) == n, (
        f"{len(complete)} COMPLETE, want {n}: {[(t.number, t.state.name, t.user_attrs.get('fail_reason')) for t in trials]}"
    )
    assert not [t.number for t in trials if t.state in (S.RUNNING, S.WAITING)], "trials left RUNNING/WAITING"
    for t in complete:  # a completed trial keeps everything needed to rebuild it
        missing = [k for k in USER_ATTRS if k not in t.user_attrs]
        assert not missing, f"trial {t.number} lost {missing}"
    retried = Counter(optuna.storages.RetryFailedTrialCallback.retried_trial_number(t) for t in trials)
    retried.pop(None, None)
    assert all(c == 1 for c in retried.values()), f"a failed trial was retried twice: {retried}"


def check_outputs(folder: Path, n_trials: int) -> None:
    for name in ("trials.csv", "pareto.csv", "pareto.png", "meta.json"):
        assert (folder / name).is_file(), name
    df = results.load(folder)
    assert len(df) == n_trials and df["number"].is_unique
    front = results.pareto_front(df)
    for number in front["number"]:  # Pareto trials keep their weights (never dropped by a racing refresh)
        assert (folder / "weights" / f"trial_{int(number)}.safetensors").is_file(), (
            f"weights of Pareto trial {number} missing"
        )
        assert (folder / "pareto" / f"trial_{int(number)}.json").is_file()
    assert not list(folder.rglob("*.tmp")), "temporary files left behind"


# --------------------------------------------------------------------------------------------
def test_failing_trials_do_not_stop_the_study(tmp_path, monkeypatch):
    monkeypatch.setenv("NAS_SEPCONV_INJECT_FAILURES", "nan:1;raise:3")
    study = run_search(str(write_space(tmp_path)), trials=5, out=tmp_path / "out", heartbeat=0)
    trials = study.get_trials()
    check_exact(trials, 5)
    assert {t.number for t in trials if t.state == S.FAIL} == {1, 3}
    df = results.load(tmp_path / "out" / "tiny").set_index("number")
    assert "TrainingDiverged" in df.loc[1, "fail_reason"] and "nan" in df.loc[1, "fail_reason"]
    assert "RuntimeError: injected failure at trial 3" in df.loc[3, "fail_reason"]
    assert df.loc[df["state"] == "COMPLETE", "fail_reason"].isna().all()
    folder = tmp_path / "out" / "tiny"
    check_outputs(folder, 7)

    # a refresh drops the weights of finished trials off the front, never those of a trial still
    # running (another worker may have saved them just before telling its result)
    from nas_sepconv.search.outputs import refresh_outputs

    front = set(results.pareto_front(results.load(folder))["number"].astype(int))
    off_front = sorted(set(df.index[df["state"] == "COMPLETE"]) - front)
    running = study.ask()
    for number in [running.number, *off_front]:
        (folder / "weights" / f"trial_{number}.safetensors").write_bytes(b"weights")
    refresh_outputs(study, folder)
    assert (folder / "weights" / f"trial_{running.number}.safetensors").is_file()
    assert not [n for n in off_front if (folder / "weights" / f"trial_{n}.safetensors").exists()]
    assert all((folder / "weights" / f"trial_{n}.safetensors").is_file() for n in front)


def test_killed_worker_is_detected_retried_and_nothing_is_lost(tmp_path):
    """Trial 1's worker process is SIGKILLed mid-trial: the heartbeat marks the trial FAIL,
    RetryFailedTrialCallback re-enqueues it, a replacement worker starts, and the study ends
    with exactly the requested number of COMPLETE trials."""
    space = write_space(tmp_path)
    started = time.monotonic()
    proc = run_cli(
        "search",
        "--space",
        str(space),
        "--trials",
        "4",
        "--workers",
        "2",
        "--heartbeat",
        "1",
        "--retries",
        "1",
        "--out",
        str(tmp_path / "out"),
        inject="kill:1",
        cwd=tmp_path,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'out' / 'tiny' / 'study.db'}")
    trials = study.get_trials()
    check_exact(trials, 4)
    killed = trials[1]
    assert killed.state == S.FAIL
    # failed by the heartbeat (or found dead by its pid), not in Python: the reason says so
    assert killed.user_attrs.get("fail_reason", "").startswith("worker died"), killed.user_attrs
    retries = [t for t in trials if optuna.storages.RetryFailedTrialCallback.retried_trial_number(t) == 1]
    assert len(retries) == 1 and retries[0].state == S.COMPLETE
    assert "fail_reason" not in retries[0].user_attrs  # the retry does not inherit the reason
    assert retries[0].params == killed.params  # the same candidate, run again
    check_outputs(tmp_path / "out" / "tiny", len(trials))
    assert time.monotonic() - started < 150


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_ctrl_c_writes_outputs_and_resumes(tmp_path, workers):
    """SIGINT to the `nas-sepconv search` process (with --workers 2 the parent forwards it):
    exit status 130, outputs written, no trial left RUNNING, and the same command resumes."""
    space = write_space(tmp_path)
    n = 5 if workers == 1 else 16  # with workers the first outputs appear later: more trials to interrupt
    args = [
        "search",
        "--space",
        str(space),
        "--trials",
        str(n),
        "--workers",
        str(workers),
        "--out",
        str(tmp_path / "out"),
    ]
    folder = tmp_path / "out" / "tiny"
    # the child starts with Ctrl-C at its default even when this run inherited it ignored (a
    # job started with `&` from a script ignores SIGINT, and Python then never installs its handler)
    proc = subprocess.Popen(
        cli(*args),
        env=env_with(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while not (folder / "trials.csv").is_file():  # the first trial has finished
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no trial finished in 120 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "interrupted" in stderr
    for name in ("trials.csv", "pareto.csv", "pareto.png"):
        assert (folder / name).is_file()
    storage = f"sqlite:///{folder / 'study.db'}"
    trials = optuna.load_study(study_name="tiny", storage=storage).get_trials()
    assert not [t.number for t in trials if t.state == S.RUNNING], "Ctrl-C left a trial RUNNING"
    done = sum(t.state == S.COMPLETE for t in trials)
    assert 1 <= done < n

    again = run_cli(*args, cwd=tmp_path)  # the same command resumes the study
    assert again.returncode == 0, again.stderr[-3000:]
    trials = optuna.load_study(study_name="tiny", storage=storage).get_trials()
    check_exact(trials, n)
    check_outputs(folder, len(trials))


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("journal", marks=pytest.mark.slow)])
def test_two_processes_share_one_study(tmp_path, kind):
    space = write_space(tmp_path)
    storage = f"sqlite:///{tmp_path / 'shared.db'}" if kind == "sqlite" else str(tmp_path / "shared.log")
    args = cli(
        "search",
        "--space",
        str(space),
        "--trials",
        "6",
        "--storage",
        storage,
        "--study",
        "shared",
        "--out",
        str(tmp_path / "out"),
    )
    procs = [
        subprocess.Popen(args, env=env_with(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "Traceback" not in err
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend

        storage_obj = optuna.storages.JournalStorage(JournalFileBackend(storage))
    else:
        storage_obj = storage
    trials = optuna.load_study(study_name="shared", storage=storage_obj).get_trials()
    check_exact(trials, 6)
    check_outputs(tmp_path / "out" / "shared", len(trials))
    assert len(results.load(storage, study="shared")) == len(trials)


# --------------------------------------------------------------------------------------------
# safe loading
# --------------------------------------------------------------------------------------------
def _user_module(folder: Path, name: str) -> Path:
    marker = folder / f"{name}.imported"
    (folder / f"{name}.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('imported')\n"
        "import torch.nn as nn\n"
        "def make(num_classes=10, in_channels=3):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))\n"
    )
    return marker


def test_recipe_cannot_import_a_user_module_without_allow_import(tmp_path, monkeypatch):
    name = f"user_factory_{os.getpid()}"
    marker = _user_module(tmp_path, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    path = save_model(
        tmp_path / "m.safetensors",
        model,
        {"kind": "converted", "model": f"{name}:make", "model_kwargs": {}, "width_mult": 1.0, "input_size": [3, 8, 8]},
    )
    with pytest.raises(UserInputError, match=r"^recipe\.model: the file asks to import"):
        load_model(path)
    assert not marker.exists() and name not in sys.modules, "the module was imported"
    proc = run_cli("profile", "--model", str(path), "--input-size", "3,8,8", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "recipe.model" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()
    with pytest.raises(UserInputError, match=r"^allow_import: True would let the file import"):
        load_model(path, allow_import=True)  # "anything the file names" is no longer a choice
    with pytest.raises(UserInputError, match=r"^recipe\.model"):
        load_model(path, allow_import=f"{name}:other")  # another factory of the same module
    assert not marker.exists()
    loaded = load_model(path, allow_import=f"{name}:make")  # the gate, not an accident, kept it out
    assert marker.exists()
    torch.testing.assert_close(loaded(torch.ones(1, 3, 8, 8)), model.eval()(torch.ones(1, 3, 8, 8)))


class _Evil:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_renamed_to_safetensors_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pickle_ran"
    path = tmp_path / "model.safetensors"
    torch.save({"weight": torch.zeros(2), "payload": _Evil(marker)}, path)
    with pytest.raises(UserInputError, match=r"^file: .* is not a safetensors file"):
        load_model(path)
    assert not marker.exists()
    proc = run_cli("profile", "--model", str(path), "--input-size", "3,8,8", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "not a safetensors file" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()
    # what a torch.load(weights_only=True) in the package would do: refuse the pickle's global
    # (read as a .pt: torch.load reads a path ending in .safetensors with safetensors, which refuses its header)
    as_pickle = tmp_path / "model.pt"
    as_pickle.write_bytes(path.read_bytes())
    with pytest.raises(pickle.UnpicklingError, match=rf"GLOBAL {os.mkdir.__module__}\.mkdir"):
        torch.load(as_pickle, weights_only=True)
    assert not marker.exists()


def _calls(tree: ast.AST, module: str, attr: str):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr:
            value = node.func.value
            if isinstance(value, ast.Name) and value.id == module:
                yield node


# data/cifar.py reads CIFAR-10's official python batches with a restricted unpickler (numpy arrays only)
PICKLE_KNOWN = {"data/cifar.py"}  # the restricted unpickler of the CIFAR-10 python batches


def test_the_package_never_unpickles_or_loads_unsafe_yaml():
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 10
    torch_loads = 0
    for path in sources:
        tree = ast.parse(path.read_text(), filename=str(path))
        for call in _calls(tree, "torch", "load"):
            torch_loads += 1
            kw = {k.arg: k.value for k in call.keywords}
            assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, (
                f"{path.name}:{call.lineno} torch.load without weights_only=True"
            )
        for attr in ("load", "load_all", "unsafe_load", "full_load", "unsafe_load_all"):
            bad = list(_calls(tree, "yaml", attr))
            assert not bad, f"{path.name}:{bad[0].lineno} yaml.{attr}; use yaml.safe_load"
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
                )
                pickles = {"pickle", "dill", "cloudpickle", "marshal"} & {n.split(".")[0] for n in names}
                assert not pickles or path.relative_to(PACKAGE).as_posix() in PICKLE_KNOWN, (
                    f"{path.name}:{node.lineno} imports a pickle module"
                )
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec"):
                raise AssertionError(f"{path.name}:{node.lineno} calls {node.func.id}")
    assert torch_loads >= 1  # the check above did see the package's torch.load calls


def test_yaml_python_tags_are_refused(tmp_path):
    marker = tmp_path / "yaml_ran"
    text = f"name: !!python/object/apply:os.mkdir [{str(marker)!r}]\nkind: build\n"
    with pytest.raises(UserInputError, match=r"^space: .*tag the safe YAML loader refuses"):
        parse_space(text)
    assert not marker.exists()


def test_cifar_batches_cannot_run_code(tmp_path):
    import pickle

    from nas_sepconv.data import load_dataset

    marker = tmp_path / "cifar_pickle_ran"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": [0]}))
    with pytest.raises(UserInputError):
        load_dataset("cifar10", root=tmp_path)
    assert not marker.exists(), "loading a CIFAR-10 folder ran code from a pickle"


def test_swallowed_interrupt_still_stops_the_search(tmp_path, monkeypatch):
    """A KeyboardInterrupt raised inside a finalizer is dropped by Python; the Ctrl-C flag
    still stops the claim loop after the running trial, with outputs written."""
    import importlib

    search_mod = importlib.import_module("nas_sepconv.search.workers")  # the worker loop looks _run_one up there

    space = write_space(tmp_path)
    real_run_one = search_mod._run_one

    def run_one(ctx, study, trial):
        real_run_one(ctx, study, trial)
        if trial.number == 0:  # Ctrl-C whose KeyboardInterrupt got lost
            search_mod.INTERRUPTED.set()

    monkeypatch.setattr(search_mod, "_run_one", run_one)
    handler = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    monkeypatch.setattr(search_mod, "INTERRUPTED", threading.Event())  # not left set for other tests
    with pytest.raises(KeyboardInterrupt):
        run_search(str(space), trials=4, out=str(tmp_path / "out"))
    trials = optuna.load_study(
        study_name="tiny", storage=f"sqlite:///{tmp_path / 'out' / 'tiny' / 'study.db'}"
    ).get_trials()
    assert [t.state for t in trials] == [S.COMPLETE]
    assert (tmp_path / "out" / "tiny" / "trials.csv").is_file()
    assert signal.getsignal(signal.SIGINT) is handler  # the handler is put back


# -- issue 28: a study resumes after any fault; a run whose trials all fail says why ------------
def _space_with(tmp_path: Path, **search: object) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "search": {**TINY["search"], **search}}, sort_keys=False))
    return path


def _error_lines(result) -> list[str]:
    return [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith("search: ")]


def test_failures_of_an_earlier_run_do_not_stop_the_next_and_a_failed_run_says_why(tmp_path, monkeypatch):
    """A fault fails every trial of a run until the failure limit: the run ends in one line
    with the reason, exit status 1 (it ended with exit status 0 and nothing said).  With the
    fault gone, the same command runs its trials: the earlier run's failures do not count
    (they did, and every later run stopped at once)."""
    from typer.testing import CliRunner

    from nas_sepconv.cli import app

    space = _space_with(tmp_path, max_failures=2)
    args = ["search", "--space", str(space), "--trials", "1", "--out", str(tmp_path / "out"), "--heartbeat", "0"]
    monkeypatch.setenv("NAS_SEPCONV_INJECT_FAILURES", "raise:0,1,2,3")
    failed = CliRunner().invoke(app, args)
    assert failed.exit_code == 1, (failed.output, failed.exception)
    lines = _error_lines(failed)
    assert len(lines) == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert lines[0].startswith("error: search: all 2 trials of this run failed, and the search stopped at its limit")
    assert "2x RuntimeError, e.g. RuntimeError: injected failure at trial 0" in lines[0]
    assert "run the same command again" in lines[0]
    assert "wrote" not in failed.stdout
    monkeypatch.delenv("NAS_SEPCONV_INJECT_FAILURES")
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, (again.output, again.exception)
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'out' / 'tiny' / 'study.db'}")
    assert [t.state for t in study.get_trials()] == [S.FAIL, S.FAIL, S.COMPLETE]


def test_a_run_whose_candidates_cannot_be_built_is_refused_as_input(tmp_path):
    """``groups: [3]`` at widths whose channels 3 does not divide: every trial fails with the
    reason, and the run ends in one line naming the space and the reason, exit status 2."""
    from typer.testing import CliRunner

    from nas_sepconv.cli import app

    stage = {"out_channels": 8, "repeats": 1, "stride": 2, "kind": ["grouped"], "groups": [3]}
    space = tmp_path / "grouped.yaml"
    build = {**TINY["build"], "stages": [stage]}
    space.write_text(yaml.safe_dump({**TINY, "search": {**TINY["search"], "max_failures": 2}, "build": build}))
    args = ["search", "--space", str(space), "--trials", "1", "--out", str(tmp_path / "out"), "--heartbeat", "0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (result.output, result.exception)
    lines = _error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: space: all 2 trials of this run failed"), result.stderr
    assert "groups=3 must divide" in lines[0] and "change the space's choices" in lines[0]


def test_a_run_that_times_out_with_only_failures_says_why(tmp_path, monkeypatch):
    """The failure limit not reached, but every trial the run had time for failed: the run
    still ends with the reason (the API: SearchFailed)."""
    import importlib

    from nas_sepconv.errors import SearchFailed

    workers = importlib.import_module("nas_sepconv.search.workers")  # the worker loop looks _claim up there
    real = workers._claim
    claims = []

    def one_claim_then_time_is_up(study, settings):
        claims.append(1)
        return real(study, settings) if len(claims) == 1 else "finished"

    monkeypatch.setenv("NAS_SEPCONV_INJECT_FAILURES", "nan:0")
    monkeypatch.setattr(workers, "_claim", one_claim_then_time_is_up)
    with pytest.raises(SearchFailed, match=r"^search: all 1 trial of this run failed \(1x TrainingDiverged: loss"):
        run_search(str(write_space(tmp_path)), trials=2, out=tmp_path / "out", heartbeat=0)


def test_max_failures_0_stops_at_the_first_failure_but_runs_the_trials(tmp_path, monkeypatch):
    """``search.max_failures: 0`` ran no trial at all (0 failures >= the limit of 0)."""
    from nas_sepconv.errors import SearchFailed

    study = run_search(str(_space_with(tmp_path, max_failures=0)), trials=1, out=tmp_path / "out", heartbeat=0)
    assert [t.state for t in study.get_trials()] == [S.COMPLETE]
    monkeypatch.setenv("NAS_SEPCONV_INJECT_FAILURES", "raise:1,2")
    with pytest.raises(SearchFailed, match=r"all 1 trial of this run failed, and the search stopped at its limit of 1"):
        run_search(str(_space_with(tmp_path, max_failures=0)), trials=3, out=tmp_path / "out", heartbeat=0)


def test_a_run_that_finishes_no_trial_still_writes_the_outputs_it_names(tmp_path):
    """A time limit up before the first trial: trials.csv, pareto.csv and pareto.png exist (the
    CLI printed "wrote" for files that were never written)."""
    run_search(str(write_space(tmp_path)), trials=1, out=tmp_path / "out", heartbeat=0, timeout=1e-9)
    folder = tmp_path / "out" / "tiny"
    assert all((folder / name).is_file() for name in ("trials.csv", "pareto.csv", "pareto.png"))
    assert results.load(folder).empty
