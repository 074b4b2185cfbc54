"""The base model of a convert space: its recipe, the copy an earlier run cached in the results
folder (checked to be this space's), loading it from ``convert.weights`` or the cache or training
it once, and recording its accuracy and MACs in the study as what every candidate is compared
against."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import torch
import torch.nn as nn
from safetensors.torch import load_file

from ..errors import UserInputError
from ..io import build_from_recipe, load_model, read_recipe, save_model
from ..measure import count_macs, count_params
from ..recipe import Recipe
from ..storage import lock
from ..train import evaluate, fit
from .seeding import seeded
from .settings import Settings
from .spaces import Space


def base_recipe(space: Space, data: Any) -> Recipe:
    """The recipe of a convert space's base model on ``data`` (a data set of :mod:`nas_sepconv.data`)."""
    c = space.spec.convert
    return Recipe(
        kind="converted",
        model=c.model,
        model_kwargs=dict(c.model_kwargs, num_classes=data.num_classes, in_channels=data.input_shape[0]),
        width_mult=1.0,
        input_size=tuple(data.input_shape),
    )


def check_base_cache(space: Space, data: Any, out_dir: Path) -> Path | None:
    """The base model an earlier run cached in the results folder (``base.safetensors``), if
    there is one and ``space`` makes no other base model (its recipe: a results folder is
    shared, and its file must not choose what is built); None when there is none, or the
    space gives ``convert.weights``.  Another file raises :class:`UserInputError` naming the
    file (deleting it, as the message says, trains the base model again)."""
    cache = out_dir / "base.safetensors"
    if space.spec.convert.weights or not cache.is_file():
        return None
    fix = "delete it, and the base model is trained again"
    try:
        recipe = read_recipe(cache)
    except UserInputError as exc:
        problem = exc.problem.removeprefix(f"{cache} ")
        raise UserInputError(str(cache), f"is not a base model a search saved ({problem})", fix) from None
    if recipe != base_recipe(space, data):
        raise UserInputError(str(cache), "holds another base model than this space's", fix)
    return cache


def prepare_base(settings: Settings, data: Any) -> nn.Module:
    """The base model of a convert space: its factory is the one the space names (the user's own
    file: that vouches for it), loaded from ``convert.weights``, from the cache of an earlier run
    (only if its recipe is exactly this space's: :func:`check_base_cache`), or trained once and
    cached (a cache that cannot be written costs nothing but a retraining by the next run)."""
    c = settings.space.spec.convert
    if c.weights:
        path = Path(c.weights)
        if not path.is_file():
            raise UserInputError(
                "convert.weights",
                f"{path} does not exist",
                "give a state dict (.safetensors or .pt) of the base model, or remove the field to train it",
            )
        model = build_from_recipe(base_recipe(settings.space, data), allow_import=c.model)
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        return model.eval()
    space, cache = settings.space, settings.out_dir / "base.safetensors"
    with lock(settings.out_dir):
        if check_base_cache(space, data, settings.out_dir) is not None:
            return load_model(cache, allow_import=c.model)
        with seeded(settings.options.seed, settings.options.device):
            model = build_from_recipe(base_recipe(space, data), allow_import=c.model)
            cfg = replace(space.spec.train, seed=settings.options.seed)
            fit(model, data, config=replace(cfg, epochs=max(1, c.base_epochs)), device=settings.options.device)
        with contextlib.suppress(Exception):  # a cache only (disk full: the next run trains it again, seeded alike)
            save_model(cache, model.cpu(), base_recipe(space, data))
        return model.eval()


def record_base(settings: Settings, data: Any, model: nn.Module, study: optuna.Study) -> None:
    """The original model's validation and test accuracy, MACs and params as the study's user
    attr ``base`` (``df.attrs["base"]``, the report's "original model" line, the plot's
    reference): what a user compares every candidate against.  Once: a resumed study keeps it."""
    if "base" in study.user_attrs:
        return
    device = settings.options.device
    x = torch.randn(1, *data.input_shape)
    macs, params = count_macs(model.cpu(), x), count_params(model)
    study.set_user_attr(
        "base",
        {
            "model": settings.space.spec.convert.model,
            "accuracy": evaluate(model, data.val, data=data, device=device),
            "test_accuracy": evaluate(model, data.test, data=data, device=device),
            "macs": int(macs),
            "params": int(params),
        },
    )
