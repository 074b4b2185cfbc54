"""Data sets held as tensors, and a loader that batches and augments them on their device.

A :class:`Dataset` is three :class:`Split` s (train, val, test) of image tensors ``(N, C, H, W)``
(``uint8`` in 0..255, or float in [0, 1]) with ``long`` labels, plus the per-channel ``mean`` and
``std`` (on the [0, 1] scale, computed over the training images) and the name of its
augmentation.  Everything fits in memory (CIFAR-10 is 184 MB as ``uint8``), so a whole data set
moves to the GPU once and :class:`DeviceLoader` does indexing, augmentation, normalisation and
resizing there, batch at a time, with no per-sample Python.

Data sets (:func:`load_dataset`):

``digits``
    scikit-learn's 8x8 handwritten digits (1,797 images, shipped with scikit-learn, no
    download), upsampled once to 16x16.  The default data set of the bundled search.
``cifar10``
    ``root`` is an ImageFolder tree (``train/<class>/*.jpg``, ``test/<class>/*.jpg``), a
    ``.tar.gz`` of such a tree, or the official ``cifar-10-batches-py`` folder (or its parent).
``imagefolder:PATH``
    any ImageFolder tree with ``train/`` and ``test/`` (or ``val/``) folders.
``torchvision:NAME``
    a torchvision data set class (``CIFAR100``, ``FashionMNIST``, ``SVHN`` ...) whose files are
    already under ``root`` (nothing is downloaded).

The validation split is held out of the training pool (seeded by ``seed``, stratified); the
test split only ever comes from the source's test files (for ``digits``, a fixed stratified 20%,
the same for every seed, so test accuracies compare across seeds).

Decoded image folders are cached as ``.npz`` under ``$NAS_SEPCONV_CACHE`` (default
``~/.cache/nas_sepconv``), keyed by the folder's absolute path and modification times.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import inspect
import io
import math
import multiprocessing
import os
import pickle
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserInputError

__all__ = [
    "AUGMENTS",
    "Split",
    "Dataset",
    "DataSource",
    "DATASETS",
    "find_dataset",
    "dataset_names",
    "load_dataset",
    "DeviceLoader",
    "calibration_batches",
    "cache_dir",
]

#: Augmentations: name -> (zero padding of the random crop, random horizontal flip).
#: ``shift`` is a random translation by up to 2 px; ``crop_flip`` the CIFAR recipe (pad 4,
#: random crop back to size, horizontal flip).
_AUGMENT_PARAMS: dict[str, tuple[int, bool]] = {
    "none": (0, False),
    "shift": (2, False),
    "crop_flip": (4, True),
}
AUGMENTS = tuple(_AUGMENT_PARAMS)

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_MNIST_LIKE = {"mnist", "kmnist", "emnist", "qmnist"}
_CACHE_VERSION = 1
_DIGITS_TEST_FRACTION = 0.2
#: Largest ``image_size``: a data set is held whole in memory, N x C x size x size bytes.
MAX_IMAGE_SIZE = 1024


# --------------------------------------------------------------------------------------------
# Records


@dataclass
class Split:
    """Images ``x`` ``(N, C, H, W)`` (``uint8`` 0..255 or float in [0, 1]) and labels ``y`` ``(N,)``."""

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.y.ndim != 1 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"Split needs x of shape (N, C, H, W) and y of shape (N,), got {tuple(self.x.shape)} and {tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def device(self) -> torch.device:
        return self.x.device

    def to(self, device: str | torch.device) -> "Split":
        """A split with both tensors on ``device`` (the same tensors where already there)."""
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class Dataset:
    """A data set ready for training: splits, classes, input shape, normalisation, augmentation.

    ``mean`` and ``std`` are per channel on the [0, 1] scale (``uint8`` images are divided by 255
    first), computed over the training images.  ``augment`` is one of :data:`AUGMENTS`.
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str = "none"
    classes: tuple[str, ...] = ()

    def to(self, device: str | torch.device) -> "Dataset":
        """A copy with the three splits on ``device``."""
        return dataclasses.replace(
            self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device)
        )

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={len(self.train)}, val={len(self.val)}, test={len(self.test)}, "
            f"num_classes={self.num_classes}, input_shape={self.input_shape}, augment={self.augment!r}, "
            f"device={self.train.device})"
        )


