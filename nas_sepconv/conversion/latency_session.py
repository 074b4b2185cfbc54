"""One measuring session of a latency table: each conv site in the context of its neighbours,
each candidate block in the same context, the whole model and a few converted models, all timed
in the same interleaved rounds, and kept on disk together.

Kernel-level prediction after nn-Meter (L. L. Zhang, S. Han, J. Wei, N. Zheng, T. Cao, Y. Yang,
Y. Liu, "nn-Meter: Towards Accurate Latency Prediction of Deep-Learning Model Inference on
Diverse Edge Devices", MobiSys 2021): a runtime does not run a model op by op but in fused
kernels, and ONNX Runtime (like most inference back ends) folds a convolution, the BatchNorm that
follows it and its activation into one kernel.  So a site is timed as the runtime will run it:
its conv **with the BatchNorm and activation that follow it in the model** (found by tracing),
and each candidate block with the same BatchNorm and activation after it, so that an entry's
saving is what the model sees.  A site whose neighbours cannot be found (an untraceable model,
a conv whose output is used twice) is timed alone.

A table's entries and the whole-model time it is compared with come from one session: the cache
holds them in one record per model (:func:`model_key`: its structure, parameter shapes and
input shapes), and a table either reuses that whole record or times everything afresh, never a
mix of an earlier run's entries and a new whole-model time.  Entries a table lacks and measures
later (:meth:`~.latency.LatencyTable.ensure`: a block it was not built with, a prune candidate's
narrowed layers) are timed beside their site's conv, rescaled to the session by the ratio of the
record's conv time to the one timed now, and added to the record: a table read from it later
reports them as ``cache`` like the rest.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..blocks import CONV_TYPES, BlockSpec, conv_from_geometry
from ..errors import UserInputError
from ..measure import (
    LatencyCache,
    Runtime,
    check_repeats,
    check_threads,
    find_runtime,
    latency_context,
    prepare_forward,
    summarise,
    time_rounds,
    torch_threads,
    valid_record,
)
from ..progress import progress as progress_bar
from ..progress import track
from .narrowed import KEEP, NarrowedSite
from .plan import Plan, PlanEntry
from .rewrite import apply_plan
from .sites import trace

__all__ = [
    "ACTIVATIONS",
    "LatencySettings",
    "measure_session",
    "model_key",
    "op_key",
    "session_record",
    "site_module",
    "site_tails",
    "time_modules",
    "valid_session",
]

#: activations a runtime fuses into the conv before them: module classes, and the functions
#: and tensor methods that compute the same, by the module class that stands in for them
ACTIVATIONS: dict[Any, type[nn.Module]] = {
    nn.ReLU: nn.ReLU,
    nn.ReLU6: nn.ReLU6,
    nn.SiLU: nn.SiLU,
    nn.Hardswish: nn.Hardswish,
    nn.GELU: nn.GELU,
    torch.relu: nn.ReLU,
    F.relu: nn.ReLU,
    F.relu6: nn.ReLU6,
    F.silu: nn.SiLU,
    F.hardswish: nn.Hardswish,
    F.gelu: nn.GELU,
    "relu": nn.ReLU,
}
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _layer(node: Any, modules: dict[str, nn.Module]) -> tuple[str, type[nn.Module]] | None:
    """("norm" | "act", the module class) of one traced node, or None."""
    if node.op == "call_module":
        module = modules.get(node.target)
        if isinstance(module, _NORMS):
            return "norm", type(module)
        cls = ACTIVATIONS.get(type(module))
        return ("act", cls) if cls is not None else None
    if node.op in ("call_function", "call_method"):
        try:
            cls = ACTIVATIONS.get(node.target)
        except TypeError:  # an unhashable target
            return None
        return ("act", cls) if cls is not None else None
    return None


def site_tails(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Per conv module (by name): the class names of the BatchNorm and activation that follow
    it in ``model`` (the conv's only user, then that one's), e.g. ``("BatchNorm2d", "ReLU")``.
    Empty for a model torch.fx cannot trace."""
    try:
        gm = trace(model)
    except Exception:  # noqa: BLE001 - an untraceable model: every site is timed alone
        return {}
    modules = dict(gm.named_modules())
    tails = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), CONV_TYPES):
            continue
        chain: list[str] = []
        current = node
        for wanted in ("norm", "act"):
            if len(current.users) != 1:
                break
            (user,) = current.users
            layer = _layer(user, modules)
            if layer is None or (layer[0] == "norm" and wanted == "act"):
                break
            chain.append(layer[1].__name__)
            current = user
            if layer[0] == "act":
                break
        tails[str(node.target)] = tuple(chain)
    return tails


