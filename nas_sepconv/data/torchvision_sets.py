"""``torchvision:NAME``: a class of ``torchvision.datasets`` whose files are already under ``root``
(nothing is downloaded), read into arrays."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import UserInputError
from .arrays import Arrays, channel_stats, need_root, resize_nchw


def load_torchvision(cls_name: str, root: str | Path | None, image_size: int | None) -> Arrays:
    """The train and test sets of ``torchvision.datasets.<cls_name>`` (any case) from files under ``root``."""
    try:
        import torchvision.datasets as tvd
    except ImportError:
        raise UserInputError(
            "dataset", f"torchvision:{cls_name} needs torchvision", "pip install torchvision (the [vision] extra)"
        ) from None
    matches = [
        n
        for n in dir(tvd)
        if n.lower() == cls_name.lower()
        and inspect.isclass(getattr(tvd, n))
        and issubclass(getattr(tvd, n), torch.utils.data.Dataset)
    ]
    if not matches:
        raise UserInputError(
            "dataset",
            f"torchvision has no data set {cls_name!r}",
            "use a class of torchvision.datasets, e.g. torchvision:CIFAR100",
        )
    name = matches[0]
    cls = getattr(tvd, name)
    folder = need_root(root, f"torchvision:{name}")
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
            raise UserInputError(
                "dataset", f"torchvision:{name} has no train/test split argument", "use imagefolder:PATH instead"
            )
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
    return Arrays(x_train, y_train, x_test, y_test, classes, *channel_stats(x_train))


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
        x = resize_nchw(x, image_size)
    return x, y
