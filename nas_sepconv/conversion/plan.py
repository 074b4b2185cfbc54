"""The plan record: what to convert in a model, one :class:`PlanEntry` per conv site (its
geometry, shapes, calls, the :class:`~nas_sepconv.blocks.BlockSpec` that replaces it or why it
is kept, MACs and parameters before and after), printable as a DataFrame (:meth:`Plan.report`)
and a line (:meth:`Plan.summary`), written and read as JSON so that it re-applies to a fresh
instance of the same model.  :func:`~.planning.make_plan` makes one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..blocks import BlockSpec, ConvGeometry
from ..errors import UserInputError
from ..jsonfile import loads

__all__ = ["META_KEY", "compressor_name", "RULE_NOT_APPLIED", "Plan", "PlanEntry", "short_list"]

PLAN_FORMAT = 1
RULE_NOT_APPLIED = "rule not applied: "  # how the note of a site kept against its rule begins
META_KEY = "nas_sepconv.plan"  # where apply_plan keeps the Plan in a converted GraphModule's meta


@dataclass
class PlanEntry:
    """One conv site and what the plan does with it."""

    name: str
    source: str
    geometry: ConvGeometry
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    calls: int
    spec: BlockSpec | None
    reason: str
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    reached: bool = True
    grad_enabled: bool = True
    note: str = ""
    #: measured latency of one call of the conv and of what replaces it (ms), where a latency
    #: table gave them (:meth:`~.latency.LatencyTable.annotate`, :func:`~.budget.plan_for_budget` with a table)
    latency_before_ms: float | None = None
    latency_after_ms: float | None = None
    #: channel pruning (:mod:`.channel_pruning`): ``prune_r<keep>`` where this site's input
    #: channels ``pruned_channels`` are removed before conversion; ``macs_unpruned``: the site's
    #: MACs in the original model where pruning (here or at the site it feeds) changed them
    prune: str = ""
    pruned_channels: tuple[int, ...] = ()
    #: the output channels removed here because they fed a pruned site (this site is its producer)
    pruned_outputs: tuple[int, ...] = ()
    macs_unpruned: int | None = None

    @property
    def converted(self) -> bool:
        return self.spec is not None

    @property
    def status(self) -> str:
        """``converted``, ``pruned``, ``kept`` or ``not reached``."""
        if self.converted or self.prune:
            return "converted" if self.converted else "pruned"
        return "kept" if self.reached else "not reached"

    @property
    def choice(self) -> str:
        """What the plan does here: the block's spec, ``prune_r<keep>`` or ``keep``."""
        return str(self.spec) if self.spec is not None else self.prune or "keep"

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["geometry"] = self.geometry.to_dict()
        d["spec"] = None if self.spec is None else str(self.spec)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PlanEntry:
        d = dict(d)
        d["geometry"] = ConvGeometry.from_dict(d["geometry"])
        d["spec"] = None if d["spec"] is None else BlockSpec.parse(d["spec"])
        d["input_shape"], d["output_shape"] = tuple(d["input_shape"]), tuple(d["output_shape"])
        d["pruned_channels"] = tuple(int(i) for i in d.get("pruned_channels", ()))
        d["pruned_outputs"] = tuple(int(i) for i in d.get("pruned_outputs", ()))
        return cls(**d)


