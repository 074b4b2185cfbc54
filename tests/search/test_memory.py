"""The search's memory: the peak of its process tree, and the check before it starts."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import torch

from nas_sepconv.data import load_dataset
from nas_sepconv.errors import UserInputError
from nas_sepconv.search import memory


def _hold(megabytes: int, ready, done) -> None:
    block = bytearray(megabytes << 20)  # touched: resident
    block[::4096] = b"x" * len(block[::4096])
    ready.set()
    done.wait(30)


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux's /proc/<pid>/smaps_rollup")
def test_the_watch_counts_the_memory_of_child_processes():
    ctx = multiprocessing.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    with memory.MemoryWatch(interval=0.05) as watch:
        alone = memory.tree_pss()
        child = ctx.Process(target=_hold, args=(200, ready, done))
        child.start()
        assert ready.wait(30)
        with_child = memory.tree_pss()
        watch.sample()
        done.set()
        child.join()
    assert watch.method == "pss"
    assert with_child - alone > 150 << 20  # the child's 200 MB block is counted
    assert watch.peak >= with_child - (20 << 20)


def test_a_search_that_cannot_fit_the_machine_is_refused_before_it_starts(monkeypatch):
    data = load_dataset("digits")
    monkeypatch.setattr(memory, "machine_memory", lambda: 3 << 30)
    assert memory.check_memory(data, workers=2) == data.decoded_bytes + 2 * memory.WORKER_MEMORY
    with pytest.raises(UserInputError, match=r"needs about .* 4 worker\(s\) .* more than this machine's") as info:
        memory.check_memory(data, workers=4)
    assert info.value.field == "workers"


def test_a_data_set_held_in_memory_that_cannot_fit_names_streaming(monkeypatch):
    data = load_dataset("digits")
    monkeypatch.setattr(memory, "machine_memory", lambda: data.decoded_bytes + memory.WORKER_MEMORY - 1)
    with pytest.raises(UserInputError, match="the data set held in memory") as info:
        memory.check_memory(data, workers=1)
    assert info.value.field == "data.stream" and "data.stream: true" in info.value.fix
    assert torch.is_tensor(data.train.x)
