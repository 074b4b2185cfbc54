"""Faults of the machine, not of the input (issue 17): a full disk, folders that cannot be
written, Ctrl-C while workers start, trials left RUNNING by a dead process.

Searches run the tiny build space of conftest (a trial takes about a second).  What a fault
must leave: one line on stderr (no traceback), an exit status the README names (2: input, 1: a
storage that failed mid-run, 130: Ctrl-C), and a study that the same command resumes with
nothing already computed lost.
"""

from __future__ import annotations

import errno
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import FAST_SPACE  # noqa: E402
from typer.testing import CliRunner

import nas_sepconv.results as nsresults
from nas_sepconv.cli import app
from nas_sepconv.errors import StorageError
from nas_sepconv.search import search as run_search
from nas_sepconv.search.heartbeat import WORKER_ATTR

REPO = Path(__file__).resolve().parents[2]
S = optuna.trial.TrialState


def write_space(folder: Path) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(FAST_SPACE, sort_keys=False))
    return path


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.pop("NAS_SEPCONV_INJECT_FAILURES", None)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), e.get("PYTHONPATH", "")])
    e.setdefault("OMP_NUM_THREADS", "1")
    return e


def trials_of(folder: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{folder / 'study.db'}").get_trials()


def lines_of(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip()]


# --------------------------------------------------------------------------------------------
# a full disk
# --------------------------------------------------------------------------------------------
def test_weights_and_outputs_that_cannot_be_written_cost_only_those_files(tmp_path, monkeypatch):
    """save_model and write_outputs fail with ENOSPC: the trials still COMPLETE with their
    metrics, say which artefact is missing, the progress shows a warning, and the run ends
    with one StorageError naming what could not be written."""

    def no_space(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    def no_space_outputs(df, out_dir, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(out_dir) / "trials.csv"))

    monkeypatch.setattr(
        importlib.import_module("nas_sepconv.search.workers"), "save_model", no_space
    )  # where trials save weights
    monkeypatch.setattr(nsresults, "write_outputs", no_space_outputs)
    statuses = []
    unwritten = r"could not write in .*trials\.csv \(No space left on device\); the weights of trials 0, 1 .*run the"
    with pytest.raises(StorageError, match=unwritten):
        run_search(str(write_space(tmp_path)), trials=2, out=tmp_path / "out", heartbeat=0, progress=statuses.append)
    trials = trials_of(tmp_path / "out" / "tiny")
    assert [t.state for t in trials] == [S.COMPLETE, S.COMPLETE], [t.user_attrs.get("fail_reason") for t in trials]
    for t in trials:
        assert 0.0 <= t.user_attrs["accuracy"] <= 1.0 and t.values is not None
        assert "arch_json" in t.user_attrs  # export can rebuild (and re-train) it
        assert any("weights" in m for m in t.user_attrs["missing_artifacts"])
    # (the first status, when the study is open, comes before any output is written)
    assert statuses[1:] and all("trials.csv" in s.warning for s in statuses[1:]), [s.warning for s in statuses]


def test_weights_that_safetensors_cannot_write_keep_the_trial(tmp_path, monkeypatch):
    """safetensors raises its own SafetensorError, not OSError, for a full disk: the trial
    still COMPLETEs with its metrics and records the missing weights (it ended FAIL)."""
    import safetensors
    import safetensors.torch

    def full(*args, **kwargs):
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)  # what nas_sepconv.io.save_model calls
    with pytest.raises(StorageError, match=r"the weights of trials 0, 1 \(No space left on device\)"):
        run_search(str(write_space(tmp_path)), trials=2, out=tmp_path / "out", heartbeat=0)
    trials = trials_of(tmp_path / "out" / "tiny")
    assert [t.state for t in trials] == [S.COMPLETE, S.COMPLETE], [t.user_attrs.get("fail_reason") for t in trials]
    assert all("No space left on device" in t.user_attrs["missing_artifacts"][0] for t in trials)
    assert (tmp_path / "out" / "tiny" / "trials.csv").is_file()  # the outputs were written: only the weights are named