@dataclass
class Plan:
    """What to convert in a model: one :class:`PlanEntry` per conv site, in forward order, then
    the conv modules no example input reached (kept).

    ``traced`` is False when the model could not be traced by torch.fx, or its graph would drop
    a ``torch.no_grad()`` region (``apply_plan`` then swaps conv submodules in place);
    ``notes`` says why, lists sites left alone and what :class:`~.planning.PlanWarning` said.
    ``model_macs`` is the whole model's MACs on the (first) example input, before conversion.
    A plan with channel pruning (entries with ``prune``; :func:`~.channel_pruning.make_mixed_plan`)
    describes the model after pruning (its entries' geometries are the narrowed ones);
    ``pruned_macs``/``pruned_params`` are that model's totals, before conversion.
    """

    model: str
    input_shapes: list[tuple[int, ...]]
    entries: list[PlanEntry]
    traced: bool = True
    notes: list[str] = field(default_factory=list)
    model_macs: int = 0
    model_params: int = 0
    pruned_macs: int | None = None
    pruned_params: int | None = None

    @property
    def pruned(self) -> list[PlanEntry]:
        """The sites whose input channels are pruned (``prune_r<keep>``)."""
        return [e for e in self.entries if e.prune]

    @property
    def converted(self) -> list[PlanEntry]:
        return [e for e in self.entries if e.converted]

    @property
    def macs_after(self) -> int:
        """The whole model's MACs after conversion (each site's change times its calls)."""
        base = self.model_macs if self.pruned_macs is None else self.pruned_macs
        return base - sum((e.macs_before - e.macs_after) * e.calls for e in self.converted)

    @property
    def params_after(self) -> int:
        base = self.model_params if self.pruned_params is None else self.pruned_params
        return base - sum(e.params_before - e.params_after for e in self.converted)

    @property
    def not_reached(self) -> list[PlanEntry]:
        """The conv sites no example input reached (kept: their input shape is unknown)."""
        return [e for e in self.entries if not e.reached]

    @property
    def rules_not_applied(self) -> list[PlanEntry]:
        """The sites a rule of the policy names with a block that cannot replace their conv
        (a grouped block on a depthwise conv): kept, and their ``note`` says why."""
        return [e for e in self.entries if e.reached and not e.converted and e.note.startswith(RULE_NOT_APPLIED)]

    @property
    def no_grad(self) -> list[PlanEntry]:
        """The conv sites ``forward`` runs (at least once) with gradients disabled."""
        return [e for e in self.entries if not e.grad_enabled]

    def report(self) -> pd.DataFrame:
        """One row per conv site: name, op, spec (the block, ``prune_r<keep>`` or ``keep``),
        compressor (what the spec is, in words: ``low-rank (spatial SVD)`` for ``spatial``),
        status (``converted``, ``pruned``, ``kept``, ``not reached``), reason when kept, shapes,
        calls (per forward on the first example input: 0 when only another input reaches the
        site), MACs and params before and after
        (MACs per call, bias excluded; 0 MACs when not reached; with pruning, ``macs_before`` is
        the original model's, so a narrowed producer shows its saving too), macs_ratio (MACs after /
        before: for ``dwsep`` the MobileNet paper's 1/C_out + 1/K²), grad_enabled (False: a
        call runs under ``torch.no_grad()``, so neither the conv nor its block trains through
        it), note (e.g. what an explicit rule costs); and ``latency_before_ms``/``latency_after_ms``
        (one call, measured) when a latency table annotated the plan."""
        rows, timed = [], any(e.latency_before_ms is not None for e in self.entries)
        for e in self.entries:
            before = e.macs_before if e.macs_unpruned is None else e.macs_unpruned
            rows.append(
                dict(
                    name=e.name,
                    op=e.geometry.describe(),
                    source=e.source,
                    spec=e.choice,
                    compressor=compressor_name(e),
                    status=e.status,
                    reason=e.reason,
                    input_shape=e.input_shape,
                    output_shape=e.output_shape,
                    calls=e.calls,
                    macs_before=before,
                    macs_after=e.macs_after,
                    params_before=e.params_before,
                    params_after=e.params_after,
                    macs_ratio=e.macs_after / before if before else 1.0,
                    grad_enabled=e.grad_enabled,
                    note=e.note,
                )
            )
            if timed:
                rows[-1].update(latency_before_ms=e.latency_before_ms, latency_after_ms=e.latency_after_ms)
        df = pd.DataFrame(rows)
        if not df.empty:
            df = df.astype(
                {c: "int64" for c in ("calls", "macs_before", "macs_after", "params_before", "params_after")}
            )
        return df

    def summary(self) -> str:
        """One line: sites converted, pruned, not reached, under no_grad; MACs and params before -> after."""
        n = len(self.converted)
        ratio = self.macs_after / self.model_macs if self.model_macs else 1.0
        sites = f"{n}/{len(self.entries)} conv sites converted"
        if self.pruned:
            sites += f", {len(self.pruned)} pruned: {short_list(self.pruned)}"
        if self.not_reached:
            sites += f", {len(self.not_reached)} not reached by the example inputs: {short_list(self.not_reached)}"
        if self.rules_not_applied:
            against = self.rules_not_applied
            sites += f", {len(against)} kept as their rule's block does not apply: {short_list(against)}"
        if self.no_grad:
            sites += f", {len(self.no_grad)} under torch.no_grad(): {short_list(self.no_grad)}"
        return (
            f"{self.model}: {sites}; MACs {self.model_macs:,} -> "
            f"{self.macs_after:,} ({ratio:.3f}x); params {self.model_params:,} -> {self.params_after:,}"
        )

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(
            dict(
                format=PLAN_FORMAT,
                model=self.model,
                input_shapes=[list(s) for s in self.input_shapes],
                traced=self.traced,
                notes=self.notes,
                model_macs=self.model_macs,
                model_params=self.model_params,
                pruned_macs=self.pruned_macs,
                pruned_params=self.pruned_params,
                entries=[e.to_dict() for e in self.entries],
            ),
            indent=indent,
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(loads(text, field="plan", what="the plan", fix="pass the text Plan.to_json() wrote"))

    @classmethod
    def from_dict(cls, data: Any) -> Plan:
        """A plan from its parsed JSON form, checked (errors name ``plan``)."""
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT or "entries" not in data:
            raise UserInputError(
                "plan", "not a nas-sepconv plan (missing format/entries)", "pass the text Plan.to_json() wrote"
            )
        try:
            entries = [PlanEntry.from_dict(e) for e in data["entries"]]
        except UserInputError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise UserInputError(
                "plan.entries",
                f"malformed entry ({type(exc).__name__}: {str(exc)[:80]})",
                "pass the text Plan.to_json() wrote",
            ) from None
        try:
            return cls(
                model=str(data["model"]),
                input_shapes=[tuple(int(v) for v in s) for s in data["input_shapes"]],
                entries=entries,
                traced=bool(data["traced"]),
                notes=[str(n) for n in data.get("notes", [])],
                model_macs=int(data.get("model_macs", 0)),
                model_params=int(data.get("model_params", 0)),
                pruned_macs=None if data.get("pruned_macs") is None else int(data["pruned_macs"]),
                pruned_params=None if data.get("pruned_params") is None else int(data["pruned_params"]),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:  # (UserInputError is a ValueError)
            if isinstance(exc, UserInputError):
                raise
            raise UserInputError(
                "plan", f"malformed plan ({type(exc).__name__}: {str(exc)[:80]})", "pass the text Plan.to_json() wrote"
            ) from None


def compressor_name(entry: PlanEntry) -> str:
    """What ``entry`` does, in words: ``keep``, ``channel pruning``, or its kind's ``title``
    (e.g. ``low-rank (spatial SVD)`` for ``spatial``)."""
    if entry.spec is None:
        return "channel pruning" if entry.prune else "keep"
    return entry.spec.info.title or entry.spec.kind


def short_list(entries: list[PlanEntry], limit: int = 5) -> str:
    """The names of ``entries``, the first ``limit`` of them and how many more."""
    names = ", ".join(e.name for e in entries[:limit])
    return names + (f" and {len(entries) - limit} more" if len(entries) > limit else "")
