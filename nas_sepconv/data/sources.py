"""The table of data sets: one :class:`DataSource` per source, read by :func:`~nas_sepconv.data.load_dataset`
and by every message that lists the names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserInputError
from ..tables import unknown_name
from .arrays import Arrays, channel_stats, existing, need_root, stratified_take
from .cache import default_data_root
from .cifar import CIFAR10_FILL, load_cifar10
from .folders import load_folder
from .memory import MemoryPlan
from .shards import load_shards
from .torchvision_sets import load_torchvision

__all__ = ["DataSource", "DATASETS", "find_dataset", "dataset_names"]


_MNIST_LIKE = {"mnist", "kmnist", "emnist", "qmnist"}
_DIGITS_TEST_FRACTION = 0.2


def _load_digits(size: int) -> Arrays:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    x_all, y_all = x.numpy(), bunch.target.astype(np.int64)
    # The test split is fixed (not seeded), so test accuracies compare across seeds.
    test_idx, train_idx = stratified_take(y_all, round(_DIGITS_TEST_FRACTION * len(y_all)), np.random.default_rng(0))
    mean, std = channel_stats(x_all[train_idx])
    return Arrays(
        x_all[train_idx],
        y_all[train_idx],
        x_all[test_idx],
        y_all[test_idx],
        tuple(str(int(c)) for c in bunch.target_names),
        mean,
        std,
    )


def _digits_source(arg: str, root: str | Path | None, size: int | None) -> Arrays:
    return _load_digits(size)


def _cifar10_source(arg: str, root: str | Path | None, size: int | None, memory: MemoryPlan) -> Arrays:
    if root is None:  # the per-user folder, which the user fills once
        folder = default_data_root("cifar10")
        if not folder.is_dir() or not any(folder.iterdir()):
            raise UserInputError(
                "dataset.root",
                f"not given, and the default CIFAR-10 folder {folder} is {'empty' if folder.is_dir() else 'missing'}",
                f"put in it {CIFAR10_FILL} ($NAS_SEPCONV_DATA moves it), or point data.root (root=) at the files",
            )
        root = folder
    return load_cifar10(need_root(root, "cifar10"), size, memory)


def _imagefolder_source(arg: str, root: str | Path | None, size: int | None, memory: MemoryPlan) -> Arrays:
    if arg and root is not None and Path(arg).expanduser().resolve() != Path(root).expanduser().resolve():
        raise UserInputError("dataset.root", f"given twice ({arg!r} in the name, {str(root)!r} as root)", "give one")
    folder = existing(Path(arg).expanduser() if arg else need_root(root, "imagefolder"))
    if not folder.is_dir():
        raise UserInputError(
            "dataset.root", f"{folder} is not a folder", "point it at a folder with train/ and test/ subfolders"
        )
    return load_folder(folder, size, force_rgb=False, memory=memory)


def _shards_source(arg: str, root: str | Path | None, size: int | None, memory: MemoryPlan) -> Arrays:
    if arg and root is not None and Path(arg).expanduser().resolve() != Path(root).expanduser().resolve():
        raise UserInputError("dataset.root", f"given twice ({arg!r} in the name, {str(root)!r} as root)", "give one")
    folder = existing(Path(arg).expanduser() if arg else need_root(root, "shards"))
    if not folder.is_dir():
        raise UserInputError("dataset.root", f"{folder} is not a folder", "point it at a folder with train/ and test/")
    return load_shards(folder, size, memory=memory)


def _torchvision_source(arg: str, root: str | Path | None, size: int | None) -> Arrays:
    return load_torchvision(arg, root, size)


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
        load: ``load(arg, root, image_size) -> arrays`` (``image_size`` already defaulted); a
            source that ``streams`` takes a :class:`MemoryPlan` too: ``load(arg, root, image_size, memory)``.
        streams: its images can stay on disk and be decoded batch by batch (image folders).
        description: one line for listings.
    """

    name: str
    aliases: tuple[str, ...]
    arg: str
    needs_arg: bool
    needs_root: bool
    image_size: int | None
    augment: str | Callable[[str], str]
    load: Callable[..., Arrays]
    description: str
    streams: bool = False

    @property
    def usage(self) -> str:
        """How the name is written: ``digits``, ``imagefolder:PATH``."""
        return f"{self.name}:{self.arg}" if self.arg else self.name


#: The data sets, by name.
DATASETS: dict[str, DataSource] = {
    s.name: s
    for s in (
        DataSource(
            "digits",
            (),
            "",
            False,
            False,
            16,
            "shift",
            _digits_source,
            "scikit-learn's 8x8 handwritten digits upsampled to 16x16 (no download; the default)",
        ),
        DataSource(
            "cifar10",
            ("cifar-10",),
            "",
            False,
            True,
            32,
            "crop_flip",
            _cifar10_source,
            "CIFAR-10 under root (default ~/.cache/nas_sepconv/data/cifar10): an ImageFolder tree, a .tar.gz of "
            "one, or cifar-10-batches-py",
            streams=True,
        ),
        DataSource(
            "imagefolder",
            (),
            "PATH",
            False,
            True,
            32,
            "crop_flip",
            _imagefolder_source,
            "an ImageFolder tree with train/ and test/ (or val/) folders, at PATH or root",
            streams=True,
        ),
        DataSource(
            "shards",
            ("webdataset",),
            "PATH",
            False,
            True,
            32,
            "crop_flip",
            _shards_source,
            "WebDataset-style uncompressed tar shards, PATH/train/*.tar and PATH/test/*.tar: <key>.jpg + <key>.cls",
            streams=True,
        ),
        DataSource(
            "torchvision",
            (),
            "NAME",
            True,
            True,
            None,
            _torchvision_augment,
            _torchvision_source,
            "a torchvision.datasets class whose files are already under root (nothing is downloaded)",
        ),
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
    raise unknown_name(name, field="dataset", what="data set", names=[s.usage for s in DATASETS.values()])
