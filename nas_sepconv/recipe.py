"""The recipe: how to rebuild a model's architecture, and what a recipe read from a file may say.

A saved model (:mod:`nas_sepconv.io`), a trial's ``arch_json`` and an export carry one
:class:`Recipe`.  Because model files and results folders get shared, a recipe is checked field
by field when it is made: a known kind and known fields, a model name of the form
``source:name`` (which names a registry model, or a factory only the caller can vouch for:
:func:`trusted_names`), ``model_kwargs`` of plain architecture values only (no paths, URLs,
nested mappings, or keys that read or fetch weights), and bounded sizes.  Every violation is a
:class:`~nas_sepconv.errors.UserInputError` naming ``recipe.<field>``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .conversion import Plan
from .errors import UserInputError
from .jsonfile import loads
from .models import Arch
from .models.arch import MAX_INPUT_SIDE

__all__ = [
    "Recipe",
    "FORMAT",
    "REGISTRY_SOURCES",
    "MAX_INPUT_ELEMENTS",
    "MAX_INPUT_SIDE",
    "MAX_MULTIPLIER",
    "check_model_kwargs",
    "trusted_names",
    "check_trusted",
]

#: The recipe format this version reads and writes.
FORMAT = 1


#: Model sources whose names are looked up in a registry (never imported by path).
REGISTRY_SOURCES = ("torchvision", "timm", "nas_sepconv")


#: A saved input size: at most this many values per example, and this many per side.
MAX_INPUT_ELEMENTS = 3 * 2048 * 2048


#: The largest width (and depth, resolution) multiplier a recipe or a search space may hold.
MAX_MULTIPLIER = 4.0


#: Recipe ``model_kwargs``: integers up to this size, strings of this form, lists this long.
_MAX_KWARG_INT = 1_000_000


_MAX_KWARG_LIST = 64


_SAFE_WORD = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}$")


#: Keys that make a model zoo read, fetch or unpickle something.
_FORBIDDEN_KEY_PARTS = (
    "path",
    "file",
    "url",
    "dir",
    "pretrained",
    "checkpoint",
    "weights",
    "cache",
    "download",
    "hub",
    "cfg",
    "load",
)


_RECIPE_KEYS = {
    "converted": {"format", "kind", "model", "model_kwargs", "width_mult", "input_size", "plan", "rules"},
    "built": {"format", "kind", "arch", "input_size"},
}


@dataclass(frozen=True)
class Recipe:
    """How to rebuild a model's architecture: the one record of a saved file, a trial's
    ``arch_json`` and an export.  ``"converted"``: ``model(**model_kwargs)``, pruned to
    ``width_mult`` at ``input_size`` ([C, H, W]), converted by ``plan`` (a :class:`Plan`);
    ``rules``: a searched candidate's site -> spec choices.  ``"built"``: the network ``arch``
    (an :class:`Arch`).  An ``arch`` or ``plan`` given as its JSON text is parsed here, once;
    :meth:`to_dict` writes them as JSON text (the stored format).  Checked when made
    (:meth:`from_dict`); trust is :func:`build_from_recipe`'s ``allow_import``."""

    kind: str
    model: str | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    width_mult: float = 1.0
    input_size: tuple[int, ...] | None = None
    plan: Plan | None = None
    rules: Mapping[str, str | None] | None = None
    arch: Arch | None = None

    def __post_init__(self) -> None:
        if isinstance(self.input_size, list):
            object.__setattr__(self, "input_size", tuple(self.input_size))
        for name in ("arch", "plan"):
            value = getattr(self, name)
            if isinstance(value, str):  # its JSON text: parsed where it enters
                object.__setattr__(self, name, _read_embedded(name, value, "the recipe") if value else None)
        _check_recipe(self._fields(), where="the recipe", saved=False)

    def _fields(self) -> dict[str, Any]:
        """The keys of the JSON form, with ``arch`` and ``plan`` as objects."""
        if self.kind == "built":
            out: dict[str, Any] = {"kind": self.kind, "arch": self.arch}
        else:
            out = {
                "kind": self.kind,
                "model": self.model,
                "model_kwargs": dict(self.model_kwargs),
                "width_mult": self.width_mult,
            }
        if self.input_size is not None:
            out["input_size"] = list(self.input_size)
        if self.rules is not None:
            out["rules"] = dict(self.rules)
        if self.plan is not None:
            out["plan"] = self.plan
        return out

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the keys files have always had, ``arch`` and ``plan`` as JSON text;
        ``save_model`` adds ``format``)."""
        out = self._fields()
        if self.kind == "built":
            out["arch"] = self.arch.to_json()
        if self.plan is not None:
            out["plan"] = self.plan.to_json(indent=None)
        return out

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "the recipe", saved: bool = False) -> Recipe:
        """A recipe from its JSON form, checked (fields, plain model_kwargs, bounded sizes; a
        ``saved`` file's must state its ``format``); errors name ``recipe.<field>``."""
        kind = _check_shape(data, where=where, saved=saved)
        values = {k: v for k, v in data.items() if k != "format"}
        if kind == "built" and not isinstance(values.get("arch"), str):
            raise UserInputError("recipe.arch", "missing, or not a JSON string", "re-export the model")
        if not isinstance(values.get("plan", ""), str):
            raise UserInputError("recipe.plan", "expected the JSON text of a plan", "re-export the model")
        for name in ("arch", "plan"):
            if name in values:  # "plan": "" is no plan
                values[name] = _read_embedded(name, values[name], where) if values[name] else None
        # every field checked as read, before the record converts any (a list of model_kwargs)
        _check_recipe({**values, "format": FORMAT}, where=where, saved=saved)
        return cls(**values)


def _read_embedded(name: str, text: str, where: str) -> Arch | Plan:
    """A recipe's ``arch`` or ``plan``, JSON text inside the recipe: parsed within the bounds of
    :func:`~nas_sepconv.jsonfile.loads` (errors name ``recipe.<name>``), then read (checked)."""
    field = f"recipe.{name}"
    data = loads(text, field=field, what=f"the {name} of {where}", fix="re-export the model")
    if name == "plan":
        return Plan.from_dict(data)
    if not isinstance(data, dict):
        raise UserInputError(field, f"the arch of {where} is not a JSON object", "re-export the model")
    return Arch.from_dict(data)


def _check_shape(recipe: Any, *, where: str, saved: bool) -> str:
    """A recipe's JSON form is an object of a known kind and format, with that kind's keys; its kind."""
    if not isinstance(recipe, dict):
        raise UserInputError(
            "recipe", f"{where}: expected a JSON object, got {type(recipe).__name__}", "re-export the model"
        )
    if recipe.get("format", None if saved else FORMAT) != FORMAT:
        raise UserInputError(
            "recipe.format",
            f"{where} has recipe format {recipe.get('format')!r}, this version reads {FORMAT}",
            "re-export it with this version",
        )
    kind = recipe.get("kind")
    if not isinstance(kind, str) or kind not in _RECIPE_KEYS:
        raise UserInputError(
            "recipe.kind", f"unknown recipe kind {str(kind)[:40]!r}", "expected 'converted' or 'built'"
        )
    unknown = sorted(set(recipe) - _RECIPE_KEYS[kind])
    if unknown:
        raise UserInputError(
            f"recipe.{unknown[0]}", f"unknown field of a {kind!r} recipe", f"fields are {sorted(_RECIPE_KEYS[kind])}"
        )
    return kind


def _check_recipe(recipe: dict[str, Any], *, where: str, saved: bool) -> None:
    """Validate a recipe's fields (:meth:`Recipe._fields`; not yet its model name's trust)."""
    kind = _check_shape(recipe, where=where, saved=saved)
    if "input_size" in recipe:
        _check_input_size(recipe["input_size"])
    if kind == "built":
        if not isinstance(recipe.get("arch"), Arch):
            raise UserInputError("recipe.arch", "missing, or not an Arch", "re-export the model")
        return
    model = recipe.get("model")
    if not isinstance(model, str) or ":" not in model or len(model) > 200:
        raise UserInputError(
            "recipe.model", f"expected a model name like torchvision:resnet18, got {model!r}", "re-export the model"
        )
    check_model_kwargs(recipe.get("model_kwargs", {}))
    width = recipe.get("width_mult", 1.0)
    if (
        isinstance(width, bool)
        or not isinstance(width, (int, float))
        or not math.isfinite(width)
        or not 0 < width <= MAX_MULTIPLIER
    ):
        raise UserInputError(
            "recipe.width_mult", f"expected a number in (0, {MAX_MULTIPLIER:g}], got {width!r}", "re-export the model"
        )
    if width != 1.0 and "input_size" not in recipe:
        raise UserInputError(
            "recipe.input_size", "a width multiplier needs the input size it was pruned at", "re-export the model"
        )
    if not isinstance(recipe.get("plan"), (Plan, type(None))):
        raise UserInputError("recipe.plan", "expected a Plan", "re-export the model")
    _check_rules(recipe.get("rules", {}))


def _check_rules(rules: Any) -> None:
    """A searched candidate's rules: site names to spec strings (None: the site is kept)."""
    if not isinstance(rules, dict):
        raise UserInputError("recipe.rules", "expected a mapping of site names to specs", "re-export the model")
    for site, spec in rules.items():
        plain_site = isinstance(site, str) and len(site) <= 1000
        plain_spec = spec is None or (isinstance(spec, str) and len(spec) <= 200)
        if not (plain_site and plain_spec):
            shown = f"{str(site)[:40]!r}: {str(spec)[:40]!r}"
            raise UserInputError("recipe.rules", f"{shown} is not a site name and a spec string", "re-export the model")


def _check_input_size(size: Any) -> None:
    if (
        not isinstance(size, list)
        or not 1 <= len(size) <= 4
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_INPUT_SIDE for v in size)
        or math.prod(size) > MAX_INPUT_ELEMENTS
    ):
        raise UserInputError(
            "recipe.input_size",
            f"expected [C, H, W] of positive ints, at most {MAX_INPUT_SIDE} per side and {MAX_INPUT_ELEMENTS:,} "
            f"values, got {str(size)[:80]}",
            "re-export the model",
        )


