"""ImageFolder trees (``train/<class>/*.jpg``, ``test/<class>/*.jpg``), on disk or in a tar
archive, decoded in parallel to NCHW ``uint8`` (worker processes where they pay)."""

from __future__ import annotations

import io
import multiprocessing
import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserInputError
from .arrays import Arrays, channel_stats, error_reason, stats_from_histograms
from .cache import cached, cached_stats
from .images import BrokenImage, ImageFiles, broken_image_error, decode_images, unreadable_image_error
from .memory import MemoryPlan

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


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
            if f.is_file() and f.name.lower().endswith(IMAGE_EXTENSIONS) and not f.name.startswith("."):
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


@dataclass(frozen=True)
class ImageScan:
    """A data set's images listed, nothing decoded (an ImageFolder tree, tar shards): the training
    pool's and the test split's files, their labels and the class names."""

    train: ImageFiles
    test: ImageFiles
    y_train: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]


def scan_folder(root: Path, size: int, *, force_rgb: bool) -> ImageScan:
    """List the ImageFolder tree at ``root`` (``train/``, ``test/`` or ``val/``); the mode (RGB or
    grey) is read from the first training image's header."""
    if not (root / "train").is_dir():
        raise UserInputError(
            "dataset.root",
            f"{root} has no train/ folder",
            "use an ImageFolder tree: train/<class>/*.jpg, test/<class>/*.jpg",
        )
    test_dir = _test_dir(root)
    paths, labels, classes = _scan_split(root / "train", None)
    check_classes(labels, classes, root / "train")
    test_paths, test_labels, _ = _scan_split(test_dir, classes)
    mode = "RGB" if force_rgb else image_mode(paths[0], paths[0])
    return ImageScan(
        ImageFiles(_path_array(paths), size, mode),
        ImageFiles(_path_array(test_paths), size, mode),
        np.asarray(labels, np.int64),
        np.asarray(test_labels, np.int64),
        tuple(classes),
    )


def _path_array(paths: list[str]) -> np.ndarray:
    return np.asarray([os.fsencode(p) for p in paths], dtype=np.bytes_)


def load_folder(root: Path, size: int, *, force_rgb: bool, memory: MemoryPlan | None = None) -> Arrays:
    """The ImageFolder tree at ``root``: decoded once, cached and memory-mapped (one copy per
    machine), or left on disk and streamed when ``memory`` says so (:class:`MemoryPlan`)."""
    scan = scan_folder(root, size, force_rgb=force_rgb)
    return load_scan(scan, root, "folder-rgb" if force_rgb else "folder", memory or MemoryPlan(stream=False))


def load_scan(scan: ImageScan, root: Path, kind: str, memory: MemoryPlan) -> Arrays:
    """The listed images: streamed (exact statistics from one decoding pass, cached) when their
    decoded size exceeds the budget, else decoded once into the memory-mapped cache."""
    size = scan.train.size
    if memory.streams(scan.train.nbytes() + scan.test.nbytes()):
        mean, std = cached_stats(root, kind, size, lambda: streamed_stats(scan.train))
        return Arrays(scan.train, scan.y_train, scan.test, scan.y_test, scan.classes, mean, std)

    def build() -> Arrays:
        x_train, x_test = decode_files(scan.train), decode_files(scan.test)
        return Arrays(x_train, scan.y_train, x_test, scan.y_test, scan.classes, *channel_stats(x_train))

    return cached(root, kind, size, build)


def decode_files(files: ImageFiles) -> np.ndarray:
    """All the images, decoded in parallel into one NCHW uint8 array (filled chunk by chunk)."""
    out = np.empty((len(files), *files.image_shape), np.uint8)
    for lo, part in zip(range(0, len(files), _DECODE_CHUNK), _map_jobs(_decode_rows, _jobs(files), len(files))):
        out[lo : lo + len(part)] = part
    return out


def _jobs(files: ImageFiles) -> list[tuple[ImageFiles, np.ndarray]]:
    return [(files, np.arange(i, min(i + _DECODE_CHUNK, len(files)))) for i in range(0, len(files), _DECODE_CHUNK)]


def _decode_rows(args: tuple[ImageFiles, np.ndarray]) -> np.ndarray:
    """Some images, decoded to NCHW uint8 (one job of :func:`decode_files`)."""
    files, rows = args
    return files.read(rows)


