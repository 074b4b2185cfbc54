"""Tests of nas_sepconv.data: data sets, splits, the device-resident loader, the decode cache."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nas_sepconv.data import (
    DATASETS,
    DataSource,
    DeviceLoader,
    Split,
    calibration_batches,
    dataset_names,
    find_dataset,
    load_dataset,
)
from nas_sepconv.data import arrays as arrays_mod
from nas_sepconv.data import cifar as cifar_mod
from nas_sepconv.data import datasets as data_mod
from nas_sepconv.data import folders as folders_mod
from nas_sepconv.data import sources as sources_mod
from nas_sepconv.errors import UserInputError
from nas_sepconv.train import reestimate_batchnorm

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_CIFAR = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """Never write to the user's ~/.cache from the tests."""
    monkeypatch.setenv("NAS_SEPCONV_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _hashes(x: torch.Tensor) -> list[str]:
    return [hashlib.sha1(img.numpy().tobytes()).hexdigest() for img in x]


def _write_tree(
    root: Path, classes=("cat", "ant", "bee"), n_train=6, n_test=2, size=32, mode="RGB", ext="png", test_name="test"
):
    """A tiny ImageFolder tree; every image is one constant colour, unique across the tree."""
    from PIL import Image

    value = 0
    for split, n in (("train", n_train), (test_name, n_test)):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                value += 3
                colour = value if mode == "L" else (value, 255 - value, 7)
                Image.new(mode, (size, size), colour).save(root / split / c / f"{i:03d}.{ext}")
    return root


# --------------------------------------------------------------------------------------------
# digits


def test_digits_shapes(digits):
    assert digits.input_shape == (1, 16, 16)
    assert digits.num_classes == 10
    assert digits.augment == "shift"
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    assert len(digits.test) == round(0.2 * 1797)
    assert len(digits.val) == round(0.1 * (1797 - len(digits.test)))
    for s in (digits.train, digits.val, digits.test):
        assert s.x.dtype == torch.float32 and s.x.shape[1:] == (1, 16, 16)
        assert s.y.dtype == torch.long and s.y.shape == (len(s),)
        assert float(s.x.min()) >= 0.0 and float(s.x.max()) <= 1.0
    assert len(digits.mean) == len(digits.std) == 1
    assert 0.2 < digits.mean[0] < 0.4 and digits.std[0] > 0


def test_digits_splits_partition_the_data(digits):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    full = F.interpolate(
        torch.from_numpy(bunch.images.astype(np.float32) / 16).unsqueeze(1),
        size=(16, 16),
        mode="bilinear",
        align_corners=False,
    ).clamp(0, 1)
    ours = torch.cat([digits.train.x, digits.val.x, digits.test.x])
    labels = torch.cat([digits.train.y, digits.val.y, digits.test.y])
    assert sorted(zip(_hashes(ours), labels.tolist())) == sorted(zip(_hashes(full), bunch.target.tolist()))


def test_digits_splits_are_stratified(digits):
    for s in (digits.train, digits.val, digits.test):
        counts = torch.bincount(s.y, minlength=10).float()
        expected = len(s) / 10
        assert (counts - expected).abs().max() <= max(2.0, 0.1 * expected)


def test_val_split_is_seeded_and_test_split_fixed():
    a, b, c = load_dataset("digits", seed=0), load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.y, b.train.y)
    assert not torch.equal(a.val.x, c.val.x)
    assert torch.equal(a.test.x, c.test.x)


def test_subset_keeps_at_most_that_many_training_images():
    d = load_dataset("digits", subset=200, val_fraction=0.25)
    assert len(d.train) + len(d.val) == 200 and len(d.val) == 50
    assert len(d.test) == 359
    counts = torch.bincount(torch.cat([d.train.y, d.val.y]), minlength=10)
    assert int(counts.min()) >= 19 and int(counts.max()) <= 21


def test_image_size_for_digits():
    d = load_dataset("digits", image_size=8)
    assert d.input_shape == (1, 8, 8) and d.train.x.shape[-1] == 8


def test_dataset_to_moves_splits(digits):
    moved = digits.to("cpu")
    assert moved.train.device.type == "cpu" and moved.name == digits.name and len(moved.val) == len(digits.val)


def test_stratified_take_is_disjoint_and_exact():
    y = np.repeat(np.arange(7), [3, 10, 25, 1, 8, 8, 45])
    taken, rest = arrays_mod.stratified_take(y, 20, np.random.default_rng(3))
    assert len(taken) == 20 and len(rest) == len(y) - 20
    assert set(taken).isdisjoint(rest) and set(taken) | set(rest) == set(range(len(y)))
    assert np.bincount(y[taken], minlength=7)[6] == 9  # 20 * 45 / 100


# --------------------------------------------------------------------------------------------
# DeviceLoader


def _loader(split, d, **kw):
    kw.setdefault("shuffle", False)
    return DeviceLoader(split, batch_size=kw.pop("batch_size", 64), mean=d.mean, std=d.std, **kw)


