"""Per-layer latency tables: what each conv site and each candidate block costs in time on this
machine, and the latency of a converted model predicted from them.

Fewer MACs is not the same as faster: on a CPU a 3×3 depthwise convolution runs at a small
fraction of the dense convolution's MAC rate (results/latency/), so a block that cuts a site's
MACs by 8× may cut its time by 2×, or not at all.  Platform-aware searches answer this with
measured latency instead of MACs: M. Tan et al., "MnasNet: Platform-Aware Neural Architecture
Search for Mobile", CVPR 2019 (arXiv:1807.11626) and A. Howard et al., "Searching for
MobileNetV3", ICCV 2019 (arXiv:1905.02244) measure candidates on the device; B. Wu et al.,
"FBNet: Hardware-Aware Efficient ConvNet Design via Differentiable Neural Architecture Search",
CVPR 2019 (arXiv:1812.03443) and H. Cai et al., "Once-for-All: Train One Network and Specialize
it for Efficient Deployment", ICLR 2020 (arXiv:1908.09791) sum per-layer latency lookup tables.

:func:`latency_table` measures, in one runtime of :data:`~nas_sepconv.measure.RUNTIMES`, every
conv site of a model alone (``keep``) and each candidate block at the sites a policy would
convert, at the site's real input shape (batch included), dtype and memory format: warm-up
rounds, then interleaved rounds (each round runs every block not yet in the cache once, and the whole model), median
and p10/p90.  Entries are cached on disk (:class:`~nas_sepconv.measure.LatencyCache`), so another
model with the same layer shapes reuses them.  The whole model is measured once: the
**remainder** (everything but its conv sites: norms, activations, pooling, the head, the
runtime's per-call overhead) is that figure minus the sites' entries, and a converted model's
predicted latency is the remainder plus the entries of what each site then holds.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
import torch.nn as nn

from ..blocks import BlockSpec, as_spec, conv_from_geometry
from ..errors import UserInputError
from ..measure import (
    LatencyCache,
    Runtime,
    as_inputs,
    check_repeats,
    check_threads,
    find_runtime,
    latency_cache_dir,
    latency_context,
    prepare_forward,
    summarise,
    time_rounds,
    torch_threads,
)
from ..progress import progress as progress_bar
from ..progress import track
from .narrowed import KEEP, NarrowedSite, table_spec
from .plan import Plan, PlanEntry
from .planning import make_plan, with_spec
from .rewrite import plan_of

__all__ = ["DEFAULT_CANDIDATES", "LatencySettings", "LatencyTable", "TABLE_COLUMNS", "latency_table", "predict_latency"]

#: the candidates a latency table (and :func:`~nas_sepconv.conversion.sensitivity`) measures by default
DEFAULT_CANDIDATES = ("dwsep_m1", "dwsep_m2", "dwsep_m4")
TABLE_COLUMNS = ["name", "spec", "op", "input_shape", "calls", "macs", "latency_ms", "p10_ms", "p90_ms", "source"]


@dataclass
class LatencyTable:
    """Measured latencies of one model's conv sites and candidate blocks in one context.

    ``frame``: one row per (site, block): ``name, spec`` (``keep`` for the conv itself), ``op``,
    ``input_shape``, ``calls``, ``macs`` (one call), ``latency_ms`` (median of one call),
    ``p10_ms``, ``p90_ms``, ``source`` (``measured`` now or read from the ``cache``).
    ``model_ms``: the whole model, measured (median; ``model_p10_ms``, ``model_p90_ms``).
    ``context``: what the figures depend on (device, CPU model, threads, runtime and version,
    torch version, dtype, memory format), the key of the cache file.
    Entries it lacks are measured when first needed (:meth:`ensure`), through the same cache.
    """

    frame: pd.DataFrame
    model_ms: float
    model_p10_ms: float
    model_p90_ms: float
    context: dict[str, Any]
    sites: dict[str, PlanEntry] = field(repr=False)
    settings: LatencySettings = field(repr=False)

    @property
    def remainder_ms(self) -> float:
        """The whole model's latency less its conv sites' (every call): what no plan changes."""
        keep = self.frame[self.frame["spec"] == KEEP]
        return self.model_ms - float((keep["latency_ms"] * keep["calls"]).sum())

    def ms(self, name: str, spec: BlockSpec | str | None) -> float | None:
        """The latency (ms) of one call of site ``name`` holding ``spec`` (``None``/``keep``: the
        conv itself), or None when the table has no such entry."""
        label = str(table_spec(spec) or KEEP)
        rows = self.frame[(self.frame["name"] == name) & (self.frame["spec"] == label)]
        return float(rows["latency_ms"].iloc[0]) if len(rows) else None

    def ensure(self, pairs: Iterable[tuple[str, BlockSpec | str | None]], *, progress: bool = False) -> None:
        """Measure (or read from the cache) the entries of ``pairs`` (site name, spec) the table
        lacks.  Raises :class:`UserInputError` for a site the model does not have."""
        wanted: dict[str, list[BlockSpec | None]] = {}
        for name, spec in pairs:
            if name not in self.sites:
                raise UserInputError(
                    "plan",
                    f"names site {name!r}, which the latency table's model does not have",
                    "build the latency table with ns.latency_table on this model",
                )
            spec = table_spec(spec)
            if self.ms(name, spec) is None and spec not in wanted.setdefault(name, []):
                wanted[name].append(spec)
        wanted = {k: v for k, v in wanted.items() if v}
        if wanted:
            rows, _ = _measure_sites(
                [(self.sites[n], specs) for n, specs in wanted.items()], self.settings, self.context, progress
            )
            self.frame = pd.concat([self.frame, pd.DataFrame(rows, columns=TABLE_COLUMNS)], ignore_index=True)

    def predict(self, plan: Plan) -> float:
        """The predicted latency (ms) of the model ``plan`` makes: the measured whole model, plus,
        per converted site, its block's entry less its conv's (times its calls)."""
        if isinstance(plan, Plan) and plan.pruned:  # narrowed layers are other entries: .mixed_latency
            fix = "use nas_sepconv.conversion.mixed_latency.predict_mixed(table, plan)"
            raise UserInputError("plan", "has pruned sites (prune_r...), which predict does not count", fix)
        self._check(plan)
        self.ensure([(e.name, e.spec) for e in plan.converted] + [(e.name, None) for e in plan.converted])
        changes = ((self.ms(e.name, e.spec) - self.ms(e.name, None)) * e.calls for e in plan.converted)
        predicted = self.model_ms + sum(changes)
        if not (math.isfinite(predicted) and predicted > 0):  # no plan is ever made from such a figure
            folder = self.settings.cache_dir if self.settings.cache_dir is not None else latency_cache_dir()
            raise UserInputError(
                "latency_table",
                f"predicts {predicted:.4g} ms for this plan, which no model takes: its entries do not agree "
                f"with the whole model's measured {self.model_ms:.4g} ms (a stale or altered latency cache)",
                f"re-measure: delete the latency cache in {folder} and call ns.latency_table again",
            )
        return predicted

    def annotate(self, plan: Plan) -> Plan:
        """``plan`` with each site's measured latency before and after (one call) filled in
        where the table has them (converted sites: measured if missing), so that
        ``plan.report()`` shows them beside the MACs; notes the predicted whole-model latency."""
        predicted = self.predict(plan)
        entries = []
        for e in plan.entries:
            before = self.ms(e.name, None)
            after = self.ms(e.name, e.spec) if e.converted else before
            entries.append(dataclasses.replace(e, latency_before_ms=before, latency_after_ms=after))
        notes = [n for n in plan.notes if not n.startswith("latency table:")]
        notes.append(
            f"latency table: predicted {predicted:.3f} ms, {predicted / self.model_ms:.3f}x the measured "
            f"{self.model_ms:.3f} ms ({self.context['runtime']}, {self.context['threads']} threads)"
        )
        return dataclasses.replace(plan, entries=entries, notes=notes)

    def _check(self, plan: Plan) -> None:
        if not isinstance(plan, Plan):
            raise UserInputError(
                "plan",
                f"expected a Plan, got {type(plan).__name__}",
                "pass ns.make_plan's or ns.plan_for_budget's plan",
            )
        for e in plan.converted:
            site = self.sites.get(e.name)
            if site is not None and (site.geometry != e.geometry or tuple(site.input_shape) != tuple(e.input_shape)):
                raise UserInputError(
                    "plan",
                    f"site {e.name!r} has input shape {e.input_shape} in the plan but "
                    f"{site.input_shape} in the latency table",
                    "make the plan and the table with the same example_inputs",
                )


def _op_key(entry: PlanEntry, spec: BlockSpec | None) -> dict[str, Any]:
    return {
        "geometry": entry.geometry.to_dict(),
        "input_shape": list(entry.input_shape),
        "block": KEEP if spec is None else str(spec),
    }


def _measure_sites(
    groups: Sequence[tuple[PlanEntry, list]],
    settings: LatencySettings,
    context: dict[str, Any],
    progress: bool,
    whole: Callable[[], Any] | None = None,
) -> tuple[list[dict[str, Any]], list[float]]:
    """Rows for each (site, its specs), read from the cache or measured and cached, and the
    times of ``whole`` (the whole model's forward, if given).  Every block not in the cache is
    timed in the same interleaved rounds, the whole model too: between two calls of one block
    run all the others, so its weights are as cold as in the model, and load from other
    processes hits the entries and the whole model alike."""
    cache = LatencyCache(context, cache_dir=settings.cache_dir)
    runtime, device, dtype, threads = settings.runtime, settings.device, settings.dtype, settings.threads
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    pending = [(entry, s) for entry, specs in groups for s in specs if cache.get(_op_key(entry, s)) is None]
    forwards = []
    try:
        with torch_threads(threads):
            for entry, s in track(pending, progress, "latency table: preparing", unit="blocks"):
                with torch.device("cpu"):
                    module = (conv_from_geometry(entry.geometry) if s is None else s.build(entry.geometry)).eval()
                shape = s.input_shape if isinstance(s, NarrowedSite) else entry.input_shape
                with torch.no_grad():
                    forwards.append(
                        prepare_forward(
                            module,
                            (torch.randn(shape),),
                            runtime=runtime,
                            threads=threads,
                            device=device,
                            dtype=dtype,
                        )
                    )
            rounds = settings.repeats + settings.warmup
            with progress_bar(progress and bool(forwards), "latency table: timing", rounds, unit="rounds") as bar:
                with torch.inference_mode():
                    times = time_rounds(
                        forwards + ([whole] if whole else []),
                        repeats=settings.repeats,
                        warmup=settings.warmup,
                        sync=sync,
                        on_round=lambda: bar.update(advance=1),
                    )
        for (entry, s), t in zip(pending, times):
            cache.put(_op_key(entry, s), {**summarise(t), "repeats": len(t)})
    finally:
        cache.save()
    measured = {(e.name, s) for e, s in pending}
    rows = []
    for entry, specs in groups:
        for s in specs:
            record = cache.get(_op_key(entry, s))
            if isinstance(s, NarrowedSite):
                macs = s.macs()
            else:
                macs = entry.macs_before if s is None else with_spec(entry, s, min_macs_saving=None).macs_after
            rows.append(
                dict(
                    name=entry.name,
                    spec=KEEP if s is None else str(s),
                    op=entry.geometry.describe(),
                    input_shape=tuple(entry.input_shape),
                    calls=entry.calls,
                    macs=macs,
                    latency_ms=record["median_ms"],
                    p10_ms=record["p10_ms"],
                    p90_ms=record["p90_ms"],
                    source="measured" if (entry.name, s) in measured else "cache",
                )
            )
    return rows, (times[-1] if whole else [])


@dataclass(frozen=True)
class LatencySettings:
    """How a latency table measures: the runtime's record (:data:`~nas_sepconv.measure.RUNTIMES`),
    intra-op ``threads``, ``device``, ``dtype``, ``repeats`` rounds after ``warmup``, the cache
    folder (``None``: :func:`~nas_sepconv.measure.latency_cache_dir`).  Made once, from
    :func:`latency_table`'s arguments (:meth:`checked`), and passed below as it is."""

    runtime: Runtime
    threads: int
    device: torch.device
    dtype: torch.dtype
    repeats: int
    warmup: int
    cache_dir: str | os.PathLike | None

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


def latency_table(
    model: nn.Module,
    example_inputs: Any,
    *,
    candidates: Sequence[str | BlockSpec] = DEFAULT_CANDIDATES,
    policy: Any = "dwsep",
    runtime: str = "eager",
    threads: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    repeats: int = 20,
    warmup: int = 3,
    cache_dir: Any = None,
    progress: bool = False,
) -> LatencyTable:
    """Measure each conv site of ``model`` and each of ``candidates`` at the sites ``policy``
    would convert (as :func:`~nas_sepconv.conversion.sensitivity` chooses them), alone, on
    ``device`` in ``runtime`` (a name of :data:`~nas_sepconv.measure.RUNTIMES`) with
    ``threads`` intra-op threads (default: torch's setting), at each site's input shape from
    ``example_inputs`` (its batch size is the table's) in ``dtype``; ``repeats`` interleaved
    rounds after ``warmup``.  Then the whole model, once, in the same way.

    Entries are read from and written to the cache in ``cache_dir`` (default
    :func:`~nas_sepconv.measure.latency_cache_dir`).  ``progress``: a bar (or plain lines) on
    stderr, one step per site.  ``model`` is never changed.  Returns a :class:`LatencyTable`
    (its ``frame`` is the DataFrame; ``predict(plan)`` a converted model's latency).
    """
    settings = LatencySettings.checked(runtime, threads, device, dtype, repeats, warmup, cache_dir)
    if isinstance(candidates, (str, BlockSpec)):
        raise UserInputError(
            "candidates", f"expected a list of block specs, got {candidates!r}", "use e.g. ['dwsep_m1', 'dwsep_m2']"
        )
    specs = list(dict.fromkeys(as_spec(c) for c in candidates))
    inputs = as_inputs(example_inputs)
    chosen = {e.name for e in make_plan(model, policy, example_inputs=inputs).converted}
    base = make_plan(model, {}, example_inputs=inputs)  # every site, kept
    rt = settings.runtime
    context = latency_context(
        device=settings.device,
        threads=settings.threads,
        runtime=rt.name,
        runtime_version=rt.version(),
        dtype=dtype,
        memory_format=rt.memory_format,
    )
    groups = [
        (e, [None] + ([s for s in specs if not s.unsupported(e.geometry)] if e.name in chosen else []))
        for e in base.entries
        if e.reached
    ]  # a site no example input reaches has no shape, and no time
    net = copy.deepcopy(model).eval()  # the model is not changed
    with torch_threads(settings.threads), torch.no_grad():
        forward = prepare_forward(
            net, inputs, runtime=rt, threads=settings.threads, device=settings.device, dtype=dtype
        )
    rows, times = _measure_sites(groups, settings, context, progress, whole=forward)
    whole = summarise(times)
    return LatencyTable(
        pd.DataFrame(rows, columns=TABLE_COLUMNS),
        whole["median_ms"],
        whole["p10_ms"],
        whole["p90_ms"],
        context,
        {e.name: e for e in base.entries},
        settings,
    )


def predict_latency(model_or_plan: nn.Module | Plan, table: LatencyTable) -> float:
    """The latency (ms) ``table`` predicts for a converted model (one :func:`apply_plan` made)
    or a :class:`Plan`: the measured whole original model, less each converted site's conv
    entry, plus its block's (entries it lacks are measured first)."""
    if not isinstance(table, LatencyTable):
        raise UserInputError(
            "table", f"expected a LatencyTable, got {type(table).__name__}", "build one with ns.latency_table(model, x)"
        )
    plan = model_or_plan if isinstance(model_or_plan, Plan) else plan_of(model_or_plan)
    if plan is None:
        raise UserInputError(
            "model",
            "is not a model converted by ns.apply_plan (it carries no plan)",
            "pass the plan, or the converted model",
        )
    return table.predict(plan)
