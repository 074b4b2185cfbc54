"""Calibration plumbing shared by :func:`~nas_sepconv.conversion.refit`,
:func:`~nas_sepconv.conversion.fidelity` and :func:`~nas_sepconv.conversion.sensitivity`.

``batches``: an iterable of input tensors, or of tuples/lists whose first element is the input
(what a ``DataLoader`` yields), or of dicts of keyword inputs.  It is materialised as a list
(it is read once per site).  Models run in eval mode (BatchNorm with its running statistics;
modes are restored afterwards).

Sites are the plan's converted entries whose name is a module of the original model; sites of
functional ``F.convNd`` calls get a row of NaNs (no module to observe).
"""

from __future__ import annotations

import copy
from collections import abc
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..blocks import CONV_TYPES, BlockSpec, as_spec
from ..errors import UserInputError
from ..measure.inputs import model_device
from .plan import META_KEY

__all__ = [
    "CalibrationSite",
    "StopForward",
    "batch_list",
    "calibration_sites",
    "forward_order",
    "has_forward",
    "last_linear_layer",
    "on_device",
    "resolve_device",
    "run_batch",
    "run_hooked",
]


class StopForward(Exception):
    """Raised from a hook to end a forward pass once the site of interest has run."""


@dataclass
class CalibrationSite:
    """A site as refit, fidelity and sensitivity observe it: its name, the spec that replaced it,
    the conv in the original model, the block in the converted one, and its calls per forward."""

    name: str
    spec: BlockSpec | None  # None: a layer the plan left as it was (refit with layers="all")
    original: nn.Module | None  # the conv in the original model
    block: nn.Module | None  # the block in the converted model
    calls: int = 0  # calls per forward pass
    channels: tuple[int, ...] | None = None  # the original's output channels the block keeps (pruning)


# -- plumbing --------------------------------------------------------------------------------


def _plan_entries(converted: nn.Module, plan: Any) -> list:
    if plan is None:
        meta = getattr(converted, "meta", None)
        plan = meta.get(META_KEY) if isinstance(meta, dict) else None
        if plan is None:
            raise UserInputError(
                "plan", "the converted model carries no plan", "pass plan= (the Plan that apply_plan was given)"
            )
    entries = getattr(plan, "entries", None)
    if entries is None:
        raise UserInputError("plan", f"expected a Plan with .entries, got {type(plan).__name__}", "use ns.make_plan")
    return list(entries)


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _kept_outputs(entry: Any, conv: nn.Module | None) -> tuple[int, ...] | None:
    """The output channels of the original ``conv`` that a producer narrowed by pruning keeps."""
    if conv is None or not hasattr(conv, "out_channels"):
        return None
    return tuple(i for i in range(conv.out_channels) if i not in set(entry.pruned_outputs))


def calibration_sites(
    converted: nn.Module, original: nn.Module, plan: Any, *, unconverted: bool = False, pruned: bool = False
) -> list[CalibrationSite]:
    """The plan's converted sites, with ``pruned`` its pruned ones too (``prune``: the narrowed
    conv, re-solved like an unconverted layer); with ``unconverted``, also every conv and linear layer of
    the original model that the converted model still has, unchanged in type, at the same name."""
    sites, taken = [], set()
    entries = _plan_entries(converted, plan)
    kept = {e.name: _kept_outputs(e, _submodule(original, e.name)) for e in entries if getattr(e, "pruned_outputs", ())}
    for entry in entries:
        if pruned and getattr(entry, "prune", "") and entry.spec is None:
            conv, twin = _submodule(original, entry.name), _submodule(converted, entry.name)
            sites.append(CalibrationSite(entry.name, None, conv, twin, channels=kept.get(entry.name)))
            taken.add(entry.name)
            continue
        if entry.spec is None or not getattr(entry, "converted", True):
            continue
        conv = _submodule(original, entry.name)
        block = _submodule(converted, entry.name)
        if not isinstance(conv, CONV_TYPES) or getattr(entry, "source", "module") != "module":
            conv = block = None
        sites.append(CalibrationSite(entry.name, as_spec(entry.spec), conv, block, channels=kept.get(entry.name)))
        taken.add(entry.name)
    if unconverted:
        for name, layer in original.named_modules():
            if name in taken or not isinstance(layer, (*CONV_TYPES, nn.Linear)) or getattr(layer, "transposed", False):
                continue
            twin = _submodule(converted, name)
            if type(twin) is type(layer):
                sites.append(CalibrationSite(name, None, layer, twin, channels=kept.get(name)))
    return sites


