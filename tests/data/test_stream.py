"""The two data paths: images held once per machine (a memory-mapped decoded cache) or streamed
from disk by DataLoader workers.  They must give the same batches and the same trained model."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from nas_sepconv.data import DeviceLoader, calibration_batches, load_dataset
from nas_sepconv.errors import UserInputError
from nas_sepconv.train import TrainConfig, fit


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NAS_SEPCONV_CACHE", str(tmp_path / "cache"))


def write_noise_tree(root: Path, *, classes: int = 3, n_train: int = 20, n_test: int = 4, size: int = 20) -> Path:
    """An ImageFolder tree of random PNG images (lossless: the pixels are known), of ``size`` px
    (decoded at another size, so the resize is part of what both paths must agree on)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                pixels[..., c] = 255 - c * 60  # the class shows in one channel: a learnable signal
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


def _both(root: Path, **kw):
    held = load_dataset("imagefolder", root=root, stream=False, image_size=16, **kw)
    streamed = load_dataset("imagefolder", root=root, stream=True, image_size=16, **kw)
    return held, streamed


def test_both_paths_hold_the_same_splits_and_statistics(tmp_path):
    held, streamed = _both(write_noise_tree(tmp_path / "tree"), seed=3, val_fraction=0.2)
    assert not held.streamed and streamed.streamed
    assert held.mean == streamed.mean and held.std == streamed.std
    for name in ("train", "val", "test"):
        a, b = getattr(held, name), getattr(streamed, name)
        assert torch.equal(a.y, b.y)
        assert torch.equal(a.take(torch.arange(len(a))), b.take(torch.arange(len(b))))
    with pytest.raises(UserInputError, match="streamed from files, never held whole"):
        streamed.train.x  # noqa: B018 -- the property is what refuses


@pytest.mark.parametrize("workers", [0, 2])
def test_both_paths_give_the_same_augmented_batches(tmp_path, workers):
    held, streamed = _both(write_noise_tree(tmp_path / "tree"))
    kw = dict(batch_size=7, mean=held.mean, std=held.std, augment="crop_flip", shuffle=True, seed=5, resolution=12)
    a = DeviceLoader(held.train, **kw)
    b = DeviceLoader(streamed.train, workers=workers, **kw)
    for _epoch in range(2):  # each epoch draws a new order: both draw the same
        pairs = list(zip(a, b, strict=True))
        assert len(pairs) == len(a) > 1
        for (xa, ya), (xb, yb) in pairs:
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for one, other in zip(
        calibration_batches(held, n=10, batch_size=4), calibration_batches(streamed, n=10, batch_size=4), strict=True
    ):
        assert torch.equal(one, other)


def test_a_model_trains_to_the_same_weights_and_accuracy_on_either_path(tmp_path):
    held, streamed = _both(write_noise_tree(tmp_path / "tree"))
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.05, seed=1)
    results = []
    for data in (held, streamed):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
        result = fit(model, data, config=cfg)
        results.append((result, model.state_dict()))
    (ra, wa), (rb, wb) = results
    assert ra.val_accuracy == rb.val_accuracy and ra.test_accuracy == rb.test_accuracy
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_the_path_follows_the_memory_budget(tmp_path):
    root = write_noise_tree(tmp_path / "tree")
    images = 3 * (20 + 4)
    decoded = images * 3 * 16 * 16
    small = load_dataset("imagefolder", root=root, image_size=16, memory_budget=decoded - 1)
    large = load_dataset("imagefolder", root=root, image_size=16, memory_budget=decoded)
    assert small.streamed and not large.streamed
    assert small.decoded_bytes == large.decoded_bytes == decoded


def test_stream_is_refused_for_a_source_held_in_memory_and_a_bad_budget_is_named():
    with pytest.raises(UserInputError, match="digits is held in memory; only image folders stream") as info:
        load_dataset("digits", stream=True)
    assert info.value.field == "dataset.stream"
    with pytest.raises(UserInputError, match="positive number of bytes") as info:
        load_dataset("digits", memory_budget=0)
    assert info.value.field == "dataset.memory_budget"