def test_loader_shapes_and_len(digits):
    loader = _loader(digits.train, digits, batch_size=100)
    batches = list(loader)
    assert len(loader) == len(batches) == -(-len(digits.train) // 100)
    x, y = batches[0]
    assert x.shape == (100, 1, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.long
    assert batches[-1][0].shape[0] == len(digits.train) % 100
    dropped = _loader(digits.train, digits, batch_size=100, drop_last=True)
    assert len(dropped) == len(digits.train) // 100 == len(list(dropped))


def test_loader_normalises_without_touching_the_split(digits):
    before = digits.train.x.clone()
    x = torch.cat([b for b, _ in _loader(digits.train, digits, batch_size=512)])
    assert torch.equal(digits.train.x, before)
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05
    assert torch.allclose(x, (before - digits.mean[0]) / digits.std[0], atol=1e-5)


def test_loader_uint8_is_scaled_to_unit_range():
    split = Split(torch.full((4, 3, 8, 8), 255, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))
    x, _ = next(iter(DeviceLoader(split, batch_size=4, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0), shuffle=False)))
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([2.0, 1.0, 0.5]))


def _shifted_versions(img: torch.Tensor, pad: int, flip: bool) -> list[torch.Tensor]:
    padded = F.pad(img, (pad, pad, pad, pad))
    h, w = img.shape[-2:]
    out = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[..., dy : dy + h, dx : dx + w]
            out.append(crop)
            if flip:
                out.append(crop.flip(-1))
    return out


@pytest.mark.parametrize("augment,pad,flip", [("shift", 2, False), ("crop_flip", 4, True)])
def test_augmentation_is_a_random_crop_and_keeps_labels(digits, augment, pad, flip):
    plain = _loader(digits.train, digits, batch_size=32)
    aug = _loader(digits.train, digits, batch_size=32, augment=augment)
    (x0, y0), (x1, y1) = next(iter(plain)), next(iter(aug))
    assert torch.equal(y0, y1)
    assert not torch.equal(x0, x1)
    # Each augmented image is a (flipped) crop of the zero-padded original, in pixel space.
    raw = digits.train.x[:32]
    pixels = x1 * digits.std[0] + digits.mean[0]
    for i in range(8):
        assert any(torch.allclose(pixels[i], v, atol=1e-5) for v in _shifted_versions(raw[i], pad, flip))


def test_crop_flip_flips_some_images():
    img = torch.arange(64, dtype=torch.uint8).reshape(1, 1, 8, 8).repeat(64, 3, 1, 1)
    split = Split(img, torch.arange(64))
    loader = DeviceLoader(split, batch_size=64, mean=(0, 0, 0), std=(1, 1, 1), augment="crop_flip", shuffle=False)
    x, _ = next(iter(loader))
    centre_row = x[:, 0, 4] * 255  # column order of a middle row: increasing unless flipped
    diffs = centre_row[:, 5] - centre_row[:, 3]
    assert (diffs > 0).any() and (diffs < 0).any()


def test_loader_is_deterministic_given_seed(digits):
    def run(seed):
        loader = _loader(digits.train, digits, batch_size=128, augment="shift", shuffle=True, seed=seed)
        return [list(loader), list(loader)]  # two epochs

    a, b, c = run(5), run(5), run(6)
    for (xa, ya), (xb, yb) in zip(a[0] + a[1], b[0] + b[1]):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a[0][0][1], c[0][0][1])
    assert not torch.equal(a[0][0][1], a[1][0][1])  # a new order every epoch
    assert sorted(torch.cat([y for _, y in a[0]]).tolist()) == sorted(digits.train.y.tolist())


def test_loader_resolution_and_channels_last(digits):
    x, _ = next(iter(_loader(digits.train, digits, batch_size=16, resolution=12, channels_last=True)))
    assert x.shape == (16, 1, 12, 12)
    assert x.is_contiguous(memory_format=torch.channels_last)
    x, _ = next(iter(_loader(digits.train, digits, batch_size=16, resolution=24)))
    assert x.shape == (16, 1, 24, 24)


def test_loader_rejects_bad_arguments(digits):
    with pytest.raises(UserInputError, match="augment"):
        _loader(digits.train, digits, augment="mixup")
    with pytest.raises(UserInputError, match="batch_size"):
        _loader(digits.train, digits, batch_size=0)
    with pytest.raises(UserInputError, match="dataset.mean"):
        DeviceLoader(digits.train, batch_size=4, mean=(0.1, 0.2), std=(1, 1), shuffle=False)


