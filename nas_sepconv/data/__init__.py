"""Data sets (one table), the device-resident loader and calibration batches."""

from __future__ import annotations

from .datasets import (
    AUGMENTS,
    DATASETS,
    DataSource,
    Dataset,
    DeviceLoader,
    Split,
    cache_dir,
    calibration_batches,
    dataset_names,
    find_dataset,
    load_dataset,
)

__all__ = [
    "AUGMENTS",
    "DATASETS",
    "DataSource",
    "Dataset",
    "DeviceLoader",
    "Split",
    "cache_dir",
    "calibration_batches",
    "dataset_names",
    "find_dataset",
    "load_dataset",
]
