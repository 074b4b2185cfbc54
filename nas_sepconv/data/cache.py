"""Per-user folders: the on-disk cache of decoded image folders (``.npz`` under
:func:`cache_dir`, keyed by the folder's absolute path and modification times), and where a data
set's files live when no root is given (:func:`default_data_root`)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from .arrays import Arrays

__all__ = ["cache_dir", "cached", "data_home", "default_data_root"]


_CACHE_VERSION = 1


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
    """Absolute path plus modification times of the root, its split and class folders."""
    st = root.stat()
    parts = [str(root), str(st.st_mtime_ns), str(st.st_size if root.is_file() else 0)]
    if root.is_dir():
        for split in sorted(p for p in root.iterdir() if p.is_dir()):
            parts.append(f"{split.name}:{split.stat().st_mtime_ns}")
            for cls in sorted(p for p in split.iterdir() if p.is_dir()):
                parts.append(f"{split.name}/{cls.name}:{cls.stat().st_mtime_ns}")
    return "|".join(parts)


def cached(root: Path, kind: str, size: int, build) -> Arrays:
    """What ``build()`` returns for ``root``, read from the cache while ``root`` is unchanged (same
    ``kind``, ``size`` and modification times), else built and stored (a failed write only costs the speed-up)."""
    key = f"v{_CACHE_VERSION}|{kind}|{size}|{_source_signature(root)}"
    path = cache_dir() / f"{root.name or 'root'}-{hashlib.sha1(key.encode()).hexdigest()[:20]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return Arrays(
                    z["x_train"],
                    z["y_train"],
                    z["x_test"],
                    z["y_test"],
                    tuple(str(c) for c in z["classes"]),
                    tuple(z["mean"].tolist()),
                    tuple(z["std"].tolist()),
                )
        except (OSError, ValueError, KeyError, EOFError):
            pass  # unreadable cache: rebuild it
    arrays = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(
                f,
                x_train=arrays.x_train,
                y_train=arrays.y_train,
                x_test=arrays.x_test,
                y_test=arrays.y_test,
                classes=np.asarray(arrays.classes, dtype=str),
                mean=np.asarray(arrays.mean),
                std=np.asarray(arrays.std),
            )
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs the speed-up
    return arrays
