"""The width multiplier (MobileNet α) applied to an existing model by structured channel pruning.

Fang et al., "DepGraph: Towards Any Structural Pruning" (CVPR 2023), through Torch-Pruning: the
dependency graph couples the channels that must go together (through residual additions,
concatenations, depthwise convolutions, normalisation layers), and each coupled group is
pruned by the L2 magnitude of its weights.  Every group keeps
``make_divisible(channels * width_mult, round_to)`` channels (MobileNet rounding: the nearest
multiple of ``round_to``, not below 90 %, never above the original), so layers as narrow as
``round_to`` survive; the classifier's outputs are never pruned.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from ..errors import UserInputError
from ..measure import output_tensors
from ..models import make_divisible

__all__ = [
    "PRUNED_ATTRIBUTE",
    "apply_width_mult",
    "is_pruned",
    "mark_pruned",
    "check_output_shapes",
    "find_classifier",
    "prunable_copy",
    "torch_pruning",
]

_WIDER_FIX = "build the model with a wider factory (e.g. mobilenet_v2_cifar(width_mult=1.4)) or use a build space"


#: The attribute that marks a pruned model on the model itself (so a deepcopy is marked too): a
#: recipe cannot rebuild its per-layer widths, so save_model refuses it (:func:`is_pruned`)
#: rather than write a file that load_model would refuse.
PRUNED_ATTRIBUTE = "_nas_sepconv_pruned"


def mark_pruned(model: nn.Module) -> nn.Module:
    """Mark ``model`` as pruned (:func:`is_pruned`; copies keep the mark: a GraphModule's
    deepcopy keeps its ``meta``, not its attributes) and return it."""
    setattr(model, PRUNED_ATTRIBUTE, True)
    if isinstance(getattr(model, "meta", None), dict):
        model.meta[PRUNED_ATTRIBUTE] = True
    return model


def is_pruned(model: nn.Module) -> bool:
    """Whether ``model`` is a pruned model (:func:`prune`, a plan with ``prune_r`` sites) or a
    copy of one."""
    meta = getattr(model, "meta", None)
    return bool(getattr(model, PRUNED_ATTRIBUTE, False) or (isinstance(meta, dict) and meta.get(PRUNED_ATTRIBUTE)))


def find_classifier(model: nn.Module, num_outputs: int | None = None) -> nn.Module | None:
    """The layer that produces the model's outputs: the last ``nn.Linear`` (with ``num_outputs``
    outputs, if one has), or failing that the last convolution with ``num_outputs`` output
    channels (a segmentation or SqueezeNet-style head)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if num_outputs is not None and any(m.out_features == num_outputs for m in linears):
        linears = [m for m in linears if m.out_features == num_outputs]
    if linears:
        return linears[-1]
    convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    if num_outputs is not None:
        convs = [m for m in convs if m.out_channels == num_outputs]
    return convs[-1] if convs else None


def _output_shapes(model: nn.Module, example_inputs: torch.Tensor) -> list[tuple[int, ...]]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return [tuple(t.shape) for t in output_tensors(model(example_inputs))]
    finally:
        model.train(was_training)


def _check_arguments(model: nn.Module, width_mult: float, example_inputs: torch.Tensor, round_to: int) -> None:
    """The arguments of :func:`apply_width_mult`, checked before anything is copied."""
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not math.isfinite(width_mult):
        raise UserInputError("width_mult", f"expected a number in (0, 1], got {width_mult!r}")
    if width_mult <= 0:
        raise UserInputError("width_mult", f"must be > 0, got {width_mult}", "use a value in (0, 1], e.g. 0.5")
    if width_mult > 1:
        raise UserInputError(
            "width_mult", f"{width_mult} > 1 cannot be reached by pruning an existing model", _WIDER_FIX
        )
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise UserInputError("round_to", f"expected an integer >= 1, got {round_to!r}", "use 8 (or 1 for no rounding)")
    check_model_and_input(model, example_inputs)


def _ignored_in_copy(
    model: nn.Module, pruned: nn.Module, ignored_layers: Sequence[nn.Module] | None, field: str
) -> list[nn.Module]:
    """The modules of the copy ``pruned`` that stand for ``ignored_layers`` (given as modules of
    ``model``, or already of the copy); a stranger raises naming ``field``."""
    names = {id(m): n for n, m in model.named_modules()}
    copy_modules = dict(pruned.named_modules())
    ignored: list[nn.Module] = []
    for layer in ignored_layers or ():
        if id(layer) in names:
            ignored.append(copy_modules[names[id(layer)]])
        elif any(layer is m for m in pruned.modules()):
            ignored.append(layer)
        else:
            raise UserInputError(
                field,
                f"a {type(layer).__name__} in {field} is not a sub-module of the model",
                "pass modules of the model itself",
            )
    return ignored


