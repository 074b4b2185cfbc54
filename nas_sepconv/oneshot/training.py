"""Training a supernet: :func:`train_supernet`, the sandwich rule with in-place distillation.

Each step trains the largest subnet on the labels, then the smallest and ``random_subnets``
random subnets on the largest's soft outputs, their gradients summed into one update (Yu et al.,
"BigNAS", ECCV 2020, after Yu & Huang's slimmable networks, ICCV 2019; Cai et al.,
"Once-for-All", ICLR 2020, who distil from the largest network too).  The optimizer (no weight
decay on biases and norms), the learning-rate schedule and the precision are :func:`fit`'s
(:class:`~nas_sepconv.train.run.Run`), from the space's ``train:`` section.

Every epoch draws from its own seeds (the batch order and augmentation, the random subnets,
torch's generator for dropout), so that a run resumed from the checkpoint of epoch ``e``
(:mod:`.checkpoint`) trains epoch ``e + 1`` exactly as the run that was not stopped.

Under ``torchrun`` (a process group of several processes: :func:`~nas_sepconv.train.init_distributed`)
the training is data-parallel, as :func:`~nas_sepconv.train.fit`'s (:mod:`nas_sepconv.train.distributed`):
every process draws the same subnets and the same global batches, trains on its slice of each
(``train.batch_size`` split into equal shards), and the summed gradients of a sandwich step are
averaged across the processes in one all-reduce before the optimizer step, so every copy stays
the same.  Not DistributedDataParallel's wrapper: each subnet uses a different part of the
supernet's weights, which DDP would need ``find_unused_parameters`` and one reduction per subnet
pass for; averaging once per step is the same update.  A loss that is not finite in any process
stops every process at the same step.  Rank 0's BatchNorm running statistics are broadcast after
each epoch, and rank 0 alone writes the checkpoint (the folder must be one that every process
reads, for a resume) and shows progress.  BatchNorm normalises each shard with its own batch
statistics, so N processes do not train the very weights that one process does at the same
global batch (as with ``fit``); the processes agree with each other exactly.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..data import Dataset, DeviceLoader
from ..errors import TrainingDiverged, UserInputError
from ..files import ensure_writable_dir
from ..progress import progress as show_progress
from ..tables import lookup
from ..train import TrainConfig
from ..train.distributed import World, broadcast_buffers
from ..train.feeds import amp_context
from ..train.run import Run
from .checkpoint import Checkpoint, load_training, load_weights, read_checkpoint, write_checkpoint
from .space import SupernetSpace
from .supernet import Supernet

__all__ = ["SAMPLINGS", "Step", "train_shared", "train_supernet"]

_EPOCH_SEED = 1_000_003  # seeds of epoch e: seed * _EPOCH_SEED + e

#: How a sandwich step draws its random subnets, by name: ``(space, rng, n)`` -> ``n`` archs.
#: ``uniform``: each independently, a kind then its options (SPOS, Guo et al., ECCV 2020);
#: ``fair``: each stage's weight sets in turn (:meth:`SupernetSpace.sample_fair`; FairNAS, Chu
#: et al., ICCV 2021).
SAMPLINGS: dict[str, Callable[[SupernetSpace, random.Random, int], list[Any]]] = {
    "uniform": lambda space, rng, n: [space.sample(rng) for _ in range(n)],
    "fair": lambda space, rng, n: space.sample_fair(rng, n),
}


def train_supernet(
    space: SupernetSpace,
    data: Dataset,
    *,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    epochs: int | None = None,
    random_subnets: int = 2,
    sampling: str = "uniform",
    device: str | torch.device = "cpu",
    progress: bool = False,
    on_epoch: Callable[[int, float], None] | None = None,
) -> Supernet:
    """Train the supernet of ``space`` on ``data`` with the sandwich rule; resume from ``out_dir``.

    Args:
        space: the supernet's space (``nas_sepconv.search.supernet_space`` makes one of a
            build space file).
        data: the data set (its train split; batches as :func:`~nas_sepconv.train.fit` draws them).
        out_dir: the checkpoint folder (:mod:`.checkpoint`), written after every epoch.  A
            checkpoint already there is resumed: the training goes on from its epoch and ends
            with the weights of a run that was never stopped (refused if it was made with
            another space or other settings).
        config: optimizer, schedule, batch size, label smoothing, seed (the ``train:`` section).
        epochs: the epochs (default ``config.epochs``).
        random_subnets: random subnets per step besides the largest and the smallest.
        sampling: how they are drawn (:data:`SAMPLINGS`): ``uniform``, a kind then its options
            (SPOS), or ``fair``, each stage's weight sets in turn (FairNAS).
        device: where to train.
        progress: show the epochs with :mod:`nas_sepconv.progress`.
        on_epoch: called with ``(epoch, mean loss)`` after each epoch's checkpoint is written.

    Returns:
        The trained supernet, in eval mode.
    """
    cfg = config if config is not None else TrainConfig()
    cfg = replace(cfg, epochs=cfg.epochs if epochs is None else epochs)  # validates
    if isinstance(random_subnets, bool) or not isinstance(random_subnets, int) or not 0 <= random_subnets <= 16:
        raise UserInputError("random_subnets", f"expected an integer in [0, 16], got {random_subnets!r}", "use e.g. 2")
    draw = lookup(SAMPLINGS, sampling, field="sampling", what="subnet sampling")
    settings: dict[str, Any] = {"train": cfg.to_dict(), "random_subnets": random_subnets}
    if sampling != "uniform":  # (recorded only otherwise: checkpoints made before the option still resume)
        settings["sampling"] = sampling
    torch.manual_seed(cfg.seed)
    supernet = Supernet(space)
    largest, smallest = space.largest(), space.smallest()

    def sandwich(run: Run, x: Tensor, y: Tensor, rng: random.Random) -> Tensor:
        return _sandwich_step(run, supernet, x, y, [smallest, *draw(space, rng, random_subnets)], largest)

    train_shared(
        supernet,
        data,
        step=sandwich,
        identity=space.to_dict(),
        settings=settings,
        out_dir=out_dir,
        config=cfg,
        device=device,
        progress=progress,
        on_epoch=on_epoch,
    )
    return supernet.eval()


#: one step of a weight-sharing training: ``(run, x, y, rng)`` -> the loss to report, its
#: gradients accumulated (through ``run.scaler``), its paths drawn from ``rng`` (the epoch's)
Step = Callable[[Run, Tensor, Tensor, random.Random], Tensor]


def train_shared(
    supernet: nn.Module,
    data: Dataset,
    *,
    step: Step,
    identity: dict[str, Any],
    settings: dict[str, Any],
    out_dir: str | Path,
    config: TrainConfig,
    device: str | torch.device = "cpu",
    progress: bool = False,
    on_epoch: Callable[[int, float], None] | None = None,
) -> None:
    """Train ``supernet`` in place for ``config.epochs`` epochs of ``step``s, a checkpoint in
    ``out_dir`` after each (:mod:`.checkpoint`: ``identity`` says what supernet it is, ``settings``
    how it trains; a checkpoint of another is refused), resumed from the one there; data-parallel
    under ``torchrun`` (module docstring).  What :func:`train_supernet` and the convert
    supernet's training (:mod:`.convert_training`) share."""
    if not isinstance(data, Dataset):
        raise UserInputError(
            "data", f"expected a nas_sepconv Dataset, got {type(data).__name__}", "load one with load_dataset"
        )
    folder = ensure_writable_dir(out_dir, "out_dir")
    cfg = config
    done = _resumable(folder, identity, settings, cfg.epochs)
    run = Run.start(supernet, data, None, None, cfg, torch.device(device), None)
    history: list[float] = []
    if done is not None:
        weights, state = done.files(folder)
        load_weights(supernet, weights)
        _load_state(run, load_training(state))
        history = list(done.history)
    first = 1 if done is None else done.epoch + 1
    main = run.world.rank == 0
    if run.world.distributed:
        _broadcast_parameters(supernet)
    with show_progress(progress and main, "supernet", cfg.epochs, unit="epochs", resume=done is not None) as bar:
        bar.update(first - 1)
        for epoch in range(first, cfg.epochs + 1):
            history.append(_train_epoch(run, supernet, step, epoch))
            checkpoint = Checkpoint(epoch, cfg.epochs, identity, settings, history)
            if run.world.distributed:
                broadcast_buffers(supernet)  # every process ends the epoch with rank 0's statistics
            if main:
                write_checkpoint(folder, checkpoint, supernet, _state(run))
            bar.update(epoch, info=f"loss {history[-1]:.3f}")
            if on_epoch is not None:
                on_epoch(epoch, history[-1])