def _is_batch(batch: Any) -> bool:
    """An input tensor, a tuple/list whose first element is one, or a dict of keyword inputs."""
    if isinstance(batch, torch.Tensor):
        return True
    if isinstance(batch, (tuple, list)):
        return bool(batch) and isinstance(batch[0], torch.Tensor)
    return isinstance(batch, dict) and any(isinstance(v, torch.Tensor) for v in batch.values())


def batch_list(batches: Iterable[Any], device: torch.device) -> list[Any]:
    fix = "pass an iterable of input tensors, (x, y) tuples or dicts of tensors (or a DataLoader)"
    if isinstance(batches, (str, bytes)) or not isinstance(batches, abc.Iterable):
        raise UserInputError("batches", f"expected calibration batches, got {type(batches).__name__}", fix)
    out = list(batches)
    if not out:
        raise UserInputError("batches", "no calibration batches", fix)
    for i, batch in enumerate(out):
        if not _is_batch(batch):
            raise UserInputError("batches", f"item {i} is a {type(batch).__name__}, not an input tensor", fix)
    return [_to(b, device) for b in out]


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def run_batch(model: nn.Module, batch: Any) -> Any:
    """One forward pass on a batch (a tensor, ``(x, y)`` or keyword inputs); returns the output,
    or None when a hook ended the pass early by raising :class:`StopForward`."""
    try:
        if isinstance(batch, dict):
            return model(**batch)
        if isinstance(batch, (tuple, list)):
            return model(batch[0])
        return model(batch)
    except StopForward:
        return None


def run_hooked(model: nn.Module, batch: Any, handles: list) -> Any:
    """:func:`run_batch` with the hooks whose ``handles`` are given, removed afterwards."""
    try:
        return run_batch(model, batch)
    finally:
        for h in handles:
            h.remove()


def resolve_device(model: nn.Module, device: Any) -> torch.device:
    return torch.device(device) if device is not None else model_device(model)


def on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` if it already lives on ``device``, else a copy there (the user's model is not moved)."""
    if all(t.device == device for t in [*model.parameters(), *model.buffers()]):
        return model
    return copy.deepcopy(model).to(device)


def forward_order(original: nn.Module, sites: list[CalibrationSite], batch: Any) -> list[CalibrationSite]:
    """The sites in the order the original convolutions first run, with their call counts;
    sites that do not run (or have no module) go last with ``calls == 0``."""
    seen: list[str] = []
    counts: dict[str, int] = {}

    def hook(name: str):
        def fn(module, args, output):
            counts[name] = counts.get(name, 0) + 1
            if name not in seen:
                seen.append(name)

        return fn

    run_hooked(
        original, batch, [s.original.register_forward_hook(hook(s.name)) for s in sites if s.original is not None]
    )
    for s in sites:
        s.calls = counts.get(s.name, 0) if s.block is not None else 0
    rank = {name: i for i, name in enumerate(seen)}
    return sorted(sites, key=lambda s: rank.get(s.name, len(rank)) if s.calls else len(rank))


def has_forward(module: nn.Module) -> bool:
    """False for the plain containers torch.fx leaves when it inlines a block."""
    return type(module).forward is not nn.Module.forward


def last_linear_layer(site: CalibrationSite) -> nn.Module:
    path = "" if site.spec is None else site.spec.info.last_linear
    return site.block if path == "" else site.block.get_submodule(path)
