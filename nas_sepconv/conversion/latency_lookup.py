"""The latency lookup table: a model's measured entries (each conv site and each candidate at
it, one call each) and the whole model's time, from one session, and the prices it answers: the
time a candidate saves at a site (:meth:`LatencyTable.saving`) and a plan's predicted latency
(:meth:`LatencyTable.predict`).

The per-layer latency lookup tables of B. Wu et al., "FBNet: Hardware-Aware Efficient ConvNet
Design via Differentiable Neural Architecture Search", CVPR 2019 (arXiv:1812.03443) and H. Cai et
al., "Once-for-All", ICLR 2020 (arXiv:1908.09791): a converted model's latency is the measured
whole model less each converted site's saving.  :func:`~.latency.latency_table` measures and
builds one (the session: :mod:`.latency_session`); the prediction and its calibration are
described there.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
import torch.nn as nn

from ..blocks import BlockSpec, as_spec
from ..errors import UserInputError
from ..measure import LatencyCache, latency_cache_dir
from .channel_pruning import is_prune_spec, make_mixed_plan, single_prune_figures
from .latency_session import LatencySettings, op_key, site_module, time_modules, valid_session
from .narrowed import KEEP, NarrowedSite, table_spec
from .onnx_table import is_onnx_context, onnx_only_error
from .plan import Plan, PlanEntry
from .planning import with_spec

__all__ = [
    "MIN_CALIBRATION_SAVING",
    "SCALE_RANGE",
    "TABLE_COLUMNS",
    "LatencyTable",
    "changed_entries",
    "fit_scales",
    "prune_entry",
    "table_row",
]

TABLE_COLUMNS = ["name", "spec", "op", "input_shape", "calls", "macs", "latency_ms", "p10_ms", "p90_ms", "source"]
#: a calibration plan whose raw predicted saving is below this fraction of the model is noise, not a fit
MIN_CALIBRATION_SAVING = 0.02
#: the scales a calibration may fit (outside: clipped; a table that needs more is broken)
SCALE_RANGE = (0.2, 5.0)
#: the fields the calibration's fit reads: assigning one drops the table's cached ``scales``
_FIT_FROM = frozenset({"frame", "calibration", "model_ms", "sites"})


def table_row(
    entry: PlanEntry, spec: Any, record: dict[str, Any], source: str, *, macs: int | None = None
) -> dict[str, Any]:
    """One row of a table's ``frame``: site ``entry`` holding ``spec`` (None: its conv), timed as
    ``record``; ``macs`` (one call) counted from the spec unless given (a prune entry's)."""
    if macs is None and isinstance(spec, NarrowedSite):  # a prune candidate's narrowed conv or block
        macs = spec.macs()
    elif macs is None:
        macs = entry.macs_before if spec is None else with_spec(entry, spec, min_macs_saving=None).macs_after
    return dict(
        name=entry.name,
        spec=KEEP if spec is None else str(spec),
        op=entry.geometry.describe(),
        input_shape=tuple(entry.input_shape),
        calls=entry.calls,
        macs=macs,
        latency_ms=record["median_ms"],
        p10_ms=record["p10_ms"],
        p90_ms=record["p90_ms"],
        source=source,
    )


@dataclass
class LatencyTable:
    """Measured latencies of one model's conv sites and candidate blocks in one session.

    ``frame``: one row per (site, block): ``name, spec`` (``keep`` for the conv itself), ``op``,
    ``input_shape``, ``calls``, ``macs`` (one call), ``latency_ms`` (median of one call, with the
    BatchNorm and activation after it), ``p10_ms``, ``p90_ms``, ``source`` (``measured`` now or
    read from the ``cache``).  ``model_ms``: the whole model, measured in the same session
    (median; ``model_p10_ms``, ``model_p90_ms``).  ``context``: what the figures depend on
    (device, CPU model, threads, runtime and version, torch version, dtype, memory format), the
    key of the cache file.  ``calibration``: the converted models measured whole, one record per
    uniform plan.  Entries it lacks are measured when first needed (:meth:`ensure`).
    """

    frame: pd.DataFrame
    model_ms: float
    model_p10_ms: float
    model_p90_ms: float
    context: dict[str, Any]
    sites: dict[str, PlanEntry] = field(repr=False)
    settings: LatencySettings = field(repr=False)
    tails: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    calibration: list[dict[str, Any]] = field(default_factory=list)
    key: dict[str, Any] = field(default_factory=dict, repr=False)
    model: nn.Module | None = field(default=None, repr=False, compare=False)
    inputs: tuple = field(default=(), repr=False, compare=False)

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

    def ensure(self, pairs: Iterable[tuple[str, Any]], *, progress: bool = False) -> None:
        """Measure the entries of ``pairs`` (site name, spec) the table lacks, each beside its
        site's conv, and scale them by the ratio of the table's conv entry to the conv timed now
        (so they belong to the table's session), and add them to the session's cached record
        (read back later with ``source`` ``cache``).  A ``prune_r<keep>`` spec's entry is priced
        from its site's and producer's narrowed entries, measured with the rest
        (:func:`prune_entry`).  Raises :class:`UserInputError` for a site the model does not have."""
        pairs = list(pairs)
        if pairs and is_onnx_context(self.context):
            raise onnx_only_error()
        for name, _ in pairs:
            if name not in self.sites:
                raise UserInputError(
                    "plan",
                    f"names site {name!r}, which the latency table's model does not have",
                    "build the latency table with ns.latency_table on this model",
                )
        asked = dict.fromkeys((n, str(table_spec(s))) for n, s in pairs if is_prune_spec(s))
        prunes = {(n, s): self._prune_plan(n, s) for n, s in asked if self.ms(n, s) is None}
        narrowed = [(e.name, s) for p in prunes.values() for e, s in changed_entries(self.sites, p)]
        blocks = [(n, s) for n, s in pairs if not is_prune_spec(s)] + narrowed
        self._measure(blocks + [(n, None) for n, _ in narrowed], progress)
        if prunes:
            rows, added = zip(*(prune_entry(self, name, plan) for (name, _), plan in prunes.items()))
            self._add(list(rows), dict(added))

    def _prune_plan(self, name: str, spec: Any) -> Plan:
        """The plan pruning site ``name`` alone to ``spec``, of the table's model."""
        if self.model is None:
            raise UserInputError(
                "latency_table",
                "has no model to price a prune candidate with (it was not made by ns.latency_table from a model)",
                "build the latency table with ns.latency_table(model, example_inputs)",
            )
        return make_mixed_plan(self.model, {name: spec}, example_inputs=self.inputs)

    def _measure(self, pairs: list[tuple[str, Any]], progress: bool) -> None:
        """Measure the block and narrowed entries of ``pairs`` the table lacks (:meth:`ensure`)."""
        wanted: dict[str, list[BlockSpec | NarrowedSite | None]] = {}
        for name, spec in pairs:
            spec = table_spec(spec)
            if self.ms(name, spec) is None and spec not in wanted.setdefault(name, []):
                wanted[name].append(spec)
        wanted = {k: v for k, v in wanted.items() if v}
        if not wanted:
            return
        modules, owners = [], []
        for name, specs in wanted.items():
            entry, tail = self.sites[name], self.tails.get(name, ())
            for s in [None] + [s for s in specs if s is not None]:
                shape = s.input_shape if isinstance(s, NarrowedSite) else entry.input_shape
                modules.append((site_module(entry, s, tail), (torch.randn(shape),)))
                owners.append((name, s))
        records = dict(zip(owners, time_modules(modules, self.settings, progress=progress)))
        added, rows = {}, []
        for name, specs in wanted.items():
            entry, kept = self.sites[name], self.ms(name, None)
            factor = kept / records[(name, None)]["median_ms"] if kept else 1.0
            for s in specs:
                rec = records[(name, s)]
                rec = {**rec, **{k: rec[k] * factor for k in ("median_ms", "p10_ms", "p90_ms")}}
                added[op_key(entry, s, self.tails.get(name, ()))] = rec
                rows.append(table_row(entry, s, rec, "measured"))
        self._add(rows, added)

    def _add(self, rows: list[dict[str, Any]], entries: dict[str, dict[str, Any]]) -> None:
        """Add ``rows`` to the frame and ``entries`` to the session's cached record."""
        self.frame = pd.concat([self.frame, pd.DataFrame(rows, columns=TABLE_COLUMNS)], ignore_index=True)
        self._store(entries)

    def _store(self, entries: dict[str, dict[str, Any]]) -> None:
        """Add ``entries`` to this table's session record in the cache."""
        cache = LatencyCache(self.context, cache_dir=self.settings.cache_dir)
        record = cache.get(self.key)
        if record is not None and valid_session(record):
            record = {k: v for k, v in record.items() if k != "op"}
            cache.put(self.key, {**record, "entries": {**record["entries"], **entries}})
            cache.save()

    def savings(self, plan: Plan) -> dict[str, float]:
        """Per block spec of ``plan``: the raw predicted saving (ms) of its converted sites, the
        sum of (conv entry - block entry) × calls (entries it lacks are measured first)."""
        self._check(plan)
        self.ensure([(e.name, e.spec) for e in plan.converted] + [(e.name, None) for e in plan.converted])
        out: dict[str, float] = {}
        for e in plan.converted:
            label = str(e.spec)
            out[label] = out.get(label, 0.0) + (self.ms(e.name, None) - self.ms(e.name, e.spec)) * e.calls
        return out

    @functools.cached_property
    def scales(self) -> dict[str, float]:
        """The calibration's fit (:func:`fit_scales`), computed once per table and again only
        when its entries change (:meth:`ensure`, or ``frame``, ``calibration``, ``model_ms`` or
        ``sites`` assigned anew; an edit of ``frame`` in place is not seen: assign it)."""
        return fit_scales(self.frame, self.calibration, self.sites, self.model_ms)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in _FIT_FROM:
            self.__dict__.pop("scales", None)

    def saving(self, name: str, spec: Any) -> float:
        """The calibrated time (ms) one call of site ``name`` saves holding ``spec``: its conv
        entry less the block's, times the calibration's scale for the spec (:attr:`scales`).  A
        ``prune_r<keep>`` spec: what its site and producer save, pruned versus not, per call of
        the site (:func:`prune_entry`, priced first if the table lacks it; raw: no calibration
        plan prunes)."""
        if is_prune_spec(spec):
            self.ensure([(name, spec)])
            return self.ms(name, None) - self.ms(name, spec)
        raw = self.ms(name, None) - self.ms(name, spec)
        scales = self.scales
        return raw * scales.get(str(as_spec(spec)), scales["*"])

    def predict(self, plan: Plan, *, calibrated: bool = True) -> float:
        """The predicted latency (ms) of the model ``plan`` makes: the measured whole model less,
        per block spec, its converted sites' summed saving (:meth:`savings`), scaled by the
        calibration (:attr:`scales`) unless ``calibrated=False``.  A plan with pruned sites
        (:func:`~.channel_pruning.make_mixed_plan`'s) counts each layer it changes, converted or
        narrowed: a converted site's saving calibrated as above, a narrowed layer's raw
        (:func:`changed_entries`)."""
        self._check(plan)
        scales = self.scales if calibrated else {"*": 1.0}
        if plan.pruned:
            predicted = self.model_ms - self._mixed_saving(plan, scales)
        else:
            savings = self.savings(plan)
            predicted = self.model_ms - sum(s * scales.get(k, scales["*"]) for k, s in savings.items())
        if not (math.isfinite(predicted) and predicted > 0):  # no plan is ever made from such a figure
            folder = self.settings.cache_dir if self.settings.cache_dir is not None else latency_cache_dir()
            raise UserInputError(
                "latency_table",
                f"predicts {predicted:.4g} ms for this plan, which no model takes: its entries do not agree "
                f"with the whole model's measured {self.model_ms:.4g} ms (a stale or altered latency cache)",
                f"re-measure: delete the latency cache in {folder} and call ns.latency_table again",
            )
        return predicted

    def _mixed_saving(self, plan: Plan, scales: dict[str, float]) -> float:
        """The time (ms) a pruned ``plan`` saves: per layer it changes, its conv entry less its
        new one, times calls, a converted (not narrowed) layer's times its spec's scale."""
        pairs = changed_entries(self.sites, plan)
        self.ensure([(e.name, spec) for e, spec in pairs] + [(e.name, None) for e, _ in pairs])
        total = 0.0
        for e, spec in pairs:
            scale = 1.0 if isinstance(spec, NarrowedSite) else scales.get(str(spec), scales["*"])
            total += (self.ms(e.name, None) - self.ms(e.name, spec)) * e.calls * scale
        return total

    def annotate(self, plan: Plan) -> Plan:
        """``plan`` with each site's measured latency before and after (one call) filled in
        where the table has them (converted sites: measured if missing), so that
        ``plan.report()`` shows them beside the MACs (a pruned plan's narrowed layers: their
        narrowed entries); notes the predicted whole-model latency."""
        predicted = self.predict(plan)
        after = {e.name: self.ms(e.name, spec) for e, spec in changed_entries(self.sites, plan)}
        entries = []
        for e in plan.entries:
            before = self.ms(e.name, None)
            entries.append(dataclasses.replace(e, latency_before_ms=before, latency_after_ms=after.get(e.name, before)))
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
        for e in plan.entries if plan.pruned else plan.converted:  # a pruned plan: its narrowed sites too
            site = self.sites.get(e.name)
            if site is not None and _mismatched(site, e, pruned=plan.pruned):
                raise UserInputError(
                    "plan",
                    f"site {e.name!r} has input shape {e.input_shape} in the plan but "
                    f"{site.input_shape} in the latency table",
                    "make the plan and the table with the same example_inputs",
                )


def _mismatched(site: PlanEntry, entry: PlanEntry, *, pruned: bool) -> bool:
    """Whether a plan's site differs from the table's.  A pruned plan's narrowed sites differ in
    their channels, rightly; every other dimension (batch, height, width) must still agree, as
    the narrowed entries are keyed by their channels alone."""
    if not pruned:
        return site.geometry != entry.geometry or tuple(site.input_shape) != tuple(entry.input_shape)
    a, b = tuple(site.input_shape), tuple(entry.input_shape)
    return len(a) != len(b) or a[:1] + a[2:] != b[:1] + b[2:]


def fit_scales(
    frame: pd.DataFrame, calibration: list[dict[str, Any]], sites: dict[str, PlanEntry], model_ms: float
) -> dict[str, float]:
    """A table's calibration fit: per block spec with a calibration plan (a ``calibration``
    record: its converted model measured whole), the measured saving over the raw predicted
    saving (from ``frame``'s entries); ``"*"``: one least-squares scale through the origin over
    all plans (1 without any); each clipped to :data:`SCALE_RANGE`."""
    ms = dict(zip(zip(frame["name"], frame["spec"]), frame["latency_ms"]))
    points = []
    for record in calibration:
        pairs = [(ms.get((n, KEEP)), ms.get((n, record["spec"])), sites[n].calls) for n in record["sites"]]
        raw = sum((kept - block) * calls for kept, block, calls in pairs if kept is not None and block is not None)
        if abs(raw) > MIN_CALIBRATION_SAVING * model_ms:
            points.append((record["spec"], raw, model_ms - record["median_ms"]))
    low, high = SCALE_RANGE
    clip = lambda v: min(max(v, low), high)  # noqa: E731
    out = {spec: clip(measured / raw) for spec, raw, measured in points}
    if points:
        out["*"] = clip(sum(r * m for _, r, m in points) / sum(r * r for _, r, _ in points))
    else:
        out["*"] = 1.0
    return out


def changed_entries(sites: dict[str, PlanEntry], plan: Plan) -> list[tuple[PlanEntry, Any]]:
    """The entries of ``plan`` that change a site of ``sites`` (a table's), each with its table
    spec: a converted site's block spec, or where pruning narrowed the site (a pruned site, its
    producer) a :class:`~.narrowed.NarrowedSite` of its conv or block at the narrowed geometry."""
    pairs = []
    for e in plan.entries:
        site = sites.get(e.name)
        if site is None or not e.reached:
            continue
        narrowed = site.geometry != e.geometry
        if e.converted or narrowed:
            pairs.append((e, NarrowedSite(e.spec, e.geometry, tuple(e.input_shape)) if narrowed else e.spec))
    return pairs


def prune_entry(table: LatencyTable, name: str, plan: Plan) -> tuple[dict[str, Any], tuple[str, dict[str, Any]]]:
    """The entry of pruning site ``name`` as ``plan`` (pruning it alone) does, from ``table``'s
    narrowed entries (measured): its frame row, and its cache key and record.

    Y. He, X. Zhang, J. Sun, "Channel Pruning for Accelerating Very Deep Neural Networks", ICCV
    2017 narrows two convolutions, the site's inputs and its producer's outputs, so the entry's
    saving is theirs, pruned versus not, per call of the site: the row's ``latency_ms`` is the
    site's conv entry less that saving (so :meth:`LatencyTable.saving` reads it as a block's);
    the record holds the two narrowed layers' time (``median_ms``, per call of the site) and the
    saving (``saving_ms``), keyed by the site, its producer and the spec."""
    entry = table.sites[name]
    spec = next(e.prune for e in plan.entries if e.name == name)
    changed = changed_entries(table.sites, plan)
    calls = max(entry.calls, 1)
    pruned = sum(table.ms(e.name, s) * e.calls for e, s in changed) / calls
    saved = sum((table.ms(e.name, None) - table.ms(e.name, s)) * e.calls for e, s in changed) / calls
    producer = next(table.sites[e.name] for e, _ in changed if e.name != name)
    tails = (table.tails.get(name, ()), table.tails.get(producer.name, ()))
    key = op_key(entry, spec, tails[0], producer=(producer, tails[1]))
    record = dict(median_ms=pruned, p10_ms=pruned, p90_ms=pruned, repeats=1, saving_ms=saved)
    kept = table.ms(name, None) - saved
    macs = single_prune_figures(plan, name)["macs_after"]
    row = table_row(entry, spec, dict(median_ms=kept, p10_ms=kept, p90_ms=kept), "measured", macs=macs)
    return row, (key, record)