def _resumable(folder: Path, identity: dict[str, Any], settings: dict[str, Any], epochs: int) -> Checkpoint | None:
    """The checkpoint in ``folder`` to resume, if any; refused if made otherwise."""
    done = read_checkpoint(folder)
    if done is None:
        return None
    fix = "use another out_dir, or delete this one to start again"
    if done.space != identity:
        raise UserInputError("out_dir", f"{folder} holds a supernet of another space", fix)
    if done.settings != settings or done.epochs != epochs:
        raise UserInputError("out_dir", f"{folder} holds a supernet trained with other settings", fix)
    return done


def _state(run: Run) -> dict[str, Any]:
    return {
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
    }


def _load_state(run: Run, state: dict[str, Any]) -> None:
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])


def _batches(run: Run, epoch: int) -> Any:
    """The epoch's batches, from the epoch's own seed (as fit's feed draws them otherwise);
    under torch.distributed this process's slice of each."""
    data = run.feed.data
    n = len(data.train)
    loader = DeviceLoader(
        data.train,
        batch_size=run.cfg.batch_size,
        mean=data.mean,
        std=data.std,
        augment=data.augment,
        shuffle=True,
        drop_last=n >= run.cfg.batch_size,
        seed=run.cfg.seed * _EPOCH_SEED + epoch,
        channels_last=run.cuda and run.cfg.channels_last,
    )
    if not run.world.distributed:
        return loader
    shard, lo = run.feed.shard, run.world.rank * run.feed.shard
    return ((x[lo : lo + shard], y[lo : lo + shard]) for x, y in loader)


