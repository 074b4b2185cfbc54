"""WebDataset-style tar shards: ``PATH/train/*.tar`` and ``PATH/test/*.tar`` (or ``val/``), each an
uncompressed tar of samples stored as files sharing a key, ``<key>.jpg`` (or ``.png``, ``.jpeg``,
``.webp``, ...) with ``<key>.cls``, the class index as text (the layout WebDataset writes and
reads; Aizman et al., "High performance I/O for large scale deep learning", 2019).

The shards are indexed once with :mod:`tarfile` (headers only: where each image's bytes lie), so
that an image is read by offset (:class:`~nas_sepconv.data.images.ImageFiles`) in any order: the
same seeded order and batches as an image folder, in memory or streamed.  Class names are the
indices, unless ``PATH/classes.txt`` lists one name per line.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np

from ..errors import UserInputError
from .arrays import Arrays, error_reason
from .folders import IMAGE_EXTENSIONS, ImageScan, check_classes, image_mode, load_scan
from .images import ImageFiles
from .memory import MemoryPlan

__all__ = ["load_shards", "scan_shards"]

#: Largest ``.cls`` member read (a class index as text).
_MAX_CLS_BYTES = 64


def _shards(folder: Path) -> list[Path]:
    shards = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(".tar"))
    if not shards:
        raise UserInputError(
            "dataset.root", f"no .tar shards in {folder}", "put the shards of each split in its folder"
        )
    return shards


def _index_shard(path: Path) -> tuple[list[bytes], list[int], list[int], list[int]]:
    """Names, offsets and sizes of the images of one shard, and their labels (from ``.cls``)."""
    images: dict[str, tuple[str, int, int]] = {}
    labels: dict[str, int] = {}
    try:
        with tarfile.open(path, "r:") as tar:  # uncompressed only: an image must be readable at an offset
            for m in tar:
                if not m.isfile() or m.name.rsplit("/", 1)[-1].startswith("."):
                    continue
                key, _, ext = m.name.rpartition(".")
                ext = "." + ext.lower()
                if ext == ".cls":
                    labels[key] = _label(tar, m, path)
                elif ext in IMAGE_EXTENSIONS:
                    images[key] = (m.name, m.offset_data, m.size)
    except tarfile.ReadError as e:
        raise UserInputError(
            "dataset.root",
            f"cannot index {path} ({error_reason(e)}): shards must be uncompressed .tar files",
            "write the shards uncompressed (as WebDataset's ShardWriter does), or decompress them",
        ) from None
    except OSError as e:
        raise UserInputError("dataset.root", f"cannot read {path} ({error_reason(e)})", "check the file") from None
    missing = sorted(set(images) - set(labels))
    if missing:
        raise UserInputError(
            "dataset.root",
            f"{path}: the image {images[missing[0]][0]} has no {missing[0]}.cls (and {len(missing) - 1} more)",
            "give every sample a <key>.cls holding its class index",
        )
    keys = sorted(images)
    names = [os.fsencode(images[k][0]) for k in keys]
    return names, [images[k][1] for k in keys], [images[k][2] for k in keys], [labels[k] for k in keys]


def _label(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> int:
    f = tar.extractfile(member)
    text = f.read(_MAX_CLS_BYTES + 1) if f is not None else b""
    try:
        value = int(text.decode("ascii").strip())
        if len(text) > _MAX_CLS_BYTES or value < 0:
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise UserInputError(
            "dataset.root",
            f"{path}:{member.name} holds {text[:20]!r}, not a class index",
            "write the class index (0, 1, ...) as text in each .cls",
        ) from None
    return value


def _scan_split(folder: Path, size: int, mode: str | None) -> tuple[ImageFiles, np.ndarray]:
    shards = _shards(folder)
    names, offsets, sizes, labels, archive_of = [], [], [], [], []
    for a, shard in enumerate(shards):
        n, o, s, y = _index_shard(shard)
        names += n
        offsets += o
        sizes += s
        labels += y
        archive_of += [a] * len(n)
    if not names:
        raise UserInputError("dataset.root", f"no images in the shards of {folder}", "check the shards")
    files = ImageFiles(
        np.asarray(names, dtype=np.bytes_),
        size,
        mode or "RGB",
        tuple(str(p) for p in shards),
        np.asarray(archive_of, np.int32),
        np.asarray(offsets, np.int64),
        np.asarray(sizes, np.int64),
    )
    if mode is None:  # the first image's header decides: grey or colour
        name, blob = files.sources(np.array([0]))[0]
        files = ImageFiles(files.paths, size, image_mode(io.BytesIO(blob), name), *_archive_fields(files))
    return files, np.asarray(labels, np.int64)


def _archive_fields(files: ImageFiles) -> tuple:
    return files.archives, files.archive_of, files.offsets, files.sizes


def scan_shards(root: Path, size: int) -> ImageScan:
    """Index the shards of ``root/train`` and ``root/test`` (or ``root/val``)."""
    if not (root / "train").is_dir():
        raise UserInputError(
            "dataset.root", f"{root} has no train/ folder of shards", "put the shards in train/*.tar and test/*.tar"
        )
    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if test_dir is None:
        raise UserInputError("dataset.root", f"{root} has no test/ (or val/) folder", "add test/*.tar beside train/")
    train, y_train = _scan_split(root / "train", size, None)
    test, y_test = _scan_split(test_dir, size, train.mode)
    count = int(max(y_train.max(), y_test.max())) + 1
    names_file = root / "classes.txt"
    classes = tuple(str(i) for i in range(count))
    if names_file.is_file():
        listed = tuple(line.strip() for line in names_file.read_text().splitlines() if line.strip())
        if len(listed) < count:
            raise UserInputError(
                "dataset.root",
                f"{names_file} names {len(listed)} classes but the shards use {count}",
                "list one name per class",
            )
        classes = listed
    check_classes(y_train.tolist(), classes, root / "train")
    return ImageScan(train, test, y_train, y_test, classes)


def load_shards(root: Path, size: int, *, memory: MemoryPlan) -> Arrays:
    """The shards at ``root``: decoded once into the memory-mapped cache, or streamed (``memory``)."""
    return load_scan(scan_shards(root, size), root, "shards", memory)
