"""Scale-out on a real PostgreSQL server: several machines (here: processes with separate
results folders, so separate lock files) share one study; the rank check after ``ask`` keeps
the count exact.

The server is a throw-away one, started by a session fixture: ``initdb`` into a temporary
folder, ``pg_ctl start`` listening on 127.0.0.1 only (port picked free, trust auth, fsync off),
``createdb``; as root it runs as the ``postgres`` system user.  ``.ci/postgres.sh`` installs the
binaries; without them these tests skip and say so.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import optuna
import pytest
from test_reliability import check_exact, cli, env_with, write_space

import nas_sepconv.results as results
from nas_sepconv.storage import normalise_storage_url

pytest.importorskip(
    "psycopg2", reason="psycopg2 is needed for PostgreSQL storages (pip install 'nas-sepconv[postgres]')"
)


def _bindir() -> Path | None:
    def version(path: str) -> tuple:
        part = Path(path).parts[-3]
        return tuple(int(x) for x in part.split(".") if x.isdigit())

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    bindir = _bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        pytest.skip(
            "no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin or on PATH; run .ci/postgres.sh"
        )
    prefix: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="nas_sepconv_pg_"))
    if os.geteuid() == 0:  # the server refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            pytest.skip("running as root and there is no 'postgres' system user to run the server as")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, log, port = root / "data", root / "server.log", _free_port()

    def run(*args: str) -> None:
        proc = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr[-2000:]}\n{tail}")

    run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
    options = f"-h 127.0.0.1 -p {port} -k {root} -F -c max_connections=100"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "nas")
        yield f"postgresql://postgres:unused@127.0.0.1:{port}/nas"
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


N = 5


@pytest.fixture(scope="module")
def pg_search(postgres_url, tmp_path_factory):
    """Two `nas-sepconv search` processes, separate results folders, one PostgreSQL study."""
    tmp = tmp_path_factory.mktemp("pg_search")
    space = write_space(tmp)
    procs = [
        subprocess.Popen(
            cli(
                "search",
                "--space",
                str(space),
                "--trials",
                str(N),
                "--storage",
                postgres_url,
                "--study",
                "pg",
                "--heartbeat",
                "2",
                "--out",
                str(tmp / f"machine{i}"),
            ),
            env=env_with(),
            cwd=tmp,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    return tmp, [(p.returncode, err) for p, (_, err) in zip(procs, outs)]


def test_two_machines_share_one_postgres_study(postgres_url, pg_search):
    tmp, runs = pg_search
    for rc, err in runs:
        assert rc == 0, err[-3000:]
        assert "Traceback" not in err
    trials = optuna.load_study(study_name="pg", storage=normalise_storage_url(postgres_url)).get_trials()
    check_exact(trials, N)
    surplus = [t for t in trials if t.user_attrs.get("fail_reason", "").startswith("surplus")]
    assert len(trials) == N + len(surplus)  # the only extra trials are refused surplus claims
    for i in range(2):  # each machine's folder reads the shared study (meta.json names it)
        folder = tmp / f"machine{i}" / "pg"
        assert (folder / "trials.csv").is_file() and (folder / "pareto.png").is_file()
        df = results.load(folder)
        assert len(df) == len(trials) and (df["state"] == "COMPLETE").sum() == N
        assert "unused" not in (folder / "meta.json").read_text(), "the password was written to meta.json"


def test_results_load_reads_the_url_as_typed(postgres_url, pg_search):
    df = results.load(postgres_url, study="pg")
    assert (df["state"] == "COMPLETE").sum() == N