def _broadcast_parameters(supernet: nn.Module) -> None:
    """Rank 0's weights to every process (they start alike anyway: the same seed, or the same
    checkpoint)."""
    with torch.no_grad():
        for p in supernet.parameters():
            on = p.detach().cpu() if torch.distributed.get_backend() != "nccl" else p.detach()
            torch.distributed.broadcast(on, src=0)
            p.copy_(on)


def _average_step(supernet: nn.Module, loss: Tensor, world: World) -> Tensor:
    """Average the step's gradients over the processes (one all-reduce, with the loss); the mean
    loss over the processes.  Every process drew the same subnets, so the same parameters have
    gradients in each.  Alone: the loss."""
    if not world.distributed:
        return loss.detach()
    grads = [p.grad for p in supernet.parameters() if p.grad is not None]
    flat = world.sum(torch.cat([*(g.reshape(-1) for g in grads), loss.detach().float().reshape(1)])) / world.size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
    return flat[-1]


def _train_epoch(run: Run, supernet: nn.Module, step: Step, epoch: int) -> float:
    """One epoch of ``step``s (each one optimizer update), seeded from the epoch; their mean loss."""
    torch.manual_seed(run.cfg.seed * _EPOCH_SEED + epoch)
    rng = random.Random(run.cfg.seed * _EPOCH_SEED + epoch)
    supernet.train()
    total, steps = 0.0, 0
    for number, (x, y) in enumerate(_batches(run, epoch), 1):
        run.optimizer.zero_grad(set_to_none=True)
        loss = _average_step(supernet, step(run, x, y, rng), run.world)
        _check_finite(loss, epoch, number)  # (in every process alike: before the step)
        if run.cfg.grad_clip is not None:
            run.scaler.unscale_(run.optimizer)
            torch.nn.utils.clip_grad_norm_(supernet.parameters(), run.cfg.grad_clip)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        total += loss.item()
        steps = number
    return total / max(steps, 1)


def _sandwich_step(run: Run, supernet: Supernet, x: Tensor, y: Tensor, students: list, largest: Any) -> Tensor:
    """The largest subnet on the labels, then each of ``students`` on its soft outputs; the
    largest's loss."""
    with amp_context(run.device, run.amp_dtype):
        logits = supernet(x, largest)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=run.cfg.label_smoothing)
    run.scaler.scale(loss).backward()
    soft = logits.detach().float().softmax(dim=1)
    for arch in students:
        with amp_context(run.device, run.amp_dtype):
            student = supernet(x, arch).float()
        run.scaler.scale(_soft_cross_entropy(student, soft)).backward()
    return loss.detach()


def _soft_cross_entropy(logits: Tensor, soft: Tensor) -> Tensor:
    """Cross-entropy against the teacher's probabilities (in-place distillation's loss)."""
    return -(soft * logits.log_softmax(dim=1)).sum(dim=1).mean()


def _check_finite(loss: Tensor, epoch: int, step: int) -> None:
    if not torch.isfinite(loss.detach()):
        raise TrainingDiverged(f"the supernet's loss is {loss.item()} at epoch {epoch}, step {step}: lower train.lr")
