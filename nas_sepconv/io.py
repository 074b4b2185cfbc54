"""Saving and loading converted or searched models, safely.

A saved model is one safetensors file: the weights, and in its metadata a JSON recipe that
rebuilds the architecture (base model name + width multiplier + plan, or a built network's
``Arch``).  Loading rebuilds the architecture from the recipe, then loads the tensors; no pickle
is involved.  What a file can make us do is bounded, because results folders and model files
get shared:

* it can name a model only from the registries of torchvision, timm and nas_sepconv
  (``torchvision:resnet18``); a ``package.module:factory`` is imported and called only when the
  caller names that exact factory in ``allow_import`` (a file never widens that list);
* its ``model_kwargs`` are plain architecture numbers and words: no paths, URLs, nested
  mappings, or keys that fetch or read weights (``pretrained``, ``checkpoint_path``,
  ``weights`` ...), so a model zoo is never asked to unpickle or download anything;
* its sizes are bounded: every model is first built on the ``meta`` device (no memory) under a
  budget of parameters and modules (:data:`MAX_PARAMS`, :data:`MAX_MODULES`), then for real.

Every violation is a :class:`UserInputError` naming the recipe field.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
import torch.nn as nn
import torch.nn.modules.module as _module_hooks

from .conversion import Plan, apply_plan, apply_width_mult
from .errors import UserInputError
from .files import atomic_path
from .models import Arch, build_network, model_from_name

__all__ = ["Recipe", "save_model", "load_model", "read_recipe", "build_from_recipe", "bounded_build", "check_device", "trusted_names",
           "MAX_PARAMS", "MAX_MODULES", "REGISTRY_SOURCES"]

FORMAT = 1
_KEY = "nas_sepconv"

#: Model sources whose names are looked up in a registry (never imported by path).
REGISTRY_SOURCES = ("torchvision", "timm", "nas_sepconv")
#: The largest model a file may make us build: parameters + buffers (4 GB of float32) ...
MAX_PARAMS = 1_000_000_000
#: ... and modules (a depth of 1e9 repeats is refused after this many, in well under a second).
MAX_MODULES = 100_000
#: A saved input size: at most this many values per example, and this many per side.
MAX_INPUT_ELEMENTS = 3 * 2048 * 2048
MAX_INPUT_SIDE = 8192
#: Recipe ``model_kwargs``: integers up to this size, strings of this form, lists this long.
_MAX_KWARG_INT = 1_000_000
_MAX_KWARG_LIST = 64
_SAFE_WORD = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}$")
#: Keys that make a model zoo read, fetch or unpickle something.
_FORBIDDEN_KEY_PARTS = ("path", "file", "url", "dir", "pretrained", "checkpoint", "weights", "cache", "download", "hub", "cfg", "load")
_RECIPE_KEYS = {
    "converted": {"format", "kind", "model", "model_kwargs", "width_mult", "input_size", "plan", "rules"},
    "built": {"format", "kind", "arch", "input_size"},
}
_FILE_FIX = "give the file `nas-sepconv convert --out` or `export` wrote"


def save_model(path: str | Path, model: nn.Module, recipe: "Recipe | Mapping[str, Any]") -> Path:
    """Write ``model``'s weights and the ``recipe`` that rebuilds it to ``path`` (atomically).

    ``recipe``: a :class:`Recipe`, or its dict form (written as given; :func:`load_model`
    checks whatever a file holds)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    seen: dict[int, str] = {}
    for key in list(state):  # safetensors stores no aliases: keep the first of tied tensors
        ptr = state[key].data_ptr()
        if ptr in seen and state[key].numel():
            state[key] = state[key].clone()
        seen.setdefault(ptr, key)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={_KEY: json.dumps({"format": FORMAT, **(recipe.to_dict() if isinstance(recipe, Recipe) else recipe)})})
    return path


