"""Shared fixtures."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


# The smallest real search space (one stage, one epoch, 300 images), as a mapping, for tests that
# write variants of it: a trial takes about a second.
FAST_SPACE = {
    "name": "tiny",
    "kind": "build",
    "data": {"dataset": "digits", "subset": 300},
    "train": {"epochs": 1, "batch_size": 128},
    "search": {"trials": 2, "sampler": "random"},
    "build": {
        "stem_channels": 8,
        "stages": [
            {"out_channels": 8, "repeats": 1, "stride": 2, "kind": ["dwsep", "inverted_residual"], "expand_ratio": [2]}
        ],
        "width_mult": [0.5, 1.0],
    },
}

# A search space whose trials take a second or two on the embedded digits data.
TINY = """\
name: tiny
description: tiny test space
kind: build
data: {dataset: digits, val_fraction: 0.15}
train: {epochs: 2, batch_size: 128, lr: 0.1}
search: {trials: 3, sampler: nsga2, population_size: 4}
build:
  stem_channels: 8
  stages:
    - {out_channels: 8, repeats: 1, stride: 2, kind: [dwsep, inverted_residual, spatial], expand_ratio: [2], rank: [0.5], kernel_size: [3, 5]}
  width_mult: [0.5, 1.0]
  resolution_mult: [0.75, 1.0]
"""


@pytest.fixture(autouse=True)
def _no_user_data(tmp_path_factory, monkeypatch):
    """The per-user data folder (the default data.root of CIFAR-10 spaces) is an empty one of
    the test session's, never the user's ~/.cache/nas_sepconv/data; likewise the latency cache."""
    monkeypatch.setenv("NAS_SEPCONV_DATA", str(tmp_path_factory.getbasetemp() / "no_user_data"))
    monkeypatch.setenv("NAS_SEPCONV_LATENCY_CACHE", str(tmp_path_factory.getbasetemp() / "latency_cache"))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    # NAS_SEPCONV_TEST_THREADS=1 when several test runs share the machine (threads spin)
    torch.set_num_threads(int(os.environ.get("NAS_SEPCONV_TEST_THREADS", "2")))
    yield


@pytest.fixture
def one_thread():
    """One thread for tests of small tensors: thread start-up costs more than it saves (and
    far more on a busy 2-core machine).  Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``;
    it runs after the autouse fixture above, which sets two."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory):
    """CIFAR-10 (JPEG q75) extracted from ../shared/data; skips cleanly when absent."""
    archive = SHARED_DATA / "cifar10-jpeg.tar.gz"
    if not archive.exists():
        pytest.skip(f"{archive} not present (benchmark data lives beside the repo only on dev machines)")
    import tarfile

    root = Path("/tmp/nas_sepconv_cifar10")
    if not (root / "train").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    candidates = [p for p in [root, *root.iterdir()] if (p / "train").is_dir()]
    return candidates[0]


class ThreeConvNet(torch.nn.Module):
    """Three 3x3 convs after a stem, the middle one strided, a classifier (the budget tests' model)."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.conv1 = torch.nn.Conv2d(16, 24, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(24, 32, 3, stride=2, padding=1)
        self.conv3 = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.fc = torch.nn.Linear(32, 10)

    def forward(self, x):
        for conv in (self.stem, self.conv1, self.conv2, self.conv3):
            x = torch.relu(conv(x))
        return self.fc(x.mean((2, 3)))


def load_benchmark(name: str):
    """Yields ``benchmarks/<name>.py`` imported as a module, registered in ``sys.modules`` while
    it is used (dataclasses look their module up); for a module-scoped fixture's ``yield from``."""
    spec = importlib.util.spec_from_file_location(
        f"{name}_benchmark", Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)