@dataclass
class _Arrays:
    """What a source yields before splitting: the training pool and the test set, NCHW."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


# --------------------------------------------------------------------------------------------
# load_dataset


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    subset: int | None = None,
    image_size: int | None = None,
) -> Dataset:
    """Load a data set into CPU tensors, with a seeded, stratified validation split.

    Args:
        name: a source of :data:`DATASETS` (:func:`dataset_names`): ``"digits"``, ``"cifar10"``,
            ``"imagefolder:PATH"`` (or ``"imagefolder"`` with ``root``), or ``"torchvision:NAME"``.
        root: where the files are (``cifar10``, ``imagefolder``, ``torchvision:NAME``).
        val_fraction: fraction of the training pool held out as the validation split, in (0, 1).
        seed: seeds the validation hold-out and ``subset``.
        subset: keep at most this many images of the training pool (train + val, before the
            validation split is held out), stratified by class; for CPU-sized runs.  The test
            split is always whole.
        image_size: resize images to this side at load (bilinear, antialiased), at most
            :data:`MAX_IMAGE_SIZE`.  Default: the source's ``image_size`` in :data:`DATASETS`
            (16 for ``digits``, 32 for ``cifar10`` and ``imagefolder``, native for torchvision).

    Returns:
        A :class:`Dataset` on the CPU; move it with :meth:`Dataset.to`.

    Raises:
        UserInputError: unknown name, missing or empty folder, missing files, bad arguments.
    """
    if not isinstance(name, str) or not name.strip():
        raise UserInputError("dataset", f"expected a data set name, got {name!r}", f"use one of {dataset_names()}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise UserInputError("dataset.val_fraction", f"must be in (0, 1), got {val_fraction!r}", "use e.g. 0.1")
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset < 2):
        raise UserInputError("dataset.subset", f"must be an int >= 2 or None, got {subset!r}", "use e.g. 5000")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or not 1 <= image_size <= MAX_IMAGE_SIZE):
        raise UserInputError(
            "dataset.image_size",
            f"must be an int in 1..{MAX_IMAGE_SIZE}, got {image_size!r} (the data set is held in memory at this size)",
            "use e.g. 32",
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserInputError("dataset.seed", f"must be an int, got {seed!r}")

    source, arg = find_dataset(name)
    arrays = source.load(arg, root, image_size or source.image_size)
    augment = source.augment(arg) if callable(source.augment) else source.augment
    return _make_dataset(name.strip(), arrays, augment, val_fraction=val_fraction, seed=seed, subset=subset)


def _need_root(root: str | Path | None, kind: str) -> Path:
    if root is None:
        raise UserInputError(
            "dataset.root",
            f"{kind} needs a root folder",
            "set root: in the data section of the space file (data.root), or pass root=... to load_dataset, pointing at the files",
        )
    return _existing(Path(root).expanduser())


def _existing(path: Path) -> Path:
    if not path.exists():
        raise UserInputError("dataset.root", f"{path} does not exist", "check the path (extract archives first)")
    return path.resolve()


def _make_dataset(name: str, a: _Arrays, augment: str, *, val_fraction: float, seed: int, subset: int | None) -> Dataset:
    if len(np.unique(a.y_train)) < 2:  # sources that name no classes (torchvision, batches) land here
        raise UserInputError(
            "dataset", f"{name} has images of fewer than 2 classes in its training split", "a classifier needs at least 2 classes"
        )
    rng = np.random.default_rng(seed)
    pool = np.arange(len(a.y_train))
    if subset is not None and subset < len(pool):
        pool, _ = _stratified_take(a.y_train, subset, rng)
    n_val = min(max(1, round(val_fraction * len(pool))), len(pool) - 1)
    if n_val < 1:
        raise UserInputError("dataset.subset", f"leaves {len(pool)} training image(s)", "use a larger subset")
    val_pos, train_pos = _stratified_take(a.y_train[pool], n_val, rng)

    def split(x: np.ndarray, y: np.ndarray, idx: np.ndarray | None = None) -> Split:
        if idx is not None:
            x, y = x[idx], y[idx]
        return Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.asarray(y, dtype=np.int64)))

    num_classes = len(a.classes) if a.classes else int(max(a.y_train.max(initial=-1), a.y_test.max(initial=-1))) + 1
    c, h, w = a.x_train.shape[1:]
    return Dataset(
        name=name,
        train=split(a.x_train, a.y_train, pool[train_pos]),
        val=split(a.x_train, a.y_train, pool[val_pos]),
        test=split(a.x_test, a.y_test),
        num_classes=num_classes,
        input_shape=(int(c), int(h), int(w)),
        mean=tuple(float(m) for m in a.mean),
        std=tuple(float(s) for s in a.std),
        augment=augment,
        classes=tuple(a.classes),
    )


def _stratified_take(y: np.ndarray, n_take: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(taken, rest)`` (each sorted): ``n_take`` drawn per class in proportion."""
    labels, counts = np.unique(y, return_counts=True)
    quota = counts * (n_take / len(y))
    take = np.floor(quota).astype(np.int64)
    short = n_take - int(take.sum())
    if short > 0:  # largest remainders first, ties broken by the seeded generator
        order = np.lexsort((rng.random(len(labels)), -(quota - take)))
        take[order[:short]] += 1
    taken = []
    for label, k in zip(labels, take):
        members = np.flatnonzero(y == label)
        taken.append(rng.permutation(members)[:k])
    taken_idx = np.sort(np.concatenate(taken)) if taken else np.zeros(0, np.int64)
    mask = np.ones(len(y), bool)
    mask[taken_idx] = False
    return taken_idx, np.flatnonzero(mask)


