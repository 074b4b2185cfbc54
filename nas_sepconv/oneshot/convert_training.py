"""Training a convert supernet: :func:`train_convert_supernet`, single-path uniform sampling with
distillation from the original model.

Each step draws one path (one choice per site, uniformly, and one input side: single-path
one-shot, Guo et al., ECCV 2020) and trains it to match the original model's softened outputs
on the batch (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015:
the loss :func:`~nas_sepconv.train.distill` uses, KL at a temperature mixed with the labels'
cross-entropy).  The loop, its seeds, checkpoints, resume, progress and ``torchrun`` data
parallelism are :func:`~.training.train_shared`'s, as for a build space's supernet.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..data import Dataset
from ..train import TrainConfig
from ..train.feeds import amp_context
from ..train.hints import check_distill_args, distill_loss
from ..train.run import Run
from .convert_supernet import KEEP, ConvertSupernet
from .supernet import resize
from .training import train_shared

__all__ = ["ConvertPaths", "train_convert_supernet"]


class ConvertPaths:
    """The paths of a convert supernet: per site the choices (``None``: keep the conv, or a
    block spec string), and the input sides (``None``: the data's own)."""

    def __init__(self, choices: Mapping[str, Sequence[str | None]], resolutions: Sequence[int | None] = (None,)):
        self.choices = {name: list(options) for name, options in choices.items()}
        self.resolutions = list(resolutions)

    def sample(self, rng: random.Random) -> tuple[dict[str, str | None], int | None]:
        """One path, uniformly per site, and an input side."""
        rules = {name: rng.choice(options) for name, options in self.choices.items()}
        return rules, rng.choice(self.resolutions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "choices": {n: [KEEP if o is None else o for o in opts] for n, opts in self.choices.items()},
            "resolutions": self.resolutions,
        }


def train_convert_supernet(
    supernet: ConvertSupernet,
    teacher: nn.Module,
    paths: ConvertPaths,
    data: Dataset,
    *,
    out_dir: str | Path,
    identity: Mapping[str, Any],
    config: TrainConfig | None = None,
    epochs: int | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
    device: str | torch.device = "cpu",
    progress: bool = False,
    on_epoch: Callable[[int, float], None] | None = None,
) -> ConvertSupernet:
    """Train ``supernet`` (in place) by single-path sampling of ``paths``, distilled from
    ``teacher`` (the original model, not trained), resumed from ``out_dir``.

    Args:
        supernet: made by :func:`~.convert_supernet.convert_supernet` from ``teacher``.
        teacher: the original trained model (a copy of it teaches: ``teacher`` itself is
            neither moved nor put in eval mode).
        paths: what each step draws from.
        data: the data set (its train split).
        out_dir: the checkpoint folder, written after every epoch and resumed (refused if
            made for another supernet: ``identity``, or with other settings).
        identity: what the supernet is (the base model, the sites and their choices), as JSON.
        config: optimizer, schedule, batch size, label smoothing, seed.
        epochs: the epochs (default ``config.epochs``).
        temperature, alpha: the distillation loss's (:func:`~nas_sepconv.train.distill`).
        device: where to train.
        progress: show the epochs.
        on_epoch: called with ``(epoch, mean loss)`` after each epoch's checkpoint.

    Returns:
        The trained supernet, in eval mode.
    """
    check_distill_args(temperature, alpha)
    cfg = config if config is not None else TrainConfig()
    cfg = replace(cfg, epochs=cfg.epochs if epochs is None else epochs)  # validates
    teacher = copy.deepcopy(teacher).to(device).eval()
    settings = {"train": cfg.to_dict(), "temperature": temperature, "alpha": alpha}

    def step(run: Run, x: Tensor, y: Tensor, rng: random.Random) -> Tensor:
        rules, side = paths.sample(rng)
        supernet.set_path(rules)
        x = resize(x, side)
        with torch.no_grad(), amp_context(run.device, run.amp_dtype):
            soft = teacher(x).float()
        with amp_context(run.device, run.amp_dtype):
            student = supernet(x).float()
        loss = distill_loss(student, soft, y, temperature, alpha, run.cfg.label_smoothing)
        run.scaler.scale(loss).backward()
        return loss.detach()

    train_shared(
        supernet,
        data,
        step=step,
        identity={**identity, "paths": paths.to_dict()},
        settings=settings,
        out_dir=out_dir,
        config=cfg,
        device=device,
        progress=progress,
        on_epoch=on_epoch,
    )
    supernet.set_path({})
    return supernet.eval()