def test_calibration_batches(digits):
    batches = calibration_batches(digits, n=100, batch_size=32, seed=1)
    assert [b.shape[0] for b in batches] == [32, 32, 32, 4]
    again = calibration_batches(digits, n=100, batch_size=32, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    assert batches[0].shape[1:] == (1, 16, 16)
    val = calibration_batches(digits, n=10_000, batch_size=512, split="val")
    assert sum(b.shape[0] for b in val) == len(digits.val)
    with pytest.raises(UserInputError, match="split"):
        calibration_batches(digits, split="holdout")


def test_calibration_batches_mix_classes_of_a_class_sorted_split(digits):
    """ImageFolder trees are stored class by class; calibration batches must still mix the
    classes, or BatchNorm re-estimation (an average of per-batch variances) loses the variance
    between classes."""
    y = torch.arange(10).repeat_interleave(100)  # class by class
    x = (y * 25).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()  # brightness = class
    data = dataclasses.replace(digits, train=Split(x, y), input_shape=(1, 4, 4), mean=(0.5,), std=(0.25,))
    batches = calibration_batches(data, n=512, batch_size=64, seed=0)
    assert all(len(torch.unique(b)) >= 5 for b in batches)  # each batch holds several classes
    bn = torch.nn.BatchNorm2d(1)
    reestimate_batchnorm(bn, batches)
    everything = torch.cat(batches)
    assert torch.allclose(bn.running_mean, everything.mean((0, 2, 3)), atol=1e-4)
    assert torch.allclose(bn.running_var, everything.var((0, 2, 3)), rtol=0.1)  # single-class batches: ~0


# --------------------------------------------------------------------------------------------
# cifar10 / imagefolder / torchvision


def test_cifar10_from_imagefolder_tree(tmp_path):
    root = _write_tree(tmp_path / "tree", ext="jpg")
    d = load_dataset("cifar10", root=root, val_fraction=0.2)
    assert d.classes == ("ant", "bee", "cat")
    assert d.num_classes == 3 and d.input_shape == (3, 32, 32) and d.augment == "crop_flip"
    assert len(d.train) + len(d.val) == 18 and len(d.val) == 4 and len(d.test) == 6
    assert d.train.x.dtype == torch.uint8
    assert sorted(d.test.y.tolist()) == [0, 0, 1, 1, 2, 2]


def test_imagefolder_splits_are_disjoint_and_cached(tmp_path, monkeypatch):
    root = _write_tree(tmp_path / "tree", size=40)  # PNG: exact colours
    d = load_dataset("cifar10", root=root, val_fraction=0.25)
    assert d.input_shape == (3, 32, 32)  # resized at load
    ids = {name: set(s.x[:, 0, 0, 0].tolist()) for name, s in (("train", d.train), ("val", d.val), ("test", d.test))}
    assert len(ids["train"]) == len(d.train) and len(ids["val"]) == len(d.val)
    assert (
        ids["train"].isdisjoint(ids["val"])
        and ids["train"].isdisjoint(ids["test"])
        and ids["val"].isdisjoint(ids["test"])
    )
    assert len(d.val) == 4 and set(torch.bincount(d.val.y).tolist()) <= {1, 2}

    cached = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(cached) == 1

    def no_decoding(*args, **kw):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(folders_mod, "decode_files", no_decoding)
    again = load_dataset("cifar10", root=root, val_fraction=0.25)
    assert torch.equal(again.train.x, d.train.x) and again.mean == d.mean

    # A changed folder is decoded again (its time stamp moved on explicitly: a clock coarser than
    # the two writes must not hide the change).
    ant = root / "train" / "ant"
    before = ant.stat().st_mtime_ns
    _write_tree(tmp_path / "extra", classes=("ant",), n_train=1, n_test=0)
    os.replace(tmp_path / "extra" / "train" / "ant" / "000.png", ant / "new.png")
    os.utime(ant, ns=(before + 10**9, before + 10**9))
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset("cifar10", root=root)


def test_cifar10_from_tar_archive(tmp_path):
    tree = _write_tree(tmp_path / "tree", ext="jpg")
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree / "train", arcname="train")
        tar.add(tree / "test", arcname="test")
    d = load_dataset("cifar10", root=archive, val_fraction=0.2)
    ref = load_dataset("cifar10", root=tree, val_fraction=0.2)
    assert d.classes == ref.classes and torch.equal(d.train.x, ref.train.x) and torch.equal(d.test.y, ref.test.y)


