"""The wheel ships every subpackage and the bundled spaces: built, installed in a fresh virtual
environment (its dependencies borrowed from this one, the checkout out of sight), then
``nas-sepconv spaces`` and a one-trial search run from it."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {proc.stderr.strip().splitlines()[-1:]}")
    (path,) = out.glob("nas_sepconv-*.whl")
    return path


def test_the_wheel_holds_every_package_and_space(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {str(p.parent.relative_to(REPO)) for p in (REPO / "nas_sepconv").rglob("__init__.py")}
    for package in packages:
        assert f"{package}/__init__.py" in names, f"the wheel lacks {package}"
    for space in (REPO / "search_spaces").glob("*.yaml"):
        assert f"nas_sepconv/search_spaces/{space.name}" in names


def test_the_installed_wheel_lists_spaces_and_runs_a_search(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # the dependencies (torch, optuna, ...) come from this environment; its editable install of the
    # checkout does not (a .pth file inside a path added by a .pth file is not run)
    Path(purelib, "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--ignore-installed",
            "-q",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
        env=env,
    )
    where = subprocess.run(
        [str(python), "-c", "import nas_sepconv; print(nas_sepconv.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert where.returncode == 0, where.stderr
    where = where.stdout
    assert where.startswith(purelib), f"imported {where} instead of the installed wheel"
    script = venv / "bin" / "nas-sepconv"
    listed = subprocess.run([str(script), "spaces"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert listed.returncode == 0, listed.stderr
    for space in (REPO / "search_spaces").glob("*.yaml"):
        assert space.stem in listed.stdout
    ran = subprocess.run(
        [str(script), "search", "--trials", "1", "--out", str(tmp_path / "results")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**env, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "results" / "default" / "trials.csv").is_file()
