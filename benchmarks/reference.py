"""Helpers the benchmarks share: the trained CIFAR ResNet-18 reference (trained once with
``ns.train.fit`` and cached as safetensors) and the choice of a learning rate on the
validation split (never the test split).

Used by ``benchmarks/fidelity.py`` and ``benchmarks/compress.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from nas_sepconv.data import Dataset
from nas_sepconv.models import cifar_resnet18
from nas_sepconv.train import TrainConfig, fit


def arch_text(width: int, stem_stride: int) -> str:
    """``cifar_resnet18(width=W[, stem_stride=S])``, as the reports name the reference."""
    return f"cifar_resnet18(width={width}" + (f", stem_stride={stem_stride})" if stem_stride != 1 else ")")


def cache_path(folder: Path, data: Dataset, *, width: int, stem_stride: int, epochs: int, seed: int) -> Path:
    """Where the reference of this data set, architecture, epochs and seed is cached."""
    name = data.name.replace(":", "_").replace("/", "_")
    pool = len(data.train) + len(data.val)
    stem = "" if stem_stride == 1 else f"_stem{stem_stride}"
    return folder / f"original_{name}_n{pool}_w{width}{stem}_e{epochs}_s{seed}.safetensors"


def trained_reference(
    data: Dataset,
    folder: Path,
    *,
    width: int,
    stem_stride: int,
    epochs: int,
    batch_size: int,
    seed: int,
    retrain: bool,
    device: str,
    log: Callable[[str], None],
    progress: bool = False,
) -> tuple[torch.nn.Module, float, bool, dict]:
    """The trained reference network: from the cache in ``folder``, or trained with ``fit`` (the
    library's defaults) and cached.  Returns (model in eval mode, training seconds (0 when
    loaded), whether it was loaded, the info saved beside the weights)."""
    from safetensors.torch import load_file, save_file

    model = cifar_resnet18(
        num_classes=data.num_classes, in_channels=data.input_shape[0], width=width, stem_stride=stem_stride
    ).to(device)
    path = cache_path(folder, data, width=width, stem_stride=stem_stride, epochs=epochs, seed=seed)
    info_path = path.with_suffix(".json")
    if path.is_file() and not retrain:
        model.load_state_dict(load_file(path))  # copied onto the model's device
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        log(f"reference loaded from {path}")
        return model.eval(), 0.0, True, info
    log(f"training the reference: {arch_text(width, stem_stride)}, {epochs} epochs on {len(data.train)} images")
    tcfg = TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed)
    res = fit(model, data, config=tcfg, evaluate_test=False, device=device, progress=progress)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(path))
    info = {
        "train_seconds": res.seconds,
        "val_accuracy": res.val_accuracy,
        "history": res.history,
        "train_config": tcfg.to_dict(),
    }
    info_path.write_text(json.dumps(info, indent=2))
    log(f"reference trained in {res.seconds:.0f} s, val accuracy {100 * res.val_accuracy:.2f}%")
    return model.eval(), res.seconds, False, info


def best_on_validation(
    train: Callable[[float], torch.nn.Module],
    lrs: tuple[float, ...],
    val_accuracy: Callable[[torch.nn.Module], float],
    log: Callable[[str], None],
    label: str = "",
) -> tuple[torch.nn.Module, float, list[tuple[float, float]]]:
    """``train(lr)`` for each lr; the model with the best ``val_accuracy`` (percent, computed on
    validation images, never the test split), its lr, and every (lr, validation accuracy)."""
    best, best_lr, best_acc, tried = None, lrs[0], -1.0, []
    for lr in lrs:
        model = train(lr)
        acc = val_accuracy(model)
        tried.append((lr, acc))
        log(f"  {label} lr {lr:g}: validation {acc:.2f}%")
        if acc > best_acc:
            best, best_lr, best_acc = model, lr, acc
    return best, best_lr, tried