def _write_batches(folder: Path, per_batch=4, test=6, bytes_keys=False) -> tuple[np.ndarray, np.ndarray]:
    """Fake cifar-10-batches-py files (keys as bytes, like the Python 2 originals, or as str)."""
    folder.mkdir(parents=True)
    k = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for i in range(1, 6):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({k("data"): data, k("labels"): labels}, f)
        xs.append(data)
        ys += labels
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({k("data"): rng.integers(0, 256, (test, 3072), dtype=np.uint8), k("labels"): list(range(test))}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({k("label_names"): [k(n) for n in cifar_mod._CIFAR10_CLASSES]}, f)
    return np.concatenate(xs), np.asarray(ys)


@pytest.mark.parametrize("bytes_keys", [True, False])
def test_cifar10_from_python_batches(tmp_path, bytes_keys):
    x, y = _write_batches(tmp_path / "cifar-10-batches-py", bytes_keys=bytes_keys)
    for root in (tmp_path / "cifar-10-batches-py", tmp_path):
        d = load_dataset("cifar10", root=root, val_fraction=0.25)
        assert d.classes[0] == "airplane" and d.num_classes == 10
        assert len(d.train) + len(d.val) == 20 and len(d.test) == 6
        assert d.test.y.tolist() == list(range(6))
        pool_x = torch.cat([d.train.x, d.val.x]).reshape(-1, 3072).numpy()
        assert sorted(map(bytes, pool_x)) == sorted(map(bytes, x))
        # Official layout: 1024 red, then green, then blue, each row-major.
        first = torch.from_numpy(x[0].reshape(3, 32, 32))
        assert any(torch.equal(first, img) for img in torch.cat([d.train.x, d.val.x]))


def test_cifar10_from_the_official_archive_as_downloaded(tmp_path, monkeypatch):
    """cifar-10-python.tar.gz, not extracted: as data.root, and dropped into the per-user folder."""
    _write_batches(tmp_path / "cifar-10-batches-py")
    ref = load_dataset("cifar10", root=tmp_path / "cifar-10-batches-py", val_fraction=0.25)
    folder = tmp_path / "data" / "cifar10"
    folder.mkdir(parents=True)
    archive = folder / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setenv("NAS_SEPCONV_DATA", str(tmp_path / "data"))
    for d in (load_dataset("cifar10", root=archive, val_fraction=0.25), load_dataset("cifar10", val_fraction=0.25)):
        assert d.classes == ref.classes and torch.equal(d.train.x, ref.train.x) and torch.equal(d.test.y, ref.test.y)


def test_imagefolder_name_grayscale_and_val_folder(tmp_path):
    root = _write_tree(tmp_path / "gray", mode="L", size=20, test_name="val")
    d = load_dataset(f"imagefolder:{root}", image_size=8)
    assert d.input_shape == (1, 8, 8) and len(d.test) == 6
    same = load_dataset("imagefolder", root=root, image_size=8)
    assert torch.equal(same.test.x, d.test.x)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"name": "nope"}, "dataset"),
        ({"name": "torchvision:NoSuchSet", "root": "."}, "dataset"),
        ({"name": "cifar10"}, "dataset.root"),
        ({"name": "cifar10", "root": "/definitely/not/here"}, "dataset.root"),
        ({"name": "imagefolder:/definitely/not/here"}, "dataset.root"),
        ({"name": "digits", "val_fraction": 1.5}, "dataset.val_fraction"),
        ({"name": "digits", "subset": 0}, "dataset.subset"),
        ({"name": "digits", "image_size": -1}, "dataset.image_size"),
    ],
)
def test_bad_input_names_the_field(kwargs, field):
    with pytest.raises(UserInputError) as info:
        load_dataset(**kwargs)
    message = str(info.value)
    assert message.startswith(f"{field}:") and "\n" not in message


def test_empty_or_malformed_folders(tmp_path):
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "test" / "cat").mkdir(parents=True)
    with pytest.raises(UserInputError, match=r"^dataset\.root: no images"):
        load_dataset("cifar10", root=tmp_path / "empty")
    (tmp_path / "flat").mkdir()
    with pytest.raises(UserInputError, match=r"^dataset\.root:"):
        load_dataset("cifar10", root=tmp_path / "flat")
    (tmp_path / "notest" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(UserInputError, match="test/"):
        load_dataset("imagefolder", root=tmp_path / "notest")


def test_torchvision_files_absent(tmp_path):
    pytest.importorskip("torchvision")
    with pytest.raises(UserInputError, match=r"^dataset\.root: torchvision:CIFAR10 files not found"):
        load_dataset("torchvision:cifar10", root=tmp_path)
    with pytest.raises(UserInputError, match=r"^dataset\.root"):
        load_dataset("torchvision:FashionMNIST")


def test_torchvision_dataset_from_files(tmp_path, monkeypatch):
    pytest.importorskip("torchvision")
    x, y = _write_batches(tmp_path / "cifar-10-batches-py")
    # torchvision checks the md5 sums of the official files; these are fakes.
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kwargs: True)
    d = load_dataset("torchvision:CIFAR10", root=tmp_path, val_fraction=0.25)
    assert d.input_shape == (3, 32, 32) and len(d.test) == 6 and d.augment == "crop_flip"
    assert sorted(map(bytes, torch.cat([d.train.x, d.val.x]).reshape(-1, 3072).numpy())) == sorted(map(bytes, x))


# --------------------------------------------------------------------------------------------
# The real CIFAR-10 (JPEG q75) from ../shared/data, when present.


@pytest.fixture(scope="module")
def shared_cifar_tree(tmp_path_factory):
    if not SHARED_CIFAR.is_file():
        pytest.skip("../shared/data/cifar10-jpeg.tar.gz is absent")
    root = tmp_path_factory.mktemp("cifar10")
    with tarfile.open(SHARED_CIFAR) as tar:
        tar.extractall(root)
    return root