def site_module(entry: PlanEntry, spec: BlockSpec | None, tail: Sequence[str] = ()) -> nn.Module:
    """The conv of ``entry`` (``spec`` None) or ``spec``'s block at its geometry, followed by
    fresh layers of the classes ``tail`` names (a norm gets the conv's output channels), in
    eval mode, on the CPU."""
    geometry = spec.geometry if isinstance(spec, NarrowedSite) else entry.geometry  # (a prune candidate's)
    with torch.device("cpu"):
        op = conv_from_geometry(entry.geometry) if spec is None else spec.build(entry.geometry)
        layers = [op]
        for name in tail:
            cls = getattr(nn, name)
            layers.append(cls(geometry.out_channels) if issubclass(cls, _NORMS) else cls())
    return (nn.Sequential(*layers) if len(layers) > 1 else op).eval()


def op_key(
    entry: PlanEntry,
    spec: Any,
    tail: Sequence[str] = (),
    *,
    producer: tuple[PlanEntry, Sequence[str]] | None = None,
) -> str:
    """The key of one entry in a session record: geometry, input shape, block, the layers after
    it; a prune entry's also its ``producer`` site's (its entry and tail), whose time it counts."""
    op: dict[str, Any] = {
        "geometry": entry.geometry.to_dict(),
        "input_shape": list(entry.input_shape),
        "block": KEEP if spec is None else str(spec),
        "tail": list(tail),
    }
    if producer is not None:
        op["producer"] = {
            "geometry": producer[0].geometry.to_dict(),
            "input_shape": list(producer[0].input_shape),
            "tail": list(producer[1]),
        }
    return json.dumps(op, sort_keys=True, separators=(",", ":"))


def model_key(model: nn.Module, inputs: Sequence[Any]) -> dict[str, Any]:
    """What names one model's session in the cache: a digest of its class, its printed
    structure and its parameter shapes, and the example inputs' shapes."""
    text = "\n".join(
        [type(model).__qualname__, repr(model)] + [f"{n} {tuple(p.shape)}" for n, p in model.named_parameters()]
    )
    shapes = [list(t.shape) if isinstance(t, torch.Tensor) else repr(t) for t in inputs]
    return {"session": hashlib.sha1(text.encode()).hexdigest()[:20], "input_shapes": shapes}


def valid_session(record: Any) -> bool:
    """A session record as :func:`time_modules`' callers store it: a valid whole-model record
    whose entries and calibration records are valid too."""
    if not valid_record(record) or not isinstance(record.get("entries"), dict):
        return False
    calibration = record.get("calibration", [])
    return (
        all(valid_record(r) for r in record["entries"].values())
        and isinstance(calibration, list)
        and all(valid_record(r) and isinstance(r.get("sites"), list) for r in calibration)
    )


@dataclass(frozen=True)
class LatencySettings:
    """How a latency table measures: the runtime's record (:data:`~nas_sepconv.measure.RUNTIMES`),
    intra-op ``threads``, ``device``, ``dtype``, ``repeats`` rounds after ``warmup``, the cache
    folder (``None``: :func:`~nas_sepconv.measure.latency_cache_dir`).  Made once, from
    :func:`~nas_sepconv.conversion.latency_table`'s arguments (:meth:`checked`), and passed
    below as it is."""

    runtime: Runtime
    threads: int
    device: torch.device
    dtype: torch.dtype
    repeats: int
    warmup: int
    cache_dir: str | os.PathLike | None

    def context(self) -> dict[str, Any]:
        """What figures measured with these settings depend on
        (:func:`~nas_sepconv.measure.latency_context`): a latency cache file's key."""
        rt = self.runtime
        return latency_context(
            device=self.device,
            threads=self.threads,
            runtime=rt.name,
            runtime_version=rt.version(),
            dtype=self.dtype,
            memory_format=rt.memory_format,
        )

    @classmethod
    def checked(
        cls,
        runtime: str,
        threads: int | None,
        device: Any,
        dtype: torch.dtype,
        repeats: int,
        warmup: int,
        cache_dir: Any,
    ) -> LatencySettings:
        """The settings of these arguments; :class:`UserInputError` naming the one that is wrong."""
        check_threads(threads, "threads")
        check_repeats(repeats, warmup)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise UserInputError("dtype", f"expected a floating torch.dtype, got {dtype!r}", "use torch.float32")
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise UserInputError("device", f"not a device: {device!r}", "use 'cpu' or 'cuda'") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UserInputError("device", f"{device!r}: CUDA is not available on this machine", "use device='cpu'")
        if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
            raise UserInputError(
                "device",
                f"{device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)",
                f"use 'cuda:0' to 'cuda:{torch.cuda.device_count() - 1}'",
            )
        if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
            raise UserInputError(
                "cache_dir",
                f"expected a folder (a str or a path) or None, got {type(cache_dir).__name__}",
                "pass a folder such as '~/.cache/nas_sepconv/latency', or leave cache_dir out",
            )
        threads = threads or torch.get_num_threads()
        return cls(find_runtime(runtime), threads, dev, dtype, repeats, warmup, cache_dir)


