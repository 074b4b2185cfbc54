"""An inherited subnet, ready to evaluate: :func:`inherited_subnet` extracts it and re-estimates
its BatchNorm statistics on a few hundred training images.

The supernet's running statistics are shared by every subnet that ran through it during
training, so they fit none of them; Once-for-All (Cai et al., ICLR 2020, section 3.3) and
BigNAS (Yu et al., ECCV 2020) recompute a subnet's statistics on a small subset of the training
images before measuring its accuracy, as this does.
"""

from __future__ import annotations

import torch.nn as nn

from ..data import Dataset, calibration_batches
from ..errors import UserInputError
from ..models import Arch
from ..train import reestimate_batchnorm
from .supernet import Supernet, extract, resize

__all__ = ["inherited_subnet"]


def inherited_subnet(
    supernet: Supernet, arch: Arch, data: Dataset, *, images: int = 512, batch_size: int = 128, seed: int = 0
) -> nn.Module:
    """The subnet of ``arch`` as a plain model (:func:`~.supernet.extract`), its BatchNorm
    statistics re-estimated on ``images`` un-augmented training images (drawn at random with
    ``seed``) at the arch's input side; on the supernet's device, in eval mode."""
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise UserInputError("images", f"expected a positive integer, got {images!r}", "use e.g. 512")
    model = extract(supernet, arch)
    device = next(model.parameters()).device
    batches = calibration_batches(data, n=images, batch_size=batch_size, seed=seed)
    reestimate_batchnorm(model, [resize(x, arch.input_size) for x in batches], device=device)
    return model