def _channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the [0, 1] scale of NCHW images (uint8 via exact histograms)."""
    means, stds = [], []
    for ch in range(x.shape[1]):
        plane = x[:, ch]
        if plane.dtype == np.uint8:
            hist = np.bincount(plane.reshape(-1), minlength=256).astype(np.float64)
            values = np.arange(256, dtype=np.float64) / 255.0
            total = hist.sum()
            mean = float((hist * values).sum() / total)
            var = float((hist * (values - mean) ** 2).sum() / total)
        else:
            plane = plane.astype(np.float64)
            mean, var = float(plane.mean()), float(plane.var())
        means.append(mean)
        stds.append(max(math.sqrt(var), 1e-6))
    return tuple(means), tuple(stds)


def _resize_nchw(x: np.ndarray, size: int) -> np.ndarray:
    """Resize NCHW images to ``size`` x ``size`` (bilinear, antialiased), keeping the dtype."""
    if x.shape[2] == size and x.shape[3] == size:
        return x
    out = np.empty((x.shape[0], x.shape[1], size, size), dtype=x.dtype)
    for start in range(0, x.shape[0], 4096):
        chunk = torch.from_numpy(np.ascontiguousarray(x[start : start + 4096])).float()
        chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if x.dtype == np.uint8:
            chunk = chunk.round_().clamp_(0, 255).to(torch.uint8)
        out[start : start + 4096] = chunk.numpy()
    return out


# --------------------------------------------------------------------------------------------
# Sources


def _load_digits(size: int) -> _Arrays:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    x_all, y_all = x.numpy(), bunch.target.astype(np.int64)
    # The test split is fixed (not seeded), so test accuracies compare across seeds.
    test_idx, train_idx = _stratified_take(y_all, round(_DIGITS_TEST_FRACTION * len(y_all)), np.random.default_rng(0))
    mean, std = _channel_stats(x_all[train_idx])
    return _Arrays(
        x_all[train_idx], y_all[train_idx], x_all[test_idx], y_all[test_idx],
        tuple(str(int(c)) for c in bunch.target_names), mean, std,
    )


def _load_cifar10(root: Path, size: int) -> _Arrays:
    if root.is_file():
        if root.name.endswith((".tar.gz", ".tgz", ".tar")):
            return _cached(root, "tar", size, lambda: _load_tar(root, size, force_rgb=True))
        raise UserInputError("dataset.root", f"{root} is a file", "point it at a folder (train/, test/) or cifar-10-batches-py")
    for batches in (root, root / "cifar-10-batches-py"):
        if (batches / "data_batch_1").is_file():
            return _load_cifar_batches(batches, size)
    if (root / "train").is_dir():
        return _load_folder(root, size, force_rgb=True)
    raise UserInputError(
        "dataset.root",
        f"{root} holds neither an ImageFolder tree (train/, test/) nor cifar-10-batches-py",
        "point it at the extracted CIFAR-10 folder",
    )


def _latin1_encode(text: Any, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 pickles ``bytes`` at protocol <= 2 (``encode(text, 'latin1')``),
    and only that: no other codec is reachable from a batch file."""
    if not isinstance(text, str) or encoding.replace("-", "").replace("_", "").lower() != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode is only allowed as encode(str, 'latin1'), got encoding {encoding!r}")
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
            f"{self.path} is not a plain CIFAR batch: it asks to load {_one_line(module)}.{_one_line(name)} (refused, it could run code)",
            "use the official cifar-10-batches-py files",
        )


def _safe_pickle_load(path: Path) -> Any:
    """The object pickled in ``path``; a refused global or a damaged file is a UserInputError naming it."""
    try:
        with open(path, "rb") as f:
            return _ArraysOnlyUnpickler(f, path).load()
    except UserInputError:
        raise
    except Exception as e:  # noqa: BLE001 -- a damaged pickle raises almost anything
        raise UserInputError(
            "dataset.root", f"cannot read {path} as a CIFAR batch ({_reason(e)})", "use the official cifar-10-batches-py files (download them again)"
        ) from None