@pytest.mark.slow
def test_shared_cifar10_loads_and_caches(shared_cifar_tree, monkeypatch):
    d = load_dataset("cifar10", root=shared_cifar_tree)
    assert (len(d.train), len(d.val), len(d.test)) == (45_000, 5_000, 10_000)
    assert d.classes == cifar_mod._CIFAR10_CLASSES and d.input_shape == (3, 32, 32)
    assert torch.bincount(d.test.y).tolist() == [1000] * 10
    assert abs(d.mean[0] - 0.491) < 0.01 and abs(d.std[0] - 0.247) < 0.01

    def no_decoding(*args, **kw):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(folders_mod, "decode_files", no_decoding)  # the second load reads the cache only
    again = load_dataset("cifar10", root=shared_cifar_tree)
    assert torch.equal(again.val.x, d.val.x)


# --------------------------------------------------------------------------------------------
# Issue 17: damaged, doctored and malformed input files


def _rewrite_batch(folder: Path, name: str, entry, protocol=pickle.DEFAULT_PROTOCOL) -> Path:
    path = folder / name
    path.write_bytes(pickle.dumps(entry, protocol=protocol))
    return path


@pytest.mark.parametrize(
    "entry, words",
    [
        ({"data": np.zeros((4, 10), np.uint8), "labels": [0, 1, 2, 3]}, "shape (4, 10)"),
        ({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2]}, "4 images but 3 labels"),
        ({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 10]}, "outside 0..9"),
        ({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, -1, 3]}, "outside 0..9"),
        ({"data": np.full((4, 3072), 300, np.int64), "labels": [0, 1, 2, 3]}, "outside 0..255"),
        ({"data": np.zeros((4, 3072), np.float32), "labels": [0, 1, 2, 3]}, "not N x 3072 integers"),
        ({"data": [[1, 2], [3]], "labels": [0, 1]}, "data"),
        ({"data": np.zeros((4, 3072), np.uint8), "labels": [[0, 1], [2, 3]]}, "labels of shape"),
        ({"data": np.zeros((4, 3072), np.uint8)}, "not a CIFAR-10 batch"),
        ([1, 2, 3], "not a CIFAR-10 batch"),
    ],
    ids=[
        "data-100x10",
        "labels-count",
        "label-10",
        "label-negative",
        "pixel-300",
        "float-data",
        "ragged",
        "labels-2d",
        "no-labels",
        "a-list",
    ],
)
def test_cifar_batch_of_the_wrong_shape_names_the_file(tmp_path, entry, words):
    folder = tmp_path / "cifar-10-batches-py"
    _write_batches(folder)
    bad = _rewrite_batch(folder, "data_batch_3", entry)
    with pytest.raises(UserInputError) as info:
        load_dataset("cifar10", root=tmp_path)
    message = str(info.value)
    assert message.startswith("dataset.root:") and "\n" not in message
    assert str(bad) in message and words in message


