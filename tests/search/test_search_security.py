"""A resumed convert search trusts only what the user's own space names: the cached base
model in a (shared) results folder is loaded only if its recipe is exactly the one the space
makes.  (Loading files in general: tests/test_security.py.)"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch.nn as nn

import nas_sepconv as ns
from nas_sepconv.errors import UserInputError
from nas_sepconv.io import save_model
from nas_sepconv.search.base_model import check_base_cache


def _plant(path: Path, recipe: dict) -> Path:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    return save_model(path, model, recipe)


def _shell_recipe(marker: Path) -> dict:
    return {
        "kind": "converted",
        "model": "os:system",
        "model_kwargs": {"command": f"touch {marker}"},
        "width_mult": 1.0,
        "input_size": [1, 8, 8],
    }


def test_resuming_a_convert_search_refuses_a_tampered_base_model(tmp_path):
    """``base.safetensors`` in a results folder is loaded only if its recipe is exactly the one
    the user's space makes; a planted one is refused before anything is built."""
    marker = tmp_path / "pwned"
    convert = SimpleNamespace(model="nas_sepconv:tiny_convnet", model_kwargs={}, weights=None)
    space = SimpleNamespace(spec=SimpleNamespace(convert=convert))
    data = SimpleNamespace(num_classes=10, input_shape=(1, 8, 8))
    shell = _plant(tmp_path / "shell" / "base.safetensors", _shell_recipe(marker))
    # refused while reading the recipe, before anything is built
    with pytest.raises(UserInputError, match=r"is not a base model a search saved \(.*not a plain architecture value"):
        check_base_cache(space, data, shell.parent)
    other = _plant(tmp_path / "other" / "base.safetensors", {"kind": "converted", "model": "os:getcwd"})
    with pytest.raises(UserInputError, match=r"base\.safetensors: holds another base model"):
        check_base_cache(space, data, other.parent)
    assert not marker.exists()
    model = ns.model_from_name("nas_sepconv:tiny_convnet", num_classes=10, in_channels=1)
    kwargs = {"num_classes": 10, "in_channels": 1}
    recipe = {
        "kind": "converted",
        "model": "nas_sepconv:tiny_convnet",
        "model_kwargs": kwargs,
        "width_mult": 1.0,
        "input_size": [1, 8, 8],
    }
    good = save_model(tmp_path / "good" / "base.safetensors", model, recipe)
    assert check_base_cache(space, data, good.parent) == good
    assert check_base_cache(space, data, tmp_path / "none") is None