_TOUCH_ALL = """
import sys, torch
from nas_sepconv.data import DeviceLoader, load_dataset

def mapping(name):
    # (Rss, Anonymous) in kB of the mapping of the file ``name`` in /proc/self/smaps
    rss = anon = 0
    inside = False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                inside = line.rstrip().endswith(name)
            elif inside and head[0] == "Rss:":
                rss += int(head[1])
            elif inside and head[0] == "Anonymous:":
                anon += int(head[1])
    return rss, anon

torch.set_num_threads(1)
data = load_dataset("imagefolder", root=sys.argv[1], image_size=64, stream=False)
total = 0
for split in (data.train, data.val, data.test):
    for x, _ in DeviceLoader(split, batch_size=64, mean=data.mean, std=data.std, shuffle=True):
        total += int(x.shape[0])
print(total, *mapping("x_train.npy"))
"""


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux's /proc/self/smaps")
def test_a_process_reading_the_cached_images_adds_no_copy_of_them(tmp_path):
    """Every search worker loads the data set; read from the decoded cache, the images are mapped
    from the one file (page cache shared by all processes), not copied into each process."""
    root = write_noise_tree(tmp_path / "tree", classes=2, n_train=300, n_test=20, size=64)
    load_dataset("imagefolder", root=root, image_size=64, stream=False)  # builds the cache
    env = {"NAS_SEPCONV_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    env.update({k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "HOME")})
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_TOUCH_ALL), str(root)], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    seen, rss_kb, anonymous_kb = (int(v) for v in out.stdout.split())
    assert seen == 2 * 320
    # all 600 training-pool images (7.2 MB) were read through the file's mapping, none copied into the process
    assert rss_kb >= 600 * 3 * 64 * 64 // 1024 and anonymous_kb == 0, (rss_kb, anonymous_kb)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_broken_image_met_while_streaming_is_one_line_naming_it(tmp_path, workers):
    root = write_noise_tree(tmp_path / "tree")
    data = load_dataset("imagefolder", root=root, stream=True, image_size=16)
    broken = root / "train" / "class1" / "005.png"
    broken.write_bytes(b"not an image")
    loader = DeviceLoader(data.train, batch_size=8, mean=data.mean, std=data.std, shuffle=False, workers=workers)
    with pytest.raises(UserInputError, match=r"cannot decode the image .*005\.png") as info:
        list(loader)
    assert info.value.field == "dataset.root" and "\n" not in str(info.value)


def write_shards(tree: Path, out: Path, *, per_shard: int = 25, compress: bool = False) -> Path:
    """The ImageFolder ``tree`` as WebDataset-style shards: ``<key>.png`` + ``<key>.cls`` per sample."""
    import io
    import tarfile

    classes = sorted(p.name for p in (tree / "train").iterdir())
    for split in ("train", "test"):
        samples = [(c, p) for c in classes for p in sorted((tree / split / c).iterdir())]
        (out / split).mkdir(parents=True, exist_ok=True)
        for s, lo in enumerate(range(0, len(samples), per_shard)):
            mode = "w:gz" if compress else "w"
            with tarfile.open(out / split / f"{split}-{s:04d}.tar", mode) as tar:
                for c, path in samples[lo : lo + per_shard]:
                    key = f"{c}_{path.stem}"
                    tar.add(path, arcname=f"{key}.png")
                    label = str(classes.index(c)).encode()
                    info = tarfile.TarInfo(f"{key}.cls")
                    info.size = len(label)
                    tar.addfile(info, io.BytesIO(label))
    (out / "classes.txt").write_text("\n".join(classes) + "\n")
    return out


@pytest.mark.parametrize("stream", [False, True])
def test_tar_shards_give_the_images_of_the_folder_they_were_written_from(tmp_path, stream):
    tree = write_noise_tree(tmp_path / "tree")
    shards = write_shards(tree, tmp_path / "shards")
    folder = load_dataset("imagefolder", root=tree, image_size=16, stream=False)
    sharded = load_dataset(f"shards:{shards}", image_size=16, stream=stream)
    assert sharded.streamed is stream and sharded.classes == folder.classes
    assert sharded.mean == folder.mean and sharded.std == folder.std
    for name in ("train", "val", "test"):
        a, b = getattr(folder, name), getattr(sharded, name)
        order_a, order_b = torch.argsort(a.y, stable=True), torch.argsort(b.y, stable=True)
        assert torch.equal(a.y[order_a], b.y[order_b])
    # the same set of images (keys sort class by class, as the folder's files do)
    xa = folder.test.take(torch.arange(len(folder.test)))
    xb = sharded.test.take(torch.arange(len(sharded.test)))
    assert torch.equal(xa, xb)


def test_compressed_shards_and_samples_without_a_class_are_refused_in_one_line(tmp_path):
    tree = write_noise_tree(tmp_path / "tree", n_train=4, n_test=2)
    gz = write_shards(tree, tmp_path / "gz", compress=True)
    with pytest.raises(UserInputError, match="shards must be uncompressed .tar files") as info:
        load_dataset("shards", root=gz)
    assert info.value.field == "dataset.root"
    plain = write_shards(tree, tmp_path / "plain")
    import tarfile

    with tarfile.open(plain / "train" / "train-0000.tar", "a") as tar:
        tar.add(tree / "train" / "class0" / "000.png", arcname="orphan.png")
    with pytest.raises(UserInputError, match=r"the image orphan.png has no orphan.cls"):
        load_dataset("shards", root=plain)
