"""One-shot weight-sharing search of build spaces: the supernet of a space (Once-for-All, Cai et
al. 2020; BigNAS, Yu et al. 2020; SPOS, Guo et al. 2020), its subnets extracted as plain models,
sandwich-rule training with in-place distillation, and BatchNorm recalibration of a subnet."""

from __future__ import annotations

from .calibration import inherited_subnet
from .checkpoint import MANIFEST, load_supernet, read_checkpoint
from .sharing import SHARING, Sharing, weight_key
from .space import StageOptions, SupernetSpace
from .supernet import Supernet, extract
from .training import train_supernet

__all__ = [
    "MANIFEST",
    "SHARING",
    "Sharing",
    "StageOptions",
    "Supernet",
    "SupernetSpace",
    "extract",
    "inherited_subnet",
    "load_supernet",
    "read_checkpoint",
    "train_supernet",
    "weight_key",
]
