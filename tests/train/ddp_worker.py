"""The training runs of tests/train/test_distributed.py: each function trains a tiny model with
``fit``/``distill`` and returns what the test compares.  The test calls them in its own process
(one process, the whole batch) and runs this file under ``torchrun --nproc-per-node 2`` (gloo,
CPU), where every rank saves its results to ``OUT/rank<r>.pt``."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from nas_sepconv.data import Dataset, Split
from nas_sepconv.errors import TrainingDiverged, UserInputError
from nas_sepconv.train import TrainConfig, distill, fit, init_distributed

GLOBAL_BATCH = 16


def no_bn_model(dtype: torch.dtype = torch.float32) -> nn.Module:
    """No BatchNorm: the per-rank gradients average to the global batch's exactly."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 3)).to(dtype)


def bn_model() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 3)
    )


def tiny_dataset() -> Dataset:
    """64 training images of 8x8 (uint8), with the CIFAR augmentation (random crop and flip)."""
    g = torch.Generator().manual_seed(0)

    def split(n):
        return Split(
            torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g), torch.randint(0, 3, (n,), generator=g)
        )

    return Dataset(
        name="tiny",
        train=split(64),
        val=split(20),
        test=split(10),
        num_classes=3,
        input_shape=(1, 8, 8),
        mean=(0.5,),
        std=(0.25,),
        augment="crop_flip",
    )


def tensors(n: int, dtype: torch.dtype, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 8, 8, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g))


def loader(ds: TensorDataset, rank: int, world: int, *, shuffle: bool) -> DataLoader:
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=shuffle, seed=3)
    return DataLoader(ds, batch_size=GLOBAL_BATCH // world, sampler=sampler, drop_last=True)


def dataset_run(rank: int, world: int) -> dict:
    """The in-memory Dataset: batch_size is the global batch, split across the processes."""
    model = no_bn_model()
    seen: list[tuple[int, float]] = []  # per training step: the batch size and the sum of its inputs
    model.register_forward_pre_hook(
        lambda m, args: seen.append((args[0].shape[0], args[0].double().sum().item())) if m.training else None
    )
    cfg = TrainConfig(epochs=2, batch_size=GLOBAL_BATCH, lr=0.05, warmup_epochs=0.5)
    result = fit(model, tiny_dataset(), config=cfg)
    return {"state": model.state_dict(), "history": result.history, "test": result.test_accuracy, "seen": seen}


def loader_run(rank: int, world: int) -> dict:
    """The user's DataLoader in float64: per-process batch GLOBAL_BATCH / world."""
    model = no_bn_model(torch.float64)
    train = loader(tensors(64, torch.float64, 4), rank, world, shuffle=True)
    val = loader(tensors(32, torch.float64, 5), rank, world, shuffle=False)
    cfg = TrainConfig(epochs=2, lr=0.05, optimizer="adamw", schedule="cosine", grad_clip=1.0)
    result = fit(model, train, val=val, config=cfg)
    return {"state": model.state_dict(), "history": result.history, "sampler_epoch": train.sampler.epoch}


def mapstyle_run(rank: int, world: int) -> dict:
    """A TensorDataset: fit makes the DataLoader, TrainConfig.batch_size the global batch."""
    model = no_bn_model(torch.float64)
    cfg = TrainConfig(epochs=2, batch_size=GLOBAL_BATCH, lr=0.05)
    result = fit(model, tensors(64, torch.float64, 10), val=tensors(30, torch.float64, 11), config=cfg)
    return {"state": model.state_dict(), "history": result.history}


def distill_bn_run(rank: int, world: int) -> dict:
    """distill with BatchNorm and a feature hint; stderr captured (progress on rank 0 only)."""
    teacher, student = bn_model(), bn_model()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.1 * torch.randn_like(p))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        result = distill(
            student,
            teacher,
            loader(tensors(64, torch.float32, 6), rank, world, shuffle=True),
            val=loader(tensors(32, torch.float32, 7), rank, world, shuffle=False),
            config=TrainConfig(epochs=1, lr=0.05),
            features=["2"],
            progress=True,
        )
    unchanged = all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    return {
        "state": student.state_dict(),
        "history": result.history,
        "stderr": err.getvalue(),
        "teacher_unchanged": unchanged,
        "teacher_training": teacher.training,
    }


def refused_run(rank: int, world: int) -> dict:
    """A DataLoader without a DistributedSampler: refused under DDP, before any collective."""
    plain = DataLoader(tensors(32, torch.float32, 8), batch_size=8, shuffle=True)
    try:
        fit(no_bn_model(), plain, config=TrainConfig(epochs=1))
    except UserInputError as e:
        return {"error": str(e)}
    return {"error": None}


class _NanOnRank1(nn.Module):
    """Finite on rank 0, NaN on rank 1: the processes must still stop together."""

    def __init__(self):
        super().__init__()
        self.net = no_bn_model()

    def forward(self, x):
        out = self.net(x)
        return out * float("nan") if dist.is_initialized() and dist.get_rank() == 1 else out


def diverged_run(rank: int, world: int) -> dict:
    try:
        fit(
            _NanOnRank1(),
            loader(tensors(64, torch.float32, 9), rank, world, shuffle=True),
            config=TrainConfig(epochs=1),
        )
    except TrainingDiverged as e:
        return {"error": str(e)}
    return {"error": None}


RUNS = {
    "dataset": dataset_run,
    "loader": loader_run,
    "mapstyle": mapstyle_run,
    "distill_bn": distill_bn_run,
    "refused": refused_run,
    "diverged": diverged_run,
}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    init_distributed(backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {name: run(rank, world) for name, run in RUNS.items()}
    torch.save(results, out / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
