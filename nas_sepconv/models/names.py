"""Models by name.

:func:`model_from_name` turns the ``MODEL`` strings of the API and CLI into modules:

- ``torchvision:NAME``: ``torchvision.models.get_model(NAME, weights=None)`` (and
  ``weights_backbone=None`` for builders that take one), so nothing is downloaded;
- ``timm:NAME``: ``timm.create_model(NAME, pretrained=False)``;
- ``nas_sepconv:NAME``: one of :data:`FACTORIES`;
- ``package.module:factory``: the user's own function (or class), imported and called.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from ..errors import UserInputError
from .arch import is_int
from .presets import FACTORIES

__all__ = ["model_from_name", "replace_first_conv"]

_PREFIX_HELP = "use torchvision:NAME, timm:NAME, nas_sepconv:NAME or package.module:factory"


def _did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def replace_first_conv(model: nn.Module, in_channels: int) -> nn.Module:
    """Swap the model's first ``nn.Conv2d`` (in module order) for one reading ``in_channels``
    channels, with the same other geometry; freshly initialised.  Changes ``model`` in place."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_channels:
                return model
            if module.groups != 1 and in_channels % module.groups:
                raise UserInputError(
                    "in_channels",
                    f"{in_channels} is not divisible by the groups={module.groups} of the first conv {name!r}",
                )
            new = nn.Conv2d(
                in_channels,
                module.out_channels,
                module.kernel_size,
                stride=module.stride,
                padding=module.padding,
                dilation=module.dilation,
                groups=module.groups,
                bias=module.bias is not None,
                padding_mode=module.padding_mode,
            ).to(device=module.weight.device, dtype=module.weight.dtype)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, new)
            return model
    raise UserInputError(
        "in_channels", "the model has no nn.Conv2d whose input channels could be changed", "leave in_channels unset"
    )


