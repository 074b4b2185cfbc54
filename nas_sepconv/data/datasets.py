"""Data sets held as tensors: :class:`Split`, :class:`Dataset` and :func:`load_dataset`.

A :class:`Dataset` is three :class:`Split` s (train, val, test) of image tensors ``(N, C, H, W)``
(``uint8`` in 0..255, or float in [0, 1]) with ``long`` labels, plus the per-channel ``mean`` and
``std`` (on the [0, 1] scale, computed over the training images) and the name of its
augmentation.  Everything fits in memory (CIFAR-10 is 184 MB as ``uint8``), so a whole data set
moves to the GPU once and :class:`DeviceLoader` does indexing, augmentation, normalisation and
resizing there, batch at a time, with no per-sample Python.

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import UserInputError
from .arrays import Arrays, stratified_take
from .sources import dataset_names, find_dataset

__all__ = ["Split", "Dataset", "load_dataset", "MAX_IMAGE_SIZE"]

#: Largest ``image_size``: a data set is held whole in memory, N x C x size x size bytes.
MAX_IMAGE_SIZE = 1024


@dataclass
class Split:
    """Images ``x`` ``(N, C, H, W)`` (``uint8`` 0..255 or float in [0, 1]) and labels ``y`` ``(N,)``."""

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.y.ndim != 1 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"Split needs x of shape (N, C, H, W) and y of shape (N,), got {tuple(self.x.shape)} and "
                f"{tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def device(self) -> torch.device:
        return self.x.device

    def to(self, device: str | torch.device) -> Split:
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

    def to(self, device: str | torch.device) -> Dataset:
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
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or not 1 <= image_size <= MAX_IMAGE_SIZE
    ):
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
