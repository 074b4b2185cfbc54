"""Decoding images, and the streamed store: :class:`ImageFiles`, images that stay on disk and are
decoded batch by batch (by DataLoader worker processes) when a data set at the requested size would
not fit the memory budget.

Both paths decode with :func:`decode_images` (PIL: open, convert to the mode, bilinear resize to
``size`` x ``size``), so an image is the same ``uint8`` array whether it was decoded once into the
in-memory cache or again for every batch that holds it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import UserInputError
from .arrays import error_reason, one_line

__all__ = [
    "BrokenImage",
    "ImageFiles",
    "broken_image_error",
    "decode_images",
    "stream_batches",
    "unreadable_image_error",
]


class BrokenImage(Exception):
    """An image that PIL cannot decode; plain args, so it crosses from a worker process intact."""

    def __init__(self, source: str, reason: str):
        super().__init__(source, reason)
        self.source, self.reason = source, reason


def broken_image_error(source: str, reason: str) -> UserInputError:
    return UserInputError(
        "dataset.root",
        f"cannot decode the image {one_line(source, 400)} ({one_line(reason)})",
        "remove the file, or re-encode it (e.g. open and save it again with an image editor or PIL)",
    )


def decode_images(sources: Sequence, size: int, mode: str) -> np.ndarray:
    """Decode images (paths, or ``(name, encoded bytes)``) to one ``(n, H, W, C)`` uint8 array;
    an image that does not decode raises :class:`BrokenImage` naming it."""
    from PIL import Image

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
            raise BrokenImage(str(name), error_reason(e)) from None
    return out


@dataclass(frozen=True, eq=False)
class ImageFiles:
    """Images left on disk, decoded on demand: the streamed path of a :class:`~nas_sepconv.data.Split`.

    ``paths`` holds one entry per image (``bytes``, a numpy ``S`` array: no Python object per
    image, so worker processes share it): a file's path, or, with ``archives``, the name of a member
    of the uncompressed tar file ``archives[archive_of[i]]``, read at ``offsets[i]`` (``sizes[i]``
    bytes) without unpacking it (WebDataset-style shards).
    """

    paths: np.ndarray
    size: int
    mode: str
    archives: tuple[str, ...] = ()
    archive_of: np.ndarray | None = None
    offsets: np.ndarray | None = None
    sizes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    def nbytes(self, count: int | None = None) -> int:
        """Bytes of ``count`` (default: all) images decoded as ``uint8``."""
        c, h, w = self.image_shape
        return (len(self) if count is None else count) * c * h * w

    def part(self, lo: int, hi: int) -> ImageFiles:
        """Images ``lo`` to ``hi``."""

        def cut(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[lo:hi]

        return ImageFiles(
            self.paths[lo:hi],
            self.size,
            self.mode,
            self.archives,
            cut(self.archive_of),
            cut(self.offsets),
            cut(self.sizes),
        )

    def sources(self, rows: np.ndarray) -> list:
        """What :func:`decode_images` takes for images ``rows``: paths, or ``(name, bytes)`` read from the archives."""
        if not self.archives:
            return [os.fsdecode(p) for p in self.paths[rows]]
        assert self.archive_of is not None and self.offsets is not None and self.sizes is not None
        handles: dict[int, int] = {}
        try:
            out = []
            for i in rows:
                a = int(self.archive_of[i])
                if a not in handles:
                    handles[a] = os.open(self.archives[a], os.O_RDONLY)
                blob = os.pread(handles[a], int(self.sizes[i]), int(self.offsets[i]))
                out.append((f"{self.archives[a]}:{os.fsdecode(self.paths[i])}", blob))
            return out
        finally:
            for fd in handles.values():
                os.close(fd)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Images ``rows`` as one ``(n, C, H, W)`` uint8 array; raises :class:`BrokenImage` or
        ``OSError`` as they are (plain exceptions: they cross from a worker process intact)."""
        hwc = decode_images(self.sources(rows), self.size, self.mode)
        return np.ascontiguousarray(hwc.transpose(0, 3, 1, 2))

    def decode(self, rows: Sequence[int] | np.ndarray | Tensor) -> Tensor:
        """Images ``rows`` as one ``(n, C, H, W)`` uint8 tensor; a broken or missing file is a
        :class:`UserInputError` naming it."""
        rows = np.asarray(rows.cpu() if isinstance(rows, Tensor) else rows, dtype=np.int64).reshape(-1)
        try:
            return torch.from_numpy(self.read(rows))
        except (BrokenImage, OSError) as e:
            raise unreadable_image_error(e) from None


def unreadable_image_error(e: BaseException) -> UserInputError:
    """The one-line error for an image that does not decode (:class:`BrokenImage`) or cannot be read."""
    if isinstance(e, BrokenImage):
        return broken_image_error(e.source, e.reason)
    return UserInputError(
        "dataset.root", f"cannot read an image ({error_reason(e)})", "check that the files are still there"
    )


class _BatchDecoder(torch.utils.data.Dataset):
    """Batch ``b`` of a fixed list of index batches, decoded (what a DataLoader worker runs).  A
    file that fails comes back as the exception object, raised in the main process: a DataLoader
    worker re-raises exceptions by their message alone, which loses what our errors carry."""

    def __init__(self, files: ImageFiles, batches: list[np.ndarray]):
        self.files, self.batches = files, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> Tensor | BaseException:
        try:
            return torch.from_numpy(self.files.read(self.batches[b]))
        except (BrokenImage, OSError) as e:
            return e


def stream_batches(
    files: ImageFiles, batches: list[np.ndarray], *, workers: int, pin: bool = False
) -> Iterator[Tensor]:
    """The decoded images of each index batch, in order, decoded ahead by ``workers`` DataLoader
    worker processes (``0``: in this process)."""
    if workers < 1 or len(batches) < 2:
        for rows in batches:
            yield files.decode(rows)
        return
    loader = torch.utils.data.DataLoader(
        _BatchDecoder(files, batches),
        batch_size=None,
        shuffle=False,
        num_workers=min(workers, len(batches)),
        pin_memory=pin,
        prefetch_factor=2,
    )
    for item in loader:
        if isinstance(item, BaseException):
            raise unreadable_image_error(item)
        yield item
