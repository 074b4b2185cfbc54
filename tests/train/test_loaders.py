"""fit, distill and evaluate on the user's data pipeline: a DataLoader over a TensorDataset or an
ImageFolder, any re-iterable of (inputs, targets) batches, validation batches, steps_per_epoch,
and the errors for what is not one."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from nas_sepconv.data import load_dataset
from nas_sepconv.errors import UserInputError
from nas_sepconv.train import TrainConfig, distill, evaluate, fit

pytestmark = pytest.mark.usefixtures("one_thread")


def small_cnn(seed: int = 0, width: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * width, 10),
    )


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _tensors(data, split: str) -> TensorDataset:
    """A split of the digits Dataset as normalised float images, as a user's pipeline gives them."""
    s = getattr(data, split)
    x = (s.x.float() / (255 if s.x.dtype == torch.uint8 else 1) - data.mean[0]) / data.std[0]
    return TensorDataset(x, s.y)


@pytest.fixture(scope="module")
def loaders(digits):
    torch.manual_seed(0)
    train = DataLoader(_tensors(digits, "train"), batch_size=64, shuffle=True, drop_last=True)
    val = DataLoader(_tensors(digits, "val"), batch_size=100)
    return train, val


@pytest.fixture(scope="module")
def trained(loaders):
    train, val = loaders
    model = small_cnn()
    result = fit(model, train, val=val, config=TrainConfig(epochs=3, lr=0.1))
    return model, result


def test_fit_learns_from_a_dataloader(trained, loaders, digits):
    model, result = trained
    assert result.val_accuracy > 0.85 and len(result.history) == 3
    assert result.test_accuracy is None  # batches have no test split
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    # the reported accuracy is evaluate's, on the batches or on the same images as a Split
    assert evaluate(model, loaders[1]) == result.val_accuracy
    assert evaluate(model, digits.val, data=digits) == pytest.approx(result.val_accuracy)


def test_distill_takes_a_dataloader_with_feature_hints(trained, loaders):
    teacher, _ = trained
    student = small_cnn(seed=1)
    train, val = loaders

    def agreement() -> float:
        with torch.no_grad():
            x = val.dataset.tensors[0]
            return (student.eval()(x).argmax(1) == teacher.eval()(x).argmax(1)).float().mean().item()

    before = agreement()
    result = distill(student, teacher, train, val=val, config=TrainConfig(epochs=3, lr=0.1), features=["2"])
    assert agreement() > max(0.8, before + 0.3)
    assert result.val_accuracy > 0.7 and not teacher.training


