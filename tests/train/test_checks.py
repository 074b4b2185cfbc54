"""The first batch of fit's, distill's and evaluate's data checked before any training step:
each mistake one UserInputError naming the argument and the fix, the model left unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nas_sepconv.errors import UserInputError
from nas_sepconv.train import TrainConfig, distill, evaluate, fit

pytestmark = pytest.mark.usefixtures("one_thread")

ONE_EPOCH = TrainConfig(epochs=1, lr=0.1)


def small_cnn(classes: int = 10, in_channels: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, classes),
    )


def _x(n: int = 8, channels: int = 1) -> torch.Tensor:
    return torch.randn(n, channels, 8, 8, generator=torch.Generator().manual_seed(1))


def _y(n: int = 8) -> torch.Tensor:
    return torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(2))


# one case per mistake: the batch given, and the words of the one line it gets
BAD_BATCHES = {
    "wrong channel count": ((_x(channels=3), _y()), r"does not run on inputs of shape \(8, 3, 8, 8\)"),
    "2-D inputs": ((torch.randn(8, 64), _y()), r"does not run on inputs of shape \(8, 64\)"),
    "integer inputs": (
        (torch.randint(0, 255, (8, 1, 8, 8)), _y()),
        r"torch\.int64 \(Input type .*\); give floating-point inputs",
    ),
    "targets out of range": ((_x(), _y() + 10), "a target is 1[0-9], but the model has 10 classes"),
    "negative targets": ((_x(), _y() - 10), "a target is negative"),
    "float targets": ((_x(), _y().float()), "the targets are torch.float32 tensors, not class indices"),
    "targets of another batch size": ((_x(), _y(5)), r"a batch of 8 inputs has targets of shape \(5,\)"),
    "no input in the batch": ((_x(0), _y(0)), "with no input in it"),
}


def _unchanged(model: nn.Module, before: dict) -> bool:
    """The weights are as they were: no optimizer step was taken."""
    return all(torch.equal(v, before[k]) for k, v in model.named_parameters())


@pytest.mark.parametrize("case", list(BAD_BATCHES))
@pytest.mark.parametrize("train", ["fit", "distill"])
def test_a_bad_first_batch_is_one_line_naming_data_and_nothing_trains(case, train):
    batch, words = BAD_BATCHES[case]
    model = small_cnn()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    with pytest.raises(UserInputError, match=f"^data: .*{words}") as e:
        if train == "fit":
            fit(model, [batch], config=ONE_EPOCH)
        else:
            distill(model, small_cnn(), [batch], config=ONE_EPOCH)
    assert "\n" not in str(e.value) and e.value.fix  # one line, with the fix
    assert _unchanged(model, before)  # raised on the first batch, before the first step


@pytest.mark.parametrize("case", list(BAD_BATCHES))
def test_a_bad_first_validation_batch_is_refused_before_training(case):
    batch, words = BAD_BATCHES[case]
    model = small_cnn()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    with pytest.raises(UserInputError, match=f"^val: .*{words}"):
        fit(model, [(_x(), _y())], val=[batch], config=ONE_EPOCH)
    assert _unchanged(model, before)


@pytest.mark.parametrize("case", list(BAD_BATCHES))
def test_evaluate_checks_the_first_batch(case):
    batch, words = BAD_BATCHES[case]
    with pytest.raises(UserInputError, match=f"^split: .*{words}"):
        evaluate(small_cnn(), [batch])


def test_a_teacher_with_another_class_count_is_refused_before_training():
    student = small_cnn()
    before = {k: v.detach().clone() for k, v in student.named_parameters()}
    with pytest.raises(UserInputError, match=r"^teacher: outputs \(8, 5\) where the student outputs \(8, 10\); "):
        distill(student, small_cnn(classes=5), [(_x(), _y())], config=ONE_EPOCH)
    with pytest.raises(UserInputError, match=r"^teacher: the teacher does not run on inputs of shape \(8, 1, 8, 8\)"):
        distill(student, small_cnn(in_channels=3), [(_x(), _y())], config=ONE_EPOCH)
    assert _unchanged(student, before)


def test_a_model_that_returns_no_tensor_is_named():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = small_cnn()

        def forward(self, x):
            return {"logits": self.net(x)}

    with pytest.raises(UserInputError, match="^data: the model returns a dict, not a tensor of class scores"):
        fit(Pair(), [(_x(), _y())], config=ONE_EPOCH)


class _Empty:
    """Re-iterable and without a len(): yields nothing."""

    def __iter__(self):
        return iter(())


@pytest.mark.parametrize("val", [[], _Empty(), iter(())], ids=["empty list", "empty re-iterable", "empty iterator"])
def test_validation_with_no_batches_is_refused_not_nan(val):
    """val=None means no validation (NaN, documented); val with no batches is a mistake."""
    with pytest.raises(UserInputError, match="^val: (has|yielded) no batches; pass validation batches, or leave val"):
        fit(small_cnn(), [(_x(), _y())], val=val, config=ONE_EPOCH)
    result = fit(small_cnn(), [(_x(), _y())], config=ONE_EPOCH)
    assert result.val_accuracy != result.val_accuracy  # NaN: no val given


def test_good_batches_still_train_and_validate():
    result = fit(small_cnn(), [(_x(), _y())] * 2, val=[(_x(), _y())], config=TrainConfig(epochs=2, lr=0.1))
    assert len(result.history) == 2 and 0 <= result.val_accuracy <= 1