def _accepts(fn: Callable, name: str, *, via_var_keyword: bool) -> bool:
    """Whether ``fn`` takes the keyword ``name`` (or any keyword, when ``via_var_keyword``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or (via_var_keyword and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()))


def _call_factory(
    fn: Callable, label: str, kwargs: dict[str, Any], num_classes: int | None, in_channels: int | None
) -> nn.Module:
    """Call a model factory with ``kwargs`` (+ num_classes / in_channels where it takes them);
    swap the first conv when it takes no ``in_channels``."""
    kwargs = dict(kwargs)
    if num_classes is not None:
        if not _accepts(fn, "num_classes", via_var_keyword=True):
            raise UserInputError(
                "num_classes", f"{label} takes no num_classes argument", "leave num_classes unset or change the factory"
            )
        kwargs["num_classes"] = num_classes
    swap = False
    if in_channels is not None:
        # only a declared parameter: torchvision's **kwargs would take it and then fail
        if _accepts(fn, "in_channels", via_var_keyword=False) and "in_channels" not in kwargs:
            kwargs["in_channels"] = in_channels
        else:
            swap = True
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as exc:
        raise UserInputError(
            "model", f"{label} does not take these arguments ({_one_line(exc)})", f"check the arguments of {label}"
        ) from None
    except ValueError:  # no signature to check (a builtin): let the call decide
        pass
    model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise UserInputError(
            "model",
            f"{label} returned {type(model).__name__}, not a torch.nn.Module",
            "make the factory return the model",
        )
    if swap:
        replace_first_conv(model, in_channels)
    return model


def _torchvision_model(
    name: str, kwargs: dict[str, Any], num_classes: int | None, in_channels: int | None
) -> nn.Module:
    try:
        import torchvision.models as tvm
    except ImportError:
        raise UserInputError(
            "model", "torchvision is not installed", "pip install torchvision (or pip install 'nas-sepconv[vision]')"
        ) from None
    names = tvm.list_models()
    if name not in names:
        raise UserInputError(
            "model",
            f"torchvision has no model {name!r}{_did_you_mean(name, names)}",
            "see torchvision.models.list_models()",
        )
    builder = tvm.get_model_builder(name)
    params = inspect.signature(builder).parameters
    kwargs = {"weights": None, **kwargs}
    if "weights_backbone" in params:
        kwargs.setdefault("weights_backbone", None)
    if kwargs.get("weights") is not None or kwargs.get("weights_backbone") is not None:
        raise UserInputError(
            "model",
            "pretrained weights are never downloaded",
            "leave weights and weights_backbone unset, and load a state_dict yourself",
        )
    return _call_factory(builder, f"torchvision:{name}", kwargs, num_classes, in_channels)


def _timm_model(name: str, kwargs: dict[str, Any], num_classes: int | None, in_channels: int | None) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise UserInputError(
            "model",
            f"timm:{name} needs timm, which is not installed",
            "pip install timm (or pip install 'nas-sepconv[timm]')",
        ) from None
    names = timm.list_models()
    if name not in names:
        raise UserInputError(
            "model", f"timm has no model {name!r}{_did_you_mean(name, names)}", "see timm.list_models()"
        )
    if kwargs.get("pretrained"):
        raise UserInputError("model", "pretrained weights are never downloaded", "leave pretrained unset")
    kwargs = {**kwargs, "pretrained": False}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_channels is not None:
        kwargs["in_chans"] = in_channels
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as exc:
        raise UserInputError(
            "model", f"timm:{name} does not take these arguments ({_one_line(exc)})", "check the model's arguments"
        ) from None


def _own_model(name: str, kwargs: dict[str, Any], num_classes: int | None, in_channels: int | None) -> nn.Module:
    if name not in FACTORIES:
        raise UserInputError(
            "model",
            f"nas_sepconv has no model {name!r}{_did_you_mean(name, list(FACTORIES))}",
            f"use one of {sorted(FACTORIES)}",
        )
    return _call_factory(FACTORIES[name], f"nas_sepconv:{name}", kwargs, num_classes, in_channels)


def _user_model(
    module_name: str, attr: str, kwargs: dict[str, Any], num_classes: int | None, in_channels: int | None
) -> nn.Module:
    label = f"{module_name}:{attr}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise UserInputError(
                "model", f"module {module_name!r} not found", "check the spelling and that its folder is on PYTHONPATH"
            ) from None
        raise UserInputError(
            "model", f"importing {module_name!r} failed: {_one_line(exc)}", "install what the module imports"
        ) from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
        raise UserInputError("model", f"importing {module_name!r} failed: {_one_line(exc)}", "fix the module") from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            available = [n for n in dir(module) if not n.startswith("_")]
            raise UserInputError(
                "model",
                f"module {module_name!r} has no attribute {attr!r}{_did_you_mean(part, available)}",
                "name a factory function or class defined in that module",
            )
        target = getattr(target, part)
    if not callable(target):
        raise UserInputError(
            "model",
            f"{label} is a {type(target).__name__}, not callable",
            "name a function or class that returns an nn.Module",
        )
    return _call_factory(target, label, kwargs, num_classes, in_channels)


_SOURCES: dict[str, Callable[[str, dict, int | None, int | None], nn.Module]] = {
    "torchvision": _torchvision_model,
    "timm": _timm_model,
    "nas_sepconv": _own_model,
}


def model_from_name(
    name: str, *, num_classes: int | None = None, in_channels: int | None = None, **kwargs: Any
) -> nn.Module:
    """A freshly initialised model from a ``source:name`` string; nothing is downloaded.

    ``torchvision:resnet18``, ``timm:efficientnet_b0``, ``nas_sepconv:cifar_resnet18`` or
    ``package.module:factory`` (imported and called with ``kwargs``).  ``num_classes`` is passed
    to the builder; ``in_channels`` too when the builder takes it, otherwise the first
    ``nn.Conv2d`` is replaced by one with that many input channels.
    """
    if not isinstance(name, str) or ":" not in name:
        hint = ""
        if isinstance(name, str) and name in FACTORIES:
            hint = f" (did you mean nas_sepconv:{name}?)"
        elif isinstance(name, str):
            try:
                import torchvision.models as tvm

                if name in tvm.list_models():
                    hint = f" (did you mean torchvision:{name}?)"
            except ImportError:
                pass
        raise UserInputError("model", f"{name!r} names no source{hint}", _PREFIX_HELP)
    for value, label in ((num_classes, "num_classes"), (in_channels, "in_channels")):
        if value is not None and (not is_int(value) or value < 1):
            raise UserInputError(label, f"expected an integer >= 1, got {value!r}")
    source, _, rest = name.strip().partition(":")
    source, rest = source.strip(), rest.strip()
    if not source or not rest:
        raise UserInputError("model", f"{name!r} has an empty part", _PREFIX_HELP)
    if source in _SOURCES:
        return _SOURCES[source](rest, kwargs, num_classes, in_channels)
    if not all(part.isidentifier() for part in source.split(".")) or not all(p.isidentifier() for p in rest.split(".")):
        raise UserInputError("model", f"{name!r} is not package.module:factory", _PREFIX_HELP)
    return _user_model(source, rest, kwargs, num_classes, in_channels)
