"""Saving and loading converted or searched models, safely.

A saved model is one safetensors file: the weights, and in its metadata a JSON recipe that
rebuilds the architecture (base model name + width multiplier + plan, or a built network's
``Arch``).  Loading rebuilds the architecture from the recipe, then loads the tensors; no pickle
is involved, so a file from an untrusted source cannot run code.  The only import a recipe can
trigger is of a ``package.module:factory`` model name, and :func:`load_model` refuses those
unless the caller passes ``allow_import=True``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .errors import UserInputError

__all__ = ["save_model", "load_model", "read_recipe", "build_from_recipe"]

FORMAT = 1
_KEY = "nas_sepconv"
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def save_model(path: str | Path, model: nn.Module, recipe: dict[str, Any]) -> Path:
    """Write ``model``'s weights and the ``recipe`` that rebuilds it to ``path`` (atomically)."""
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
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; a saved model is an ordinary file
    os.close(fd)
    try:
        save_file(state, tmp, metadata={_KEY: json.dumps({"format": FORMAT, **recipe})})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The recipe stored in a saved model file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserInputError("file", f"{path} does not exist", "give the file `nas-sepconv convert --out` or `export` wrote")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise UserInputError("file", f"{path} is not a safetensors file ({str(exc)[:100]})", "give the file `nas-sepconv convert --out` or `export` wrote") from exc
    if _KEY not in meta:
        raise UserInputError("file", f"{path} has no nas-sepconv recipe", "give the file `nas-sepconv convert --out` or `export` wrote")
    recipe = json.loads(meta[_KEY])
    if recipe.get("format") != FORMAT:
        raise UserInputError("file", f"{path} has recipe format {recipe.get('format')}, this version reads {FORMAT}", "re-export it with this version")
    return recipe


def build_from_recipe(recipe: dict[str, Any], *, allow_import: bool = False) -> nn.Module:
    """The architecture a recipe describes, with fresh weights.

    Recipes: ``{"kind": "converted", "model": NAME, "model_kwargs": {...}, "width_mult": a,
    "input_size": [C, H, W], "plan": PLAN_JSON}`` and ``{"kind": "built", "arch": ARCH_JSON}``.
    """
    from .models import Arch, build_network, model_from_name
    from .plan import Plan
    from .rewrite import apply_plan

    kind = recipe.get("kind")
    if kind == "built":
        return build_network(Arch.from_json(recipe["arch"]))
    if kind != "converted":
        raise UserInputError("recipe.kind", f"unknown recipe kind {kind!r}", "expected 'converted' or 'built'")
    name = recipe["model"]
    if not allow_import and not name.split(":", 1)[0] in ("torchvision", "timm", "nas_sepconv"):
        raise UserInputError(
            "recipe.model", f"the file asks to import {name!r}", "load it with nas_sepconv.load_model(path, allow_import=True) if you trust its source"
        )
    model = model_from_name(name, **recipe.get("model_kwargs", {}))
    if recipe.get("width_mult", 1.0) != 1.0:
        from .width import apply_width_mult

        model = apply_width_mult(model, recipe["width_mult"], example_inputs=torch.randn(1, *recipe["input_size"]))
    if recipe.get("plan"):
        model = apply_plan(model, Plan.from_json(recipe["plan"]), init="random")
    return model


def load_model(path: str | Path, *, allow_import: bool = False, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild and load a model saved by :func:`save_model` (eval mode)."""
    from safetensors.torch import load_file

    model = build_from_recipe(read_recipe(path), allow_import=allow_import)
    state = load_file(str(path), device=str(device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserInputError("file", f"{path} does not match its recipe (missing {missing[:3]}, unexpected {unexpected[:3]})", "re-export it")
    return model.to(device).eval()
