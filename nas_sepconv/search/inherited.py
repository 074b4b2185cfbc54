"""The one-shot mode (``search.mode: oneshot``): the study's supernet, trained once into the
results folder (resumed if a run was stopped, loaded if it is finished), and a trial's accuracy
measured on its subnet with inherited weights, BatchNorm recalibrated (Once-for-All, Cai et
al., ICLR 2020; BigNAS, Yu et al., ECCV 2020) instead of training the candidate.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn

from ..data import Dataset
from ..measure import count_macs
from ..oneshot import Supernet, extract, inherited_subnet, train_supernet
from ..storage import lock
from ..train import evaluate
from .settings import Settings
from .suggestion import Candidate
from .supernet_space import supernet_space

__all__ = ["CALIBRATION_IMAGES", "SUPERNET_DIR", "inherited_candidate", "inherited_metrics", "prepare_supernet"]

#: The folder of the study's supernet checkpoint, in the results folder.
SUPERNET_DIR = "supernet"
#: Training images a trial's subnet re-estimates its BatchNorm statistics on.
CALIBRATION_IMAGES = 512


def prepare_supernet(settings: Settings, data: Dataset, *, progress: bool = False) -> Supernet:
    """The study's supernet: trained on ``data`` with the space's ``train:`` section for
    ``search.supernet_epochs`` (default ``train.epochs``) into ``<out_dir>/supernet``, or
    resumed or loaded from there; one process trains it while the others wait on the lock.
    ``progress``: show its epochs (:mod:`nas_sepconv.progress`)."""
    spec = settings.space.spec
    space = supernet_space(settings.space, input_shape=data.input_shape, num_classes=data.num_classes)
    cfg = replace(spec.train, seed=settings.options.seed, epochs=spec.search.supernet_epochs or spec.train.epochs)
    folder = settings.out_dir / SUPERNET_DIR
    with lock(folder):
        return train_supernet(
            space,
            data,
            out_dir=folder,
            config=cfg,
            device=settings.options.device,
            random_subnets=RANDOM_SUBNETS,
            sampling=SUBNET_SAMPLING,
            progress=progress,
        )


#: random subnets a step of the supernet's training draws (``train_supernet``'s default)
RANDOM_SUBNETS = 2
#: how it draws them (``nas_sepconv.oneshot.SAMPLINGS``)
SUBNET_SAMPLING = "uniform"


def supernet_compute(supernet: Supernet, settings: Settings, data: Dataset) -> int:
    """What training the supernet spent, in the units of a trial's ``train_compute`` (training
    images x forward MACs): its epochs x the training split x the MACs of each step's subnets,
    the random ones counted at the largest's (an upper bound: an equal-compute comparison never
    gives the one-shot mode more than it spent; the sandwich rule, Yu et al. 2020)."""
    space = supernet_space(settings.space, input_shape=data.input_shape, num_classes=data.num_classes)
    spec = settings.space.spec
    epochs = spec.search.supernet_epochs or spec.train.epochs

    def macs(arch: Any) -> int:
        model = extract(supernet, arch).cpu()
        return count_macs(model, torch.zeros(1, data.input_shape[0], arch.input_size, arch.input_size))

    largest, smallest = macs(space.largest()), macs(space.smallest())
    return int(epochs * len(data.train) * (largest + smallest + RANDOM_SUBNETS * largest))


def inherited_candidate(
    supernet: Supernet, candidate: Candidate, data: Dataset, *, device: str, seed: int
) -> tuple[nn.Module, dict[str, Any]]:
    """The candidate's subnet with inherited, recalibrated weights, and its metrics: validation
    and test accuracy, no epochs of its own, ``accuracy_source`` ``inherited``."""
    arch = candidate.recipe.arch
    model = inherited_subnet(supernet, arch, data, images=CALIBRATION_IMAGES, seed=seed)
    return model, inherited_metrics(model, candidate, data, device=device)


def inherited_metrics(model: nn.Module, candidate: Candidate, data: Dataset, *, device: str) -> dict[str, Any]:
    """An inherited model's metrics: validation and test accuracy, no epochs of its own,
    ``accuracy_source`` ``inherited``."""
    res = candidate.resolution
    test = evaluate(model, data.test, data=data, device=device, resolution=res) if len(data.test) else None
    return {
        "accuracy": evaluate(model, data.val, data=data, device=device, resolution=res),
        "test_accuracy": test,
        "epochs": 0,
        "accuracy_source": "inherited",
    }
