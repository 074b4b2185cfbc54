"""Policies and plans.

``make_plan`` traces a model with torch.fx, propagates shapes from example inputs, finds every
convolution (``call_module`` of an ``nn.ConvNd`` and ``F.convNd`` calls on parameters), and
records per site the decision of a :class:`Policy` (a :class:`BlockSpec`, or why the site is
skipped) with MACs and parameters before and after.  Nothing is converted: a :class:`Plan` is
data, printable as a DataFrame and re-applicable (JSON) to a fresh instance of the same model.

When symbolic tracing fails (data-dependent control flow), the sites are found by forward hooks
on convolution modules instead (:mod:`.sites`), the plan says so, and ``apply_plan`` swaps
submodules in place.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import pandas as pd
import torch
import torch.nn as nn

from ..errors import UserInputError
from ..blocks import ConvGeometry, conv_from_geometry
from ..measure import as_inputs, count_macs, count_params
from ..blocks import BlockSpec, as_spec
from .sites import Site, find_sites

__all__ = ["Policy", "PlanEntry", "Plan", "make_plan", "with_spec"]

PLAN_FORMAT = 1
META_KEY = "nas_sepconv.plan"  # where apply_plan keeps the Plan in a converted GraphModule's meta


# --------------------------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------------------------
@dataclass
class Policy:
    """Which conv sites to convert, and to what.

    ``rules`` maps layer-name globs (fnmatch, matched against module paths such as
    ``layer1.0.conv1``) to a spec, its string form, or ``None``/``"keep"`` to keep the conv;
    the first matching rule wins and overrides the default filters.  Sites no rule names get
    ``default`` (``None``: kept) if they pass the filters: ``include``/``exclude`` globs, at
    least ``min_in_channels`` input channels (the stem has 3: separable convs save little
    there), ``kernel > 1`` only when ``skip_pointwise``, not already depthwise when
    ``skip_depthwise``.  Any conversion must save at least ``min_macs_saving`` (a fraction) of
    the site's MACs (``None`` disables the check; 0 means "not more MACs than before"), and
    one by ``default`` must save some: a block that costs as much as the conv it would replace
    (``spatial_r0.5`` on a square 3x3 conv) is not made, the site is kept with the reason.
    Every glob must match at least one site (a typo is an error, not a silent no-op).
    """

    default: BlockSpec | None = field(default_factory=lambda: BlockSpec("dwsep"))
    rules: dict[str, BlockSpec | None] = field(default_factory=dict)
    include: list[str] = field(default_factory=lambda: ["*"])
    exclude: list[str] = field(default_factory=list)
    min_in_channels: int = 5
    skip_pointwise: bool = True
    skip_depthwise: bool = True
    min_macs_saving: float | None = 0.0

    def __post_init__(self) -> None:
        self.default = None if self.default in (None, "keep") else as_spec(self.default)
        self.rules = {str(k): (None if v in (None, "keep") else as_spec(v)) for k, v in dict(self.rules).items()}
        if self.min_macs_saving is not None and not 0 <= self.min_macs_saving < 1:
            raise UserInputError("policy.min_macs_saving", f"must lie in [0, 1), got {self.min_macs_saving}")

    @classmethod
    def from_any(cls, policy: "str | BlockSpec | Mapping | Policy | None") -> "Policy":
        """A Policy from a kind name / spec string, a BlockSpec, a glob mapping, or a Policy."""
        if isinstance(policy, Policy):
            return policy
        if policy is None:
            return cls()
        if isinstance(policy, (str, BlockSpec)):
            return cls(default=as_spec(policy))
        if isinstance(policy, Mapping):
            if "kind" in policy:
                return cls(default=as_spec(dict(policy)))
            return cls(default=None, rules=dict(policy), min_in_channels=1, skip_pointwise=False, skip_depthwise=False)
        raise UserInputError("policy", f"expected a kind name, BlockSpec, glob mapping or Policy, got {type(policy).__name__}")

    def check_globs(self, names: list[str]) -> None:
        for where, globs in (("rules", list(self.rules)), ("include", self.include), ("exclude", self.exclude)):
            for glob in globs:
                if glob != "*" and not any(fnmatch.fnmatchcase(n, glob) for n in names):
                    example = ", ".join(names[:3]) or "(none)"
                    raise UserInputError(
                        f"policy.{where}[{glob!r}]", "matches no convolution", f"site names look like {example}; see plan.report()"
                    )

    def rule_for(self, name: str) -> str | None:
        """The first glob of ``rules`` that matches the site ``name``, or None."""
        return next((glob for glob in self.rules if fnmatch.fnmatchcase(name, glob)), None)

    def decide(self, site: "Site") -> tuple[BlockSpec | None, str]:
        """The spec for a site and, when there is none, the reason."""
        g = site.geometry
        glob = self.rule_for(site.name)
        if glob is not None:
            spec = self.rules[glob]
            return (spec, "") if spec is not None else (None, f"kept by rule {glob!r}")
        if any(fnmatch.fnmatchcase(site.name, x) for x in self.exclude):
            return None, "excluded by policy"
        if not any(fnmatch.fnmatchcase(site.name, x) for x in self.include):
            return None, "not included by policy"
        if self.default is None:
            return None, "no rule names it"
        if self.skip_pointwise and g.is_pointwise:
            return None, "1x1 convolution"
        if self.skip_depthwise and g.is_depthwise:
            return None, "already depthwise"
        if g.in_channels < self.min_in_channels:
            return None, f"C_in={g.in_channels} < {self.min_in_channels} (stem)"
        return self.default, ""


# --------------------------------------------------------------------------------------------
# Plan
# --------------------------------------------------------------------------------------------
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

    @property
    def converted(self) -> bool:
        return self.spec is not None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["geometry"] = self.geometry.to_dict()
        d["spec"] = None if self.spec is None else str(self.spec)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PlanEntry":
        d = dict(d)
        d["geometry"] = ConvGeometry.from_dict(d["geometry"])
        d["spec"] = None if d["spec"] is None else BlockSpec.parse(d["spec"])
        d["input_shape"], d["output_shape"] = tuple(d["input_shape"]), tuple(d["output_shape"])
        return cls(**d)


@dataclass
class Plan:
    """What to convert in a model: one :class:`PlanEntry` per conv site, in forward order.

    ``traced`` is False when the model could not be traced by torch.fx (``apply_plan`` then
    swaps conv submodules in place); ``notes`` says why and lists sites left alone.
    ``model_macs`` is the whole model's MACs on the example inputs, before conversion.
    """

    model: str
    input_shapes: list[tuple[int, ...]]
    entries: list[PlanEntry]
    traced: bool = True
    notes: list[str] = field(default_factory=list)
    model_macs: int = 0
    model_params: int = 0

    @property
    def converted(self) -> list[PlanEntry]:
        return [e for e in self.entries if e.converted]

    @property
    def macs_after(self) -> int:
        """The whole model's MACs after conversion (each site's change times its calls)."""
        return self.model_macs - sum((e.macs_before - e.macs_after) * e.calls for e in self.converted)

    @property
    def params_after(self) -> int:
        return self.model_params - sum(e.params_before - e.params_after for e in self.converted)

    def report(self) -> pd.DataFrame:
        """One row per conv site: name, op, spec (or ``keep``), reason when skipped, shapes,
        calls, MACs and params before and after (MACs per call, bias excluded), macs_ratio."""
        rows = []
        for e in self.entries:
            rows.append(
                dict(
                    name=e.name,
                    op=e.geometry.describe(),
                    source=e.source,
                    spec=str(e.spec) if e.spec else "keep",
                    reason=e.reason,
                    input_shape=e.input_shape,
                    output_shape=e.output_shape,
                    calls=e.calls,
                    macs_before=e.macs_before,
                    macs_after=e.macs_after,
                    params_before=e.params_before,
                    params_after=e.params_after,
                    macs_ratio=e.macs_after / e.macs_before if e.macs_before else 1.0,
                )
            )
        df = pd.DataFrame(rows)
        if not df.empty:
            df = df.astype({c: "int64" for c in ("calls", "macs_before", "macs_after", "params_before", "params_after")})
        return df

    def summary(self) -> str:
        n = len(self.converted)
        ratio = self.macs_after / self.model_macs if self.model_macs else 1.0
        return (
            f"{self.model}: {n}/{len(self.entries)} conv sites converted; MACs {self.model_macs:,} -> "
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
                entries=[e.to_dict() for e in self.entries],
            ),
            indent=indent,
        )

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserInputError("plan", f"not valid JSON ({exc.msg} at line {exc.lineno})", "pass the text Plan.to_json() wrote") from exc
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT or "entries" not in data:
            raise UserInputError("plan", "not a nas-sepconv plan (missing format/entries)", "pass the text Plan.to_json() wrote")
        try:
            entries = [PlanEntry.from_dict(e) for e in data["entries"]]
        except UserInputError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise UserInputError("plan.entries", f"malformed entry ({type(exc).__name__}: {str(exc)[:80]})", "pass the text Plan.to_json() wrote") from None
        try:
            return cls(
                model=str(data["model"]),
                input_shapes=[tuple(int(v) for v in s) for s in data["input_shapes"]],
                entries=entries,
                traced=bool(data["traced"]),
                notes=[str(n) for n in data.get("notes", [])],
                model_macs=int(data.get("model_macs", 0)),
                model_params=int(data.get("model_params", 0)),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:  # (UserInputError is a ValueError)
            if isinstance(exc, UserInputError):
                raise
            raise UserInputError("plan", f"malformed plan ({type(exc).__name__}: {str(exc)[:80]})", "pass the text Plan.to_json() wrote") from None


def _site_cost(g: ConvGeometry, spec: BlockSpec | None, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """MACs and params of one call of the block ``spec`` builds for ``g`` (the conv itself when
    spec is None), counted on the meta device."""
    with torch.device("meta"):
        module = conv_from_geometry(g) if spec is None else spec.build(g)
        x = torch.empty(input_shape)
    return count_macs(module, x), count_params(module)


def with_spec(
    entry: PlanEntry, spec: BlockSpec | None, *, reason: str = "", min_macs_saving: float | None = 0.0, must_save: bool = False
) -> PlanEntry:
    """``entry`` converted to ``spec`` (its MACs and params after recomputed), or kept (with
    ``reason``) when ``spec`` is None, cannot replace the conv, or saves less than
    ``min_macs_saving`` of its MACs (``None``: no check), or, with ``must_save``, saves none."""
    kept = replace(entry, spec=None, reason=reason, macs_after=entry.macs_before, params_after=entry.params_before)
    if spec is None:
        return kept
    why_not = spec.unsupported(entry.geometry)
    if why_not:
        return replace(kept, reason=f"{spec} does not apply: {why_not}")
    macs, params = _site_cost(entry.geometry, spec, entry.input_shape)
    if min_macs_saving is not None and (macs > entry.macs_before * (1 - min_macs_saving) or (must_save and macs >= entry.macs_before)):
        return replace(kept, reason=f"{spec} would not save MACs ({macs:,} vs {entry.macs_before:,})")
    return replace(entry, spec=spec, reason="", macs_after=macs, params_after=params)


def make_plan(model: nn.Module, policy: "str | BlockSpec | Mapping | Policy | None" = "dwsep", *, example_inputs: Any) -> Plan:
    """Decide, for every conv site of ``model``, the block that replaces it (pure: the model is
    not changed).  See :class:`Policy` for what ``policy`` may be."""
    if not isinstance(model, nn.Module):
        raise UserInputError("model", f"expected an nn.Module, got {type(model).__name__}")
    policy = Policy.from_any(policy)
    inputs = as_inputs(example_inputs)
    sites, traced, notes = find_sites(model, inputs)
    if not sites:
        raise UserInputError("model", f"{type(model).__name__} has no convolution to convert", "pass a model with nn.Conv layers or F.conv calls")
    policy.check_globs([s.name for s in sites])
    entries = []
    for site in sites:
        macs0, params0 = _site_cost(site.geometry, None, site.input_shape)
        kept = PlanEntry(site.name, site.source, site.geometry, site.input_shape, site.output_shape, site.calls,
                         None, "", macs0, macs0, params0, params0)
        spec, reason = policy.decide(site)
        by_default = policy.rule_for(site.name) is None  # a rule's spec is the user's explicit choice
        entries.append(with_spec(kept, spec, reason=reason, min_macs_saving=policy.min_macs_saving, must_save=by_default))
    return Plan(
        model=type(model).__name__,
        input_shapes=[tuple(t.shape) for t in inputs],
        entries=entries,
        traced=traced,
        notes=notes,
        model_macs=count_macs(model, inputs),
        model_params=count_params(model),
    )
