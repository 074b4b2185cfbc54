"""Block modules that replace a standard convolution.

Every block is built from the :class:`~nas_sepconv.geometry.ConvGeometry` of the convolution it
replaces and reproduces that convolution's output shape for every input size: the part that
touches space carries stride, padding (ints, tuples, ``'same'``, ``'valid'``), dilation and
padding_mode; the bias goes on the last linear part.  Optional parts are ``nn.Identity`` so each
``forward`` is a straight line, and sub-layers are named by role (timm style): ``conv_dw``,
``conv_pw``, ``conv_pwl``, ``conv_v``, ``conv_h``.

Which block belongs to which kind name, and its options, is declared once in
:mod:`nas_sepconv.specs`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .geometry import ConvGeometry

__all__ = [
    "make_act",
    "conv_from_geometry",
    "DepthwiseSeparable",
    "SpatialSeparable",
    "DepthwiseSpatial",
    "InvertedResidual",
    "GroupedShuffle",
    "SqueezeExcite",
    "ChannelShuffle",
    "ACTIVATIONS",
]

ACTIVATIONS = {
    "none": nn.Identity,
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hswish": nn.Hardswish,
}

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def make_act(name: str | None) -> nn.Module:
    """Activation module by name (``None`` and ``'none'`` give ``nn.Identity``)."""
    if name is None:
        return nn.Identity()
    if name not in ACTIVATIONS:
        raise ValueError(f"act={name!r} is not known; use one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]() if name == "none" else ACTIVATIONS[name](inplace=True)


def _norm(dims: int, channels: int, enabled: bool) -> nn.Module:
    return _NORM[dims](channels) if enabled else nn.Identity()


def _pointwise(dims: int, cin: int, cout: int, *, groups: int = 1, bias: bool = False) -> nn.Module:
    return _CONV[dims](cin, cout, 1, groups=groups, bias=bias)


def _spatial_args(g: ConvGeometry, axes: tuple[int, ...] | None = None) -> dict:
    """Keyword arguments of the part that touches space; ``axes`` limits it to some dimensions
    (kernel 1, stride 1, padding 0, dilation 1 on the others)."""

    def pick(values: tuple[int, ...], neutral: int) -> tuple[int, ...]:
        return tuple(v if axes is None or i in axes else neutral for i, v in enumerate(values))

    padding = g.padding if isinstance(g.padding, str) else pick(g.padding, 0)
    args = dict(
        kernel_size=pick(g.kernel_size, 1),
        stride=pick(g.stride, 1),
        padding=padding,
        dilation=pick(g.dilation, 1),
    )
    if g.transposed:
        args["output_padding"] = pick(g.output_padding, 0)
    else:
        args["padding_mode"] = g.padding_mode
    return args


def conv_from_geometry(g: ConvGeometry) -> nn.Module:
    """A plain convolution with exactly this geometry (the ``keep`` kind)."""
    cls = (_CONV_T if g.transposed else _CONV)[g.dims]
    args = _spatial_args(g)
    if g.transposed:
        return cls(g.in_channels, g.out_channels, groups=g.groups, bias=g.bias, **args)
    return cls(g.in_channels, g.out_channels, groups=g.groups, bias=g.bias, **args)


class DepthwiseSeparable(nn.Module):
    """Depthwise K×K convolution then pointwise 1×1 convolution.

    Howard et al., "MobileNets" (arXiv:1704.04861), and Chollet, "Xception" (CVPR 2017), who
    found the block works best with no non-linearity between the two parts; so ``mid_norm`` and
    ``mid_act`` are off by default and at full rank (``dw_mult >= min(C_out, K^2)``) the block
    can equal the replaced convolution exactly.  ``dw_mult`` is Keras' ``depth_multiplier``:
    each input channel gets that many depthwise filters.  A grouped source convolution keeps its
    groups on the pointwise part; a transposed source gives a depthwise *transposed* convolution
    (a separable decoder layer).
    """

    def __init__(self, g: ConvGeometry, *, dw_mult: int = 1, mid_norm: bool = False, mid_act: str | None = None):
        super().__init__()
        mid = g.in_channels * dw_mult
        cls = (_CONV_T if g.transposed else _CONV)[g.dims]
        self.conv_dw = cls(g.in_channels, mid, groups=g.in_channels, bias=False, **_spatial_args(g))
        self.norm_dw = _norm(g.dims, mid, mid_norm)
        self.act_dw = make_act(mid_act)
        self.conv_pw = _pointwise(g.dims, mid, g.out_channels, groups=g.groups, bias=g.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_pw(self.act_dw(self.norm_dw(self.conv_dw(x))))


class SpatialSeparable(nn.Module):
    """K×1 convolution to ``rank`` channels, then 1×K convolution to the output channels.

    Jaderberg, Vedaldi & Zisserman, "Speeding up Convolutional Neural Networks with Low Rank
    Expansions" (BMVC 2014), with the closed-form decomposition of Tai et al., "Convolutional
    neural networks with low-rank regularization" (ICLR 2016).  Exact at
    ``rank = min(C_in·Kh, C_out·Kw)`` (per group).  2-D only.
    """

    def __init__(self, g: ConvGeometry, *, rank: int):
        super().__init__()
        self.conv_v = nn.Conv2d(g.in_channels, rank, groups=g.groups, bias=False, **_spatial_args(g, (0,)))
        self.conv_h = nn.Conv2d(rank, g.out_channels, groups=g.groups, bias=g.bias, **_spatial_args(g, (1,)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_h(self.conv_v(x))


class DepthwiseSpatial(nn.Module):
    """Depthwise K×1, depthwise 1×K, then pointwise 1×1: a factorised depthwise-separable block.

    The depthwise kernel factorisation of EffNet (Freeman et al., arXiv:1801.06434) and of the
    "Flattened" networks (Jin et al., arXiv:1412.5474).  2-D only.
    """

    def __init__(self, g: ConvGeometry, *, dw_mult: int = 1):
        super().__init__()
        mid = g.in_channels * dw_mult
        self.conv_dwv = nn.Conv2d(g.in_channels, mid, groups=g.in_channels, bias=False, **_spatial_args(g, (0,)))
        self.conv_dwh = nn.Conv2d(mid, mid, groups=mid, bias=False, **_spatial_args(g, (1,)))
        self.conv_pw = nn.Conv2d(mid, g.out_channels, 1, groups=g.groups, bias=g.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_pw(self.conv_dwh(self.conv_dwv(x)))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation with a hard-sigmoid gate (Hu et al., CVPR 2018; MobileNetV3)."""

    def __init__(self, channels: int, reduced: int, *, dims: int = 2):
        super().__init__()
        self.dims = dims
        self.conv_reduce = _CONV[dims](channels, reduced, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.conv_expand = _CONV[dims](reduced, channels, 1, bias=True)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=tuple(range(2, 2 + self.dims)), keepdim=True)
        return x * self.gate(self.conv_expand(self.act(self.conv_reduce(s))))


