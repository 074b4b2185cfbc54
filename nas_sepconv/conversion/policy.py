"""Policy: which conv sites a plan converts, and to what (the rules, the default, the filters).

:func:`~nas_sepconv.conversion.make_plan` reads it; the MACs a spec saves are checked there
(:func:`~nas_sepconv.conversion.planning.with_spec`), for the default only.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..blocks import BlockSpec, as_spec
from ..errors import UserInputError
from .sites import Site

__all__ = ["NOT_REACHED", "Policy"]

NOT_REACHED = "not reached by the example inputs"


# --------------------------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------------------------
@dataclass
class Policy:
    """Which conv sites to convert, and to what.

    ``rules`` maps layer-name globs (fnmatch, matched against module paths such as
    ``layer1.0.conv1``) to a spec, its string form, or ``None``/``"keep"`` to keep the conv;
    the first matching rule wins and overrides every filter: a rule's spec is the user's
    explicit choice and is applied as written, even where it costs MACs (the report's ``note``
    says by how much), as long as the block can replace the conv and an example input reaches
    the site.  Sites no rule names get ``default`` (``None``: kept) if they pass the filters:
    ``include``/``exclude`` globs, at least ``min_in_channels`` input channels (the stem has 3:
    separable convs save little there), ``kernel > 1`` only when ``skip_pointwise``, not
    already depthwise when ``skip_depthwise``, and MACs: a conversion by ``default`` must save
    at least ``min_macs_saving`` (a fraction) of the site's MACs, and some (``None`` disables
    both checks): a block that costs as much as the conv it would replace (``spatial_r0.5`` on
    a square 3x3 conv, ``dwsep_m9`` on any 3x3 conv) is not made, the site is kept with the
    numbers (``"saves 9.6 %, below min_macs_saving 50 %"``) and :func:`make_plan` warns.
    A kind name or spec given as the whole policy is this ``default``.
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
    def from_any(cls, policy: str | BlockSpec | Mapping | Policy | None) -> Policy:
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
        raise UserInputError(
            "policy", f"expected a kind name, BlockSpec, glob mapping or Policy, got {type(policy).__name__}"
        )

    def check_globs(self, names: list[str]) -> None:
        for where, globs in (("rules", list(self.rules)), ("include", self.include), ("exclude", self.exclude)):
            for glob in globs:
                if glob != "*" and not any(fnmatch.fnmatchcase(n, glob) for n in names):
                    example = ", ".join(names[:3]) or "(none)"
                    raise UserInputError(
                        f"policy.{where}[{glob!r}]",
                        "matches no convolution",
                        f"site names look like {example}; see plan.report()",
                    )

    def rule_for(self, name: str) -> str | None:
        """The first glob of ``rules`` that matches the site ``name``, or None."""
        return next((glob for glob in self.rules if fnmatch.fnmatchcase(name, glob)), None)

    def decide(self, site: Site) -> tuple[BlockSpec | None, str]:
        """The spec for a site and, when there is none, the reason (MACs are not checked here:
        see :func:`with_spec`)."""
        g = site.geometry
        glob = self.rule_for(site.name)
        if not site.reached:
            return None, NOT_REACHED if glob is None or self.rules[
                glob
            ] is None else f"{NOT_REACHED} (rule {glob!r} not applied)"
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
