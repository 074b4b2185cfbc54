#!/usr/bin/env python
"""MobileNetV1 (Howard et al., "MobileNets", arXiv:1704.04861) as built by
``nas_sepconv:mobilenet_v1``: its MACs (``ns.count_macs``: conv and linear weights, bias
excluded) and parameters (``ns.count_params``: every parameter, BatchNorm's included) next to
the paper's Tables 4, 6 (width multiplier α) and 7 (resolution), as a Markdown table on stdout.
Seconds on one CPU thread; ``tests/models/test_mobilenet_v1.py`` asserts the same figures.

    python benchmarks/mobilenet_v1_table.py
"""

from __future__ import annotations

import torch

import nas_sepconv as ns

# (table, α, input side, the paper's million MACs, the paper's million parameters)
PAPER = [
    ("4, 6, 7", 1.0, 224, 569, 4.2),
    ("6", 0.75, 224, 325, 2.6),
    ("6", 0.5, 224, 149, 1.3),
    ("6", 0.25, 224, 41, 0.47),
    ("7", 1.0, 192, 418, 4.2),
    ("7", 1.0, 160, 290, 4.2),
    ("7", 1.0, 128, 186, 4.2),
]


def rows() -> list[str]:
    """One Markdown row per configuration of :data:`PAPER`."""
    out = []
    for table, alpha, side, macs_paper, params_paper in PAPER:
        model = ns.model_from_name("nas_sepconv:mobilenet_v1", width_mult=alpha, input_size=side).eval()
        macs = ns.count_macs(model, torch.zeros(1, 3, side, side))
        params = ns.count_params(model)
        error = 100 * (macs / 1e6 - macs_paper) / macs_paper
        out.append(
            f"| {table} | {alpha} | {side} | {macs_paper} | {macs:,} | {error:+.2f} % | {params_paper} | {params:,} |"
        )
    return out


def main() -> None:
    torch.set_num_threads(1)
    print(
        "| paper table | α | input | paper MACs (M) | counted MACs | difference | paper params (M) | counted params |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows()))


if __name__ == "__main__":
    main()