def _one_line(text: str, limit: int = 200) -> str:
    """``text`` on one line, at most ``limit`` characters, for an error message."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _reason(e: BaseException) -> str:
    return _one_line(str(e)) or type(e).__name__


def _load_cifar_batches(folder: Path, size: int) -> _Arrays:
    def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
        if not path.is_file():
            raise UserInputError("dataset.root", f"{path} is missing", "use a complete cifar-10-batches-py folder")
        entry = _safe_pickle_load(path)
        data = _entry(entry, "data") if isinstance(entry, dict) else None
        labels = _entry(entry, "labels") if isinstance(entry, dict) else None
        if data is None or labels is None:
            raise UserInputError("dataset.root", f"{path} is not a CIFAR-10 batch (no data and labels)", "use the official cifar-10-batches-py files")
        return _checked_batch(path, data, labels)

    parts = [read(folder / f"data_batch_{i}") for i in range(1, 6)]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = read(folder / "test_batch")
    classes = _CIFAR10_CLASSES
    meta = folder / "batches.meta"
    if meta.is_file():
        entry = _safe_pickle_load(meta)
        names = _entry(entry, "label_names") if isinstance(entry, dict) else None
        if names is not None:
            if not isinstance(names, (list, tuple)) or len(names) != len(_CIFAR10_CLASSES):
                raise UserInputError(
                    "dataset.root", f"{meta} does not hold {len(_CIFAR10_CLASSES)} label_names", "use the official batches.meta, or remove it"
                )
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    x_train, x_test = _resize_nchw(x_train, size), _resize_nchw(x_test, size)
    return _Arrays(x_train, y_train, x_test, y_test, classes, *_channel_stats(x_train))


def _checked_batch(path: Path, data: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """A batch's images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)``, or a UserInputError naming ``path``."""
    fix = "use the official cifar-10-batches-py files (data: N x 3072 uint8, labels: N ints in 0..9)"
    try:
        x, y = np.asarray(data), np.asarray(labels)
    except (ValueError, TypeError) as e:  # ragged lists and the like
        raise UserInputError("dataset.root", f"{path} holds malformed data or labels ({_reason(e)})", fix) from None
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or x.dtype.kind not in "iu":
        raise UserInputError("dataset.root", f"{path} holds data of shape {x.shape} and type {x.dtype}, not N x 3072 integers", fix)
    if x.size and (x.min() < 0 or x.max() > 255):
        raise UserInputError("dataset.root", f"{path} holds pixel values outside 0..255", fix)
    if y.ndim != 1 or (y.size and y.dtype.kind not in "iu"):
        raise UserInputError("dataset.root", f"{path} holds labels of shape {y.shape} and type {y.dtype}, not N integers", fix)
    if len(y) != len(x):
        raise UserInputError("dataset.root", f"{path} holds {len(x)} images but {len(y)} labels", fix)
    if y.size and (y.min() < 0 or y.max() >= len(_CIFAR10_CLASSES)):
        raise UserInputError("dataset.root", f"{path} holds labels outside 0..{len(_CIFAR10_CLASSES) - 1} (from {y.min()} to {y.max()})", fix)
    return x.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32), y.astype(np.int64, copy=False)


def _entry(mapping: dict, key: str):
    """``mapping[key]`` whether the pickle's keys came back as bytes (Python 2) or str."""
    value = mapping.get(key.encode())
    return mapping.get(key) if value is None else value


def _scan_split(split_dir: Path, classes: Sequence[str] | None) -> tuple[list[str], list[int], list[str]]:
    """Image paths and labels of one ImageFolder split; ``classes`` from the train split."""
    names = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is None:
        classes = names
    index = {c: i for i, c in enumerate(classes)}
    paths: list[str] = []
    labels: list[int] = []
    for c in names:
        if c not in index:
            raise UserInputError(
                "dataset.root", f"class folder {split_dir / c} has no counterpart in train/", "use the same class folders in every split"
            )
        for f in sorted(os.scandir(split_dir / c), key=lambda e: e.name):
            if f.is_file() and f.name.lower().endswith(_IMAGE_EXTENSIONS) and not f.name.startswith("."):
                paths.append(f.path)
                labels.append(index[c])
    if not paths:
        raise UserInputError("dataset.root", f"no images found under {split_dir}", "put images in <split>/<class>/ folders")
    return paths, labels, list(classes)


def _test_dir(root: Path) -> Path:
    for name in ("test", "val"):
        if (root / name).is_dir():
            return root / name
    raise UserInputError("dataset.root", f"{root} has no test/ (or val/) folder", "add a test/<class>/ tree next to train/")


def _load_folder(root: Path, size: int, *, force_rgb: bool) -> _Arrays:
    if not (root / "train").is_dir():
        raise UserInputError("dataset.root", f"{root} has no train/ folder", "use an ImageFolder tree: train/<class>/*.jpg, test/<class>/*.jpg")
    test_dir = _test_dir(root)

    def build() -> _Arrays:
        paths, labels, classes = _scan_split(root / "train", None)
        _check_classes(labels, classes, root / "train")
        test_paths, test_labels, _ = _scan_split(test_dir, classes)
        mode = "RGB" if force_rgb else _image_mode(paths[0], paths[0])
        x = _decode_all(paths + test_paths, size, mode)
        n = len(paths)
        x_train = x[:n]
        return _Arrays(
            x_train, np.asarray(labels, np.int64), x[n:], np.asarray(test_labels, np.int64),
            tuple(classes), *_channel_stats(x_train),
        )

    return _cached(root, "folder-rgb" if force_rgb else "folder", size, build)


