"""ImageFolder trees (``train/<class>/*.jpg``, ``test/<class>/*.jpg``), on disk or in a tar
archive, decoded in parallel to NCHW ``uint8`` (worker processes where they pay)."""

from __future__ import annotations

import io
import multiprocessing
import os
import tarfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserInputError
from .arrays import Arrays, channel_stats, error_reason, one_line
from .cache import cached

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


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
                "dataset.root",
                f"class folder {split_dir / c} has no counterpart in train/",
                "use the same class folders in every split",
            )
        for f in sorted(os.scandir(split_dir / c), key=lambda e: e.name):
            if f.is_file() and f.name.lower().endswith(_IMAGE_EXTENSIONS) and not f.name.startswith("."):
                paths.append(f.path)
                labels.append(index[c])
    if not paths:
        raise UserInputError(
            "dataset.root", f"no images found under {split_dir}", "put images in <split>/<class>/ folders"
        )
    return paths, labels, list(classes)


def _test_dir(root: Path) -> Path:
    for name in ("test", "val"):
        if (root / name).is_dir():
            return root / name
    raise UserInputError(
        "dataset.root", f"{root} has no test/ (or val/) folder", "add a test/<class>/ tree next to train/"
    )


def load_folder(root: Path, size: int, *, force_rgb: bool) -> Arrays:
    """The ImageFolder tree at ``root`` (``train/``, ``test/`` or ``val/``), decoded once and cached."""
    if not (root / "train").is_dir():
        raise UserInputError(
            "dataset.root",
            f"{root} has no train/ folder",
            "use an ImageFolder tree: train/<class>/*.jpg, test/<class>/*.jpg",
        )
    test_dir = _test_dir(root)

    def build() -> Arrays:
        paths, labels, classes = _scan_split(root / "train", None)
        _check_classes(labels, classes, root / "train")
        test_paths, test_labels, _ = _scan_split(test_dir, classes)
        mode = "RGB" if force_rgb else _image_mode(paths[0], paths[0])
        x = _decode_all(paths + test_paths, size, mode)
        n = len(paths)
        x_train = x[:n]
        return Arrays(
            x_train,
            np.asarray(labels, np.int64),
            x[n:],
            np.asarray(test_labels, np.int64),
            tuple(classes),
            *channel_stats(x_train),
        )

    return cached(root, "folder-rgb" if force_rgb else "folder", size, build)


def load_tar(path: Path, size: int, *, force_rgb: bool) -> Arrays:
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
        raise UserInputError(
            "dataset.root", f"cannot read {path} ({e})", "point it at a valid .tar.gz or extract it"
        ) from None
    test_split = "test" if "test" in members else "val"
    if "train" not in members or test_split not in members:
        raise UserInputError(
            "dataset.root", f"{path} has no train/ and test/ image folders", "use an ImageFolder tree archive"
        )
    classes = sorted(members["train"])
    index = {c: i for i, c in enumerate(classes)}

    def flatten(split: str) -> tuple[list[tuple[str, bytes]], list[int]]:
        blobs, labels = [], []
        for c in sorted(members[split]):
            if c not in index:
                raise UserInputError(
                    "dataset.root",
                    f"class {c!r} of {split}/ has no counterpart in train/",
                    "use the same class folders",
                )
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
    return Arrays(
        x[:n],
        np.asarray(labels, np.int64),
        x[n:],
        np.asarray(test_labels, np.int64),
        tuple(classes),
        *channel_stats(x[:n]),
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
        f"cannot decode the image {one_line(source, 400)} ({one_line(reason)})",
        "remove the file, or re-encode it (e.g. open and save it again with an image editor or PIL)",
    )


def _image_mode(source, name: str) -> str:
    from PIL import Image

    try:
        with Image.open(source) as im:
            return "L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
    except Exception as e:  # noqa: BLE001 -- PIL raises many types for broken files
        raise _broken_image_error(name, error_reason(e)) from None


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
            raise _BrokenImage(str(name), error_reason(e)) from None
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
