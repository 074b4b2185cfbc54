"""Data sets (one table), the device-resident loader and calibration batches."""

from __future__ import annotations

from .cache import cache_dir, data_home, default_data_root
from .calibration import calibration_batches
from .datasets import Dataset, Split, load_dataset
from .loader import AUGMENTS, DeviceLoader
from .sources import DATASETS, DataSource, dataset_names, find_dataset

__all__ = [
    "AUGMENTS",
    "DATASETS",
    "DataSource",
    "Dataset",
    "DeviceLoader",
    "Split",
    "cache_dir",
    "calibration_batches",
    "data_home",
    "dataset_names",
    "default_data_root",
    "find_dataset",
    "load_dataset",
]