def read_recipe(path: str | Path) -> "Recipe":
    """The recipe stored in a saved model file, checked (see :meth:`Recipe.from_dict`)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserInputError("file", f"{path} does not exist or is not a file", _FILE_FIX)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for junk
        raise UserInputError("file", f"{path} is not a safetensors file ({' '.join(str(exc).split())[:100]})", _FILE_FIX) from None
    if _KEY not in meta:
        raise UserInputError("file", f"{path} has no nas-sepconv recipe", _FILE_FIX)
    try:
        recipe = json.loads(meta[_KEY])
    except ValueError as exc:
        raise UserInputError("recipe", f"{path} holds a recipe that is not valid JSON ({str(exc)[:80]})", "re-export the model") from None
    return Recipe.from_dict(recipe, where=str(path), saved=True)


# -- what a recipe may say --------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """How to rebuild a model's architecture: the one record of a saved file, a trial's
    ``arch_json`` and an export.  ``"converted"``: ``model(**model_kwargs)``, pruned to
    ``width_mult`` at ``input_size`` ([C, H, W]), converted by ``plan`` (a Plan's JSON); ``rules``:
    a searched candidate's site -> spec choices.  ``"built"``: the network ``arch`` (an Arch's
    JSON).  Checked when made (:meth:`from_dict`); trust is :func:`build_from_recipe`'s ``allow_import``."""

    kind: str
    model: str | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    width_mult: float = 1.0
    input_size: tuple[int, ...] | None = None
    plan: str | None = None
    rules: Mapping[str, str | None] | None = None
    arch: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.input_size, list):
            object.__setattr__(self, "input_size", tuple(self.input_size))
        _check_recipe(self.to_dict(), where="the recipe", saved=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the keys files have always had; ``save_model`` adds ``format``)."""
        if self.kind == "built":
            out: dict[str, Any] = {"kind": self.kind, "arch": self.arch}
        else:
            out = {"kind": self.kind, "model": self.model, "model_kwargs": dict(self.model_kwargs), "width_mult": self.width_mult}
        if self.input_size is not None:
            out["input_size"] = list(self.input_size)
        if self.rules is not None:
            out["rules"] = dict(self.rules)
        if self.plan is not None:
            out["plan"] = self.plan
        return out

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "the recipe", saved: bool = False) -> "Recipe":
        """A recipe from its JSON form, checked (fields, plain model_kwargs, bounded sizes; a
        ``saved`` file's must state its ``format``); errors name ``recipe.<field>``."""
        _check_recipe(data, where=where, saved=saved)
        values = {k: v for k, v in data.items() if k != "format"}
        return cls(**values)


def _check_recipe(recipe: Any, *, where: str, saved: bool) -> None:
    """Validate a recipe's shape and values (not yet its model name's trust)."""
    if not isinstance(recipe, dict):
        raise UserInputError("recipe", f"{where}: expected a JSON object, got {type(recipe).__name__}", "re-export the model")
    if recipe.get("format", None if saved else FORMAT) != FORMAT:
        raise UserInputError("recipe.format", f"{where} has recipe format {recipe.get('format')!r}, this version reads {FORMAT}", "re-export it with this version")
    kind = recipe.get("kind")
    if not isinstance(kind, str) or kind not in _RECIPE_KEYS:
        raise UserInputError("recipe.kind", f"unknown recipe kind {str(kind)[:40]!r}", "expected 'converted' or 'built'")
    unknown = sorted(set(recipe) - _RECIPE_KEYS[kind])
    if unknown:
        raise UserInputError(f"recipe.{unknown[0]}", f"unknown field of a {kind!r} recipe", f"fields are {sorted(_RECIPE_KEYS[kind])}")
    if "input_size" in recipe:
        _check_input_size(recipe["input_size"])
    if kind == "built":
        if not isinstance(recipe.get("arch"), str):
            raise UserInputError("recipe.arch", "missing, or not a JSON string", "re-export the model")
        return
    model = recipe.get("model")
    if not isinstance(model, str) or ":" not in model or len(model) > 200:
        raise UserInputError("recipe.model", f"expected a model name like torchvision:resnet18, got {model!r}", "re-export the model")
    check_model_kwargs(recipe.get("model_kwargs", {}))
    width = recipe.get("width_mult", 1.0)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) or not 0 < width <= 4:
        raise UserInputError("recipe.width_mult", f"expected a number in (0, 4], got {width!r}", "re-export the model")
    if width != 1.0 and "input_size" not in recipe:
        raise UserInputError("recipe.input_size", "a width multiplier needs the input size it was pruned at", "re-export the model")
    if not isinstance(recipe.get("plan", ""), str):
        raise UserInputError("recipe.plan", "expected the JSON text of a plan", "re-export the model")
    if not isinstance(recipe.get("rules", {}), dict):
        raise UserInputError("recipe.rules", "expected a mapping of site names to specs", "re-export the model")