def _load_tar(path: Path, size: int, *, force_rgb: bool) -> _Arrays:
    """An ImageFolder tree inside a tar archive (optionally under one top folder)."""
    members: dict[str, dict[str, list[tuple[str, bytes]]]] = {}
    try:
        with tarfile.open(path) as tar:
            for m in tar:
                parts = m.name.strip("/").split("/")
                if not m.isfile() or len(parts) < 3 or not parts[-1].lower().endswith(_IMAGE_EXTENSIONS):
                    continue
                split, cls = parts[-3], parts[-2]
                if split in ("train", "test", "val"):
                    f = tar.extractfile(m)
                    if f is not None:
                        members.setdefault(split, {}).setdefault(cls, []).append((m.name, f.read()))
    except (tarfile.TarError, OSError) as e:
        raise UserInputError("dataset.root", f"cannot read {path} ({e})", "point it at a valid .tar.gz or extract it") from None
    test_split = "test" if "test" in members else "val"
    if "train" not in members or test_split not in members:
        raise UserInputError("dataset.root", f"{path} has no train/ and test/ image folders", "use an ImageFolder tree archive")
    classes = sorted(members["train"])
    index = {c: i for i, c in enumerate(classes)}

    def flatten(split: str) -> tuple[list[tuple[str, bytes]], list[int]]:
        blobs, labels = [], []
        for c in sorted(members[split]):
            if c not in index:
                raise UserInputError("dataset.root", f"class {c!r} of {split}/ has no counterpart in train/", "use the same class folders")
            for name, blob in sorted(members[split][c], key=lambda nb: nb[0].rsplit("/", 1)[-1]):
                blobs.append((f"{path}:{name}", blob))
                labels.append(index[c])
        return blobs, labels

    blobs, labels = flatten("train")
    _check_classes(labels, classes, f"{path}:train/")
    test_blobs, test_labels = flatten(test_split)
    mode = "RGB" if force_rgb else _image_mode(io.BytesIO(blobs[0][1]), blobs[0][0])
    x = _decode_all(blobs + test_blobs, size, mode)
    n = len(blobs)
    return _Arrays(
        x[:n], np.asarray(labels, np.int64), x[n:], np.asarray(test_labels, np.int64), tuple(classes), *_channel_stats(x[:n])
    )


def _check_classes(labels: Sequence[int], classes: Sequence[str], where: Any) -> None:
    """Refuse a training set with images of fewer than 2 classes (before anything is decoded)."""
    present = sorted({classes[i] for i in set(labels)})
    if len(present) < 2:
        found = f"images of 1 class ({present[0]})" if present else "no images"
        raise UserInputError(
            "dataset.root",
            f"{where} holds {found}: a classifier needs at least 2 classes (one class is always 100% accurate)",
            "put the images of each class in its own folder: train/<class>/, at least 2 of them",
        )


class _BrokenImage(Exception):
    """An image that PIL cannot decode; plain args, so it crosses from a worker process intact."""

    def __init__(self, source: str, reason: str):
        super().__init__(source, reason)
        self.source, self.reason = source, reason


def _broken_image_error(source: str, reason: str) -> UserInputError:
    return UserInputError(
        "dataset.root",
        f"cannot decode the image {_one_line(source, 400)} ({_one_line(reason)})",
        "remove the file, or re-encode it (e.g. open and save it again with an image editor or PIL)",
    )


def _image_mode(source, name: str) -> str:
    from PIL import Image

    try:
        with Image.open(source) as im:
            return "L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
    except Exception as e:  # noqa: BLE001 -- PIL raises many types for broken files
        raise _broken_image_error(name, _reason(e)) from None


def _decode_chunk(args: tuple[list, int, str]) -> np.ndarray:
    """Decode images (paths, or ``(name, encoded bytes)``) to one ``(n, H, W, C)`` uint8 array;
    an image that does not decode raises :class:`_BrokenImage` naming it."""
    from PIL import Image

    sources, size, mode = args
    channels = 1 if mode == "L" else 3
    out = np.empty((len(sources), size, size, channels), dtype=np.uint8)
    for i, src in enumerate(sources):
        name, data = src if isinstance(src, tuple) else (src, src)
        try:
            with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
                if im.mode != mode:
                    im = im.convert(mode)
                if im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                out[i] = np.asarray(im).reshape(size, size, channels)
        except Exception as e:  # noqa: BLE001 -- truncated files raise OSError, others ValueError, SyntaxError ...
            raise _BrokenImage(str(name), _reason(e)) from None
    return out


#: Images per decoding job, and the number of images from which worker processes decode.
_DECODE_CHUNK = 1000
_PROCESS_MIN_IMAGES = 4 * _DECODE_CHUNK


