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
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_module_registration_hook,
    register_module_parameter_registration_hook,
)

from .conversion import apply_plan, apply_width_mult, is_pruned
from .errors import UserInputError
from .files import atomic_path
from .jsonfile import loads
from .measure.inputs import model_device
from .models import build_network, model_from_name
from .recipe import FORMAT, REGISTRY_SOURCES, Recipe, check_trusted, trusted_names

__all__ = [
    "Recipe",
    "save_model",
    "load_model",
    "read_recipe",
    "build_from_recipe",
    "bounded_build",
    "check_device",
    "trusted_names",
    "build_on_meta",
    "named_model",
    "state_mismatch",
    "MAX_PARAMS",
    "MAX_MODULES",
    "REGISTRY_SOURCES",
    "FORMAT",
]  # Recipe, trusted_names, REGISTRY_SOURCES, FORMAT: from recipe.py

_KEY = "nas_sepconv"

#: The largest model a file may make us build: parameters + buffers (4 GB of float32) ...
MAX_PARAMS = 1_000_000_000
#: ... and modules (a depth of 1e9 repeats is refused after this many, in well under a second).
MAX_MODULES = 100_000
_FILE_FIX = "give the file `nas-sepconv convert --out` or `export` wrote"


def save_model(path: str | Path, model: nn.Module, recipe: Recipe | Mapping[str, Any]) -> Path:
    """Write ``model``'s weights and the ``recipe`` that rebuilds it to ``path`` (atomically).

    ``recipe``: a :class:`Recipe`, or its dict form (written as given; :func:`load_model`
    checks whatever a file holds).  A model :func:`~nas_sepconv.conversion.prune` returned is
    refused (:class:`UserInputError`): no recipe rebuilds its per-layer widths."""
    from safetensors.torch import save_file

    if is_pruned(model):
        raise UserInputError(
            "model",
            "a channel-pruned model (ns.prune) has per-layer widths that a recipe cannot rebuild",
            "export it to ONNX (nas_sepconv.measure.to_onnx), or save the base model and prune again",
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    seen: dict[int, str] = {}
    for key in list(state):  # safetensors stores no aliases: keep the first of tied tensors
        ptr = state[key].data_ptr()
        if ptr in seen and state[key].numel():
            state[key] = state[key].clone()
        seen.setdefault(ptr, key)
    metadata = {_KEY: json.dumps({"format": FORMAT, **(recipe.to_dict() if isinstance(recipe, Recipe) else recipe)})}
    with atomic_path(path) as tmp:
        try:
            save_file(state, str(tmp), metadata=metadata)
        except Exception as exc:  # noqa: BLE001 - safetensors' own error type, for I/O errors too
            error = _as_os_error(exc, path)
            if error is None:
                raise
            raise error from exc
    return path


def _as_os_error(exc: Exception, path: Path) -> OSError | None:
    """safetensors reports a failed write (a full disk) as ``SafetensorError("... I/O error: No
    space left on device (os error 28)")``: as an :class:`OSError` with that errno, the way every
    other writer raises, so that callers handle a full disk one way.  None for any other error."""
    found = re.search(r"I/O error: (.*?) \(os error (\d+)\)", str(exc))
    return OSError(int(found.group(2)), found.group(1), str(path)) if found else None


def read_recipe(path: str | Path) -> Recipe:
    """The recipe stored in a saved model file, checked (see :meth:`Recipe.from_dict`)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserInputError("file", f"{path} does not exist or is not a file", _FILE_FIX)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for junk
        raise UserInputError(
            "file", f"{path} is not a safetensors file ({' '.join(str(exc).split())[:100]})", _FILE_FIX
        ) from None
    if _KEY not in meta:
        raise UserInputError("file", f"{path} has no nas-sepconv recipe", _FILE_FIX)
    recipe = loads(meta[_KEY], field="recipe", what=f"the recipe of {path}", fix="re-export the model")
    return Recipe.from_dict(recipe, where=str(path), saved=True)


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
        register_module_module_registration_hook(on_module),
        register_module_parameter_registration_hook(on_tensor),
        register_module_buffer_registration_hook(on_tensor),
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def bounded_build(
    build: Callable[[], nn.Module],
    *,
    what: str = "recipe",
    max_params: int = MAX_PARAMS,
    max_modules: int = MAX_MODULES,
    fix: str = "refused as a safeguard; raise max_params / max_modules of load_model if you trust the file",
) -> nn.Module:
    """``build()`` twice: first on the ``meta`` device (costs no memory) to check the model's
    size against the budget, then for real, still guarded.  A model that cannot be built on
    ``meta`` is built for real under the guard (which stops it as it grows).  A model over the
    budget raises :class:`UserInputError` naming ``what``, with ``fix``."""
    for device in ("meta", None):
        try:
            with _size_guard(max_params, max_modules), torch.device(device) if device else contextlib.nullcontext():
                model = build()
        except _OverBudget as exc:
            raise UserInputError(what, f"the model would have {exc}", fix) from None
        except UserInputError:
            raise
        except Exception as exc:  # noqa: BLE001 - some models cannot be built on meta: build for real
            if device is None:  # a file's arguments the factory rejects, in one line
                text = " ".join(str(exc).split())[:160]
                raise UserInputError(
                    what, f"the model cannot be built ({type(exc).__name__}: {text})", "re-export it"
                ) from None
            continue
        if device is None:
            return model
    raise AssertionError("unreachable")


def build_from_recipe(
    recipe: Recipe | Mapping[str, Any],
    *,
    allow_import: str | Iterable[str] | None = None,
    max_params: int = MAX_PARAMS,
    max_modules: int = MAX_MODULES,
) -> nn.Module:
    """The architecture a recipe describes, with fresh weights.

    ``recipe``: a :class:`Recipe`, or its dict form (checked by :meth:`Recipe.from_dict`).
    ``allow_import``: the ``package.module:factory`` names (one, or several) the caller trusts;
    registry names (``torchvision:``, ``timm:``, ``nas_sepconv:``) need none.
    """
    recipe = recipe if isinstance(recipe, Recipe) else Recipe.from_dict(recipe)
    trusted = trusted_names(allow_import)
    if recipe.kind == "built":
        return bounded_build(lambda: build_network(recipe.arch), max_params=max_params, max_modules=max_modules)
    name = recipe.model
    check_trusted(name, trusted)
    kwargs = dict(recipe.model_kwargs)

    def build() -> nn.Module:
        model = model_from_name(name, **kwargs)
        if recipe.width_mult != 1.0:
            model = apply_width_mult(
                model, recipe.width_mult, example_inputs=torch.randn(1, *recipe.input_size, device=model_device(model))
            )
        if recipe.plan is not None:
            model = apply_plan(model, recipe.plan, init="random")
        return model

    return bounded_build(build, max_params=max_params, max_modules=max_modules)


def named_model(name: str, *, num_classes: int | None = None) -> nn.Module:
    """:func:`~nas_sepconv.models.model_from_name` of a name the caller gives, in eval mode.  With
    ``num_classes``, built on the meta device first (:func:`bounded_build`): a head that would
    take the model over :data:`MAX_PARAMS` parameters is refused (``num_classes``) before
    anything is allocated."""
    if num_classes is None:
        return model_from_name(name).eval()
    build = lambda: model_from_name(name, num_classes=num_classes)  # noqa: E731
    return bounded_build(build, what="num_classes", fix="give fewer classes").eval()


def build_on_meta(recipe: Recipe | Mapping[str, Any], *, allow_import: str | Iterable[str] | None = None) -> nn.Module:
    """The architecture ``recipe`` rebuilds, as :func:`build_from_recipe` makes it, on the meta
    device (no memory, no arithmetic) where it can be built there; else for real (pruning to a
    width multiplier reads weights)."""
    try:
        with torch.device("meta"):
            return build_from_recipe(recipe, allow_import=allow_import)
    except UserInputError:  # cannot be built on meta: for real (trust and size errors come again)
        return build_from_recipe(recipe, allow_import=allow_import)


def state_mismatch(model: nn.Module, reference: nn.Module) -> str | None:
    """The first difference between the tensors (names and shapes) of ``model`` and of
    ``reference`` (e.g. :func:`build_on_meta` of a recipe): what :func:`load_model` would refuse
    as "does not match its recipe", in a few words; None when they match."""
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    for name, shape in want.items():
        if name not in have:
            return f"{name} is missing"
        if have[name] != shape:
            return f"{name} is {list(have[name])}, the recipe's is {list(shape)}"
    extra = sorted(set(have) - set(want))
    return f"{extra[0]} is not in the recipe" if extra else None


def check_device(device: str | torch.device, *, field: str = "device") -> torch.device:
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
        raise UserInputError(
            field, f"{device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)", "use cuda:0 ..."
        )
    return dev


def load_model(
    path: str | Path,
    *,
    allow_import: str | Iterable[str] | None = None,
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
        raise UserInputError(
            "file", f"{path}: cannot read its tensors ({' '.join(str(exc).split())[:100]})", "re-export it"
        ) from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        raise UserInputError(
            "file", f"{path} does not match its recipe ({' '.join(str(exc).split())[:160]})", "re-export it"
        ) from None
    if missing or unexpected:
        raise UserInputError(
            "file",
            f"{path} does not match its recipe (missing {missing[:3]}, unexpected {unexpected[:3]})",
            "re-export it",
        )
    return model.to(dev).eval()
