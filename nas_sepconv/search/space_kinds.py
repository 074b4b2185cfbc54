"""The space kinds table: one frozen record per kind of search space.

A space file's ``kind`` names one.  A ``build`` space draws whole networks (an Arch) trained
from scratch; a ``convert`` space draws site -> block choices for a given model, trained first
(the base model) and then converted and fine-tuned.  The schema, the suggestion of candidates,
the trial and the export read the record where the kinds differ.

The recipes a candidate writes keep the words saved files have always had (``"built"``,
``"converted"``: :attr:`SpaceKind.recipe_kind`); the space kind is how a space says it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..tables import lookup

__all__ = ["SpaceKind", "SPACE_KINDS", "SPACE_KIND_NAMES", "space_kind"]


@dataclass(frozen=True)
class SpaceKind:
    """One kind of search space.

    Attributes:
        name: what a space file's ``kind`` says.
        recipe_kind: the ``kind`` of the recipes its candidates write (a saved file's word).
        section: the section of the space file it needs (its choices).
        epochs_field: where the epochs a candidate trains are given (``section.field``).
        from_base: candidates are converted from a trained base model (its conv sites, its
            accuracy recorded in the study, a latency table of its sites, distillation).
        doc: one line.
    """

    name: str
    recipe_kind: str
    section: str
    epochs_field: str
    from_base: bool
    doc: str = ""


#: every space kind by name
SPACE_KINDS: dict[str, SpaceKind] = {
    k.name: k
    for k in (
        SpaceKind(
            "build",
            recipe_kind="built",
            section="build",
            epochs_field="train.epochs",
            from_base=False,
            doc="whole networks (stages of blocks) drawn and trained from scratch",
        ),
        SpaceKind(
            "convert",
            recipe_kind="converted",
            section="convert",
            epochs_field="convert.finetune_epochs",
            from_base=True,
            doc="a given model's conv sites drawn as blocks, converted from its trained weights and fine-tuned",
        ),
    )
}

#: the names, for the schema's ``Literal`` (derived from the table, never listed again)
SPACE_KIND_NAMES = tuple(SPACE_KINDS)


def space_kind(name: Any, *, field: str = "kind") -> SpaceKind:
    """The record of the space kind ``name``; :class:`~nas_sepconv.errors.UserInputError`
    naming ``field`` if there is none."""
    return lookup(SPACE_KINDS, name, field=field, what="space kind")
