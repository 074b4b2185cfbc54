"""One-shot weight-sharing search: the supernet of a build space (Once-for-All, Cai et al. 2020;
BigNAS, Yu et al. 2020; SPOS, Guo et al. 2020), its subnets extracted as plain models,
sandwich-rule training with in-place distillation, and BatchNorm recalibration of a subnet; and
the supernet of a convert space (a trained model with every site's candidate blocks, single-path
training distilled from the original: :mod:`.convert_supernet`, :mod:`.convert_training`)."""

from __future__ import annotations

from .calibration import inherited_subnet
from .checkpoint import MANIFEST, load_supernet, read_checkpoint
from .convert_supernet import KEEP, ConvertSupernet, SiteChoices, convert_supernet, extract_converted, site_policy
from .convert_training import ConvertPaths, train_convert_supernet
from .sharing import SHARING, Sharing, weight_key
from .space import StageOptions, SupernetSpace
from .supernet import Supernet, extract
from .training import SAMPLINGS, train_supernet

__all__ = [
    "KEEP",
    "ConvertPaths",
    "ConvertSupernet",
    "SiteChoices",
    "convert_supernet",
    "extract_converted",
    "site_policy",
    "train_convert_supernet",
    "MANIFEST",
    "SAMPLINGS",
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
