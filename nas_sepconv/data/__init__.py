"""Data sets (one table), the device-resident loader and calibration batches."""

from __future__ import annotations

from .datasets import AUGMENTS, Dataset, DeviceLoader, Split, cache_dir, calibration_batches, load_dataset

__all__ = [
    "AUGMENTS",
    "Dataset",
    "DeviceLoader",
    "Split",
    "cache_dir",
    "calibration_batches",
    "load_dataset",
]