def torch_pruning(field: str) -> Any:
    """The ``torch_pruning`` package; its absence raises naming ``field``."""
    try:
        import torch_pruning as tp
    except ImportError:
        raise UserInputError(
            field, "pruning needs torch-pruning, which is not installed", "pip install torch-pruning"
        ) from None
    return tp


def prunable_copy(
    model: nn.Module, example_inputs: torch.Tensor, ignored_layers: Sequence[nn.Module] | None, *, field: str
) -> tuple[nn.Module, list[nn.Module], list[tuple[int, ...]]]:
    """The DepGraph set-up every pruner here shares: a copy of ``model``, the layers of the copy
    whose output channels stay (``ignored_layers``, named ``field`` in errors, and the
    classifier: :func:`find_classifier` of the output's channels), and the output shapes that
    pruning must keep."""
    pruned = copy.deepcopy(model)
    ignored = _ignored_in_copy(model, pruned, ignored_layers, field)
    shapes = _output_shapes(pruned, example_inputs)
    channel_counts = [s[1] for s in shapes if len(s) >= 2]
    classifier = find_classifier(pruned, channel_counts[0] if channel_counts else None)
    if classifier is not None:
        ignored.append(classifier)
    return pruned, ignored, shapes


def check_output_shapes(
    pruned: nn.Module, example_inputs: torch.Tensor, shapes: list[tuple[int, ...]], *, field: str
) -> None:
    """Raise (naming ``model``; the fix names ``field``) when pruning changed the output shapes."""
    new_shapes = _output_shapes(pruned, example_inputs)
    if new_shapes != shapes:  # pragma: no cover - a Torch-Pruning gap on an unusual model
        raise UserInputError(
            "model",
            f"pruning changed the output shapes from {shapes} to {new_shapes}",
            f"pass the output layer in {field}",
        )


def _keep_ratios(
    pruned: nn.Module, ignored: list[nn.Module], width_mult: float, round_to: int
) -> dict[nn.Module, float]:
    """Per-layer pruning ratios so every group keeps make_divisible(c * width_mult) channels (the
    half channel guards Torch-Pruning's int() truncation)."""
    ratios: dict[nn.Module, float] = {}
    ignored_ids = {id(m) for layer in ignored for m in layer.modules()}
    for module in pruned.modules():
        if id(module) in ignored_ids:
            continue
        if isinstance(module, nn.modules.conv._ConvNd):
            channels = module.out_channels
        elif isinstance(module, nn.Linear):
            channels = module.out_features
        else:
            continue
        keep = min(channels, make_divisible(channels * width_mult, round_to, min_value=min(round_to, channels)))
        ratios[module] = max(0.0, 1.0 - (keep + 0.5) / channels)
    return ratios


def apply_width_mult(
    model: nn.Module,
    width_mult: float,
    *,
    example_inputs: torch.Tensor,
    round_to: int = 8,
    ignored_layers: Sequence[nn.Module] | None = None,
) -> nn.Module:
    """A copy of ``model`` with every prunable layer's channels scaled by ``width_mult``.

    Structured L2-magnitude pruning with Torch-Pruning's dependency graph (local, uniform ratio
    ``1 - width_mult`` per coupled group, channels rounded with :func:`make_divisible` to
    ``round_to``).  The model's output layer (the last ``nn.Linear``, or the last convolution
    with as many channels as the output) and ``ignored_layers`` keep their output channels, so
    ``model(example_inputs)`` keeps its shape.  Parameters fall roughly as ``width_mult ** 2``.
    ``width_mult == 1`` gives an unchanged copy; ``model`` itself is never changed.
    """
    _check_arguments(model, width_mult, example_inputs, round_to)
    if width_mult == 1:
        return copy.deepcopy(model)
    tp = torch_pruning("width_mult")
    pruned, ignored, shapes = prunable_copy(model, example_inputs, ignored_layers, field="ignored_layers")

    ratios = _keep_ratios(pruned, ignored, width_mult, round_to)

    was_training = pruned.training
    pruned.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.BasePruner(
            pruned,
            example_inputs,
            importance=tp.importance.MagnitudeImportance(p=2),
            global_pruning=False,
            pruning_ratio=1.0 - width_mult,
            pruning_ratio_dict=ratios,
            ignored_layers=ignored,
        )
        pruner.step()
    pruned.train(was_training)
    check_output_shapes(pruned, example_inputs, shapes, field="ignored_layers")
    return pruned


def check_model_and_input(model: Any, example_inputs: Any) -> None:
    """What DepGraph pruning takes (``apply_width_mult``, ``prune``): a module and one example batch."""
    if not isinstance(model, nn.Module):
        raise UserInputError("model", f"expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_inputs, torch.Tensor):
        raise UserInputError(
            "example_inputs",
            f"expected a tensor, got {type(example_inputs).__name__}",
            "pass a batch such as torch.randn(2, 3, 32, 32)",
        )