@pytest.fixture
def full_disk(tmp_path):
    """A folder on a 64 KiB tmpfs filled up to its last page (a full disk for the results
    folder; the study's database elsewhere); ``free()`` empties it."""
    mount = tmp_path / "full"
    mount.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip()}")
    filler = mount / "filler"
    filler.write_bytes(b"\0" * 15 * 4096)  # one page left: meta.json fits, weights and outputs do not

    class Disk:
        path = mount

        @staticmethod
        def free() -> None:
            filler.unlink()

    try:
        yield Disk
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_results_disk_loses_no_trained_result_and_ends_in_one_line(tmp_path, full_disk):
    """The results folder on a full disk, the database elsewhere: the trained trials COMPLETE
    (they ended FAIL), the run ends with one line naming what could not be written, exit
    status 1, without "wrote trials.csv"; with space freed the same command writes them."""
    space = write_space(tmp_path)
    (tmp_path / "db").mkdir()
    url = f"sqlite:///{tmp_path / 'db' / 'study.db'}"
    args = ["search", "--space", str(space), "--trials", "2", "--out", str(full_disk.path), "--storage", url]
    args += ["--heartbeat", "0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, (result.output, result.exception)
    lines = [ln for ln in lines_of(result.stderr) if not ln.startswith("search: ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "trials.csv (No space left on device)" in lines[0] and "the weights of trials 0, 1" in lines[0], lines[0]
    assert "free disk space, then run the same command again" in lines[0]
    assert "wrote" not in result.stdout
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    assert [t.state for t in trials] == [S.COMPLETE, S.COMPLETE], [t.user_attrs.get("fail_reason") for t in trials]
    assert not list((full_disk.path / "tiny").rglob("*.tmp"))
    full_disk.free()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert f"wrote {full_disk.path / 'tiny' / 'trials.csv'}" in again.stdout
    assert len(nsresults.load(full_disk.path / "tiny")) == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE/SIGXFSZ semantics are Linux's here")
def test_full_disk_ends_the_run_in_one_line_and_the_same_command_resumes(tmp_path):
    """`ulimit -f` at the size of the study's database: the next trial cannot be recorded.
    The run ends with one line (exit status 1), and the same command without the limit
    resumes: the trial left RUNNING by the dead process is failed with a reason at once."""
    import resource

    space = write_space(tmp_path)
    run_search(str(space), trials=1, out=tmp_path / "out", heartbeat=0)  # the study exists
    folder = tmp_path / "out" / "tiny"
    limit = (folder / "study.db").stat().st_size  # the database can no longer grow

    def disk_full() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit raise EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    args = [
        sys.executable,
        "-m",
        "nas_sepconv.cli",
        "search",
        "--space",
        str(space),
        "--trials",
        "20",
        "--out",
        str(tmp_path / "out"),
    ]
    proc = subprocess.run(
        args, env=env(), cwd=tmp_path, capture_output=True, text=True, timeout=300, preexec_fn=disk_full
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in lines_of(proc.stderr) if not ln.startswith("search: ")]  # progress lines (stderr is a pipe)
    assert len(lines) == 1 and "storage" in lines[0] and "run the same command again" in lines[0], proc.stderr[-3000:]
    before = trials_of(folder)
    complete = [t.number for t in before if t.state == S.COMPLETE]
    assert len(complete) >= 1

    again = subprocess.run(
        [*args[:-4], "--trials", str(len(complete) + 1), "--out", str(tmp_path / "out")],
        env=env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    after = trials_of(folder)
    assert not [t.number for t in after if t.state == S.RUNNING], "a trial is still RUNNING"
    assert [t.number for t in after if t.state == S.COMPLETE][: len(complete)] == complete  # nothing lost
    assert sum(t.state == S.COMPLETE for t in after) == len(complete) + 1
    for t in after:
        if t.state == S.FAIL:
            # failed on resume (its process is gone), or by the run itself once the write that
            # broke went through: either way with its reason
            assert t.user_attrs.get("fail_reason", "").startswith(("worker died", "the storage failed")), t.user_attrs


def test_a_trial_left_running_by_a_dead_process_does_not_block_a_resume(tmp_path):
    space = write_space(tmp_path)
    study = run_search(str(space), trials=1, out=tmp_path / "out", heartbeat=0)
    orphan = study.ask()  # claimed by a process that died: it holds the last slot of trials=2
    study._storage.set_trial_system_attr(orphan._trial_id, WORKER_ATTR, f"{socket.gethostname()}:{_dead_pid()}")
    started = time.monotonic()
    study = run_search(str(space), trials=2, out=tmp_path / "out", heartbeat=0, timeout=60)
    assert time.monotonic() - started < 55, "the resume waited for the dead trial"
    trials = {t.number: t for t in study.get_trials()}
    assert trials[orphan.number].state == S.FAIL
    assert trials[orphan.number].user_attrs["fail_reason"].startswith("worker died: process")
    assert sum(t.state == S.COMPLETE for t in trials.values()) == 2


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_infinite_timeout_means_no_limit(tmp_path):
    study = run_search(str(write_space(tmp_path)), trials=1, timeout=float("inf"), out=tmp_path / "out", heartbeat=0)
    assert [t.state for t in study.get_trials()] == [S.COMPLETE]


# --------------------------------------------------------------------------------------------
# folders that cannot be written (root ignores permissions: an immutable folder stops it)
# --------------------------------------------------------------------------------------------
@pytest.fixture
def immutable():
    made: list[Path] = []

    def make(path: Path) -> Path:
        if shutil.which("chattr") is None:
            pytest.skip("chattr is not installed")
        proc = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot make a folder immutable here: {proc.stderr.strip()}")
        made.append(path)
        return path

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def _one_line(result, field: str) -> str:
    assert result.exit_code == 2, f"exit {result.exit_code}\n{result.stderr}\n{result.exception!r}"
    assert "Traceback" not in result.stderr
    lines = lines_of(result.stderr)
    assert len(lines) == 1 and field in lines[0], result.stderr
    return lines[0]


def test_read_only_folders_are_refused_before_anything_runs(tmp_path, immutable, monkeypatch):
    space = write_space(tmp_path)
    run_search(str(space), trials=1, out=tmp_path / "out", heartbeat=0)
    folder = tmp_path / "out" / "tiny"
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    immutable(fresh)
    immutable(folder)
    trained = []
    workers = importlib.import_module("nas_sepconv.search.workers")  # where a worker looks run_candidate up
    real = workers.run_candidate
    monkeypatch.setattr(workers, "run_candidate", lambda *a, **k: trained.append(1) or real(*a, **k))
    runner = CliRunner()
    # a new search into a read-only folder
    _one_line(runner.invoke(app, ["search", "--space", str(space), "--trials", "1", "--out", str(fresh)]), "--out")
    assert not list(fresh.iterdir())
    # resuming a search whose results folder is read-only
    _one_line(
        runner.invoke(app, ["search", "--space", str(space), "--trials", "2", "--out", str(tmp_path / "out")]), "--out"
    )
    assert not trained, "a trial ran before the folder was found read-only"
    # report writes beside the study by default
    line = _one_line(runner.invoke(app, ["report", str(folder)]), "RESULTS_DIR")
    assert "--out" in line
    assert runner.invoke(app, ["report", str(folder), "--out", str(tmp_path / "elsewhere")]).exit_code == 0
    # convert --out into a read-only folder fails before the model is converted
    _one_line(
        runner.invoke(
            app,
            [
                "convert",
                "--model",
                "torchvision:resnet18",
                "--input-size",
                "3,32,32",
                "--out",
                str(fresh / "m.safetensors"),
            ],
        ),
        "--out",
    )
    assert len(trials_of(folder)) == 1


# --------------------------------------------------------------------------------------------
# Ctrl-C while workers start
# --------------------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_ctrl_c_while_workers_start_prints_one_line(tmp_path):
    """A terminal's Ctrl-C reaches the whole process group, workers importing torch included:
    exit status 130, a line or two, no traceback from any worker, no trial left RUNNING."""
    if not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists():
        pytest.skip("/proc/PID/task/PID/children is not available: cannot see the workers start")
    space = write_space(tmp_path)
    args = [
        sys.executable,
        "-m",
        "nas_sepconv.cli",
        "search",
        "--space",
        str(space),
        "--trials",
        "6",
        "--workers",
        "2",
        "--out",
        str(tmp_path / "out"),
    ]
    proc = subprocess.Popen(
        args,
        env=env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120  # the parent has spawned its workers: they import torch
        while len(_children(proc.pid)) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        os.killpg(proc.pid, signal.SIGINT)  # as the terminal does: every process of the group
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "interrupted" in stderr
    assert len([ln for ln in lines_of(stderr) if not ln.startswith("search: ")]) <= 2, stderr  # progress lines apart
    db = tmp_path / "out" / "tiny" / "study.db"
    assert db.is_file(), "the study is created before any worker starts"
    states = {t.number: t.state for t in trials_of(db.parent)}
    assert not [n for n, state in states.items() if state == S.RUNNING], f"Ctrl-C left a trial RUNNING: {states}"


def test_a_trial_failed_by_the_heartbeat_gets_a_reason_and_its_retry_does_not(tmp_path):
    """Optuna's fail_stale_trials records no reason; ours does (and a retry starts clean)."""
    import warnings

    from nas_sepconv.search.heartbeat import RetryStale
    from nas_sepconv.storage import open_storage

    space = write_space(tmp_path)
    run_search(str(space), trials=1, out=tmp_path / "out", heartbeat=1)
    storage = open_storage(
        f"sqlite:///{tmp_path / 'out' / 'tiny' / 'study.db'}", heartbeat=1, stale_callback=RetryStale(max_retry=1)
    )
    study = optuna.load_study(study_name="tiny", storage=storage)
    orphan = study.ask({"width_mult": optuna.distributions.CategoricalDistribution([0.5, 1.0])})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        storage.record_heartbeat(orphan._trial_id)  # a worker on another machine, silent since
    time.sleep(3.5)  # past the grace period of 3 heartbeats
    study = run_search(str(space), trials=2, out=tmp_path / "out", heartbeat=1, retries=1, timeout=60)
    trials = study.get_trials()
    dead = trials[orphan.number]
    assert dead.state == S.FAIL and dead.user_attrs["fail_reason"] == "worker died: no heartbeat for 3 s", (
        dead.user_attrs
    )
    retry = [
        t for t in trials if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == orphan.number
    ]
    assert len(retry) == 1 and retry[0].state == S.COMPLETE and "fail_reason" not in retry[0].user_attrs


# --------------------------------------------------------------------------------------------
# a disk that fails under the study's database (issue 28): a fault, not bad input
# --------------------------------------------------------------------------------------------
def _file_size_limit(limit: int):
    import resource

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit raise EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE/SIGXFSZ semantics are Linux's here")
def test_a_disk_io_error_on_the_study_database_is_a_fault_and_the_same_command_runs_later(tmp_path):
    """SQLite's "disk I/O error" while it creates the study's tables: one line, exit status 1,
    "free disk space ... run the same command again" (it was exit 2, "check the URL, the server
    and the credentials"); the same command without the limit runs."""
    space = write_space(tmp_path)
    (tmp_path / "db").mkdir()
    url = f"sqlite:///{tmp_path / 'db' / 'study.db'}"
    args = [sys.executable, "-m", "nas_sepconv.cli", "search", "--space", str(space), "--trials", "1"]
    args += ["--out", str(tmp_path / "out"), "--storage", url]
    proc = subprocess.run(
        args, env=env(), cwd=tmp_path, capture_output=True, text=True, timeout=300, preexec_fn=_file_size_limit(8192)
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = [ln for ln in lines_of(proc.stderr) if not ln.startswith("search: ")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "disk I/O error" in lines[0] and "free disk space" in lines[0], lines[0]
    assert "run the same command again" in lines[0]
    assert "credentials" not in lines[0]
    again = run_search(
        str(space), trials=1, out=tmp_path / "out", storage=url, heartbeat=0
    )  # the same, in this process
    assert [t.state for t in again.get_trials()] == [S.COMPLETE]