def streamed_stats(files: ImageFiles) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of images left on disk: one decoding pass (worker processes where
    they pay), exact histograms summed, so the figures equal :func:`channel_stats` of the decoded array."""
    total = np.zeros((files.channels, 256), np.int64)
    for part in _map_jobs(_histogram_chunk, _jobs(files), len(files)):
        total += part
    return stats_from_histograms(total)


def _histogram_chunk(args: tuple[ImageFiles, np.ndarray]) -> np.ndarray:
    """Per-channel histograms ``(C, 256)`` of some images (one job of :func:`streamed_stats`)."""
    files, rows = args
    x = files.read(rows)
    return np.stack([np.bincount(x[:, ch].reshape(-1), minlength=256) for ch in range(x.shape[1])])


def load_tar(path: Path, size: int, *, force_rgb: bool) -> Arrays:
    """An ImageFolder tree inside a tar archive (optionally under one top folder)."""
    members: dict[str, dict[str, list[tuple[str, bytes]]]] = {}
    try:
        with tarfile.open(path) as tar:
            for m in tar:
                parts = m.name.strip("/").split("/")
                if not m.isfile() or len(parts) < 3 or not parts[-1].lower().endswith(IMAGE_EXTENSIONS):
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
    check_classes(labels, classes, f"{path}:train/")
    test_blobs, test_labels = flatten(test_split)
    mode = "RGB" if force_rgb else image_mode(io.BytesIO(blobs[0][1]), blobs[0][0])
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


def check_classes(labels: Sequence[int], classes: Sequence[str], where: Any) -> None:
    """Refuse a training set with images of fewer than 2 classes (before anything is decoded)."""
    present = sorted({classes[i] for i in set(labels)})
    if len(present) < 2:
        found = f"images of 1 class ({present[0]})" if present else "no images"
        raise UserInputError(
            "dataset.root",
            f"{where} holds {found}: a classifier needs at least 2 classes (one class is always 100% accurate)",
            "put the images of each class in its own folder: train/<class>/, at least 2 of them",
        )


def image_mode(source, name: str) -> str:
    from PIL import Image

    try:
        with Image.open(source) as im:
            return "L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
    except Exception as e:  # noqa: BLE001 -- PIL raises many types for broken files
        raise broken_image_error(name, error_reason(e)) from None


def _decode_chunk(args: tuple[list, int, str]) -> np.ndarray:
    """One decoding job of :func:`_decode_all` (a pool maps one argument)."""
    return decode_images(*args)


#: Images per decoding job, and the number of images from which worker processes decode.
_DECODE_CHUNK = 1000
_PROCESS_MIN_IMAGES = 4 * _DECODE_CHUNK


def _map_jobs(fn: Callable[[Any], np.ndarray], jobs: list, n_images: int) -> Iterator[np.ndarray]:
    """``fn(job)`` for each job, in order, computed in parallel: forked worker processes where they
    pay, else threads; each result is handed on as it comes, so a caller holds one at a time."""
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    use_processes = (
        workers > 1
        and n_images > _PROCESS_MIN_IMAGES
        and "fork" in multiprocessing.get_all_start_methods()
        and not multiprocessing.current_process().daemon  # a daemonic worker may not have children
    )
    try:
        if use_processes:
            # PIL's per-image overhead holds the GIL, so processes decode ~2x faster than threads;
            # the workers only use PIL and numpy, which is safe after fork.
            with multiprocessing.get_context("fork").Pool(min(workers, 16)) as pool:
                yield from pool.imap(fn, jobs)
        else:
            with ThreadPoolExecutor(max(1, min(workers, 8))) as ex:
                yield from ex.map(fn, jobs)
    except (BrokenImage, OSError) as e:
        raise unreadable_image_error(e) from None


def _decode_all(sources: list, size: int, mode: str) -> np.ndarray:
    """Decode in parallel to NCHW uint8 (filled chunk by chunk: about one copy of the images at a time)."""
    chunk = _DECODE_CHUNK
    jobs = [(sources[i : i + chunk], size, mode) for i in range(0, len(sources), chunk)]
    out = np.empty((len(sources), 1 if mode == "L" else 3, size, size), np.uint8)
    for i, part in enumerate(_map_jobs(_decode_chunk, jobs, len(sources))):
        out[i * chunk : i * chunk + len(part)] = part.transpose(0, 3, 1, 2)
    return out
