"""The weight-sharing supernet of a build space: :class:`Supernet`, and :func:`extract`, a
subnet as a plain model.

The supernet holds the largest value of every searched dimension (Once-for-All, Cai et al.,
ICLR 2020; BigNAS, Yu et al., ECCV 2020) and one weight set per choice that cannot share
(single-path one-shot, Guo et al., ECCV 2020); :mod:`.sharing` says which is which.  A subnet
runs as the very network :func:`~nas_sepconv.models.build_network` builds for its
:class:`~nas_sepconv.models.Arch` (a template on the meta device, cached), its tensors cut out
of the supernet's (:func:`~.sharing.slice_to`, views, so that gradients and BatchNorm updates
reach the shared weights) and passed in with ``torch.func.functional_call``.  So a subnet run
in the supernet and the same subnet extracted give the same outputs by construction.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from ..blocks import ConvGeometry
from ..errors import UserInputError
from ..models import HEADS, Arch, build_network
from ..models.network import conv_bn_act
from .sharing import largest_spec, slice_to, weight_key
from .space import SupernetSpace

__all__ = ["Supernet", "extract", "resize"]

_TEMPLATES = 64  # subnet templates kept (meta-device modules: no memory for weights)
_FIXED = ("stem_channels", "stem_stride", "head_channels", "num_classes", "in_channels")


def resize(x: Tensor, side: int | tuple[int, int] | None) -> Tensor:
    """``x`` at input side ``side`` (height; the width scaled alike), bilinear without
    antialiasing: what the data loader does for a trial's ``resolution_mult``."""
    if side is None:
        return x
    height = side if isinstance(side, int) else side[0]
    if x.shape[-2] == height:
        return x
    width = max(1, round(x.shape[-1] * height / x.shape[-2]))
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=False)


class _Choice(nn.Module):
    """One weight set of a layer slot: the block and the norm after it."""

    def __init__(self, block: nn.Module, channels: int):
        super().__init__()
        self.block = block
        self.norm = nn.BatchNorm2d(channels)


def _pool_key(head: str, feature_size: tuple[int, int] | None) -> str:
    """A head's weight set: one per head, and per final map size where the head is sized from it."""
    if not HEADS[head].needs_input_size or feature_size is None:
        return head
    return f"{head}_{feature_size[0]}x{feature_size[1]}"


