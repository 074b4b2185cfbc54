"""Fuzzing the space loader: whatever a space file holds, only UserInputError (or a Space) comes out.

Random YAML documents, mutations of the real FAST_SPACE mapping (random values at random keys:
NaN, inf, huge numbers, empty lists, text, nested junk), random bytes and YAML tags that would
import or call something.  Parsing must import no module and call nothing; every refusal is one
line.  Each property runs ~150 examples (a few seconds in all).
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import FAST_SPACE
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nas_sepconv.blocks import KINDS
from nas_sepconv.errors import UserInputError
from nas_sepconv.search.schema import BLOCK_OPTIONS, LIMITS
from nas_sepconv.search.spaces import Space, load_space, parse_space

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# values that broke the loader once (or would): drawn as often as all the others together
nasty = st.sampled_from(
    [
        0,
        -1,
        0.5,
        2,
        3,
        1e9,
        1e308,
        10**400,
        -(10**400),
        float("nan"),
        float("inf"),
        -float("inf"),
        "",
        "1e9",
        "relu",
        "gelu9",
        "dwsep",
        "all",
        "a\nb",
        "\u2028",
    ]
)
scalars = st.one_of(
    nasty,
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=12),
    ),
)
junk = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(
                st.text(max_size=8),
                st.sampled_from(["low", "high", "step", "int", "log", "x\ny"]),
                st.integers(),
                st.none(),
            ),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=12,
)

DANGEROUS_TAGS = [
    "!!python/object/apply:os.system ['echo pwned']",
    "!!python/object/apply:subprocess.check_output [['true']]",
    "!!python/name:os.system",
    "!!python/module:json",
    "!!python/object/new:collections.OrderedDict []",
    "!!python/object:argparse.Namespace {x: 1}",
    "!custom 1",
]
ODD_SAFE_TAGS = [
    "!!binary aGVsbG8=",
    "!!set {a, b}",
    "!!timestamp 2001-12-14",
    "!!omap [a: 1]",
    "!!pairs [a: 1]",
    "!!float .nan",
    "!!int 99999999999999999999999",
]


def _forbid_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"called during parsing: {args!r}")

    monkeypatch.setattr(os, "system", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)


@pytest.fixture(scope="module", autouse=True)
def _warm() -> None:
    """Let the libraries import what they import lazily on their first error, before snapshots."""
    for text in [
        "x: [",
        "- 1",
        "name: t\nkind: build\n",
        yaml.safe_dump(FAST_SPACE),
        "name: t\nkind: build\nbuild: {stages: [{out_channels: x}]}\ntrain: {lr: .inf}",
    ]:
        try:
            parse_space(text)
        except UserInputError:
            pass


def _check(call: Any, *args: Any, **kwargs: Any) -> Space | None:
    """``call(*args)`` returns a Space or raises a one-line UserInputError, and imports nothing."""
    before = set(sys.modules)
    try:
        result = call(*args, **kwargs)
    except UserInputError as exc:
        message = str(exc)
        assert len(message.splitlines()) == 1, message
        assert message.strip(), "an empty message"
        result = None
    new = set(sys.modules) - before
    assert not new, f"parsing imported {sorted(new)}"
    if result is not None:
        assert isinstance(result, Space)
    return result


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


# ---- random documents -------------------------------------------------------------------------
@FUZZ
@given(junk)
def test_random_documents(data: Any) -> None:
    _check(parse_space, _dump(data))


@FUZZ
@given(st.text(max_size=200))
def test_random_text(text: str) -> None:
    _check(parse_space, text)


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(["junk.yaml", "junk", "junk.yml", "space.bin"]))
def test_random_bytes_from_a_file(blob: bytes, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(blob)
        _check(load_space, path)
        _check(load_space, str(path))


# ---- mutations of a real space ----------------------------------------------------------------
def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into ``node`` (dict keys and list indices)."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


KEYS = sorted(
    {p[-1] for p in _paths(FAST_SPACE) if isinstance(p[-1], str)}
    | {
        "depth_mult",
        "resolution_mult",
        "act",
        "head_channels",
        "lr",
        "weight_decay",
        "warmup_epochs",
        "label_smoothing",
        "grad_clip",
        "image_size",
        "rank",
        "kernel_size",
        "se_ratio",
        "dw_mult",
        "groups",
        "low",
        "high",
        "step",
        "log",
        "int",
        "convert",
        "model",
        "match",
        "choices",
        "dropout",
    }
)


@st.composite
def mutated_spaces(draw: Any) -> dict:
    space = copy.deepcopy(FAST_SPACE)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(space)
        path = draw(st.sampled_from(paths))
        parent: Any = space
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        key = path[-1]
        if action == "delete":
            del parent[key]
        elif action == "add" and isinstance(parent, dict):
            parent[
                draw(st.one_of(st.sampled_from(KEYS), st.sampled_from(["x\ny", "\u2028", "\x00"]), st.text(max_size=6)))
            ] = draw(junk)
        else:
            parent[key] = draw(junk)
    return space


@FUZZ
@given(mutated_spaces())
@example({**FAST_SPACE, "x\ny": 0})  # the key made a two-line message
@example({**FAST_SPACE, "build": {**FAST_SPACE["build"], "depth_mult": 10**400}})  # was OverflowError
def test_mutated_fast_space(space: dict) -> None:
    _check(parse_space, _dump(space))


@st.composite
def block_choices(draw: Any) -> dict:
    """Kinds, and mostly options those kinds take, with random values."""
    kinds = draw(st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=3))
    taken = sorted({o.name for k in kinds for o in KINDS[k].options}) or BLOCK_OPTIONS
    names = st.one_of(st.sampled_from(taken), st.sampled_from(BLOCK_OPTIONS))
    values = st.one_of(st.lists(nasty, min_size=1, max_size=2), st.lists(scalars, max_size=3), scalars, junk)
    return {"kind": draw(st.one_of(st.just(kinds), junk)), **draw(st.dictionaries(names, values, max_size=3))}


@FUZZ
@given(block_choices(), st.sampled_from(["build", "convert.choices", "convert.groups"]))
@example({"kind": ["inverted_residual"], "expand_ratio": [10**400]}, "build")  # was OverflowError
@example({"kind": ["inverted_residual"], "se_ratio": [-(10**400)]}, "convert.groups")
@example({"kind": ["grouped"], "groups": [10**9]}, "convert.choices")  # was accepted
@example({"kind": [], "rank": [0.5]}, "convert.groups")  # blamed rank, not kind
def test_block_choices(choices: dict, where: str) -> None:
    """Any kinds and option values, in a stage, in convert choices or in a convert group."""
    space = copy.deepcopy(FAST_SPACE)
    if where == "build":
        space["build"]["stages"][0] = {"out_channels": 8, **choices}
    else:
        del space["build"]
        space["kind"] = "convert"
        group = {"name": "g", "match": ["*"], **choices}
        space["convert"] = {
            "model": "nas_sepconv:tiny_convnet",
            **({"choices": choices} if where == "convert.choices" else {"groups": [group]}),
        }
    _check(parse_space, _dump(space))


@FUZZ
@given(
    st.sampled_from(["build.width_mult", "build.depth_mult", "build.resolution_mult"]),
    st.one_of(junk, st.floats(), st.lists(st.floats(), max_size=3)),
)
@example("build.width_mult", [10**400])
@example("build.depth_mult", 1e9)
def test_multipliers_are_validated_up_front(field: str, value: Any) -> None:
    """A multiplier that passes validation is usable: every value a finite number in (0, LIMITS.mult]."""
    space = copy.deepcopy(FAST_SPACE)
    space["build"][field.split(".")[1]] = value
    result = _check(parse_space, _dump(space))
    if result is not None:
        choice = getattr(result.spec.build, field.split(".")[1])
        values = (
            [choice.low, choice.high] if hasattr(choice, "low") else choice if isinstance(choice, list) else [choice]
        )
        assert values and all(not isinstance(v, bool) and math.isfinite(v) and 0 < v <= LIMITS.mult for v in values), (
            field,
            choice,
        )


@FUZZ
@given(st.sampled_from(DANGEROUS_TAGS), st.sampled_from(["name", "description", "build", "train", "data"]))
def test_python_tags_are_refused(tag: str, key: str) -> None:
    text = _dump({k: v for k, v in FAST_SPACE.items() if k != key}) + f"{key}: {tag}\n"
    with pytest.raises(UserInputError) as info:
        _check_raising(parse_space, text)
    assert str(info.value).startswith(("space", key)), str(info.value)


@FUZZ
@given(
    st.sampled_from(ODD_SAFE_TAGS), st.sampled_from(["name", "description", "build", "train", "data", "search", "kind"])
)
def test_odd_safe_tags(tag: str, key: str) -> None:
    """Tags the safe loader builds (bytes, sets, dates, pairs) are refused or harmless."""
    _check(parse_space, _dump({k: v for k, v in FAST_SPACE.items() if k != key}) + f"{key}: {tag}\n")
    for sub in ("data", "train", "search"):
        _check(parse_space, _dump({k: v for k, v in FAST_SPACE.items() if k != sub}) + f"{sub}:\n  {key}: {tag}\n")


def _check_raising(call: Any, *args: Any) -> None:
    before = set(sys.modules)
    try:
        call(*args)
    finally:
        assert not set(sys.modules) - before


def test_tags_call_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    _forbid_calls(monkeypatch)
    for tag in DANGEROUS_TAGS:
        with pytest.raises(UserInputError):
            _check_raising(parse_space, f"name: {tag}\nkind: build\n")


@pytest.mark.parametrize("depth", [10, 33, 1_000, 20_000])
@pytest.mark.parametrize("open_, close", [("[", "]"), ("{a: ", "}")])
def test_deep_nesting_is_refused_not_a_crash(depth: int, open_: str, close: str) -> None:
    _check(parse_space, "name: " + open_ * depth + "1" + close * depth + "\n")


def test_alias_bomb_is_refused() -> None:
    bomb = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
    )
    with pytest.raises(UserInputError, match="aliases"):
        _check_raising(parse_space, bomb)


def test_an_oversized_file_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * (1 << 21) + b"\n")
    with pytest.raises(UserInputError, match="space: .* larger than"):
        load_space(big)
