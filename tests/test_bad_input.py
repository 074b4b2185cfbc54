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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import FAST_SPACE  # noqa: E402
from typer.testing import CliRunner

import nas_sepconv as ns
import nas_sepconv.data.datasets as nsdata
import nas_sepconv.io as nsio
import nas_sepconv.results as nsresults
from nas_sepconv.cli import app
from nas_sepconv.errors import UserInputError
from nas_sepconv.measure import activation_bytes
from nas_sepconv.search import search as run_search

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

    def space_file(self, data: dict | str, name: str = "space.yaml") -> str:
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


def _space(data: dict | str, *flags: str) -> Callable[[Env], list[str]]:
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
    save_model(
        path,
        nn.Conv2d(3, 4, 3),
        {
            "kind": "converted",
            "model": "evil_mod_bad_input:make",
            "model_kwargs": {},
            "width_mult": 1.0,
            "input_size": [3, 8, 8],
        },
    )
    return str(path)


def _load_space(path: Path) -> Any:
    from nas_sepconv.search import load_space

    return load_space(path)


def _junk_space(env: Env) -> str:
    """Random bytes (not UTF-8, NULs included) under the name space.yaml."""
    path = env.tmp / "space.yaml"
    path.write_bytes(bytes(range(256)) * 4 + b"\xff\xfe\x00junk")
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


def _folder(env: Env, name: str) -> str:
    """A folder ``name`` (with a model file's extension) in the case's folder."""
    (env.tmp / name).mkdir()
    return str(env.tmp / name)


def _export(env: Env, *flags: str) -> list[str]:
    return ["export", str(env.results), *flags]


def _make_plan_bad_glob(env: Env) -> Any:
    import torch
    import torchvision

    return ns.make_plan(
        torchvision.models.resnet18(), {"layer9.*.conv1": "dwsep"}, example_inputs=torch.randn(1, 3, 32, 32)
    )


# ---- issue 17: data (files for the data-set cases, all under <tmp>/data17)


def _data17_tree(env: Env, *, classes=("ant", "bee"), broken: str | None = None, how: str = "truncate") -> str:
    """A tiny JPEG ImageFolder tree; ``broken`` (e.g. ``train/bee/001.jpg``) is truncated or garbage."""
    from PIL import Image

    root = env.tmp / "data17" / "tree"
    for split in ("train", "test"):
        for i, c in enumerate(classes):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for j in range(3):
                Image.new("RGB", (8, 8), (40 * i, 20 * j, 7)).save(root / split / c / f"{j:03d}.jpg")
    if broken:
        blob = (root / broken).read_bytes()
        (root / broken).write_bytes(blob[: len(blob) // 3] if how == "truncate" else b"not an image")
    return str(root)


def _data17_cifar(env: Env, replace: dict | None = None) -> str:
    """A fake cifar-10-batches-py folder; ``replace`` maps a file name to the object pickled there."""
    import pickle

    import numpy as np

    folder = env.tmp / "data17" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps((replace or {}).get(name, entry), protocol=2))
    return str(folder)


class _Data17RunsCode:
    def __reduce__(self):
        import os

        return os.system, ("echo pwned > /dev/null",)


def _data17_space(**data: Any) -> Callable[[Env], list[str]]:
    """A search on TINY with ``data`` fields; callables among the values get the Env."""
    return lambda env: _space(tiny_space(**{f"data.{k}": (v(env) if callable(v) else v) for k, v in data.items()}))(env)


def _tiny_conv() -> Any:
    import torch.nn as nn

    return nn.Conv2d(1, 4, 3)


def _converted_pair() -> tuple[Any, Any]:
    import torch
    import torch.nn as nn

    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    return ns.convert(model, "dwsep", example_inputs=torch.randn(1, 8, 8, 8)), model


def _nan_net(value: float = float("nan")) -> Any:
    """Two 3x3 convs, the second with one non-finite weight."""
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1))
    with torch.no_grad():
        model[1].weight[0, 0, 0, 0] = value
    return model