class InvertedResidual(nn.Module):
    """Pointwise expansion, depthwise K×K, optional squeeze-excite, pointwise linear projection.

    Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks" (CVPR 2018) and
    Howard et al., "Searching for MobileNetV3" (ICCV 2019) for SE and h-swish.  The block maps
    C_in to C_out like the convolution it replaces; the identity shortcut of MobileNetV2 belongs
    to the network (``models.py`` adds it when shapes allow), not to the block.  With
    ``expand_ratio == 1`` there is no expansion convolution.  ``se_ratio`` is the squeeze
    width as a fraction of the expanded channels (MobileNetV3's 1/4).
    """

    def __init__(
        self,
        g: ConvGeometry,
        *,
        expand_ratio: float = 6,
        se_ratio: float = 0.0,
        act: str = "relu6",
        mid_norm: bool = True,
    ):
        super().__init__()
        mid = max(1, round(g.in_channels * expand_ratio))
        d = g.dims
        if expand_ratio == 1:
            mid = g.in_channels
            self.conv_pw, self.norm_pw, self.act_pw = nn.Identity(), nn.Identity(), nn.Identity()
        else:
            self.conv_pw = _pointwise(d, g.in_channels, mid)
            self.norm_pw = _norm(d, mid, mid_norm)
            self.act_pw = make_act(act)
        self.conv_dw = _CONV[d](mid, mid, groups=mid, bias=False, **_spatial_args(g))
        self.norm_dw = _norm(d, mid, mid_norm)
        self.act_dw = make_act(act)
        self.se = SqueezeExcite(mid, max(1, round(mid * se_ratio)), dims=d) if se_ratio > 0 else nn.Identity()
        self.conv_pwl = _pointwise(d, mid, g.out_channels, bias=g.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_pw(self.norm_pw(self.conv_pw(x)))
        x = self.act_dw(self.norm_dw(self.conv_dw(x)))
        return self.conv_pwl(self.se(x))


class ChannelShuffle(nn.Module):
    """Channel shuffle of ShuffleNet (Zhang et al., CVPR 2018)."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(1, (self.groups, -1)).transpose(1, 2).flatten(1, 2)


class GroupedShuffle(nn.Module):
    """Channel shuffle followed by a grouped convolution (ShuffleNet, Zhang et al., CVPR 2018;
    grouped convolutions as in ResNeXt, Xie et al., CVPR 2017).  ``groups`` is the total number
    of groups of the new convolution; it must divide C_in and C_out.  The shuffle comes first so
    that the convolution is the block's last linear part (what refit re-solves) and stacked
    grouped layers still mix information across groups."""

    def __init__(self, g: ConvGeometry, *, groups: int):
        super().__init__()
        self.shuffle = ChannelShuffle(groups)
        self.conv = _CONV[g.dims](g.in_channels, g.out_channels, groups=groups, bias=g.bias, **_spatial_args(g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.shuffle(x))
