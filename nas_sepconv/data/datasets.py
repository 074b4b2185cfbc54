"""Data sets held as tensors: :class:`Split`, :class:`Dataset` and :func:`load_dataset`.

A :class:`Dataset` is three :class:`Split` s (train, val, test) of image tensors ``(N, C, H, W)``
(``uint8`` in 0..255, or float in [0, 1]) with ``long`` labels, plus the per-channel ``mean`` and
``std`` (on the [0, 1] scale, computed over the training images) and the name of its
augmentation.  A data set that fits the memory budget is held once per machine (CIFAR-10 is 184 MB
as ``uint8``; image folders as a memory-mapped decoded cache that all processes share) and moves to
the GPU once; one that does not is streamed: its images stay on disk and DataLoader workers decode
each batch (:mod:`.memory`, :mod:`.images`).  Either way :class:`DeviceLoader` does indexing,
augmentation, normalisation and resizing batch at a time, with no per-sample Python.

The sources :func:`load_dataset` reads are the table :data:`~nas_sepconv.data.DATASETS`
(``sources.py``: one record per source with its name, ``:ARG``, default image size, augmentation
and loader); :func:`~nas_sepconv.data.dataset_names` lists them.

The validation split is held out of the training pool (seeded by ``seed``, stratified); the
test split only ever comes from the source's test files (for ``digits``, a fixed stratified 20%,
the same for every seed, so test accuracies compare across seeds).

Decoded image folders are cached as ``.npz`` under ``$NAS_SEPCONV_CACHE`` (default
``~/.cache/nas_sepconv``), keyed by the folder's absolute path and modification times.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import UserInputError
from .arrays import Arrays, stratified_take
from .images import ImageFiles
from .memory import MemoryPlan
from .sources import dataset_names, find_dataset

__all__ = ["Split", "Dataset", "load_dataset", "MAX_IMAGE_SIZE"]

#: Largest ``image_size``: a data set is held whole in memory, N x C x size x size bytes.
MAX_IMAGE_SIZE = 1024


class Split:
    """The images and labels ``y`` ``(N,)`` of one split.

    ``x`` holds the images the split draws from: an ``(M, C, H, W)`` tensor (``uint8`` 0..255 or
    float in [0, 1]), which may be the memory-mapped decoded cache every process of the machine
    shares, or :class:`~nas_sepconv.data.images.ImageFiles`, decoded batch by batch (the streamed
    path).  ``rows`` picks the split's images out of them, in order (``None``: all ``M``, then
    ``M == N``), so a validation hold-out is not a copy of the images.  :meth:`take` gathers a batch.
    """

    def __init__(
        self,
        x: Tensor | ImageFiles,
        y: Tensor,
        *,
        rows: Tensor | None = None,
        device: str | torch.device | None = None,
    ):
        n = len(x) if rows is None else int(rows.shape[0])
        if not isinstance(x, ImageFiles) and x.ndim != 4:
            raise ValueError(f"Split needs images of shape (N, C, H, W), got {tuple(x.shape)}")
        if y.ndim != 1 or y.shape[0] != n:
            raise ValueError(
                f"Split needs labels of shape (N,) for its {n} images (x {tuple(self._shape_of(x))}), "
                f"got {tuple(y.shape)}"
            )
        self.images, self.y, self.rows = x, y, rows
        self._device = torch.device(device) if device is not None else None

    @staticmethod
    def _shape_of(x: Tensor | ImageFiles) -> tuple[int, ...]:
        return (len(x), *x.image_shape) if isinstance(x, ImageFiles) else tuple(x.shape)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def streamed(self) -> bool:
        """Whether the images stay on disk and are decoded batch by batch."""
        return isinstance(self.images, ImageFiles)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self._shape_of(self.images)[1:])  # type: ignore[return-value]

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8 if isinstance(self.images, ImageFiles) else self.images.dtype

    @property
    def device(self) -> torch.device:
        """Where batches of this split lie."""
        if self._device is not None:
            return self._device
        return torch.device("cpu") if isinstance(self.images, ImageFiles) else self.images.device

    def take(self, idx: Tensor | slice) -> Tensor:
        """The images at positions ``idx`` of the split (a tensor of indices, or a slice), on :attr:`device`."""
        if isinstance(idx, slice):
            idx = torch.arange(len(self))[idx]
        rows = idx if self.rows is None else self.rows[idx.to(self.rows.device)]
        if isinstance(self.images, ImageFiles):
            return self.images.decode(rows).to(self.device)
        return self.images[rows.to(self.images.device)]

    @property
    def x(self) -> Tensor:
        """All the split's images as one tensor (gathered; a streamed split refuses: it is never held whole)."""
        if isinstance(self.images, ImageFiles):
            raise UserInputError(
                "split.x",
                f"the split's {len(self)} images are streamed from files, never held whole",
                "iterate a DeviceLoader over the split, or take(indices) a batch",
            )
        return self.images if self.rows is None else self.images[self.rows.to(self.images.device)]

    def subset(self, idx: Tensor) -> Split:
        """The images at positions ``idx``, sharing the images (no copy)."""
        rows = idx if self.rows is None else self.rows[idx.to(self.rows.device)]
        return Split(self.images, self.y[idx.to(self.y.device)], rows=rows, device=self._device)

    def to(self, device: str | torch.device) -> Split:
        """The split on ``device``: itself where already there; a streamed split decodes its batches
        there; an in-memory one is gathered and moved (the data set moves to a GPU once)."""
        device = torch.device(device)
        if device == self.device or (device.type == self.device.type and device.index is None):
            return self
        if isinstance(self.images, ImageFiles):
            return Split(self.images, self.y.to(device), rows=self.rows, device=device)
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

    @property
    def streamed(self) -> bool:
        """Whether the images stay on disk and are decoded batch by batch (:class:`MemoryPlan`)."""
        return self.train.streamed

    @property
    def decoded_bytes(self) -> int:
        """Bytes of all its images decoded (what the in-memory path holds, once per machine)."""
        c, h, w = self.input_shape
        itemsize = 1 if self.train.dtype == torch.uint8 else self.train.dtype.itemsize
        return (len(self.train) + len(self.val) + len(self.test)) * c * h * w * itemsize

    def to(self, device: str | torch.device) -> Dataset:
        """A copy with the three splits on ``device``."""
        return dataclasses.replace(
            self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device)
        )

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={len(self.train)}, val={len(self.val)}, test={len(self.test)}, "
            f"num_classes={self.num_classes}, input_shape={self.input_shape}, augment={self.augment!r}, "
            f"device={self.train.device}, streamed={self.streamed})"
        )


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    subset: int | None = None,
    image_size: int | None = None,
    stream: bool | None = None,
    memory_budget: int | None = None,
) -> Dataset:
    """Load a data set, with a seeded, stratified validation split.

    Image folders (``imagefolder``, ``cifar10`` as an ImageFolder tree) are decoded once into a
    memory-mapped cache that every process of the machine shares, or, when the decoded images
    would exceed ``memory_budget``, left on disk and decoded batch by batch by DataLoader worker
    processes (:class:`MemoryPlan`; the same images, batches and accuracy either way).

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
        A :class:`Dataset` on the CPU (its images memory-mapped or streamed); move it with :meth:`Dataset.to`.

    Raises:
        UserInputError: unknown name, missing or empty folder, missing files, bad arguments.
    """
    if not isinstance(name, str) or not name.strip():
        raise UserInputError("dataset", f"expected a data set name, got {name!r}", f"use one of {dataset_names()}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise UserInputError("dataset.val_fraction", f"must be in (0, 1), got {val_fraction!r}", "use e.g. 0.1")
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset < 2):
        raise UserInputError("dataset.subset", f"must be an int >= 2 or None, got {subset!r}", "use e.g. 5000")
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or not 1 <= image_size <= MAX_IMAGE_SIZE
    ):
        raise UserInputError(
            "dataset.image_size",
            f"must be an int in 1..{MAX_IMAGE_SIZE}, got {image_size!r} (the images are decoded at this size)",
            "use e.g. 32",
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserInputError("dataset.seed", f"must be an int, got {seed!r}")

    memory = MemoryPlan(stream=stream, budget=memory_budget)
    source, arg = find_dataset(name)
    size = image_size or source.image_size
    if source.streams:
        arrays = source.load(arg, root, size, memory)
    else:
        memory.held_in_memory(f"{source.usage} is held in memory")
        arrays = source.load(arg, root, size)
    augment = source.augment(arg) if callable(source.augment) else source.augment
    return _make_dataset(name.strip(), arrays, augment, val_fraction=val_fraction, seed=seed, subset=subset)


def _make_dataset(name: str, a: Arrays, augment: str, *, val_fraction: float, seed: int, subset: int | None) -> Dataset:
    if len(np.unique(a.y_train)) < 2:  # sources that name no classes (torchvision, batches) land here
        raise UserInputError(
            "dataset",
            f"{name} has images of fewer than 2 classes in its training split",
            "a classifier needs at least 2 classes",
        )
    rng = np.random.default_rng(seed)
    pool = np.arange(len(a.y_train))
    if subset is not None and subset < len(pool):
        pool, _ = stratified_take(a.y_train, subset, rng)
    n_val = min(max(1, round(val_fraction * len(pool))), len(pool) - 1)
    if n_val < 1:
        raise UserInputError("dataset.subset", f"leaves {len(pool)} training image(s)", "use a larger subset")
    val_pos, train_pos = stratified_take(a.y_train[pool], n_val, rng)

    def images(x: np.ndarray | ImageFiles) -> Tensor | ImageFiles:
        return x if isinstance(x, ImageFiles) else as_tensor(x)

    def labels(y: np.ndarray) -> Tensor:
        return torch.from_numpy(np.asarray(y, dtype=np.int64))

    def split(x: Tensor | ImageFiles, y: np.ndarray, idx: np.ndarray) -> Split:
        return Split(x, labels(y[idx]), rows=torch.from_numpy(idx.astype(np.int64)))

    x_train = images(a.x_train)
    num_classes = len(a.classes) if a.classes else int(max(a.y_train.max(initial=-1), a.y_test.max(initial=-1))) + 1
    c, h, w = a.x_train.image_shape if isinstance(a.x_train, ImageFiles) else a.x_train.shape[1:]
    return Dataset(
        name=name,
        train=split(x_train, a.y_train, pool[train_pos]),
        val=split(x_train, a.y_train, pool[val_pos]),
        test=Split(images(a.x_test), labels(a.y_test)),
        num_classes=num_classes,
        input_shape=(int(c), int(h), int(w)),
        mean=tuple(float(m) for m in a.mean),
        std=tuple(float(s) for s in a.std),
        augment=augment,
        classes=tuple(a.classes),
    )


def as_tensor(x: np.ndarray) -> Tensor:
    """``x`` as a tensor sharing its memory (a memory-mapped cache stays mapped, not copied)."""
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    with warnings.catch_warnings():  # a read-only map: the images are only ever read
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(x)
