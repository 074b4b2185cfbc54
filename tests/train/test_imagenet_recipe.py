"""The README's ImageNet recipe (section "Converting an ImageNet model on your own data") runs as
written under ``torchrun --nproc-per-node 2`` (gloo, CPU), and as one plain process, on a tiny
fake ImageFolder of JPEGs.
ResNet-50 at 224x224 would take hours on the CPU, so the model, image size and counts are swapped
for small ones by exact text replacements (each must be found).  Under torchrun about 20 s on
2 shared CPU cores (two processes and torchrun's agent start): marked slow; one process is not."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nas_sepconv as ns

REPO = Path(__file__).resolve().parents[2]
HEADING = "## Converting an ImageNet model on your own data"
SHRINK = {  # README text -> the tiny run's
    "torchvision.models.resnet50(weights=None)": "nas_sepconv.models.cifar_resnet18(num_classes=3, width=4)",
    'model="torchvision:resnet50"': 'model="nas_sepconv:cifar_resnet18", model_kwargs={"num_classes": 3, "width": 4}',
    "224": "32",
    "Resize(256)": "Resize(36)",
    "[:512]": "[:16]",
    "num_workers=8": "num_workers=0",
    "batch_size=64": "batch_size=4",
    "batch_size=128": "batch_size=6",
}


def recipe_script() -> str:
    """The first python block after the section's heading, shrunk."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index(HEADING) :]
    code = re.search(r"^```python\n(.*?)^```", section, re.S | re.M).group(1)
    for old, new in SHRINK.items():
        assert old in code, f"the README recipe no longer has {old!r}: update SHRINK"
        code = code.replace(old, new)
    return "import nas_sepconv.models\n" + code


def fake_imagefolder(root: Path) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 12), ("val", 4)):
        for cls in ("n01", "n02", "n03"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = torch.randint(0, 256, (40, 40, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / cls / f"{i}.JPEG", format="JPEG")


def _environment() -> dict[str, str]:
    """This environment, without torchrun's variables, with this checkout first on the path."""
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


@pytest.mark.slow
def test_readme_imagenet_recipe_runs_under_torchrun(tmp_path):
    fake_imagefolder(tmp_path / "imagenet")
    (tmp_path / "convert_imagenet.py").write_text(recipe_script())
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "convert_imagenet.py",
        str(tmp_path / "imagenet"),
    ]
    done = subprocess.run(cmd, cwd=tmp_path, env=_environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("top-1 after one epoch:") == 1  # rank 0 alone prints
    model = ns.load_model(tmp_path / "resnet50_dwsep.safetensors")
    assert ns.plan_of(model).converted and model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_readme_imagenet_recipe_also_runs_as_one_process(tmp_path):
    """The README says the script "also runs as `python convert_imagenet.py`": without torchrun
    there is no process group, and the loaders are then not sharded."""
    fake_imagefolder(tmp_path / "imagenet")
    (tmp_path / "convert_imagenet.py").write_text(recipe_script())
    cmd = [sys.executable, "convert_imagenet.py", str(tmp_path / "imagenet")]
    done = subprocess.run(cmd, cwd=tmp_path, env=_environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("top-1 after one epoch:") == 1
    model = ns.load_model(tmp_path / "resnet50_dwsep.safetensors")
    assert ns.plan_of(model).converted and model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
