"""The latency cache file is read like any shared file (issue 28, family 4): entries must hold
finite, positive, ordered latencies, and a file that is a link to ``/dev/zero``, a huge sparse
file or JSON nested 100,000 deep is ignored with a warning, never read whole."""

from __future__ import annotations

import json
import math

import pytest
import torch

from nas_sepconv.measure import LatencyCache, latency_context
from nas_sepconv.measure.latency_cache import CACHE_FORMAT, MAX_CACHE_BYTES

CONTEXT = latency_context(
    device=torch.device("cpu"),
    threads=1,
    runtime="eager",
    runtime_version="1",
    dtype=torch.float32,
    memory_format="contiguous",
)
GOOD = {"median_ms": 1.0, "p10_ms": 0.9, "p90_ms": 1.2, "repeats": 5}


def _path(tmp_path):
    return LatencyCache(CONTEXT, cache_dir=tmp_path).path


def _write(tmp_path, entries):
    path = _path(tmp_path)
    path.write_text(
        json.dumps({"format": CACHE_FORMAT, "context": CONTEXT, "entries": entries})
    )  # (NaN, Infinity as JSON allows)


@pytest.mark.parametrize(
    "record",
    [
        {**GOOD, "median_ms": 1e300, "p90_ms": 1e301},
        {**GOOD, "median_ms": -1.0, "p10_ms": -2.0},
        {**GOOD, "median_ms": 0.0, "p10_ms": 0.0},
        {**GOOD, "median_ms": math.nan},
        {**GOOD, "p90_ms": math.inf},
        {**GOOD, "p10_ms": 5.0},  # p10 above the median
        {**GOOD, "median_ms": True},
    ],
    ids=["1e300", "negative", "zero", "nan", "inf", "unordered", "bool"],
)
def test_an_absurd_entry_is_ignored_with_a_warning(tmp_path, record):
    _write(tmp_path, {"good": GOOD, "bad": record})
    with pytest.warns(UserWarning, match="1 malformed entries ignored"):
        cache = LatencyCache(CONTEXT, cache_dir=tmp_path)
    assert len(cache) == 1


def test_a_good_entry_is_kept(tmp_path):
    cache = LatencyCache(CONTEXT, cache_dir=tmp_path)
    cache.put({"op": 1}, GOOD)
    cache.save()
    assert LatencyCache(CONTEXT, cache_dir=tmp_path).get({"op": 1})["median_ms"] == 1.0


@pytest.mark.parametrize(
    "kind, why", [("dev-zero", "not a regular file"), ("sparse", "bytes, over the"), ("nested", "nests deeper than")]
)
def test_a_cache_file_that_is_endless_huge_or_nested_is_ignored_and_rewritten(tmp_path, kind, why):
    path = _path(tmp_path)
    if kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "sparse":
        with open(tmp_path / "big", "wb") as fh:
            fh.truncate(MAX_CACHE_BYTES + 1)
        path.symlink_to(tmp_path / "big")
    else:
        path.write_text('{"format": 1, "entries": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.warns(UserWarning, match=f"latency cache .* is ignored: .*{why}"):
        cache = LatencyCache(CONTEXT, cache_dir=tmp_path)
    assert len(cache) == 0
    cache.put({"op": 1}, GOOD)
    cache.save()
    assert not path.is_symlink() and json.loads(path.read_text())["entries"]  # the link replaced, its target untouched
