"""The finalisation starts table: where a finalised front candidate of a one-shot study starts
its training alone (a space's ``search.finalize_from``; :mod:`.finalization`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..tables import lookup

__all__ = ["FinalizeStart", "FINALIZE_STARTS", "FINALIZE_START_NAMES", "finalize_start"]


@dataclass(frozen=True)
class FinalizeStart:
    """One start of a finalised candidate.

    Attributes:
        name: what ``search.finalize_from`` says, and the trial's ``finalized_from``.
        inherits: the candidate starts from its subnet's inherited weights (BatchNorm
            recalibrated); else from a fresh initialisation.
        doc: one line.
    """

    name: str
    inherits: bool
    doc: str = ""


#: every start by name; the first is the default
FINALIZE_STARTS: dict[str, FinalizeStart] = {
    s.name: s
    for s in (
        FinalizeStart(
            "inherited",
            inherits=True,
            doc="fine-tuned from the weights it inherits from the supernet (Once-for-All, Cai et al. 2020)",
        ),
        FinalizeStart(
            "scratch",
            inherits=False,
            doc="trained from scratch with the space's train: recipe, as single-path one-shot retrains the "
            "architectures it found (SPOS, Guo et al. 2020)",
        ),
    )
}

#: the names, for the schema's ``Literal`` (derived from the table, never listed again)
FINALIZE_START_NAMES = tuple(FINALIZE_STARTS)


def finalize_start(name: Any, *, field: str = "search.finalize_from") -> FinalizeStart:
    """The record of the start ``name``; :class:`~nas_sepconv.errors.UserInputError` naming
    ``field`` if there is none."""
    return lookup(FINALIZE_STARTS, name, field=field, what="finalisation start")
