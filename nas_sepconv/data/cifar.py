"""CIFAR-10: an ImageFolder tree, a tar archive of one, or the official ``cifar-10-batches-py``
python batches (extracted, or in ``cifar-10-python.tar.gz`` as downloaded), read with a
restricted unpickler that refuses every global but numpy's arrays."""

from __future__ import annotations

import codecs
import io
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserInputError
from .arrays import Arrays, channel_stats, error_reason, one_line, resize_nchw
from .cache import cached
from .folders import load_folder, load_tar
from .memory import MemoryPlan

_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


#: How to fill a CIFAR-10 folder: what :func:`load_cifar10` reads.
CIFAR10_FILL = (
    "the official python batches (cifar-10-python.tar.gz as downloaded, or extracted: cifar-10-batches-py/), "
    "an ImageFolder tree (train/<class>/*.png, test/<class>/*.png) or one .tar.gz of such a tree"
)

_ARCHIVES = (".tar.gz", ".tgz", ".tar")
_BATCH_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")


def load_cifar10(root: Path, size: int, memory: MemoryPlan | None = None) -> Arrays:
    """CIFAR-10 from ``root``: any of :data:`CIFAR10_FILL`, or a folder holding one archive of it."""
    memory = memory or MemoryPlan()
    if root.is_file():
        if root.name.endswith(_ARCHIVES):
            memory.held_in_memory("CIFAR-10 from an archive is held in memory")
            return cached(root, "tar", size, lambda: _load_archive(root, size))
        raise UserInputError(
            "dataset.root", f"{root} is a file", "point it at a folder (train/, test/) or cifar-10-batches-py"
        )
    for batches in (root, root / "cifar-10-batches-py"):
        if (batches / "data_batch_1").is_file():
            memory.held_in_memory("CIFAR-10 from its batch files is held in memory")
            return _load_cifar_batches(batches, size)
    if (root / "train").is_dir():
        return load_folder(root, size, force_rgb=True, memory=memory)
    archives = sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(_ARCHIVES)) if root.is_dir() else []
    if len(archives) == 1:  # a folder the archive was dropped into (the default data.root)
        return load_cifar10(archives[0], size, memory)
    raise UserInputError(
        "dataset.root",
        f"{root} holds neither an ImageFolder tree (train/, test/) nor cifar-10-batches-py"
        + (f" but {len(archives)} archives" if archives else ""),
        f"point it at the extracted CIFAR-10 folder, or put in it {CIFAR10_FILL}",
    )


def _load_archive(path: Path, size: int) -> Arrays:
    """The official ``cifar-10-python.tar.gz`` (``cifar-10-batches-py/`` inside), read without
    extracting it, or else a tar archive of an ImageFolder tree."""
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path) as tar:
            for m in tar:
                name = m.name.strip("/").rsplit("/", 1)[-1]
                f = tar.extractfile(m) if m.isfile() and name in _BATCH_FILES else None
                if f is not None:
                    members[name] = f.read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserInputError(
            "dataset.root", f"cannot read {path} ({error_reason(e)})", "point it at a valid .tar.gz or extract it"
        ) from None
    if "data_batch_1" not in members:
        return load_tar(path, size, force_rgb=True)
    return _load_cifar_batches(Path(f"{path}:cifar-10-batches-py"), size, members)