CASES: list[Case] = [
    # ---- CLI flags: convert / profile
    Case(
        "input-size-letter",
        "--input-size",
        cli=lambda e: ["convert", "--model", "torchvision:resnet18", "--input-size", "3,x"],
    ),
    Case(
        "input-size-zero",
        "--input-size",
        cli=lambda e: ["convert", "--model", "torchvision:resnet18", "--input-size", "0,32,32"],
    ),
    Case(
        "input-size-profile",
        "--input-size",
        cli=lambda e: ["profile", "--model", "torchvision:resnet18", "--input-size", "3,-1,32"],
    ),
    Case(
        "input-size-wrong-for-model",
        "--input-size: ResNet does not run on inputs of shape (1, 3, 32)",
        cli=lambda e: ["convert", "--model", "torchvision:resnet18", "--input-size", "3,32"],
    ),
    Case(
        "to-typo",
        "spec",
        cli=lambda e: ["convert", "--model", "torchvision:resnet18", "--to", "dwsepp", "--input-size", "3,32,32"],
    ),
    Case(
        "to-bad-option",
        "spec",
        cli=lambda e: ["convert", "--model", "torchvision:resnet18", "--to", "dwsep_e6", "--input-size", "3,32,32"],
    ),
    Case(
        "model-unknown-torchvision",
        "model",
        cli=lambda e: ["convert", "--model", "torchvision:resnet1800", "--input-size", "3,32,32"],
    ),
    Case(
        "model-missing-package",
        "model",
        cli=lambda e: ["convert", "--model", "nosuchpkg.mod:f", "--input-size", "3,32,32"],
    ),
    Case("model-not-a-model", "model", cli=lambda e: ["convert", "--model", "os:getcwd", "--input-size", "3,32,32"]),
    Case("model-no-source", "model", cli=lambda e: ["profile", "--model", "resnet18", "--input-size", "3,32,32"]),
    Case(
        "convert-out-bad-folder",
        "--out",
        cli=lambda e: [
            "convert",
            "--model",
            "torchvision:resnet18",
            "--input-size",
            "3,32,32",
            "--out",
            str(e.tmp / "no" / "such" / "dir" / "x.txt"),
        ],
    ),
    # ---- issue 17: convert, profile
    Case(
        "to-option-nan",
        "dw_mult",
        cli=lambda e: ["convert", "--model", "torchvision:resnet18", "--to", "dwsep_mnan", "--input-size", "3,32,32"],
    ),
    Case(
        "to-option-inf",
        "rank",
        cli=lambda e: ["convert", "--model", "torchvision:resnet18", "--to", "spatial_rinf", "--input-size", "3,32,32"],
    ),
    Case(
        "to-option-negative",
        "rank",
        cli=lambda e: ["convert", "--model", "torchvision:resnet18", "--to", "spatial_r-1", "--input-size", "3,32,32"],
    ),
    Case(
        "to-option-zero",
        "dw_mult",
        cli=lambda e: ["convert", "--model", "torchvision:resnet18", "--to", "dwsep_m0", "--input-size", "3,32,32"],
    ),
    Case(
        "to-option-overflow",
        "expand_ratio",
        cli=lambda e: ["convert", "--model", "torchvision:resnet18", "--to", "ir_e1e400", "--input-size", "3,32,32"],
    ),
    Case(
        "to-option-groups-zero",
        "groups",
        cli=lambda e: ["convert", "--model", "torchvision:resnet18", "--to", "grouped_g0", "--input-size", "3,32,32"],
    ),
    Case(
        "to-option-huge-mult",
        "dw_mult",
        cli=lambda e: [
            "convert",
            "--model",
            "torchvision:resnet18",
            "--to",
            "dwsep_m100000",
            "--input-size",
            "3,32,32",
        ],
    ),
    Case(
        "to-option-huge-expand",
        "expand_ratio",
        cli=lambda e: ["convert", "--model", "torchvision:resnet18", "--to", "ir_e1e9", "--input-size", "3,32,32"],
    ),
    Case(
        "threads-negative",
        "--threads",
        cli=lambda e: [
            "profile",
            "--model",
            "nas_sepconv:tiny_convnet",
            "--input-size",
            "1,8,8",
            "--latency",
            "--threads",
            "-5",
        ],
    ),
    Case(
        "threads-zero",
        "--threads",
        cli=lambda e: [
            "profile",
            "--model",
            "nas_sepconv:tiny_convnet",
            "--input-size",
            "1,8,8",
            "--latency",
            "--threads",
            "0",
        ],
    ),
    Case(
        "threads-absurd",
        "--threads",
        cli=lambda e: [
            "profile",
            "--model",
            "nas_sepconv:tiny_convnet",
            "--input-size",
            "1,8,8",
            "--latency",
            "--threads",
            "100000",
        ],
    ),
    Case(
        "input-size-huge-convert",
        "--input-size",
        cli=lambda e: ["convert", "--model", "torchvision:resnet18", "--input-size", "3,100000,100000"],
    ),
    Case(
        "input-size-huge-profile",
        "--input-size",
        cli=lambda e: ["profile", "--model", "torchvision:resnet18", "--input-size", "3,100000,100000"],
    ),
    Case(
        "input-size-over-budget",
        "above the budget of 4 GiB",
        cli=lambda e: ["profile", "--model", "torchvision:resnet18", "--input-size", "3,4000,4000"],
    ),
    Case(
        "input-size-channels-convert",
        "--input-size: TinyConvNet expects 1 input channel(s) (first conv features.0 takes 1), got 3; use --input-size "
        "1,32,32",
        cli=lambda e: ["convert", "--model", "nas_sepconv:tiny_convnet", "--input-size", "3,32,32"],
    ),
    Case(
        "input-size-channels-profile",
        "ResNet expects 3 input channel(s) (first conv conv1 takes 3), got 1; use --input-size 3,32,32",
        cli=lambda e: ["profile", "--model", "torchvision:resnet18", "--input-size", "1,32,32"],
    ),
    Case(
        "input-size-too-few-sizes",
        "first conv conv1 is 2-D; give 3 sizes, --input-size 3,H,W",
        cli=lambda e: ["profile", "--model", "torchvision:resnet18", "--input-size", "3,32"],
    ),
    # ---- CLI flags: search
    Case(
        "trials-zero",
        "--trials",
        cli=lambda e: ["search", "--space", e.space_file(TINY), "--trials", "0", "--out", str(e.out)],
    ),
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
    Case(
        "space-missing-file",
        "space",
        cli=lambda e: ["search", "--space", str(e.tmp / "missing.yaml"), "--out", str(e.out)],
    ),
    # ---- issue 17: search, storage, outputs
    Case("storage-sqlite-in-memory", "--storage", cli=_search("--storage", "sqlite://")),
    Case("storage-sqlite-memory-path", "--storage", cli=_search("--storage", "sqlite:///:memory:")),
    Case("storage-sqlite-memory-uri", "--storage", cli=_search("--storage", "sqlite:///file:nas?mode=memory&uri=true")),
    Case(
        "storage-journal-random-bytes",
        "--storage",
        cli=lambda e: _search("--storage", _junk_journal(e, binary=True))(e),
    ),
    Case("storage-journal-text", "--storage", cli=lambda e: _search("--storage", _junk_journal(e, binary=False))(e)),
    Case("timeout-nan", "--timeout", cli=_search("--timeout", "nan")),
    Case("workers-thousand", "--workers", cli=_search("--workers", "1000")),
    Case(
        "out-is-a-file",
        "--out",
        cli=lambda e: ["search", "--space", e.space_file(TINY), "--trials", "1", "--out", e.space_file(TINY)],
    ),
    Case(
        "out-under-proc",
        "--out",
        cli=lambda e: ["search", "--space", e.space_file(TINY), "--trials", "1", "--out", "/proc/x"],
    ),
    Case(
        "convert-out-under-proc",
        "--out",
        cli=lambda e: [
            "convert",
            "--model",
            "torchvision:resnet18",
            "--input-size",
            "3,32,32",
            "--out",
            "/proc/x/y.safetensors",
        ],
    ),
    Case(
        "report-out-under-proc",
        "--out",
        cli=lambda e: ["report", str(e.results), "--out", "/proc/x"],
        needs_results=True,
    ),
    Case(
        "lib-search-out-is-a-file",
        "out:",
        lib=lambda e: run_search(e.space_file(TINY), trials=1, out=e.space_file(TINY)),
    ),
    Case(
        "lib-search-timeout-nan",
        "timeout:",
        lib=lambda e: run_search(e.space_file(TINY), trials=1, timeout=float("nan"), out=e.out),
    ),
    # ---- search-space YAML
    Case("yaml-unknown-top-level", "colour", cli=_space(tiny_space(colour="red"))),
    Case("yaml-bad-kind", "kind", cli=_space(tiny_space(kind="bulid"))),
    Case(
        "yaml-option-not-taken",
        "build.stages[0].rank",
        cli=_space(tiny_space(**{"build.stages.0.kind": ["inverted_residual"], "build.stages.0.rank": [0.5]})),
    ),
    Case("yaml-option-unknown", "build.stages[0].colour", cli=_space(tiny_space(**{"build.stages.0.colour": [1]}))),
    Case(
        "yaml-unknown-block-kind",
        "build.stages[0].kind",
        cli=_space(tiny_space(**{"build.stages.0.kind": ["dwsep", "mobileconv"]})),
    ),
    Case("yaml-bad-sampler", "search.sampler", cli=_space(tiny_space(**{"search.sampler": "cmaes"}))),
    Case("yaml-negative-epochs", "train.epochs", cli=_space(tiny_space(**{"train.epochs": -1}))),
    Case(
        "yaml-range-reversed",
        "build.width_mult",
        cli=_space(tiny_space(**{"build.width_mult": {"low": 1.0, "high": 0.5}})),
    ),
    Case("yaml-scalarised-no-target", "target_macs", cli=_space(tiny_space(**{"search.mode": "scalarised"}))),
    Case(
        "yaml-objectives-order",
        "search.objectives",
        cli=_space(tiny_space(**{"search.objectives": ["macs", "accuracy"]})),
    ),
    Case(
        "yaml-objective-unknown",
        "search.objectives",
        cli=_space(tiny_space(**{"search.objectives": ["accuracy", "flops"]})),
    ),
    Case(
        "yaml-multi-fidelity-eta-one",
        "search.multi_fidelity.eta",
        cli=_space(tiny_space(**{"search.multi_fidelity": {"eta": 1}})),
    ),
    Case(
        "yaml-multi-fidelity-min-epochs-too-high",
        "search.multi_fidelity.min_epochs",
        cli=_space(tiny_space(**{"search.multi_fidelity": {"min_epochs": 9}})),
    ),
    Case(
        "multi-fidelity-flag-on-one-epoch",
        "search.multi_fidelity.min_epochs",
        cli=_space(tiny_space(**{"train.epochs": 1}), "--multi-fidelity"),
    ),
    Case(
        "lib-multi-fidelity-not-a-mapping",
        "multi_fidelity",
        lib=lambda e: run_search(e.space_file(TINY), trials=1, out=e.out, multi_fidelity="yes"),
    ),
    Case("yaml-malformed", "space", cli=_space("name: tiny\nkind: build\nbuild: [stages: {\n")),
    Case("yaml-not-a-mapping", "space", cli=_space("- just\n- a list\n")),
    Case("yaml-python-tag", "space", cli=_space("name: !!python/object/apply:os.getcwd []\nkind: build\n")),
    Case("yaml-convert-without-section", "convert", cli=_space(tiny_space(kind="convert", build=DELETE))),
    Case("yaml-build-without-section", "build", cli=_space(tiny_space(build=DELETE))),
    Case("yaml-missing-name", "name", cli=_space(tiny_space(name=DELETE))),
    Case(
        "yaml-stage-zero-channels",
        "build.stages[0].out_channels",
        cli=_space(tiny_space(**{"build.stages.0.out_channels": 0})),
    ),
    Case(
        "yaml-rank-out-of-range",
        "rank",
        cli=_space(
            tiny_space(
                **{
                    "build.stages.0.kind": ["spatial"],
                    "build.stages.0.rank": [1.5],
                    "build.stages.0.expand_ratio": DELETE,
                }
            )
        ),
    ),
    Case(
        "yaml-convert-unknown-model",
        "convert.model",
        cli=_space(tiny_space(kind="convert", build=DELETE, convert={"model": "torchvision:resnet1800"})),
    ),
    Case(
        "yaml-convert-missing-weights",
        "convert.weights",
        cli=lambda e: _space(
            tiny_space(
                kind="convert",
                build=DELETE,
                convert={"model": "nas_sepconv:cifar_resnet18", "weights": str(e.tmp / "nope.safetensors")},
            )
        )(e),
    ),
    # ---- issue 17: space values
    Case(
        "yaml-binary-junk",
        "space",
        cli=lambda e: ["search", "--space", _junk_space(e), "--trials", "1", "--out", str(e.out)],
    ),
    Case(
        "space-is-a-directory",
        "space",
        cli=lambda e: ["search", "--space", str(e.tmp), "--trials", "1", "--out", str(e.out)],
    ),
    Case(
        "space-dev-zero",
        "space",
        cli=lambda e: ["search", "--space", "/dev/zero", "--trials", "1", "--out", str(e.out)],
    ),
    Case("space-dev-zero-yaml-name", "space", lib=lambda e: _load_space(Path("/dev/zero"))),
    Case("yaml-width-mult-empty", "build.width_mult", cli=_space(tiny_space(**{"build.width_mult": []}))),
    Case("yaml-width-mult-zero", "build.width_mult", cli=_space(tiny_space(**{"build.width_mult": 0}))),
    Case("yaml-width-mult-negative", "build.width_mult", cli=_space(tiny_space(**{"build.width_mult": [-1.0, 1.0]}))),
    Case("yaml-width-mult-text", "build.width_mult", cli=_space(tiny_space(**{"build.width_mult": ["wide"]}))),
    Case("yaml-depth-mult-huge", "build.depth_mult", cli=_space(tiny_space(**{"build.depth_mult": 1e9}))),
    Case(
        "yaml-resolution-mult-range-huge",
        "build.resolution_mult",
        cli=_space(tiny_space(**{"build.resolution_mult": {"low": 0.5, "high": 100.0}})),
    ),
    Case("yaml-act-unknown", "build.act", cli=_space(tiny_space(**{"build.act": ["relu", "gelu9"]}))),
    Case("yaml-kind-empty", "build.stages[0].kind", cli=_space(tiny_space(**{"build.stages.0.kind": []}))),
    Case(
        "yaml-option-empty",
        "build.stages[0].expand_ratio",
        cli=_space(tiny_space(**{"build.stages.0.expand_ratio": []})),
    ),
    Case(
        "yaml-range-zero-step",
        "build.stages[0].expand_ratio",
        cli=_space(tiny_space(**{"build.stages.0.expand_ratio": {"low": 2, "high": 6, "step": 0, "int": True}})),
    ),
    Case("yaml-lr-inf", "train.lr", cli=_space(tiny_space(**{"train.lr": float("inf")}))),
    Case("yaml-lr-nan", "train.lr", cli=_space(tiny_space(**{"train.lr": float("nan")}))),
    Case("yaml-weight-decay-inf", "train.weight_decay", cli=_space(tiny_space(**{"train.weight_decay": float("inf")}))),
    Case("yaml-warmup-nan", "train.warmup_epochs", cli=_space(tiny_space(**{"train.warmup_epochs": float("nan")}))),
    Case("yaml-grad-clip-zero", "train.grad_clip", cli=_space(tiny_space(**{"train.grad_clip": 0}))),
    Case("yaml-epochs-huge", "train.epochs", cli=_space(tiny_space(**{"train.epochs": 10**9}))),
    Case("yaml-batch-size-huge", "train.batch_size", cli=_space(tiny_space(**{"train.batch_size": 10**9}))),
    Case("yaml-subset-huge", "data.subset", cli=_space(tiny_space(**{"data.subset": 10**12}))),
    Case("yaml-image-size-huge", "data.image_size", cli=_space(tiny_space(**{"data.image_size": 10**6}))),
    Case("yaml-repeats-huge", "build.stages[0].repeats", cli=_space(tiny_space(**{"build.stages.0.repeats": 10**6}))),
    Case(
        "yaml-out-channels-huge",
        "build.stages[0].out_channels",
        cli=_space(tiny_space(**{"build.stages.0.out_channels": 10**7})),
    ),
    Case("yaml-stem-channels-huge", "build.stem_channels", cli=_space(tiny_space(**{"build.stem_channels": 10**7}))),
    Case("yaml-head-channels-huge", "build.head_channels", cli=_space(tiny_space(**{"build.head_channels": 10**7}))),
    Case(
        "yaml-convert-width-mult-empty",
        "convert.width_mult",
        cli=_space(
            tiny_space(kind="convert", build=DELETE, convert={"model": "nas_sepconv:tiny_convnet", "width_mult": []})
        ),
    ),
    Case(
        "yaml-convert-resolution-mult-zero",
        "convert.resolution_mult",
        cli=_space(
            tiny_space(
                kind="convert", build=DELETE, convert={"model": "nas_sepconv:tiny_convnet", "resolution_mult": [0, 1.0]}
            )
        ),
    ),
    Case(
        "yaml-convert-group-kind-empty",
        "convert.groups[0].kind",
        cli=_space(
            tiny_space(
                kind="convert",
                build=DELETE,
                convert={
                    "model": "nas_sepconv:tiny_convnet",
                    "groups": [{"name": "all", "match": ["*"], "kind": [], "rank": [0.5]}],
                },
            )
        ),
    ),
    Case(
        "yaml-convert-choices-kind-empty",
        "convert.choices.kind",
        cli=_space(
            tiny_space(
                kind="convert",
                build=DELETE,
                convert={"model": "nas_sepconv:tiny_convnet", "choices": {"kind": [], "rank": [0.5]}},
            )
        ),
    ),
    Case(
        "yaml-convert-groups-empty",
        "convert.groups",
        cli=_space(
            tiny_space(kind="convert", build=DELETE, convert={"model": "nas_sepconv:tiny_convnet", "groups": []})
        ),
    ),
    Case(
        "yaml-convert-finetune-epochs-huge",
        "convert.finetune_epochs",
        cli=_space(
            tiny_space(
                kind="convert", build=DELETE, convert={"model": "nas_sepconv:tiny_convnet", "finetune_epochs": 10**8}
            )
        ),
    ),
    Case(
        "yaml-option-huge",
        "build.stages[0].expand_ratio",
        cli=_space(tiny_space(**{"build.stages.0.expand_ratio": [10**400]})),
    ),
    Case("yaml-key-with-newline", "x\\ny", cli=_space(tiny_space(**{"x\ny": 1}))),
    Case("yaml-nested-too-deep", "space", cli=_space("name: " + "[" * 5000 + "]" * 5000 + "\n")),
    # ---- data-set paths
    Case(
        "data-cifar10-root-missing",
        "data.root",
        cli=lambda e: _space(tiny_space(**{"data.dataset": "cifar10", "data.root": str(e.tmp / "no_cifar")}))(e),
    ),
    Case("data-unknown-dataset", "data.dataset", cli=_space(tiny_space(**{"data.dataset": "mnistt"}))),
    # ---- issue 17: data
    Case(
        "data-imagefolder-truncated-jpeg",
        "data.root",
        cli=_data17_space(dataset="imagefolder", root=lambda e: _data17_tree(e, broken="train/bee/001.jpg")),
    ),
    Case(
        "data-imagefolder-first-image-garbage",
        "data.root",
        cli=_data17_space(
            dataset="imagefolder", root=lambda e: _data17_tree(e, broken="train/ant/000.jpg", how="garbage")
        ),
    ),
    Case(
        "data-cifar10-tree-truncated-jpeg",
        "data.root",
        cli=_data17_space(dataset="cifar10", root=lambda e: _data17_tree(e, broken="test/ant/002.jpg")),
    ),
    Case(
        "data-imagefolder-one-class",
        "data.root",
        cli=_data17_space(dataset="imagefolder", root=lambda e: _data17_tree(e, classes=("ant",))),
    ),
    Case(
        "data-cifar10-batch-wrong-shape",
        "data.root",
        cli=_data17_space(
            dataset="cifar10",
            root=lambda e: _data17_cifar(e, {"data_batch_2": {b"data": [[0] * 10] * 100, b"labels": [0] * 100}}),
        ),
    ),
    Case(
        "data-cifar10-batch-label-count",
        "data.root",
        cli=_data17_space(
            dataset="cifar10",
            root=lambda e: _data17_cifar(e, {"test_batch": {b"data": [[0] * 3072] * 4, b"labels": [0, 1]}}),
        ),
    ),
    Case(
        "data-cifar10-batch-label-range",
        "data.root",
        cli=_data17_space(
            dataset="cifar10",
            root=lambda e: _data17_cifar(e, {"data_batch_1": {b"data": [[0] * 3072] * 2, b"labels": [3, 10]}}),
        ),
    ),
    Case(
        "data-cifar10-batch-runs-code",
        "data.root",
        cli=_data17_space(
            dataset="cifar10",
            root=lambda e: _data17_cifar(e, {"data_batch_5": {b"data": _Data17RunsCode(), b"labels": [0]}}),
        ),
    ),
    Case("data-cifar10-no-root", "data.root", cli=_data17_space(dataset="cifar10")),
    Case("data-image-size-huge", "data.image_size", cli=_data17_space(image_size=100_000)),
    Case("data-val-fraction-one", "data.val_fraction", cli=_data17_space(val_fraction=1.0)),
    Case("data-subset-one", "data.subset", cli=_data17_space(subset=1)),
    Case(
        "lib-dataset-image-size-huge",
        "dataset.image_size",
        lib=lambda e: nsdata.load_dataset("digits", image_size=100_000),
    ),
    Case(
        "lib-dataset-truncated-jpeg",
        "dataset.root",
        lib=lambda e: nsdata.load_dataset("imagefolder", root=_data17_tree(e, broken="train/ant/001.jpg")),
    ),
    Case(
        "lib-dataset-one-class",
        "dataset.root",
        lib=lambda e: nsdata.load_dataset("imagefolder", root=_data17_tree(e, classes=("bee",))),
    ),
    Case(
        "lib-dataset-cifar10-batch-runs-code",
        "dataset.root",
        lib=lambda e: nsdata.load_dataset(
            "cifar10", root=_data17_cifar(e, {"data_batch_1": {b"data": _Data17RunsCode(), b"labels": [0]}})
        ),
    ),
    # ---- report / export
    Case("report-no-source", "--storage", cli=lambda e: ["report"]),
    Case("report-missing-dir", "results", cli=lambda e: ["report", str(e.tmp / "no_results")]),
    Case(
        "export-no-source", "--storage", cli=lambda e: ["export", "--trial", "0", "--out", str(e.tmp / "m.safetensors")]
    ),
    Case(
        "export-no-such-trial",
        "--trial",
        cli=lambda e: _export(e, "--trial", "999", "--out", str(e.tmp / "m.safetensors")),
        needs_results=True,
    ),
    Case(
        "export-bad-extension",
        "--out",
        cli=lambda e: _export(e, "--trial", "0", "--out", str(e.tmp / "x.txt")),
        needs_results=True,
    ),
    Case(
        "export-out-unwritable",
        "--out",
        cli=lambda e: _export(e, "--trial", "0", "--out", "/proc/x/m.safetensors"),
        needs_results=True,
    ),
    # ---- issue 28: outputs that are folders, a head too large to build
    Case(
        "convert-out-is-a-folder",
        "--out: ",
        cli=lambda e: [
            "convert",
            "--model",
            "nas_sepconv:tiny_convnet",
            "--input-size",
            "1,16,16",
            "--out",
            _folder(e, "folder.onnx"),
        ],
    ),
    Case(
        "export-out-is-a-folder",
        "--out: ",
        cli=lambda e: _export(e, "--trial", "0", "--out", _folder(e, "folder.safetensors")),
        needs_results=True,
    ),
    Case(
        "convert-num-classes-huge",
        "num_classes: the model would have more than 1,000,000,000 parameters",
        cli=lambda e: [
            "convert",
            "--model",
            "nas_sepconv:tiny_convnet",
            "--input-size",
            "1,16,16",
            "--num-classes",
            "2000000000",
        ],
    ),
    # ---- exported files handed back to us
    Case(
        "file-not-safetensors",
        "file",
        cli=lambda e: ["profile", "--model", _bad_safetensors(e), "--input-size", "3,8,8"],
    ),
    Case(
        "file-without-recipe",
        "file",
        cli=lambda e: ["profile", "--model", _safetensors_without_recipe(e), "--input-size", "3,8,8"],
    ),
    Case(
        "file-pickle-renamed", "file", cli=lambda e: ["profile", "--model", _pickle_renamed(e), "--input-size", "3,8,8"]
    ),
    Case(
        "file-recipe-imports-user-module",
        "recipe.model",
        cli=lambda e: ["profile", "--model", _user_module_recipe(e), "--input-size", "3,8,8"],
    ),
    # ---- library: policies, plans, specs, files
    Case("lib-policy-glob-matches-nothing", "policy.rules", lib=_make_plan_bad_glob),
    Case("lib-policy-bad-type", "policy", lib=lambda e: ns.Policy.from_any(42)),
    Case("lib-policy-min-saving", "policy.min_macs_saving", lib=lambda e: ns.Policy(min_macs_saving=1.5)),
    Case("lib-plan-garbage", "plan", lib=lambda e: ns.Plan.from_json("{not json")),
    Case("lib-plan-wrong-json", "plan", lib=lambda e: ns.Plan.from_json(json.dumps({"hello": 1}))),
    Case(
        "lib-plan-bad-entries",
        "plan.entries",
        lib=lambda e: ns.Plan.from_json(
            json.dumps({"format": 1, "entries": [{"x": 1}], "model": "m", "input_shapes": []})
        ),
    ),
    Case("lib-spec-typo", "spec", lib=lambda e: ns.BlockSpec.parse("dwsepp")),
    Case("lib-load-not-safetensors", "file", lib=lambda e: nsio.load_model(_bad_safetensors(e))),
    Case("lib-load-pickle-renamed", "file", lib=lambda e: nsio.load_model(_pickle_renamed(e))),
    Case("lib-load-no-recipe", "file", lib=lambda e: nsio.load_model(_safetensors_without_recipe(e))),
    Case("lib-load-user-module", "recipe.model", lib=lambda e: nsio.load_model(_user_module_recipe(e))),
    Case(
        "lib-dataset-cifar10-root-missing",
        "dataset.root",
        lib=lambda e: nsdata.load_dataset("cifar10", root=e.tmp / "nothing_here"),
    ),
    Case("lib-search-trials-zero", "trials:", lib=lambda e: run_search(e.space_file(TINY), trials=0, out=e.out)),
    Case("lib-results-load-nothing", "source", lib=lambda e: nsresults.load(e.tmp / "nothing_here")),
    # ---- issue 17: library
    Case("lib-spec-option-nan", "spatial.rank", lib=lambda e: ns.BlockSpec.parse("spatial_rnan")),
    Case("lib-spec-option-huge", "dwsep.dw_mult", lib=lambda e: ns.BlockSpec("dwsep", dw_mult=10**6)),
    Case(
        "lib-spec-option-inf",
        "inverted_residual.expand_ratio",
        lib=lambda e: ns.BlockSpec("ir", expand_ratio=float("inf")),
    ),
    Case("lib-latency-threads-zero", "threads", lib=lambda e: ns.measure_latency(_tiny_conv(), (1, 8, 8), threads=0)),
    Case(
        "lib-make-plan-wrong-channels",
        "input_size: Conv2d expects 1 input channel(s)",
        lib=lambda e: ns.make_plan(_tiny_conv(), "dwsep", example_inputs=(3, 8, 8)),
    ),
    Case(
        "lib-profile-wrong-channels",
        "input_size: Conv2d expects 1 input channel(s)",
        lib=lambda e: ns.profile(_tiny_conv(), (3, 8, 8)),
    ),
    Case(
        "lib-activation-bytes-wrong-channels", "input_size", lib=lambda e: activation_bytes(_tiny_conv(), (1, 3, 8, 8))
    ),
    Case("lib-refit-batches-string", "batches", lib=lambda e: ns.refit(*_converted_pair(), "notbatches")),
    Case("lib-refit-batches-int", "batches", lib=lambda e: ns.refit(*_converted_pair(), 5)),
    Case("lib-refit-batches-not-tensors", "batches", lib=lambda e: ns.refit(*_converted_pair(), [1, 2])),
    Case("lib-refit-batches-none-items", "batches", lib=lambda e: ns.refit(*_converted_pair(), [None])),
    Case(
        "lib-apply-plan-nan-weights",
        "model: layer '1'",
        lib=lambda e: ns.apply_plan(
            _nan_net(), ns.make_plan(_nan_net(), "dwsep", example_inputs=(8, 8, 8)), init="svd"
        ),
    ),
    Case(
        "lib-convert-inf-weights",
        "model: layer '1'",
        lib=lambda e: ns.convert(_nan_net(float("inf")), "spatial", example_inputs=(8, 8, 8), init="svd"),
    ),
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
        assert result.exit_code == 2, (
            f"{case.id}: exit {result.exit_code}\nstdout:{result.stdout}\nstderr:{result.stderr}\n{result.exception!r}"
        )
        _assert_one_line(result.stderr, case)
    # nothing half-written: no --out folder, no results/ in the working directory, no study.db
    assert not env.out.exists(), f"{case.id}: left {sorted(p.relative_to(env.out) for p in env.out.rglob('*'))}"
    created = set(p.name for p in tmp_path.iterdir()) - set(before)
    assert not (
        created
        - {
            "space.yaml",
            "not_a_model.safetensors",
            "bare.safetensors",
            "pickled.safetensors",
            "user_model.safetensors",
            "data17",
            "folder.onnx",
            "folder.safetensors",
        }
    ), created


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
    proc = subprocess.run(
        [sys.executable, "-m", "nas_sepconv.cli", *args], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
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