def time_modules(
    modules: Sequence[tuple[nn.Module, tuple]], settings: LatencySettings, *, progress: bool = False
) -> list[dict[str, Any]]:
    """One record (``median_ms, p10_ms, p90_ms, repeats``, stalls rejected) per (module, its
    inputs), all timed in the same interleaved rounds in ``settings``' runtime: between two
    calls of one module run all the others, so its weights are as cold as in the model, and load
    from other processes hits every module alike."""
    device, dtype, threads = settings.device, settings.dtype, settings.threads
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    forwards = []
    with torch_threads(threads):
        for module, inputs in track(modules, progress, "latency table: preparing", unit="modules"):
            with torch.no_grad():
                forwards.append(
                    prepare_forward(
                        module, inputs, runtime=settings.runtime, threads=threads, device=device, dtype=dtype
                    )
                )
        rounds = settings.repeats + settings.warmup
        with progress_bar(progress and bool(forwards), "latency table: timing", rounds, unit="rounds") as bar:
            with torch.inference_mode():
                times = time_rounds(
                    forwards,
                    repeats=settings.repeats,
                    warmup=settings.warmup,
                    sync=sync,
                    on_round=lambda: bar.update(advance=1),
                )
    return [{**summarise(t), "repeats": len(t)} for t in times]


def measure_session(
    model: nn.Module,
    inputs: tuple,
    groups: list[tuple[PlanEntry, list]],
    tails: dict[str, tuple[str, ...]],
    calibration: list[Plan],
    settings: LatencySettings,
    progress: bool,
) -> dict[str, Any]:
    """A session record: every entry of ``groups``, the whole model and the ``calibration``
    plans' converted models (closed form is not needed for timing: fresh weights), timed
    together."""
    modules = []
    for entry, specs in groups:
        x = (torch.randn(entry.input_shape),)
        modules += [(site_module(entry, s, tails.get(entry.name, ())), x) for s in specs]
    with torch.no_grad():
        wholes = [copy.deepcopy(model).eval()] + [apply_plan(model, p, init="random").eval() for p in calibration]
    records = time_modules(modules + [(w, inputs) for w in wholes], settings, progress=progress)
    keys = [op_key(e, s, tails.get(e.name, ())) for e, specs in groups for s in specs]
    whole, *converted = records[len(keys) :]
    plans = [
        {**r, "spec": str(p.converted[0].spec), "sites": [e.name for e in p.converted]}
        for p, r in zip(calibration, converted)
    ]
    return {**whole, "entries": dict(zip(keys, records[: len(keys)])), "calibration": plans}


def session_record(
    model: nn.Module,
    inputs: tuple,
    groups: list[tuple[PlanEntry, list]],
    tails: dict[str, tuple[str, ...]],
    calibration: list[Plan],
    settings: LatencySettings,
    context: dict[str, Any],
    key: dict[str, Any],
    progress: bool,
) -> tuple[dict[str, Any], bool]:
    """The cached session record of this model when it holds every entry and calibration plan
    asked for (and True), else a new session, measured and cached (and False)."""
    cache = LatencyCache(context, cache_dir=settings.cache_dir)
    keys = [op_key(e, s, tails.get(e.name, ())) for e, ss in groups for s in ss]
    record = cache.get(key)
    wanted = {(str(p.converted[0].spec), tuple(e.name for e in p.converted)) for p in calibration}
    if (
        record is not None
        and valid_session(record)
        and all(k in record["entries"] for k in keys)
        and wanted <= {(r["spec"], tuple(r["sites"])) for r in record["calibration"]}
    ):
        return record, True
    with torch_threads(settings.threads):
        record = measure_session(model, inputs, groups, tails, calibration, settings, progress)
    cache.put(key, record)
    cache.save()
    return record, False