def _latin1_encode(text: Any, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 pickles ``bytes`` at protocol <= 2 (``encode(text, 'latin1')``),
    and only that: no other codec is reachable from a batch file."""
    if not isinstance(text, str) or encoding.replace("-", "").replace("_", "").lower() != "latin1":
        raise pickle.UnpicklingError(
            f"_codecs.encode is only allowed as encode(str, 'latin1'), got encoding {encoding!r}"
        )
    return codecs.encode(text, "latin1")


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles the official CIFAR batches (dicts of lists, bytes and numpy arrays), also when
    re-pickled by Python 3 at protocol <= 2 (bytes as ``_codecs.encode(str, 'latin1')``), and
    refuses every other global, so a doctored batch file cannot run code."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def __init__(self, f, path: Path):
        super().__init__(f, encoding="bytes")  # the official files are Python 2 pickles
        self.path = path

    def find_class(self, module: str, name: str):  # noqa: D102
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise UserInputError(
            "dataset.root",
            f"{self.path} is not a plain CIFAR batch: it asks to load {one_line(module)}.{one_line(name)} (refused, "
            "it could run code)",
            "use the official cifar-10-batches-py files",
        )


def _safe_pickle_load(path: Path, data: bytes | None = None) -> Any:
    """The object pickled in ``path`` (or in ``data``, the bytes of the archive member ``path``
    names); a refused global or a damaged file is a UserInputError naming it."""
    try:
        if data is not None:
            return _ArraysOnlyUnpickler(io.BytesIO(data), path).load()
        with open(path, "rb") as f:
            return _ArraysOnlyUnpickler(f, path).load()
    except UserInputError:
        raise
    except Exception as e:  # noqa: BLE001 -- a damaged pickle raises almost anything
        raise UserInputError(
            "dataset.root",
            f"cannot read {path} as a CIFAR batch ({error_reason(e)})",
            "use the official cifar-10-batches-py files (download them again)",
        ) from None


def _load_cifar_batches(folder: Path, size: int, members: dict[str, bytes] | None = None) -> Arrays:
    """The batches in ``folder``, or in ``members`` (file name -> bytes, read from an archive)."""

    def present(path: Path) -> bool:
        return path.is_file() if members is None else path.name in members

    def load(path: Path) -> Any:
        return _safe_pickle_load(path, None if members is None else members[path.name])

    def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
        if not present(path):
            raise UserInputError("dataset.root", f"{path} is missing", "use a complete cifar-10-batches-py folder")
        entry = load(path)
        data = _entry(entry, "data") if isinstance(entry, dict) else None
        labels = _entry(entry, "labels") if isinstance(entry, dict) else None
        if data is None or labels is None:
            raise UserInputError(
                "dataset.root",
                f"{path} is not a CIFAR-10 batch (no data and labels)",
                "use the official cifar-10-batches-py files",
            )
        return _checked_batch(path, data, labels)

    parts = [read(folder / f"data_batch_{i}") for i in range(1, 6)]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = read(folder / "test_batch")
    classes = _CIFAR10_CLASSES
    meta = folder / "batches.meta"
    if present(meta):
        entry = load(meta)
        names = _entry(entry, "label_names") if isinstance(entry, dict) else None
        if names is not None:
            if not isinstance(names, (list, tuple)) or len(names) != len(_CIFAR10_CLASSES):
                raise UserInputError(
                    "dataset.root",
                    f"{meta} does not hold {len(_CIFAR10_CLASSES)} label_names",
                    "use the official batches.meta, or remove it",
                )
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    x_train, x_test = resize_nchw(x_train, size), resize_nchw(x_test, size)
    return Arrays(x_train, y_train, x_test, y_test, classes, *channel_stats(x_train))


def _checked_batch(path: Path, data: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """A batch's images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)``, or a UserInputError naming ``path``."""
    fix = "use the official cifar-10-batches-py files (data: N x 3072 uint8, labels: N ints in 0..9)"
    try:
        x, y = np.asarray(data), np.asarray(labels)
    except (ValueError, TypeError) as e:  # ragged lists and the like
        raise UserInputError(
            "dataset.root", f"{path} holds malformed data or labels ({error_reason(e)})", fix
        ) from None
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or x.dtype.kind not in "iu":
        raise UserInputError(
            "dataset.root", f"{path} holds data of shape {x.shape} and type {x.dtype}, not N x 3072 integers", fix
        )
    if x.size and (x.min() < 0 or x.max() > 255):
        raise UserInputError("dataset.root", f"{path} holds pixel values outside 0..255", fix)
    if y.ndim != 1 or (y.size and y.dtype.kind not in "iu"):
        raise UserInputError(
            "dataset.root", f"{path} holds labels of shape {y.shape} and type {y.dtype}, not N integers", fix
        )
    if len(y) != len(x):
        raise UserInputError("dataset.root", f"{path} holds {len(x)} images but {len(y)} labels", fix)
    if y.size and (y.min() < 0 or y.max() >= len(_CIFAR10_CLASSES)):
        raise UserInputError(
            "dataset.root",
            f"{path} holds labels outside 0..{len(_CIFAR10_CLASSES) - 1} (from {y.min()} to {y.max()})",
            fix,
        )
    return x.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32), y.astype(np.int64, copy=False)


def _entry(mapping: dict, key: str):
    """``mapping[key]`` whether the pickle's keys came back as bytes (Python 2) or str."""
    value = mapping.get(key.encode())
    return mapping.get(key) if value is None else value
