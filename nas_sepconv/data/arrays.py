"""What a source yields before splitting (:class:`Arrays`), and the helpers every source uses:
the stratified take, per-channel statistics, resizing, root checks and one-line error reasons."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserInputError


@dataclass
class Arrays:
    """What a source yields before splitting: the training pool and the test set, NCHW."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def stratified_take(y: np.ndarray, n_take: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
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


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the [0, 1] scale of NCHW images (uint8 via exact histograms)."""
    if x.dtype == np.uint8:
        return stats_from_histograms(
            np.stack([np.bincount(x[:, ch].reshape(-1), minlength=256) for ch in range(x.shape[1])])
        )
    means, stds = [], []
    for ch in range(x.shape[1]):
        plane = x[:, ch].astype(np.float64)
        means.append(float(plane.mean()))
        stds.append(max(math.sqrt(float(plane.var())), 1e-6))
    return tuple(means), tuple(stds)


def stats_from_histograms(hist: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the [0, 1] scale from ``(C, 256)`` counts of uint8 values."""
    means, stds = [], []
    values = np.arange(256, dtype=np.float64) / 255.0
    for counts in hist:
        h = counts.astype(np.float64)
        total = h.sum()
        mean = float((h * values).sum() / total)
        var = float((h * (values - mean) ** 2).sum() / total)
        means.append(mean)
        stds.append(max(math.sqrt(var), 1e-6))
    return tuple(means), tuple(stds)


def resize_nchw(x: np.ndarray, size: int) -> np.ndarray:
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


def need_root(root: str | Path | None, kind: str) -> Path:
    if root is None:
        raise UserInputError(
            "dataset.root",
            f"{kind} needs a root folder",
            "set root: in the data section of the space file (data.root), or pass root=... to load_dataset, "
            "pointing at the files",
        )
    return existing(Path(root).expanduser())


def existing(path: Path) -> Path:
    if not path.exists():
        raise UserInputError("dataset.root", f"{path} does not exist", "check the path (extract archives first)")
    return path.resolve()


def one_line(text: str, limit: int = 200) -> str:
    """``text`` on one line, at most ``limit`` characters, for an error message."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def error_reason(e: BaseException) -> str:
    return one_line(str(e)) or type(e).__name__