def _decode_all(sources: list, size: int, mode: str) -> np.ndarray:
    """Decode in parallel (forked worker processes where available) to NCHW uint8."""
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    chunk = _DECODE_CHUNK
    jobs = [(sources[i : i + chunk], size, mode) for i in range(0, len(sources), chunk)]
    try:
        use_processes = (
            workers > 1
            and len(sources) > _PROCESS_MIN_IMAGES
            and "fork" in multiprocessing.get_all_start_methods()
            and not multiprocessing.current_process().daemon  # a daemonic worker may not have children
        )
        if use_processes:
            # PIL's per-image overhead holds the GIL, so processes decode ~2x faster than threads;
            # the workers only use PIL and numpy, which is safe after fork.
            with multiprocessing.get_context("fork").Pool(min(workers, 16)) as pool:
                parts = pool.map(_decode_chunk, jobs)
        else:
            with ThreadPoolExecutor(max(1, min(workers, 8))) as ex:
                parts = list(ex.map(_decode_chunk, jobs))
    except _BrokenImage as e:
        raise _broken_image_error(e.source, e.reason) from None
    x = np.concatenate(parts) if parts else np.zeros((0, size, size, 1 if mode == "L" else 3), np.uint8)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _load_torchvision(cls_name: str, root: str | Path | None, image_size: int | None) -> _Arrays:
    try:
        import torchvision.datasets as tvd
    except ImportError:
        raise UserInputError(
            "dataset", f"torchvision:{cls_name} needs torchvision", "pip install torchvision (the [vision] extra)"
        ) from None
    matches = [
        n for n in dir(tvd)
        if n.lower() == cls_name.lower() and inspect.isclass(getattr(tvd, n)) and issubclass(getattr(tvd, n), torch.utils.data.Dataset)
    ]
    if not matches:
        raise UserInputError("dataset", f"torchvision has no data set {cls_name!r}", "use a class of torchvision.datasets, e.g. torchvision:CIFAR100")
    name = matches[0]
    cls = getattr(tvd, name)
    folder = _need_root(root, f"torchvision:{name}")
    params = inspect.signature(cls).parameters

    def make(train: bool):
        kwargs: dict = {}
        if "download" in params:
            kwargs["download"] = False
        if "train" in params:
            kwargs["train"] = train
        elif "split" in params:
            kwargs["split"] = "train" if train else "test"
        else:
            raise UserInputError("dataset", f"torchvision:{name} has no train/test split argument", "use imagefolder:PATH instead")
        try:
            return cls(str(folder), **kwargs)
        except (RuntimeError, FileNotFoundError, OSError, ValueError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserInputError(
                "dataset.root",
                f"torchvision:{name} files not found under {folder} ({first})",
                f"download them first: torchvision.datasets.{name}({str(folder)!r}, download=True)",
            ) from None

    train_ds, test_ds = make(True), make(False)
    x_train, y_train = _torchvision_arrays(train_ds, image_size)
    x_test, y_test = _torchvision_arrays(test_ds, image_size)
    classes = tuple(str(c) for c in getattr(train_ds, "classes", None) or ())
    return _Arrays(x_train, y_train, x_test, y_test, classes, *_channel_stats(x_train))


def _torchvision_arrays(ds, image_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    data = getattr(ds, "data", None)
    targets = getattr(ds, "targets", None)
    if targets is None:
        targets = getattr(ds, "labels", None)
    x = None
    if data is not None and targets is not None and len(data) == len(targets):
        arr = data.numpy() if isinstance(data, Tensor) else np.asarray(data)
        if arr.dtype == np.uint8 and arr.ndim == 3:
            x = arr[:, None]
        elif arr.dtype == np.uint8 and arr.ndim == 4:
            x = arr.transpose(0, 3, 1, 2) if arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3) else arr
    if x is None:  # generic path: PIL images one by one
        images, labels = [], []
        for img, label in ds:
            a = np.asarray(img if image_size is None else img.resize((image_size, image_size)), dtype=np.uint8)
            images.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
            labels.append(int(label))
        x, targets = np.stack(images), labels
    y = (targets.numpy() if isinstance(targets, Tensor) else np.asarray(targets)).astype(np.int64)
    x = np.ascontiguousarray(x)
    if image_size is not None:
        x = _resize_nchw(x, image_size)
    return x, y


# --------------------------------------------------------------------------------------------
# The table of data sets


def _digits_source(arg: str, root: str | Path | None, size: int | None) -> _Arrays:
    return _load_digits(size)


def _cifar10_source(arg: str, root: str | Path | None, size: int | None) -> _Arrays:
    return _load_cifar10(_need_root(root, "cifar10"), size)


def _imagefolder_source(arg: str, root: str | Path | None, size: int | None) -> _Arrays:
    if arg and root is not None and Path(arg).expanduser().resolve() != Path(root).expanduser().resolve():
        raise UserInputError("dataset.root", f"given twice ({arg!r} in the name, {str(root)!r} as root)", "give one")
    folder = _existing(Path(arg).expanduser() if arg else _need_root(root, "imagefolder"))
    if not folder.is_dir():
        raise UserInputError("dataset.root", f"{folder} is not a folder", "point it at a folder with train/ and test/ subfolders")
    return _load_folder(folder, size, force_rgb=False)


def _torchvision_source(arg: str, root: str | Path | None, size: int | None) -> _Arrays:
    return _load_torchvision(arg, root, size)


def _torchvision_augment(arg: str) -> str:
    """MNIST-like sets (centred strokes) are shifted, never flipped; the rest get the CIFAR recipe."""
    return "shift" if arg.lower() in _MNIST_LIKE else "crop_flip"


@dataclass(frozen=True)
class DataSource:
    """One kind of data set :func:`load_dataset` reads.

    Attributes:
        name: what a data set name starts with (``name`` or ``name:ARG``), lower case.
        aliases: other spellings of ``name``.
        arg: the placeholder of the ``:ARG`` part (``"PATH"``, ``"NAME"``); ``""`` when the
            source takes none.
        needs_arg: the ``:ARG`` part must be given (``imagefolder`` takes ``root`` instead).
        needs_root: the files are read from ``root`` (``data.root``; ``imagefolder:PATH`` may
            give it in the name).
        image_size: default side of the images, ``None`` for the files' native size.
        augment: the augmentation (one of :data:`AUGMENTS`), or a function of the ``:ARG``
            part giving it.
        load: ``load(arg, root, image_size) -> arrays`` (``image_size`` already defaulted).
        description: one line for listings.
    """

    name: str
    aliases: tuple[str, ...]
    arg: str
    needs_arg: bool
    needs_root: bool
    image_size: int | None
    augment: str | Callable[[str], str]
    load: Callable[[str, str | Path | None, int | None], _Arrays]
    description: str

    @property
    def usage(self) -> str:
        """How the name is written: ``digits``, ``imagefolder:PATH``."""
        return f"{self.name}:{self.arg}" if self.arg else self.name


#: The data sets, by name.
DATASETS: dict[str, DataSource] = {
    s.name: s
    for s in (
        DataSource("digits", (), "", False, False, 16, "shift", _digits_source,
                   "scikit-learn's 8x8 handwritten digits upsampled to 16x16 (no download; the default)"),
        DataSource("cifar10", ("cifar-10",), "", False, True, 32, "crop_flip", _cifar10_source,
                   "CIFAR-10 under root: an ImageFolder tree, a .tar.gz of one, or cifar-10-batches-py"),
        DataSource("imagefolder", (), "PATH", False, True, 32, "crop_flip", _imagefolder_source,
                   "an ImageFolder tree with train/ and test/ (or val/) folders, at PATH or root"),
        DataSource("torchvision", (), "NAME", True, True, None, _torchvision_augment, _torchvision_source,
                   "a torchvision.datasets class whose files are already under root (nothing is downloaded)"),
    )
}


def dataset_names() -> str:
    """The data set names as a user writes them: ``"digits, cifar10, imagefolder:PATH, ..."``."""
    return ", ".join(s.usage for s in DATASETS.values())


def find_dataset(name: str) -> tuple[DataSource, str]:
    """The source a data set name names, and its ``:ARG`` part (``""`` when none).

    Raises:
        UserInputError: (field ``dataset``) no source has that name, or the ``:ARG`` part is
            missing or not taken; the message lists :func:`dataset_names`.
    """
    if not isinstance(name, str) or not name.strip():
        raise UserInputError("dataset", f"expected a data set name, got {name!r}", f"use one of {dataset_names()}")
    kind, _, arg = name.strip().partition(":")
    kind = kind.lower()
    for source in DATASETS.values():
        if kind == source.name or kind in source.aliases:
            if (arg and source.arg) or (not arg and not source.needs_arg):
                return source, arg
            break
    raise UserInputError("dataset", f"unknown data set {name!r}", f"use one of {dataset_names()}")


# --------------------------------------------------------------------------------------------
# Cache of decoded image folders


def cache_dir() -> Path:
    """Where decoded image folders are cached: ``$NAS_SEPCONV_CACHE`` or ``~/.cache/nas_sepconv``."""
    env = os.environ.get("NAS_SEPCONV_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nas_sepconv"


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


def _cached(root: Path, kind: str, size: int, build) -> _Arrays:
    key = f"v{_CACHE_VERSION}|{kind}|{size}|{_source_signature(root)}"
    path = cache_dir() / f"{root.name or 'root'}-{hashlib.sha1(key.encode()).hexdigest()[:20]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return _Arrays(
                    z["x_train"], z["y_train"], z["x_test"], z["y_test"],
                    tuple(str(c) for c in z["classes"]), tuple(z["mean"].tolist()), tuple(z["std"].tolist()),
                )
        except (OSError, ValueError, KeyError, EOFError):
            pass  # unreadable cache: rebuild it
    arrays = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(
                f, x_train=arrays.x_train, y_train=arrays.y_train, x_test=arrays.x_test, y_test=arrays.y_test,
                classes=np.asarray(arrays.classes, dtype=str), mean=np.asarray(arrays.mean), std=np.asarray(arrays.std),
            )
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs the speed-up
    return arrays


# --------------------------------------------------------------------------------------------
# DeviceLoader


class DeviceLoader:
    """Batches of a :class:`Split`, augmented and normalised on the split's device.

    Each batch is gathered by index from the device-resident tensors; augmentation is one
    vectorised gather (random crop of the zero-padded batch at per-sample offsets, with the
    horizontal flip folded into the column indices), then the batch becomes float, normalised
    with ``mean``/``std`` and, with ``resolution``, resized (bilinear, no antialias).  All random
    draws come from one ``torch.Generator`` seeded with ``seed``: two loaders with the same seed
    yield the same batches, and each new iteration (epoch) draws a new order.

    Args:
        split: the images and labels (moved to ``device`` once, if given).
        batch_size: images per batch.
        mean, std: per-channel normalisation on the [0, 1] scale (``Dataset.mean``/``std``).
        augment: ``"none"``, ``"shift"`` (translate by up to 2 px) or ``"crop_flip"``
            (pad 4, random crop, horizontal flip).
        shuffle: draw a new random order every iteration.
        drop_last: leave out the last, smaller batch.
        seed: seeds the order and the augmentation.
        device: where to put the split; ``None`` keeps its device.
        resolution: resize batches to this height (width scaled alike), for ``resolution_mult``.
        channels_last: return batches in channels-last memory format.
    """

    def __init__(
        self,
        split: Split,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: str = "none",
        shuffle: bool,
        drop_last: bool = False,
        seed: int = 0,
        device: str | torch.device | None = None,
        resolution: int | None = None,
        channels_last: bool = False,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserInputError("batch_size", f"must be a positive int, got {batch_size!r}", "use e.g. 128")
        if augment not in _AUGMENT_PARAMS:
            raise UserInputError("augment", f"unknown augmentation {augment!r}", f"use one of {', '.join(AUGMENTS)}")
        if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1):
            raise UserInputError("resolution", f"must be a positive int or None, got {resolution!r}", "use e.g. 24")
        self.split = split if device is None else split.to(device)
        self.device = self.split.device
        self.batch_size = batch_size
        self.augment = augment
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.resolution = resolution
        self.channels_last = channels_last
        self._pad, self._flip = _AUGMENT_PARAMS[augment]

        channels = self.split.x.shape[1]
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean_t.numel() == 1:
            mean_t = mean_t.expand(channels)
        if std_t.numel() == 1:
            std_t = std_t.expand(channels)
        if mean_t.numel() != channels or std_t.numel() != channels:
            raise UserInputError("dataset.mean", f"has {mean_t.numel()} values for {channels} channels", "give one per channel")
        if bool((std_t <= 0).any()):
            raise UserInputError("dataset.std", "must be positive", "give the per-channel standard deviation")
        # x_norm = x * scale + shift, with uint8 -> [0, 1] folded into the scale.
        unit = 255.0 if self.split.x.dtype == torch.uint8 else 1.0
        self._scale = (1.0 / (unit * std_t)).reshape(1, -1, 1, 1).to(self.device)
        self._shift = (-mean_t / std_t).reshape(1, -1, 1, 1).to(self.device)
        self._gen = torch.Generator(device=self.device)
        self._gen.manual_seed(int(seed))

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.split)
        order = torch.randperm(n, generator=self._gen, device=self.device) if self.shuffle else None
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, n)
            if order is None:
                x, y = self.split.x[lo:hi], self.split.y[lo:hi]
            else:
                idx = order[lo:hi]
                x, y = self.split.x[idx], self.split.y[idx]
            yield self._prepare(x), y

    def _prepare(self, x: Tensor) -> Tensor:
        if self._pad:
            x = self._random_crop(x)
        x = (x.to(torch.float32) * self._scale).add_(self._shift)  # out of place first: x may be a view of the split
        if self.resolution is not None and x.shape[-2] != self.resolution:
            width = max(1, round(x.shape[-1] * self.resolution / x.shape[-2]))
            x = F.interpolate(x, size=(self.resolution, width), mode="bilinear", align_corners=False, antialias=False)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _random_crop(self, x: Tensor) -> Tensor:
        """Random crop of the zero-padded batch at per-sample offsets, optional flip: one gather."""
        n, c, h, w = x.shape
        p = self._pad
        padded = F.pad(x, (p, p, p, p))
        offsets = torch.randint(0, 2 * p + 1, (2, n, 1), generator=self._gen, device=self.device)
        rows = offsets[0] + torch.arange(h, device=self.device)  # (n, h)
        cols = torch.arange(w, device=self.device).expand(n, w)
        if self._flip:
            flip = torch.rand(n, 1, generator=self._gen, device=self.device) < 0.5
            cols = torch.where(flip, (w - 1) - cols, cols)
        cols = offsets[1] + cols  # (n, w)
        batch = torch.arange(n, device=self.device).view(n, 1, 1, 1)
        chan = torch.arange(c, device=self.device).view(1, c, 1, 1)
        return padded[batch, chan, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


def calibration_batches(
    dataset: Dataset, *, n: int = 512, batch_size: int = 128, split: str = "train", seed: int = 0
) -> list[Tensor]:
    """Up to ``n`` normalised, un-augmented input batches drawn at random (seeded) from a split.

    For data-aware refits of converted models and :func:`~nas_sepconv.train.reestimate_batchnorm`;
    the batches lie on the split's device.  The images keep their random order, so each batch
    mixes the classes even where the split is stored class by class (ImageFolder trees are):
    BatchNorm re-estimation averages per-batch variances, and single-class batches would leave
    out the variance between classes.
    """
    if split not in ("train", "val", "test"):
        raise UserInputError("split", f"unknown split {split!r}", "use train, val or test")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserInputError("n", f"must be a positive int, got {n!r}", "use e.g. 512")
    source: Split = getattr(dataset, split)
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(len(source), generator=gen)[:n].to(source.device)  # not sorted: see above
    loader = DeviceLoader(
        Split(source.x[idx], source.y[idx]), batch_size=batch_size, mean=dataset.mean, std=dataset.std, shuffle=False
    )
    return [x for x, _ in loader]