def test_cifar_batch_truncated_or_meta_wrong_names_the_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_batches(folder)
    good = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(good[: len(good) // 2])
    with pytest.raises(UserInputError, match=r"^dataset\.root: cannot read .*test_batch as a CIFAR batch") as info:
        load_dataset("cifar10", root=folder)
    assert "\n" not in str(info.value)
    (folder / "test_batch").write_bytes(good)
    _rewrite_batch(folder, "batches.meta", {"label_names": [b"cat", b"dog"]})
    with pytest.raises(UserInputError, match=r"^dataset\.root: .*batches\.meta does not hold 10 label_names"):
        load_dataset("cifar10", root=folder)


@pytest.mark.parametrize("protocol", [0, 1, 2])
def test_cifar_batches_repickled_by_python3_at_old_protocols_load(tmp_path, protocol):
    """Python 3 pickles bytes at protocol <= 2 as _codecs.encode(str, 'latin1'): allowed, nothing else."""
    folder = tmp_path / "cifar-10-batches-py"
    x, _ = _write_batches(folder, bytes_keys=True)
    for p in folder.iterdir():
        entry = pickle.loads(p.read_bytes())
        p.write_bytes(pickle.dumps(entry, protocol=protocol))
    assert b"_codecs" in (folder / "data_batch_1").read_bytes()
    d = load_dataset("cifar10", root=folder, val_fraction=0.25)
    assert d.classes == cifar_mod._CIFAR10_CLASSES and len(d.test) == 6
    assert sorted(map(bytes, torch.cat([d.train.x, d.val.x]).reshape(-1, 3072).numpy())) == sorted(map(bytes, x))


class _Evil:
    """Pickles as a call of ``func(*args)``: what a doctored batch file would hold."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _evil_payloads(marker: Path) -> dict:
    import builtins
    import codecs as codecs_mod
    import subprocess

    return {
        "os.system": _Evil(os.system, f"touch {marker}"),
        "builtins.eval": _Evil(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
        "builtins.exec": _Evil(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.Popen": _Evil(subprocess.Popen, ["touch", str(marker)]),
        "numpy.save": _Evil(np.save, str(marker), np.zeros(1)),
        "numpy.fromfile": _Evil(np.fromfile, "/etc/hostname"),
        "_codecs.decode": _Evil(codecs_mod.decode, b"eJwDAAAAAAE=", "base64"),
        "_codecs.encode(zlib)": _Evil(codecs_mod.encode, b"x" * 10, "zlib"),
    }


def _record_calls(monkeypatch, evil: _Evil) -> list[tuple]:
    """Replace the payload's function, where pickle would find it (``posix.system`` for
    ``os.system``), by one that records a call with the payload's arguments instead of making
    it (other calls go through): what the loader calls is then known when it returns."""
    module = importlib.import_module(evil.func.__module__)
    real, calls = getattr(module, evil.func.__name__), []

    def recorder(*args, **kwargs):
        if args == evil.args:
            calls.append(args)
            return None
        return real(*args, **kwargs)

    monkeypatch.setattr(module, evil.func.__name__, recorder)
    return calls


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
@pytest.mark.parametrize("payload", list(_evil_payloads(Path("m"))))
def test_doctored_cifar_batch_is_refused_and_runs_nothing(tmp_path, monkeypatch, payload, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    _write_batches(folder)
    marker = tmp_path / "pwned"
    evil = _evil_payloads(marker)[payload]
    bad = _rewrite_batch(folder, "data_batch_2", {b"data": evil, b"labels": [0, 1, 2, 3]}, protocol=protocol)
    # the payload is real: plain pickle runs it (only where running it is harmless to check)
    if payload in ("os.system", "builtins.eval", "builtins.exec", "subprocess.Popen", "numpy.save"):
        sentinel = tmp_path / "real_run"
        real = _rewrite_batch(tmp_path, "real_batch", {b"data": _evil_payloads(sentinel)[payload]}, protocol=protocol)
        made = pickle.loads(real.read_bytes())[b"data"]
        if payload == "subprocess.Popen":
            assert made.wait() == 0  # Popen returns before touch has run: wait for it
        assert sentinel.exists() or Path(f"{sentinel}.npy").exists()
    calls = _record_calls(monkeypatch, evil)
    with pytest.raises(UserInputError) as info:
        load_dataset("cifar10", root=folder)
    message = str(info.value)
    assert message.startswith("dataset.root:") and "\n" not in message and str(bad) in message
    assert calls == []  # the payload was never called (a Popen would be recorded when made, not when run)
    assert not marker.exists() and not Path(f"{marker}.npy").exists()


def _break_one_image(root: Path, which: str = "train/bee/001.jpg", how: str = "truncate") -> Path:
    path = root / which
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 3] if how == "truncate" else b"not an image at all")
    return path


@pytest.mark.parametrize(
    "which", ["train/ant/000.jpg", "train/bee/001.jpg", "test/cat/001.jpg"], ids=["first", "middle", "test-split"]
)
@pytest.mark.parametrize("how", ["truncate", "garbage"])
@pytest.mark.parametrize("name", ["imagefolder", "cifar10"])
def test_broken_image_names_the_file(tmp_path, which, how, name):
    root = _write_tree(tmp_path / "tree", ext="jpg")
    bad = _break_one_image(root, which, how)
    with pytest.raises(UserInputError) as info:
        load_dataset(name, root=root)
    message = str(info.value)
    assert message.startswith("dataset.root: cannot decode the image ") and "\n" not in message
    assert str(bad) in message and "re-encode" in message
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing cached


def test_broken_image_in_a_tar_names_the_member(tmp_path):
    tree = _write_tree(tmp_path / "tree", ext="jpg")
    _break_one_image(tree, "train/cat/002.jpg")
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree / "train", arcname="train")
        tar.add(tree / "test", arcname="test")
    with pytest.raises(
        UserInputError, match=r"^dataset\.root: cannot decode the image .*tiny\.tar\.gz:train/cat/002\.jpg"
    ):
        load_dataset("cifar10", root=archive)


def test_broken_image_decoded_by_a_worker_process_names_the_file(tmp_path, monkeypatch):
    """Large folders decode in forked processes: the error still arrives as one UserInputError."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    root = _write_tree(tmp_path / "tree", ext="jpg")
    bad = _break_one_image(root, "train/cat/004.jpg")
    monkeypatch.setattr(folders_mod, "_DECODE_CHUNK", 4)
    monkeypatch.setattr(folders_mod, "_PROCESS_MIN_IMAGES", 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    pools = []
    real_context = multiprocessing.get_context

    def spy_context(method=None):
        ctx = real_context(method)
        pools.append(method)
        return ctx

    monkeypatch.setattr(multiprocessing, "get_context", spy_context)
    with pytest.raises(UserInputError) as info:
        load_dataset("imagefolder", root=root)
    assert pools == ["fork"]  # it did go through worker processes
    message = str(info.value)
    assert message.startswith("dataset.root: cannot decode the image ") and str(bad) in message and "\n" not in message


def test_one_class_imagefolder_is_refused(tmp_path):
    root = _write_tree(tmp_path / "one", classes=("cat",), ext="png")
    for name in ("imagefolder", "cifar10"):
        with pytest.raises(UserInputError, match=r"^dataset\.root: .*images of 1 class \(cat\).*at least 2 classes"):
            load_dataset(name, root=root)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # refused before decoding
    # two class folders, one of them empty: still one class of images
    (root / "train" / "dog").mkdir()
    with pytest.raises(UserInputError, match="at least 2 classes"):
        load_dataset("imagefolder", root=root)
    archive = tmp_path / "one.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root / "train", arcname="train")
        tar.add(root / "test", arcname="test")
    with pytest.raises(UserInputError, match=r"^dataset\.root: .*at least 2 classes"):
        load_dataset("cifar10", root=archive)


def test_one_class_from_any_source_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_batches(folder)
    for i in range(1, 6):
        entry = pickle.loads((folder / f"data_batch_{i}").read_bytes())
        entry["labels"] = [3] * len(entry["labels"])
        _rewrite_batch(folder, f"data_batch_{i}", entry)
    with pytest.raises(UserInputError, match=r"^dataset: cifar10 has images of fewer than 2 classes"):
        load_dataset("cifar10", root=folder)


def _cli_flags() -> set[str]:
    import typer.main

    from nas_sepconv.cli import app

    group = typer.main.get_command(app)  # a click (or typer's own copy of click) group
    flags = {"--help"}
    commands = [group, *getattr(group, "commands", {}).values()]
    for command in commands:
        for param in command.params:
            flags.update(o for o in [*param.opts, *param.secondary_opts] if o.startswith("--"))
    return flags


def _flags_in_error_messages() -> dict[str, set[str]]:
    """``--flag`` words in the string parts of every ``UserInputError(...)`` in the package's source."""
    import ast
    import re

    found: dict[str, set[str]] = {}
    for path in sorted((REPO_ROOT / "nas_sepconv").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            func = getattr(node, "func", None)
            if not (
                isinstance(node, ast.Call) and getattr(func, "id", getattr(func, "attr", None)) == "UserInputError"
            ):
                continue
            for part in ast.walk(node):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", part.value):
                        found.setdefault(flag, set()).add(f"{path.name}:{node.lineno}")
    return found


def test_every_flag_named_in_an_error_message_exists():
    """A hint must name a flag the CLI has (the cifar10 hint named a --data-root that never existed)."""
    flags = _cli_flags()
    assert {"--space", "--trials", "--out", "--storage"} <= flags  # the scan of the CLI works
    mentioned = _flags_in_error_messages()
    assert "--storage" in mentioned  # the scan of the messages works (the CLI's own messages name flags)
    assert {f: sorted(w) for f, w in mentioned.items() if f not in flags} == {}


def test_missing_root_hint_names_what_works():
    for name in ("cifar10", "imagefolder", "torchvision:CIFAR10"):
        if name.startswith("torchvision"):
            pytest.importorskip("torchvision")
        with pytest.raises(UserInputError) as info:
            load_dataset(name)
        message = str(info.value)
        assert message.startswith("dataset.root:") and "--" not in message
        assert "data.root" in message and "root=" in message


@pytest.mark.parametrize(
    "kwargs, field, words",
    [
        ({"image_size": 100_000}, "dataset.image_size", "1..1024"),
        ({"image_size": 1025}, "dataset.image_size", "1..1024"),
        ({"image_size": 10**30}, "dataset.image_size", "1..1024"),
        ({"image_size": 0}, "dataset.image_size", "1..1024"),
        ({"image_size": 32.0}, "dataset.image_size", "1..1024"),
        ({"image_size": True}, "dataset.image_size", "1..1024"),
        ({"subset": 1}, "dataset.subset", ">= 2"),
        ({"subset": -5}, "dataset.subset", ">= 2"),
        ({"subset": 5000.0}, "dataset.subset", ">= 2"),
        ({"subset": True}, "dataset.subset", ">= 2"),
        ({"val_fraction": 0}, "dataset.val_fraction", "(0, 1)"),
        ({"val_fraction": 1}, "dataset.val_fraction", "(0, 1)"),
        ({"val_fraction": 1.0}, "dataset.val_fraction", "(0, 1)"),
        ({"val_fraction": -0.1}, "dataset.val_fraction", "(0, 1)"),
        ({"val_fraction": float("nan")}, "dataset.val_fraction", "(0, 1)"),
        ({"val_fraction": float("inf")}, "dataset.val_fraction", "(0, 1)"),
        ({"val_fraction": "0.1"}, "dataset.val_fraction", "(0, 1)"),
        ({"val_fraction": True}, "dataset.val_fraction", "(0, 1)"),
    ],
)
@pytest.mark.parametrize("name", ["digits", "cifar10"])
def test_sizes_are_refused_before_anything_is_read(tmp_path, monkeypatch, kwargs, field, words, name):
    def no_loading(*args, **kw):
        raise AssertionError("read or decoded the data before checking the sizes")

    for module, loader in (
        (sources_mod, "_load_digits"),
        (sources_mod, "load_cifar10"),
        (sources_mod, "load_folder"),
        (cifar_mod, "load_folder"),
        (cifar_mod, "resize_nchw"),
        (folders_mod, "_decode_all"),
        (folders_mod, "decode_files"),
        (arrays_mod, "resize_nchw"),
    ):
        monkeypatch.setattr(module, loader, no_loading)
    root = _write_tree(tmp_path / "tree", n_train=2, n_test=1, size=8)
    with pytest.raises(UserInputError) as info:
        load_dataset(name, root=root, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{field}:") and words in message and "\n" not in message


def test_image_size_within_the_limit_loads():
    d = load_dataset("digits", image_size=data_mod.MAX_IMAGE_SIZE // 16, subset=20)
    assert d.input_shape == (1, 64, 64)


def test_dataset_table_lists_the_names():
    assert list(DATASETS) == ["digits", "cifar10", "imagefolder", "shards", "torchvision"]
    assert dataset_names() == "digits, cifar10, imagefolder:PATH, shards:PATH, torchvision:NAME"
    assert all(isinstance(s, DataSource) for s in DATASETS.values())
    assert [DATASETS[n].image_size for n in DATASETS] == [16, 32, 32, 32, None]
    assert [n for n in DATASETS if DATASETS[n].streams] == ["cifar10", "imagefolder", "shards"]


@pytest.mark.parametrize(
    "name, source, arg",
    [
        ("digits", "digits", ""),
        ("  Digits ", "digits", ""),
        ("cifar10", "cifar10", ""),
        ("CIFAR-10", "cifar10", ""),
        ("imagefolder", "imagefolder", ""),
        ("imagefolder:/data/Tree", "imagefolder", "/data/Tree"),
        ("torchvision:FashionMNIST", "torchvision", "FashionMNIST"),
    ],
)
def test_find_dataset(name, source, arg):
    found, found_arg = find_dataset(name)
    assert found is DATASETS[source] and found_arg == arg


@pytest.mark.parametrize(
    "name", ["mnist", "digits:x", "cifar10:/data", "torchvision", "torchvision:", "", "  ", None, 3]
)
def test_find_dataset_refuses_and_lists_the_names(name):
    with pytest.raises(UserInputError) as info:
        find_dataset(name)
    message = str(info.value)
    assert message.startswith("dataset:") and dataset_names() in message and "\n" not in message


def test_augmentation_comes_from_the_table():
    assert DATASETS["digits"].augment == "shift" and DATASETS["cifar10"].augment == "crop_flip"
    pick = DATASETS["torchvision"].augment
    assert pick("FashionMNIST") == "crop_flip" and pick("KMNIST") == "shift" and pick("mnist") == "shift"


def test_the_table_drives_loading_and_messages(monkeypatch):
    calls = []

    def load(arg, root, size):
        calls.append((arg, root, size))
        return DATASETS["digits"].load("", None, size)

    toy = DataSource("toy", ("toys",), "SIZE", True, False, 12, lambda arg: "none", load, "a test source")
    monkeypatch.setitem(DATASETS, "toy", toy)
    assert dataset_names().endswith(", toy:SIZE")
    d = load_dataset("toys:7", subset=40)
    assert calls == [("7", None, 12)] and d.input_shape == (1, 12, 12) and d.augment == "none"
    with pytest.raises(UserInputError, match="toy:SIZE"):
        load_dataset("nothing")


def test_cifar10_without_root_reads_the_per_user_folder(tmp_path, monkeypatch):
    from nas_sepconv.data import default_data_root

    monkeypatch.setenv("NAS_SEPCONV_DATA", str(tmp_path / "data"))
    folder = default_data_root("cifar10")
    assert folder == tmp_path / "data" / "cifar10"
    with pytest.raises(UserInputError) as info:  # missing, then empty: how to fill it, in one line
        load_dataset("cifar10")
    for make in (lambda: None, lambda: folder.mkdir(parents=True)):
        make()
        with pytest.raises(UserInputError) as info:
            load_dataset("cifar10")
        message = str(info.value)
        assert message.startswith("dataset.root:") and str(folder) in message and "\n" not in message
        assert "cifar-10-batches-py" in message and "ImageFolder" in message and ".tar.gz" in message
    tree = _write_tree(tmp_path / "tree", ext="png")
    archive = folder / "cifar10-tiny.tar.gz"  # an archive dropped into the folder
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree / "train", arcname="train")
        tar.add(tree / "test", arcname="test")
    d = load_dataset("cifar10", val_fraction=0.2)
    assert d.classes == ("ant", "bee", "cat") and len(d.test) == 6
    monkeypatch.delenv("NAS_SEPCONV_DATA")
    monkeypatch.setenv("NAS_SEPCONV_CACHE", str(tmp_path / "cache"))
    assert default_data_root("cifar10") == tmp_path / "cache" / "data" / "cifar10"