def test_distill_reads_an_imagefolder(tmp_path, trained):
    """A torchvision ImageFolder of PNG files on disk, through a DataLoader with workers' transforms."""
    import torchvision.transforms as T
    from PIL import Image
    from torchvision.datasets import ImageFolder

    g = torch.Generator().manual_seed(0)
    for cls in ("a", "b", "c"):
        (tmp_path / cls).mkdir()
        for i in range(8):
            pixels = torch.randint(0, 256, (8, 8), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(pixels, mode="L").save(tmp_path / cls / f"{i}.png")
    folder = ImageFolder(str(tmp_path), T.Compose([T.Grayscale(), T.ToTensor(), T.Normalize([0.5], [0.25])]))
    loader = DataLoader(folder, batch_size=8, shuffle=True, drop_last=True)
    teacher, student = trained[0], small_cnn(seed=2)
    result = distill(
        student, teacher, loader, val=DataLoader(folder, batch_size=12), config=TrainConfig(epochs=2, lr=0.05)
    )
    assert len(result.history) == 2 and 0 <= result.val_accuracy <= 1
    assert all(r["train_loss"] == r["train_loss"] for r in result.history)  # finite


class _Stream:
    """Re-iterable batches without a len(), as a streaming pipeline gives them."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def _batches(n: int = 4, size: int = 8):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(size, 1, 8, 8, generator=g), torch.randint(0, 10, (size,), generator=g)) for _ in range(n)]


def _counting(model: nn.Module) -> list[int]:
    calls: list[int] = []
    model.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]) if m.training else None)
    return calls


def test_steps_per_epoch_drives_the_schedule_and_caps_an_epoch():
    model = small_cnn()
    calls = _counting(model)
    with pytest.raises(UserInputError, match="^steps_per_epoch: .*no len"):
        fit(model, _Stream(_batches()), config=TrainConfig(epochs=2))
    result = fit(
        model, _Stream(_batches()), steps_per_epoch=4, config=TrainConfig(epochs=2, schedule="cosine", warmup_epochs=0)
    )
    assert len(calls) == 8 and result.history[-1]["lr"] < 0.02  # cosine over 8 steps: the last is near 0
    calls.clear()
    fit(model, itertools.repeat(_batches(1)[0]), steps_per_epoch=3, config=TrainConfig(epochs=1))  # an endless stream
    assert len(calls) == 3
    calls.clear()
    fit(model, (b for b in _batches()), steps_per_epoch=4, config=TrainConfig(epochs=1))  # a generator: one epoch
    assert len(calls) == 4


def test_a_torch_dataset_becomes_global_batches_of_the_config(loaders):
    """A map-style dataset (TensorDataset): batches of TrainConfig.batch_size, the last partial
    one dropped, a seeded order; evaluate reads one too."""
    train_set, val_set = loaders[0].dataset, loaders[1].dataset
    model = small_cnn()
    calls = _counting(model)
    result = fit(model, train_set, val=val_set, config=TrainConfig(epochs=1, batch_size=100, lr=0.1))
    assert calls == [100] * (len(train_set) // 100)
    assert result.val_accuracy == evaluate(model, val_set) == evaluate(model, loaders[1])
    again = small_cnn()
    fit(again, train_set, val=val_set, config=TrainConfig(epochs=1, batch_size=100, lr=0.1))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_a_list_of_pairs_trains_like_the_dataloader_it_came_from():
    ds = TensorDataset(*[torch.cat(t) for t in zip(*_batches(4))])
    a, b = small_cnn(), small_cnn()
    cfg = TrainConfig(epochs=2, lr=0.05)
    fit(a, DataLoader(ds, batch_size=8), config=cfg)
    fit(b, list(DataLoader(ds, batch_size=8)), config=cfg)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize(
    "call, field, message",
    [
        (lambda m, d: fit(m, 5), "data", "expected a Dataset, a DataLoader or batches"),
        (lambda m, d: fit(m, "images/"), "data", "expected a Dataset, a DataLoader or batches"),
        (lambda m, d: fit(m, [1, 2]), "data", "item 0 is a int, not an (inputs, targets) pair"),
        (lambda m, d: fit(m, [torch.randn(4, 1, 8, 8)]), "data", "item 0 is a Tensor"),
        (lambda m, d: fit(m, [(torch.randn(4, 1, 8, 8),)]), "data", "item 0 is a tuple"),
        (lambda m, d: fit(m, []), "data", "has no batches"),
        (lambda m, d: fit(m, _batches(), val=[None]), "val", "item 0 is a NoneType"),
        (lambda m, d: fit(m, _batches(), val=3), "val", "expected a Dataset, a DataLoader or batches"),
        (lambda m, d: fit(m, iter(_batches()), config=TrainConfig(epochs=2)), "data", "one-shot iterator"),
        (lambda m, d: fit(m, _batches(), steps_per_epoch=0), "steps_per_epoch", "positive int"),
        (lambda m, d: fit(m, _batches(), resolution=16), "resolution", "nas_sepconv Dataset"),
        (lambda m, d: fit(m, d, val=_batches()), "val", "not to a nas_sepconv Dataset"),
        (lambda m, d: fit(m, d.train), "data", "got Split"),
        (lambda m, d: fit(m, d, steps_per_epoch=3), "steps_per_epoch", "not to a nas_sepconv Dataset"),
        (lambda m, d: distill(m, small_cnn(), [{"x": torch.randn(2, 1, 8, 8)}]), "data", "item 0 is a dict"),
        (lambda m, d: evaluate(m, [(1, 2)]), "split", "item 0 is a tuple"),
        (lambda m, d: evaluate(m, d.val), "data", "needs its Dataset"),
    ],
)
def test_bad_data_names_the_field(call, field, message, digits):
    with pytest.raises(UserInputError) as e:
        call(small_cnn(), digits)
    assert str(e.value).startswith(f"{field}: ") and message in str(e.value)


def test_an_exhausted_generator_is_refused_in_its_second_epoch():
    model = small_cnn()
    gen = (b for b in _batches())
    fit(model, gen, config=TrainConfig(epochs=1), steps_per_epoch=4)
    with pytest.raises(UserInputError, match="^data: epoch 1 yielded no batches"):
        fit(model, gen, config=TrainConfig(epochs=1), steps_per_epoch=4)


@pytest.mark.gpu
def test_fit_on_cuda_from_a_cpu_dataloader(loaders):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    train, val = loaders
    model = small_cnn()
    result = fit(model, train, val=val, config=TrainConfig(epochs=3, lr=0.1), device="cuda")
    assert result.val_accuracy > 0.85 and next(model.parameters()).device.type == "cuda"