def check_model_kwargs(kwargs: Any, *, field: str = "recipe.model_kwargs") -> dict[str, Any]:
    """Keyword arguments a file may pass to a model factory: architecture numbers and words.

    Refused: keys that read, fetch or unpickle weights (``pretrained``, ``checkpoint_path``,
    ``weights``, ``pretrained_cfg_overlay`` ...; any key containing path, file, url, dir, cache
    ...), nested mappings, strings that are not plain words (a path, a URL), integers beyond
    ±1e6 and non-finite numbers."""
    if not isinstance(kwargs, dict):
        raise UserInputError(field, f"expected a mapping, got {type(kwargs).__name__}", "re-export the model")
    for key, value in kwargs.items():
        where = f"{field}.{key}"
        if not isinstance(key, str) or not key.isidentifier():
            raise UserInputError(field, f"{str(key)[:40]!r} is not an argument name", "re-export the model")
        if any(part in key.lower() for part in _FORBIDDEN_KEY_PARTS):
            raise UserInputError(
                where,
                "a saved model may not ask to read, fetch or unpickle files",
                "load weights yourself, after load_model",
            )
        values = value if isinstance(value, list) else [value]
        if isinstance(value, list) and len(value) > _MAX_KWARG_LIST:
            raise UserInputError(
                where, f"a list of {len(value)} values (at most {_MAX_KWARG_LIST})", "re-export the model"
            )
        for v in values:
            if not _plain_value(v):
                raise UserInputError(
                    where,
                    f"{str(v)[:40]!r} is not a plain architecture value (a number, a word, true/false, null)",
                    "re-export the model",
                )
    return kwargs


