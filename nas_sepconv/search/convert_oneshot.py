"""The one-shot mode of a convert space: the study's convert supernet (the trained base model with
every site's candidate blocks: :mod:`nas_sepconv.oneshot.convert_supernet`), trained once into
the results folder by single-path sampling distilled from the base (SPOS, Guo et al., ECCV
2020; Hinton et al. 2015), and a trial's candidate extracted from it as the plain converted
model a stand-alone convert trial makes, its BatchNorm recalibrated (Once-for-All, Cai et al.,
ICLR 2020).

The supernet trains with the space's ``train:`` section (batch size, optimizer, schedule) at
``convert.finetune_lr``, the learning rate a converted model is fine-tuned at (the ``train:``
rate trains a model from scratch), for ``search.supernet_epochs`` (default ``train.epochs``).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn

from ..conversion import INITS, Plan, make_plan
from ..data import Dataset, calibration_batches
from ..measure import count_macs
from ..measure.inputs import model_device
from ..oneshot import (
    ConvertPaths,
    ConvertSupernet,
    convert_supernet,
    extract_converted,
    site_policy,
    train_convert_supernet,
)
from ..oneshot.supernet import resize
from ..storage import lock
from ..train import reestimate_batchnorm
from .inherited import SUPERNET_DIR
from .settings import Settings
from .suggestion import Candidate, resolution_for, site_groups, site_rule
from .supernet_space import block_specs, covered_values

__all__ = [
    "candidate_plan",
    "convert_paths",
    "convert_supernet_compute",
    "extract_candidate",
    "prepare_convert_supernet",
]


def convert_paths(settings: Settings, sites: list[Any], *, base_side: int) -> ConvertPaths:
    """Every choice of each eligible site (``None``: keep the conv), as the space's groups
    give them (:func:`~.suggestion.site_groups`), and the input sides of ``resolution_mult``."""
    c = settings.space.spec.convert
    choices: dict[str, list[str | None]] = {}
    for i, (group, members) in enumerate(site_groups(c, [s.name for s in sites])):
        where = "convert.choices" if c.groups == "all" else f"convert.groups[{i}]"
        rules = list(dict.fromkeys(site_rule(spec) for spec in block_specs(group, where)))
        choices.update({name: rules for name in members})
    return ConvertPaths(choices, _sides(settings, base_side=base_side))


def _sides(settings: Settings, *, base_side: int) -> tuple[int, ...]:
    """The input sides the supernet trains at: one per ``convert.resolution_mult`` value."""
    mults = covered_values(settings.space.spec.convert.resolution_mult)
    return tuple(dict.fromkeys(resolution_for(base_side, m) for m in mults))


def prepare_convert_supernet(
    settings: Settings, data: Dataset, base: nn.Module, sites: list[Any], *, progress: bool = False
) -> ConvertSupernet:
    """The study's convert supernet of ``base``: made (closed form and refit, as
    ``convert.init`` and ``convert.refit`` say) and trained into ``<out_dir>/supernet``, or
    resumed or loaded from there; one process trains it while the others wait on the lock.
    ``progress``: show its epochs (:mod:`nas_sepconv.progress`)."""
    spec = settings.space.spec
    c = spec.convert
    paths = convert_paths(settings, sites, base_side=data.input_shape[-1])
    cfg = replace(
        spec.train,
        seed=settings.options.seed,
        epochs=spec.search.supernet_epochs or spec.train.epochs,
        lr=c.finetune_lr,
    )
    identity = {"kind": "convert", "model": c.model, "model_kwargs": c.model_kwargs, "init": c.init}
    identity.update(refit=c.refit, calibration_images=c.calibration_images, base_sha256=_fingerprint(base))
    folder = settings.out_dir / SUPERNET_DIR
    with lock(folder):
        refits = INITS[c.init].from_weights and c.refit
        batches = calibration_batches(data, n=c.calibration_images, batch_size=64) if refits else None
        site_specs = {name: [r for r in rules if r is not None] for name, rules in paths.choices.items()}
        x = torch.zeros(1, *data.input_shape)
        supernet = convert_supernet(base, site_specs, example_inputs=x, init=c.init, refit_batches=batches)
        return train_convert_supernet(
            supernet,
            base,
            paths,
            data,
            out_dir=folder,
            identity=identity,
            config=cfg,
            device=settings.options.device,
            progress=progress,
        )


def _fingerprint(model: nn.Module) -> str:
    """The SHA-256 of a model's weights and buffers (a supernet made from other base weights is
    not resumed)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def convert_supernet_compute(settings: Settings, data: Dataset, base: nn.Module) -> int:
    """What training the convert supernet spent, in a trial's ``train_compute`` units: its epochs
    x the training split x the base model's MACs at the largest input side it trains at (one
    path a step, each about the original's; an upper bound, as
    :func:`~.inherited.supernet_compute` counts: an equal-compute comparison never gives the
    one-shot mode more than it spent; the teacher's forward passes are not counted, as a
    distilled trial's are not)."""
    spec = settings.space.spec
    epochs = spec.search.supernet_epochs or spec.train.epochs
    side = max(_sides(settings, base_side=data.input_shape[-1]))
    macs = count_macs(base, torch.zeros(1, data.input_shape[0], side, side, device=model_device(base)))
    return int(epochs * len(data.train) * macs)


def candidate_plan(base: nn.Module, candidate: Candidate) -> Plan:
    """The plan a one-shot convert trial makes of ``base`` (the original model) for the
    candidate's path (:func:`~nas_sepconv.oneshot.site_policy` of its rules) at its input side;
    ``base`` is planned where it is, neither moved nor put in another mode."""
    x = torch.zeros(1, *candidate.recipe.input_size, device=model_device(base))
    return make_plan(base, site_policy(candidate.recipe.rules), example_inputs=x)


def extract_candidate(
    supernet: ConvertSupernet, base: nn.Module, candidate: Candidate, data: Dataset, *, images: int, seed: int
) -> nn.Module:
    """The candidate's converted model with the supernet's weights (its plan set in its recipe,
    for saving), BatchNorm statistics re-estimated on ``images`` training images at the
    candidate's input side; on the supernet's device, in eval mode."""
    rules = candidate.recipe.rules
    plan = candidate_plan(base, candidate)
    candidate.recipe = replace(candidate.recipe, plan=plan)
    model = extract_converted(supernet, rules, example_inputs=torch.zeros(1, *candidate.recipe.input_size), plan=plan)
    device = next(model.parameters()).device
    batches = calibration_batches(data, n=images, batch_size=128, seed=seed)
    reestimate_batchnorm(model, [resize(b, candidate.resolution) for b in batches], device=device)
    return model
