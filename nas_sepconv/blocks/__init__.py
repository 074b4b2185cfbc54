"""What a replacement block is: its geometry, its modules, the kind table KINDS, BlockSpec, and
the closed-form initialisers that fill it from the original weights."""

from __future__ import annotations

from .closed_form import (
    dense_weight,
    effective_weight,
    init_dwsep,
    init_grouped,
    init_keep,
    init_spatial,
    initialise,
    resize_kernel,
)
from .closed_form_joint import DWSEP, JointRefit, refit_dwsep
from .closed_form_stacked import init_dw_spatial, init_inverted_residual
from .geometry import CONV_TYPES, ConvGeometry
from .kinds import KINDS, Kind, Option, kind_names, resolve_rank
from .modules import (
    ACTIVATIONS,
    ChannelShuffle,
    DepthwiseSeparable,
    DepthwiseSpatial,
    GroupedShuffle,
    InvertedResidual,
    SpatialSeparable,
    SqueezeExcite,
    conv_from_geometry,
    make_act,
)
from .spec import BlockSpec, as_spec

__all__ = [
    "ACTIVATIONS",
    "BlockSpec",
    "CONV_TYPES",
    "ChannelShuffle",
    "ConvGeometry",
    "DWSEP",
    "DepthwiseSeparable",
    "DepthwiseSpatial",
    "GroupedShuffle",
    "InvertedResidual",
    "JointRefit",
    "KINDS",
    "Kind",
    "Option",
    "SpatialSeparable",
    "SqueezeExcite",
    "as_spec",
    "conv_from_geometry",
    "dense_weight",
    "effective_weight",
    "init_dw_spatial",
    "init_dwsep",
    "init_grouped",
    "init_inverted_residual",
    "init_keep",
    "init_spatial",
    "initialise",
    "kind_names",
    "make_act",
    "refit_dwsep",
    "resize_kernel",
    "resolve_rank",
]
