"""The run of tests/oneshot/test_supernet_distributed.py: trains a small supernet with
``train_supernet``; the test runs this file in two gloo processes (CPU), each saving its
weights, and the checkpoint rank 0 wrote, to ``OUT/rank<r>.pt``."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from nas_sepconv.data import load_dataset
from nas_sepconv.oneshot import read_checkpoint, train_supernet
from nas_sepconv.search import load_space
from nas_sepconv.search.supernet_space import supernet_space
from nas_sepconv.train import TrainConfig, init_distributed

#: the global batch: 32 images a process in two
CFG = TrainConfig(epochs=2, batch_size=64, lr=0.05, seed=3)


def run(out_dir: Path) -> dict:
    data = load_dataset("digits", subset=192, val_fraction=0.25)
    space = supernet_space(load_space("default"), input_shape=(1, 16, 16), num_classes=10)
    space = replace(space, widths=(0.5,))  # small and quick
    supernet = train_supernet(space, data, out_dir=out_dir, config=CFG, random_subnets=1)
    return {"state": {k: v.clone() for k, v in supernet.state_dict().items()}, "space": space}


if __name__ == "__main__":
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    init_distributed(backend="gloo")
    result = run(out / "supernet")
    dist.barrier()  # rank 0 has written the last checkpoint
    result["checkpoint"] = read_checkpoint(out / "supernet")
    torch.save(result, out / f"rank{dist.get_rank()}.pt")
    dist.destroy_process_group()