def _check_input_size(size: Any) -> None:
    if (
        not isinstance(size, list) or not 1 <= len(size) <= 4
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_INPUT_SIDE for v in size)
        or math.prod(size) > MAX_INPUT_ELEMENTS
    ):
        raise UserInputError(
            "recipe.input_size", f"expected [C, H, W] of positive ints, at most {MAX_INPUT_SIDE} per side and {MAX_INPUT_ELEMENTS:,} values, got {str(size)[:80]}", "re-export the model"
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
            raise UserInputError(where, "a saved model may not ask to read, fetch or unpickle files", "load weights yourself, after load_model")
        values = value if isinstance(value, list) else [value]
        if isinstance(value, list) and len(value) > _MAX_KWARG_LIST:
            raise UserInputError(where, f"a list of {len(value)} values (at most {_MAX_KWARG_LIST})", "re-export the model")
        for v in values:
            if not _plain_value(v):
                raise UserInputError(where, f"{str(v)[:40]!r} is not a plain architecture value (a number, a word, true/false, null)", "re-export the model")
    return kwargs


def _plain_value(v: Any) -> bool:
    if v is None or isinstance(v, bool):
        return True
    if isinstance(v, int):
        return abs(v) <= _MAX_KWARG_INT
    if isinstance(v, float):
        return math.isfinite(v) and abs(v) <= _MAX_KWARG_INT
    return isinstance(v, str) and bool(_SAFE_WORD.match(v)) and "://" not in v and ".." not in v


def trusted_names(allow_import: "str | Iterable[str] | None", *, field: str = "allow_import") -> frozenset[str]:
    """The ``package.module:factory`` names a caller vouches for (never ``True``: a file must not
    choose what is imported)."""
    if allow_import is None or allow_import is False:
        return frozenset()
    if allow_import is True:
        raise UserInputError(
            field, "True would let the file import and call any function", "name the factories you trust, e.g. allow_import='mypkg.models:make_net'"
        )
    names = [allow_import] if isinstance(allow_import, str) else list(allow_import)
    for name in names:
        if not isinstance(name, str) or ":" not in name:
            raise UserInputError(field, f"{name!r} is not a package.module:factory name", "e.g. allow_import='mypkg.models:make_net'")
    return frozenset(n.strip() for n in names)


def _check_trusted(name: str, trusted: frozenset[str]) -> None:
    source = name.split(":", 1)[0].strip()
    if source in REGISTRY_SOURCES or name.strip() in trusted:
        return
    raise UserInputError(
        "recipe.model",
        f"the file asks to import and call {name!r}",
        f"if you trust it, name it: nas_sepconv.load_model(path, allow_import={name!r}) or --allow-import {name}",
    )


# -- building with a budget -------------------------------------------------------------------


class _OverBudget(BaseException):
    """Raised from inside a module constructor; a BaseException so that no ``except Exception``
    in a model zoo's code swallows it."""


@contextlib.contextmanager
def _size_guard(max_params: int, max_modules: int) -> Iterator[None]:
    """Abort any module construction in this block once it registers more than ``max_modules``
    modules or ``max_params`` parameter and buffer values (global registration hooks)."""
    count = {"modules": 0, "values": 0}

    def on_module(module: nn.Module, name: str, sub: Any) -> None:
        count["modules"] += 1
        if count["modules"] > max_modules:
            raise _OverBudget(f"more than {max_modules:,} modules")

    def on_tensor(module: nn.Module, name: str, tensor: Any) -> None:
        if tensor is not None:
            count["values"] += tensor.numel()
            if count["values"] > max_params:
                raise _OverBudget(f"more than {max_params:,} parameters and buffers")

    handles = [
        _module_hooks.register_module_module_registration_hook(on_module),
        _module_hooks.register_module_parameter_registration_hook(on_tensor),
        _module_hooks.register_module_buffer_registration_hook(on_tensor),
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def bounded_build(build: Callable[[], nn.Module], *, what: str = "recipe", max_params: int = MAX_PARAMS, max_modules: int = MAX_MODULES) -> nn.Module:
    """``build()`` twice: first on the ``meta`` device (costs no memory) to check the model's
    size against the budget, then for real, still guarded.  A model that cannot be built on
    ``meta`` is built for real under the guard (which stops it as it grows)."""
    for device in ("meta", None):
        try:
            with _size_guard(max_params, max_modules), (torch.device(device) if device else contextlib.nullcontext()):
                model = build()
        except _OverBudget as exc:
            raise UserInputError(what, f"the model would have {exc}", "refused as a safeguard; raise max_params / max_modules of load_model if you trust the file") from None
        except UserInputError:
            raise
        except Exception as exc:  # noqa: BLE001 - some models cannot be built on meta: build for real
            if device is None:  # a file's arguments the factory rejects, in one line
                text = " ".join(str(exc).split())[:160]
                raise UserInputError(what, f"the model cannot be built ({type(exc).__name__}: {text})", "re-export it") from None
            continue
        if device is None:
            return model
    raise AssertionError("unreachable")


def build_from_recipe(
    recipe: "Recipe | Mapping[str, Any]", *, allow_import: "str | Iterable[str] | None" = None, max_params: int = MAX_PARAMS, max_modules: int = MAX_MODULES
) -> nn.Module:
    """The architecture a recipe describes, with fresh weights.

    ``recipe``: a :class:`Recipe`, or its dict form (checked by :meth:`Recipe.from_dict`).
    ``allow_import``: the ``package.module:factory`` names (one, or several) the caller trusts;
    registry names (``torchvision:``, ``timm:``, ``nas_sepconv:``) need none.
    """
    recipe = recipe if isinstance(recipe, Recipe) else Recipe.from_dict(recipe)
    trusted = trusted_names(allow_import)
    if recipe.kind == "built":
        arch = Arch.from_json(recipe.arch)
        return bounded_build(lambda: build_network(arch), max_params=max_params, max_modules=max_modules)
    name = recipe.model
    _check_trusted(name, trusted)
    kwargs = dict(recipe.model_kwargs)

    def build() -> nn.Module:
        model = model_from_name(name, **kwargs)
        if recipe.width_mult != 1.0:
            model = apply_width_mult(model, recipe.width_mult, example_inputs=torch.randn(1, *recipe.input_size, device=_device_of(model)))
        if recipe.plan:
            model = apply_plan(model, Plan.from_json(recipe.plan), init="random")
        return model

    return bounded_build(build, max_params=max_params, max_modules=max_modules)


def _device_of(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def check_device(device: "str | torch.device", *, field: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` this machine has: ``cpu``, ``cuda`` or ``cuda:N``."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserInputError(field, f"{device!r} is not a device", "use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise UserInputError(field, f"{device!r} is not supported", "use cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(field, "CUDA is not available on this machine", "use cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserInputError(field, f"{device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)", "use cuda:0 ...")
    return dev


def load_model(
    path: str | Path,
    *,
    allow_import: "str | Iterable[str] | None" = None,
    device: str | torch.device = "cpu",
    max_params: int = MAX_PARAMS,
    max_modules: int = MAX_MODULES,
) -> nn.Module:
    """Rebuild and load a model saved by :func:`save_model` (eval mode).

    Nothing the file says is imported or called unless it is a registry model
    (``torchvision:``, ``timm:``, ``nas_sepconv:``) or a ``package.module:factory`` named in
    ``allow_import``; sizes are bounded by ``max_params`` and ``max_modules`` (see the module
    docstring).  Raises :class:`UserInputError` for anything else.
    """
    from safetensors.torch import load_file

    dev = check_device(device)
    trusted = trusted_names(allow_import)  # the caller's arguments first, then the file
    model = build_from_recipe(read_recipe(path), allow_import=trusted, max_params=max_params, max_modules=max_modules)
    try:
        state = load_file(str(path), device=str(dev))
    except Exception as exc:  # noqa: BLE001 - a truncated or corrupt tensor section
        raise UserInputError("file", f"{path}: cannot read its tensors ({' '.join(str(exc).split())[:100]})", "re-export it") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        raise UserInputError("file", f"{path} does not match its recipe ({' '.join(str(exc).split())[:160]})", "re-export it") from None
    if missing or unexpected:
        raise UserInputError("file", f"{path} does not match its recipe (missing {missing[:3]}, unexpected {unexpected[:3]})", "re-export it")
    return model.to(dev).eval()