def _plain_value(v: Any) -> bool:
    if v is None or isinstance(v, bool):
        return True
    if isinstance(v, int):
        return abs(v) <= _MAX_KWARG_INT
    if isinstance(v, float):
        return math.isfinite(v) and abs(v) <= _MAX_KWARG_INT
    return isinstance(v, str) and bool(_SAFE_WORD.match(v)) and "://" not in v and ".." not in v


def trusted_names(allow_import: str | Iterable[str] | None, *, field: str = "allow_import") -> frozenset[str]:
    """The ``package.module:factory`` names a caller vouches for (never ``True``: a file must not
    choose what is imported)."""
    if allow_import is None or allow_import is False:
        return frozenset()
    if allow_import is True:
        raise UserInputError(
            field,
            "True would let the file import and call any function",
            "name the factories you trust, e.g. allow_import='mypkg.models:make_net'",
        )
    names = [allow_import] if isinstance(allow_import, str) else list(allow_import)
    for name in names:
        if not isinstance(name, str) or ":" not in name:
            raise UserInputError(
                field, f"{name!r} is not a package.module:factory name", "e.g. allow_import='mypkg.models:make_net'"
            )
    return frozenset(n.strip() for n in names)


def check_trusted(name: str, trusted: frozenset[str]) -> None:
    source = name.split(":", 1)[0].strip()
    if source in REGISTRY_SOURCES or name.strip() in trusted:
        return
    raise UserInputError(
        "recipe.model",
        f"the file asks to import and call {name!r}",
        f"if you trust it, name it: nas_sepconv.load_model(path, allow_import={name!r}) or --allow-import {name}",
    )
