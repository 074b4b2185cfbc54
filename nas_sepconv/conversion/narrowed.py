"""A conv site as channel pruning leaves it: the entry a latency table times for a prune candidate.

Pruning a site's input channels (:mod:`.channel_pruning`) narrows two convolutions, the site's
input and its producer's output, so their time is that of other geometries than the model's:
a :class:`NarrowedSite` names one of them (its conv or a block, at the narrowed geometry and
input shape) as a :class:`~.latency.LatencyTable` entry of the site, beside its blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..blocks import BlockSpec, ConvGeometry, as_spec, conv_from_geometry
from ..measure import count_macs
from .channel_pruning import PruneSpec, is_prune_spec

__all__ = ["KEEP", "NarrowedSite", "table_spec"]

#: the choice of a site that keeps its original conv (a rule of ``None``): a latency table's
#: spec of the conv itself, a convert supernet's choice of it
KEEP = "keep"


@dataclass(frozen=True)
class NarrowedSite:
    """A site's conv (``spec`` None) or block at the narrowed ``geometry`` and ``input_shape``;
    its string form (``keep@16-8``: in and out channels) keys the table and its cache."""

    spec: BlockSpec | None
    geometry: ConvGeometry
    input_shape: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.spec or KEEP}@{self.geometry.in_channels}-{self.geometry.out_channels}"

    def build(self, geometry: ConvGeometry | None = None) -> nn.Module:
        """The narrowed module (``geometry``, the site's own, is not used)."""
        return conv_from_geometry(self.geometry) if self.spec is None else self.spec.build(self.geometry)

    def macs(self) -> int:
        """MACs of one call (counted on the meta device)."""
        with torch.device("meta"):
            return count_macs(self.build(), torch.empty(self.input_shape))


def table_spec(spec: Any) -> BlockSpec | NarrowedSite | PruneSpec | None:
    """A latency table entry's spec: None for the conv itself (``None`` or ``"keep"``), a
    :class:`NarrowedSite` as it is, a prune spec (``prune_r<keep>``: its site and producer
    pruned), else the block spec ``spec`` names."""
    if spec is None or (isinstance(spec, str) and spec == KEEP):
        return None
    if is_prune_spec(spec):
        return PruneSpec.parse(spec)
    return spec if isinstance(spec, NarrowedSite) else as_spec(spec)
