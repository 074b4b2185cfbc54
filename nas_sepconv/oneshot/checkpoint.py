"""The supernet's checkpoint in a folder, written after every epoch of training so that a killed
run resumes to the same weights.

``epoch<N>.safetensors`` holds the supernet's weights and BatchNorm statistics,
``epoch<N>.pt`` the optimizer's, schedule's and gradient scaler's states (a ``torch.save`` of
tensors, numbers and lists, read back with ``weights_only=True``: nothing read runs code), and
``supernet.json`` what they belong to: the epoch, the space, the training settings.  The JSON is
written last, atomically; it is what makes an epoch's files the checkpoint, so a kill between
the writes leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import UserInputError
from ..files import atomic_path, atomic_write
from ..jsonfile import loads
from .space import SupernetSpace
from .supernet import Supernet

__all__ = ["MANIFEST", "Checkpoint", "load_supernet", "read_checkpoint", "write_checkpoint"]

MANIFEST = "supernet.json"


@dataclass(frozen=True)
class Checkpoint:
    """What ``supernet.json`` records: the last finished ``epoch`` of ``epochs``, the space and
    the training settings (``settings``: a JSON object), each epoch's mean loss (``history``)."""

    epoch: int
    epochs: int
    space: dict[str, Any]
    settings: dict[str, Any]
    history: list[float]

    def files(self, folder: Path) -> tuple[Path, Path]:
        return folder / f"epoch{self.epoch}.safetensors", folder / f"epoch{self.epoch}.pt"


def read_checkpoint(folder: str | Path) -> Checkpoint | None:
    """The checkpoint of ``folder``, or ``None`` when it holds none."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    data = loads(path.read_text(encoding="utf-8"), field="out_dir", what=str(path), fix="delete the folder")
    fields = set(Checkpoint.__dataclass_fields__)
    if not isinstance(data, dict) or set(data) != fields:
        raise UserInputError("out_dir", f"{path} is not a supernet checkpoint", "delete it, or use another folder")
    return Checkpoint(**data)


def write_checkpoint(folder: Path, checkpoint: Checkpoint, supernet: Supernet, training: dict[str, Any]) -> None:
    """Write the weights and ``training`` state of ``checkpoint.epoch``, then the manifest; then
    remove the files of the checkpoint before it."""
    folder.mkdir(parents=True, exist_ok=True)
    previous = read_checkpoint(folder)
    weights, state = checkpoint.files(folder)
    with atomic_path(weights) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in supernet.state_dict().items()}, str(tmp))
    with atomic_path(state) as tmp:
        torch.save(training, tmp)
    atomic_write(folder / MANIFEST, json.dumps(checkpoint.__dict__, indent=1))
    if previous is not None and previous.epoch != checkpoint.epoch:
        for path in previous.files(folder):
            path.unlink(missing_ok=True)


def load_supernet(folder: str | Path, space: SupernetSpace, *, device: str | torch.device = "cpu") -> Supernet:
    """The supernet of ``space`` with the weights of the checkpoint in ``folder`` (its last
    epoch), on ``device``, in eval mode."""
    checkpoint = read_checkpoint(folder)
    if checkpoint is None:
        raise UserInputError("out_dir", f"{folder} holds no supernet ({MANIFEST})", "train one with train_supernet")
    if checkpoint.space != space.to_dict():
        raise UserInputError("space", f"the supernet in {folder} was trained on another space", "pass its space")
    supernet = Supernet(space)
    load_weights(supernet, checkpoint.files(Path(folder))[0])
    return supernet.to(device).eval()


def load_weights(supernet: Supernet, path: Path) -> None:
    """Load a checkpoint's weights (safetensors: no code) into ``supernet``."""
    supernet.load_state_dict(load_file(str(path)))


def load_training(path: Path) -> dict[str, Any]:
    """A checkpoint's optimizer, schedule and scaler states (``weights_only``: no code runs)."""
    return torch.load(path, map_location="cpu", weights_only=True)