class Supernet(nn.Module):
    """The weight-sharing network of a :class:`SupernetSpace`.

    ``supernet(x, arch)`` runs the subnet of ``arch`` (an :class:`Arch` drawn from the space)
    on ``x``, resized to ``arch.input_size``; :meth:`set_active` fixes the arch that a call
    without one runs.  Module names: ``stem``, ``stages.<i>.<j>.<weight key>.block|norm`` (slot
    ``j`` of stage ``i``: layer ``j`` of every depth), ``head``, ``pools.<head key>``,
    ``classifier``."""

    def __init__(self, space: SupernetSpace):
        super().__init__()
        self.space = space
        wide = space.largest()  # the widest and deepest
        cin = wide.channels(space.stem_channels)
        self.stem = conv_bn_act(space.in_channels, cin, 3, space.stem_stride, space.acts[0])
        stages = []
        for stage, built in zip(space.stages, wide.stages):
            cout = wide.channels(stage.out_channels)
            slots = []
            for j in range(wide.repeats(built)):
                slots.append(self._slot(stage.specs, cin, cout, stage.stride if j == 0 else 1))
                cin = cout
            stages.append(nn.ModuleList(slots))
        self.stages = nn.ModuleList(stages)
        if space.head_channels > 0:
            head = wide.channels(space.head_channels)
            self.head = conv_bn_act(cin, head, 1, 1, space.acts[0])
            cin = head
        else:
            self.head = nn.Identity()
        sizes = {wide.replace(input_size=r).feature_size() for r in space.resolutions}
        pools = {_pool_key(h, s): HEADS[h].build(cin, s) for h in space.heads for s in sorted(sizes)}
        self.pools = nn.ModuleDict(pools)
        self.classifier = nn.Linear(cin, space.num_classes)
        self._templates: dict[Arch, nn.Module] = {}
        self._active: Arch | None = None

    @staticmethod
    def _slot(specs: tuple, cin: int, cout: int, stride: int) -> nn.ModuleDict:
        """The weight sets of one layer slot: one block per weight key, at its largest."""
        g = ConvGeometry.conv3x3(cin, cout, stride)
        groups: dict[str, list] = {}
        for spec in specs:
            groups.setdefault(weight_key(spec), []).append(spec)
        return nn.ModuleDict({key: _Choice(largest_spec(group, g).build(g), cout) for key, group in groups.items()})

    # -- running a subnet -------------------------------------------------------------------
    def set_active(self, arch: Arch) -> None:
        """The arch that ``supernet(x)`` runs."""
        self._check(arch)
        self._active = arch

    def forward(self, x: Tensor, arch: Arch | None = None) -> Tensor:
        arch = arch if arch is not None else self._active
        if arch is None:
            raise UserInputError("arch", "no subnet to run", "pass supernet(x, arch) or call set_active(arch)")
        net = self.template(arch)
        net.train(self.training)
        return functional_call(net, self.subnet_tensors(arch, net), (resize(x, arch.input_size),))

    def template(self, arch: Arch) -> nn.Module:
        """The network of ``arch`` on the meta device (no weights: they come from the supernet)."""
        net = self._templates.get(arch)
        if net is None:
            self._check(arch)
            with torch.device("meta"):
                net = build_network(arch)
            if len(self._templates) >= _TEMPLATES:
                self._templates.pop(next(iter(self._templates)))
            self._templates[arch] = net
        return net

    def subnet_tensors(self, arch: Arch, net: nn.Module) -> dict[str, Tensor]:
        """Every parameter and buffer of ``net`` (the network of ``arch``), cut out of the supernet's."""
        sources = dict(itertools.chain(self.named_parameters(), self.named_buffers()))
        out = {}
        for name, tensor in itertools.chain(net.named_parameters(), net.named_buffers()):
            source = sources.get(self._source_name(arch, name))
            if source is None:
                raise UserInputError(
                    "arch",
                    f"the supernet holds no weights for {name} of {arch.summary()}",
                    "draw the arch from its space",
                )
            out[name] = slice_to(source, tuple(tensor.shape), name)
        return out

    def _source_name(self, arch: Arch, name: str) -> str:
        part, _, rest = name.partition(".")
        if part == "stages":
            i, j, inner = rest.split(".", 2)
            return f"stages.{i}.{j}.{weight_key(arch.stages[int(i)].spec)}.{inner}"
        if part == "pool":
            return f"pools.{_pool_key(arch.head, arch.feature_size())}.{rest}"
        return name

    def _check(self, arch: Arch) -> None:
        if not isinstance(arch, Arch):
            raise UserInputError("arch", f"expected an Arch, got {type(arch).__name__}", "draw one from the space")
        for field in _FIXED:
            if getattr(arch, field) != getattr(self.space, field):
                problem = f"{field} is {getattr(arch, field)}, the supernet's is {getattr(self.space, field)}"
                raise UserInputError(f"arch.{field}", problem, "draw the arch from the supernet's space")
        if len(arch.stages) != len(self.space.stages):
            problem = f"has {len(arch.stages)} stages, the supernet {len(self.space.stages)}"
            raise UserInputError("arch.stages", problem, "draw the arch from the supernet's space")


@torch.no_grad()
def extract(supernet: Supernet, arch: Arch) -> nn.Module:
    """The subnet of ``arch`` as a plain model: the network of
    :func:`~nas_sepconv.models.build_network`, its weights and BatchNorm statistics copied out
    of the supernet, on the supernet's device, in eval mode.  Nothing of the supernet stays in
    it: save, export, profile and load it like any other built network."""
    net = build_network(arch)
    tensors = supernet.subnet_tensors(arch, supernet.template(arch))
    net.load_state_dict({name: t.detach().clone() for name, t in tensors.items()})
    device = next(supernet.parameters()).device
    return net.to(device).eval()
