"""Per-user folders: the on-disk cache of decoded image folders (a folder of ``.npy`` files under
:func:`cache_dir`, keyed by the folder's absolute path and modification times, memory-mapped when
read, so the processes of a machine share one copy), and where a data set's files live when no
root is given (:func:`default_data_root`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .arrays import Arrays

__all__ = ["cache_dir", "cached", "cached_stats", "data_home", "default_data_root"]


_CACHE_VERSION = 2  # 2: a folder of .npy files, memory-mapped


def cache_dir() -> Path:
    """Where decoded image folders are cached: ``$NAS_SEPCONV_CACHE`` or ``~/.cache/nas_sepconv``."""
    env = os.environ.get("NAS_SEPCONV_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nas_sepconv"


def data_home() -> Path:
    """The folder holding one folder of files per data set: ``$NAS_SEPCONV_DATA``, or ``data/``
    of :func:`cache_dir` (``~/.cache/nas_sepconv/data``)."""
    env = os.environ.get("NAS_SEPCONV_DATA")
    return Path(env).expanduser() if env else cache_dir() / "data"


def default_data_root(dataset: str) -> Path:
    """Where data set ``dataset`` (a source name: ``cifar10``) is read from when no root is
    given: ``data_home() / dataset`` (``~/.cache/nas_sepconv/data/cifar10``).  The one place
    that decides it; nothing is created or downloaded."""
    return data_home() / dataset


def _source_signature(root: Path) -> str:
    """Absolute path plus modification times of the root, its split and class folders (and shards)."""
    st = root.stat()
    parts = [str(root), str(st.st_mtime_ns), str(st.st_size if root.is_file() else 0)]
    if root.is_dir():
        for split in sorted(p for p in root.iterdir() if p.is_dir()):
            parts.append(f"{split.name}:{split.stat().st_mtime_ns}")
            for entry in sorted(split.iterdir()):
                if entry.is_dir():  # a class folder
                    parts.append(f"{split.name}/{entry.name}:{entry.stat().st_mtime_ns}")
                elif entry.name.endswith(".tar"):  # a shard, rewritten in place or not
                    st = entry.stat()
                    parts.append(f"{split.name}/{entry.name}:{st.st_mtime_ns}:{st.st_size}")
    return "|".join(parts)


def _cache_path(root: Path, kind: str, size: int, suffix: str) -> Path:
    key = f"v{_CACHE_VERSION}|{kind}|{size}|{_source_signature(root)}"
    return cache_dir() / f"{root.name or 'root'}-{hashlib.sha1(key.encode()).hexdigest()[:20]}{suffix}"


def _read_cached(folder: Path) -> Arrays:
    """The cached arrays; the images memory-mapped (copy-on-write), so every process of the
    machine reading them shares one copy in the page cache."""
    with np.load(folder / "labels.npz", allow_pickle=False) as z:
        labels = {k: z[k] for k in ("y_train", "y_test", "classes", "mean", "std")}
    return Arrays(
        np.load(folder / "x_train.npy", mmap_mode="c", allow_pickle=False),
        labels["y_train"],
        np.load(folder / "x_test.npy", mmap_mode="c", allow_pickle=False),
        labels["y_test"],
        tuple(str(c) for c in labels["classes"]),
        tuple(labels["mean"].tolist()),
        tuple(labels["std"].tolist()),
    )


def _write_cached(folder: Path, arrays: Arrays) -> None:
    """Write into a private folder, then rename it into place (a reader never sees half)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        np.save(tmp / "x_train.npy", arrays.x_train, allow_pickle=False)
        np.save(tmp / "x_test.npy", arrays.x_test, allow_pickle=False)
        np.savez(
            tmp / "labels.npz",
            y_train=arrays.y_train,
            y_test=arrays.y_test,
            classes=np.asarray(arrays.classes, dtype=str),
            mean=np.asarray(arrays.mean),
            std=np.asarray(arrays.std),
        )
        os.replace(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cached(root: Path, kind: str, size: int, build: Callable[[], Arrays]) -> Arrays:
    """What ``build()`` returns for ``root``, read from the cache while ``root`` is unchanged (same
    ``kind``, ``size`` and modification times), else built and stored (a failed write only costs the
    speed-up).  Read from the cache, the images are memory-mapped: one copy per machine."""
    folder = _cache_path(root, kind, size, "")
    if folder.is_dir():
        try:
            return _read_cached(folder)
        except (OSError, ValueError, KeyError, EOFError):
            shutil.rmtree(folder, ignore_errors=True)  # unreadable cache: rebuild it
    arrays = build()
    try:
        _write_cached(folder, arrays)
    except OSError:
        return arrays  # a read-only home only costs the speed-up
    try:
        return _read_cached(folder)  # this process too holds the shared copy, not its own
    except (OSError, ValueError, KeyError, EOFError):
        return arrays


def cached_stats(
    root: Path, kind: str, size: int, build: Callable[[], tuple[tuple[float, ...], tuple[float, ...]]]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(mean, std)`` of a streamed data set, computed once by ``build()`` (a pass over
    the images) and kept beside the decoded cache."""
    path = _cache_path(root, kind, size, ".stats.json")
    if path.is_file():
        try:
            stats = json.loads(path.read_text())
            return tuple(float(v) for v in stats["mean"]), tuple(float(v) for v in stats["std"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    mean, std = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"mean": list(mean), "std": list(std)}))
        os.replace(tmp, path)
    except OSError:
        pass
    return mean, std
