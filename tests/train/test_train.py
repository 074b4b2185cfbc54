"""Tests of nas_sepconv.train: fit, evaluate, distill, reestimate_batchnorm, TrainConfig."""

from __future__ import annotations

import copy
import dataclasses
import math
import re

import pytest
import torch
import torch.nn as nn

from nas_sepconv.data import calibration_batches, load_dataset
from nas_sepconv.errors import TrainingDiverged, UserInputError
from nas_sepconv.train import (
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    OPTIMIZERS,
    SCHEDULES,
    FitResult,
    TrainConfig,
    correct_per_image,
    distill,
    evaluate,
    fit,
    reestimate_batchnorm,
)
from nas_sepconv.train import distillation as distill_mod
from nas_sepconv.train import hints as hints_mod
from nas_sepconv.train import run as run_mod

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: see conftest


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def small_cnn(width: int = 16, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(2 * width * 16, 10),
    )


FAST = TrainConfig(epochs=3, batch_size=64, lr=0.1)


@pytest.fixture(scope="module")
def tiny(digits):
    """Digits with 256 training images: for tests of mechanics, not of accuracy."""
    return dataclasses.replace(digits, train=_head(digits.train, 256))


@pytest.fixture(scope="module")
def trained(digits):
    model = small_cnn()
    epochs = []
    result = fit(model, digits, config=FAST, on_epoch=lambda e, acc: epochs.append((e, acc)))
    return model, result, epochs


def test_fit_learns_digits(trained):
    model, result, epochs = trained
    assert isinstance(result, FitResult)
    assert result.val_accuracy > 0.85
    assert result.test_accuracy is not None and result.test_accuracy > 0.8
    assert result.epochs == 3 and len(result.history) == 3 and result.seconds > 0
    assert [e for e, _ in epochs] == [1, 2, 3]
    assert epochs[-1][1] == result.val_accuracy
    for row in result.history:
        assert set(row) == {"epoch", "train_loss", "val_accuracy", "lr", "seconds"}
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert not model.training


def test_fit_is_deterministic(tiny):
    config = TrainConfig(epochs=2, batch_size=64, lr=0.1, seed=3)
    a, b = small_cnn(), small_cnn()
    ra = fit(a, tiny, config=config, evaluate_test=False)
    rb = fit(b, tiny, config=config, evaluate_test=False)
    assert ra.val_accuracy == rb.val_accuracy
    assert ra.history[0]["train_loss"] == rb.history[0]["train_loss"]
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert ra.test_accuracy is None


class NanModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(256, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)) * float("nan")


def test_nan_loss_raises_training_diverged(tiny):
    with pytest.raises(TrainingDiverged, match=r"^loss became nan at epoch 1 step 1\b"):
        fit(NanModel(), tiny, config=TrainConfig(epochs=1))


def test_huge_lr_diverges(tiny):
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf) at epoch \d+ step \d+"):
        fit(small_cnn(), tiny, config=TrainConfig(epochs=3, batch_size=64, lr=1e6, schedule="cosine", warmup_epochs=0))


def test_on_epoch_exception_propagates(tiny):
    class Pruned(Exception):
        pass

    def prune(epoch, acc):
        raise Pruned(epoch)

    with pytest.raises(Pruned):
        fit(small_cnn(), tiny, config=TrainConfig(epochs=3, batch_size=64), on_epoch=prune)


def test_adamw_cosine_clip_and_resolution(tiny):
    small = tiny
    config = TrainConfig(
        epochs=1,
        batch_size=64,
        optimizer="adamw",
        lr=2e-3,
        weight_decay=0.05,
        schedule="cosine",
        grad_clip=1.0,
        label_smoothing=0.0,
    )
    result = fit(small_cnn(), small, config=config, resolution=12)
    assert 0 <= result.val_accuracy <= 1 and math.isfinite(result.history[0]["train_loss"])


def test_progress_writes_nothing_to_stdout(tiny, capsys):
    small = tiny
    fit(small_cnn(), small, config=TrainConfig(epochs=1, batch_size=64), progress=True, evaluate_test=False)
    captured = capsys.readouterr()
    assert captured.out == ""
    # stderr is not a terminal here: a plain line with done/total (issue 19), not a rich bar
    assert re.search(r"train: 1/1 epochs, .* \| loss [\d.]+  val acc [\d.]+", captured.err), captured.err
    fit(small_cnn(), small, config=TrainConfig(epochs=1, batch_size=64), evaluate_test=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def _head(split, n):
    return type(split)(split.x[:n], split.y[:n])


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_lr_schedules(schedule):
    config = TrainConfig(epochs=4, schedule=schedule, warmup_epochs=1, lr=0.1)
    factor = run_mod._lr_factor(config, steps_per_epoch=10)
    values = [factor(s) for s in range(40)]
    assert values[0] < 0.2 and max(values) == pytest.approx(1.0, abs=0.01)
    assert max(range(40), key=values.__getitem__) in (9, 10)  # peak at the end of the warm-up
    assert values[-1] < 0.01
    assert all(a >= b for a, b in zip(values[10:], values[11:]))  # monotone decay afterwards


def test_evaluate(digits, trained):
    model, result, _ = trained
    model.train()
    acc = evaluate(model, digits.val, data=digits)
    assert acc == pytest.approx(result.val_accuracy)
    assert model.training  # mode restored
    model.eval()
    assert 0 <= evaluate(small_cnn(seed=1), digits.test, data=digits, batch_size=100, resolution=12) <= 1
    with pytest.raises(UserInputError, match="split"):
        evaluate(model, _head(digits.val, 0), data=digits)


def test_correct_per_image_is_what_evaluate_averages(digits, trained):
    model, _, _ = trained
    model.train()
    correct = correct_per_image(model, digits.test, data=digits, batch_size=97, resolution=12)
    assert correct.dtype == torch.bool and correct.shape == (len(digits.test),) and model.training
    assert correct.float().mean().item() == pytest.approx(evaluate(model, digits.test, data=digits, resolution=12))
    with pytest.raises(UserInputError, match="split"):
        correct_per_image(model, _head(digits.val, 0), data=digits)


def _agreement(student, teacher, digits):
    x = torch.cat(calibration_batches(digits, n=len(digits.val), split="val", batch_size=512))
    with torch.no_grad():
        return (student.eval()(x).argmax(1) == teacher.eval()(x).argmax(1)).float().mean().item()


def test_distill_moves_student_towards_teacher(digits, trained):
    teacher = trained[0]
    teacher_state = copy.deepcopy(teacher.state_dict())
    student = small_cnn(width=4, seed=2)
    before = _agreement(student, teacher, digits)
    part = dataclasses.replace(digits, train=_head(digits.train, 640))
    result = distill(
        student, teacher, part, config=TrainConfig(epochs=2, batch_size=64, lr=0.1), temperature=4.0, alpha=0.9
    )
    after = _agreement(student, teacher, digits)
    assert after > before + 0.3 and after > 0.7
    assert result.val_accuracy > 0.6
    assert all(torch.equal(v, teacher_state[k]) for k, v in teacher.state_dict().items())  # teacher untouched
    assert not teacher.training


def test_distill_argument_checks(digits, trained):
    with pytest.raises(UserInputError, match=r"^distill\.temperature"):
        distill(small_cnn(), trained[0], digits, temperature=0)
    with pytest.raises(UserInputError, match=r"^distill\.alpha"):
        distill(small_cnn(), trained[0], digits, alpha=1.5)


def test_distill_loss_is_hinton():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    T, alpha = 3.0, 0.7
    pt = torch.softmax(t / T, 1)
    kl = (pt * (pt.log() - torch.log_softmax(s / T, 1))).sum(1).mean()
    expected = alpha * T * T * kl + (1 - alpha) * nn.functional.cross_entropy(s, y)
    got = hints_mod.distill_loss(s, t, y, T, alpha, 0.0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert hints_mod.distill_loss(t, t, y, T, 1.0, 0.0).item() == pytest.approx(0.0, abs=1e-6)


def test_reestimate_batchnorm(digits):
    model = small_cnn()
    bn = model[1]
    bn.momentum = 0.3
    batches = calibration_batches(digits, n=256, batch_size=64)
    reestimate_batchnorm(model, batches)
    assert not model.training and bn.momentum == 0.3
    with torch.no_grad():
        pre = torch.cat([model[0](b) for b in batches])
    # Cumulative average of equal-sized batch means = the mean over all batches.
    assert torch.allclose(bn.running_mean, pre.mean(dim=(0, 2, 3)), atol=1e-4)
    assert int(bn.num_batches_tracked) == 4
    first = bn.running_mean.clone()
    reestimate_batchnorm(model, ((b, None) for b in batches[:1]))  # (x, y) pairs, a generator
    assert not torch.allclose(bn.running_mean, first)
    with pytest.raises(UserInputError, match="batches"):
        reestimate_batchnorm(model, [])
    assert torch.isfinite(bn.running_mean).all()


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"optimizer": "adam"}, "train.optimizer"),
        ({"schedule": "step"}, "train.schedule"),
        ({"epochs": 0}, "train.epochs"),
        ({"epochs": 2.5}, "train.epochs"),
        ({"batch_size": True}, "train.batch_size"),
        ({"lr": -1.0}, "train.lr"),
        ({"lr": float("nan")}, "train.lr"),
        ({"weight_decay": -1e-4}, "train.weight_decay"),
        ({"warmup_epochs": -1}, "train.warmup_epochs"),
        ({"label_smoothing": 1.0}, "train.label_smoothing"),
        ({"grad_clip": 0.0}, "train.grad_clip"),
        ({"amp": "yes"}, "train.amp"),
    ],
)
def test_train_config_validation(kwargs, field):
    with pytest.raises(UserInputError) as info:
        TrainConfig(**kwargs)
    assert str(info.value).startswith(f"{field}:") and "\n" not in str(info.value)


def test_train_config_messages_and_from_dict():
    with pytest.raises(UserInputError, match="sgd, adamw"):
        TrainConfig(optimizer="adam")
    assert TrainConfig.from_dict({"epochs": 2, "optimizer": "adamw", "lr": 1e-3}).epochs == 2
    with pytest.raises(UserInputError, match=r"^train\.epoch:"):
        TrainConfig.from_dict({"epoch": 2})
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()


@pytest.mark.gpu
def test_fit_on_cuda_with_amp(digits):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model = small_cnn()
    result = fit(model, digits, config=FAST, device="cuda")
    assert result.val_accuracy > 0.85
    assert next(model.parameters()).device.type == "cuda"
    with pytest.raises(TrainingDiverged):
        fit(NanModel(), digits, config=TrainConfig(epochs=1), device="cuda")


# -- distillation with feature hints ---------------------------------------------------------


def _hint_error(student, teacher, name, digits):
    """Relative squared error of module ``name``'s output, student vs teacher, on the val split."""
    x = torch.cat(calibration_batches(digits, n=256, split="val", batch_size=256))
    outs = {}
    hooks = [
        m.get_submodule(name).register_forward_hook(lambda mod, a, o, key=key: outs.__setitem__(key, o))
        for key, m in (("s", student.eval()), ("t", teacher.eval()))
    ]
    with torch.no_grad():
        student(x), teacher(x)
    for h in hooks:
        h.remove()
    return ((outs["s"] - outs["t"]).square().mean() / outs["t"].square().mean()).item()


def test_converted_features_are_the_activations_after_the_sites(trained):
    import nas_sepconv as ns
    from nas_sepconv.models import cifar_resnet18

    student = ns.convert(trained[0], "dwsep", example_inputs=torch.zeros(1, 1, 16, 16))
    assert [e.name for e in ns.plan_of(student).converted] == ["4"]
    assert distill_mod.converted_features(student) == ["6"]  # conv 4 -> bn 5 -> relu 6
    resnet = ns.convert(cifar_resnet18(width=8).eval(), "dwsep", example_inputs=torch.zeros(1, 3, 32, 32))
    # conv1 -> bn1 -> relu and conv2 -> bn2 -> (+ shortcut) -> relu: one shared ReLU per block
    assert distill_mod.converted_features(resnet) == [f"layer{i}.{j}.relu" for i in range(1, 5) for j in range(2)]


def test_feature_hint_loss_is_relative_squared_error():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU())
    student = copy.deepcopy(teacher)
    hints = hints_mod.FeatureHints(student, teacher, ["0", "1"])
    x = torch.randn(4, 2, 8, 8)
    hints.active = True
    student(x), teacher(x)
    assert hints.loss().item() == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        student[0].weight.add_(0.1 * torch.randn_like(student[0].weight))
    student(x), teacher(x)
    loss = hints.loss()
    hints.active = False
    expected = []
    for k in range(2):
        fs, ft = student[: k + 1](x), teacher[: k + 1](x)
        expected.append(((fs - ft).square().mean() / ft.square().mean()).item())
    assert loss.item() == pytest.approx(sum(expected) / 2, rel=1e-5)
    assert loss.requires_grad  # the student's side keeps its graph
    student(x)  # not collected when inactive
    assert hints.student == [] and hints.teacher == []
    hints.close()
    assert not student[0]._forward_hooks and not teacher[0]._forward_hooks


def test_distill_with_feature_hints_matches_features_better(digits, trained):
    import nas_sepconv as ns

    teacher = trained[0]
    plan = ns.make_plan(teacher, "dwsep", example_inputs=torch.zeros(1, 1, 16, 16))
    part = dataclasses.replace(digits, train=_head(digits.train, 640))
    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.05, warmup_epochs=0.2)
    errors = {}
    for features in (None, "converted"):
        torch.manual_seed(1)
        student = ns.apply_plan(teacher, plan, init="random")
        before = _hint_error(student, teacher, "6", digits)
        distill(student, teacher, part, config=cfg, features=features, feature_weight=10.0)
        errors[features] = _hint_error(student, teacher, "6", digits)
        assert errors[features] < before
        assert not any(m._forward_hooks for m in [*student.modules(), *teacher.modules()])  # hooks removed
    assert errors["converted"] < 0.8 * errors[None]


def test_feature_hint_argument_checks(digits, trained):
    import nas_sepconv as ns

    teacher = trained[0]
    student = ns.convert(teacher, "dwsep", example_inputs=torch.zeros(1, 1, 16, 16))
    with pytest.raises(UserInputError, match=r"^features: unknown value 'sites'"):
        distill(student, teacher, digits, features="sites")
    with pytest.raises(UserInputError, match=r"^features: the student has no module 'nope'"):
        distill(student, teacher, digits, features=["nope"])
    with pytest.raises(UserInputError, match=r"^features: 'converted' needs a student made by ns.apply_plan"):
        distill(small_cnn(), teacher, digits, features="converted")
    with pytest.raises(UserInputError, match=r"^features: feature hints need a teacher"):
        fit(small_cnn(), digits, features=["6"])
    with pytest.raises(UserInputError, match=r"^feature_weight"):
        distill(student, teacher, digits, features="converted", feature_weight=-1.0)
    narrow = small_cnn(width=4)  # same module names, other widths
    with pytest.raises(UserInputError, match=r"^features: '6': student output"):
        distill(
            narrow,
            teacher,
            dataclasses.replace(digits, train=_head(digits.train, 64)),
            features=["6"],
            config=TrainConfig(epochs=1, batch_size=64),
        )
    assert not any(m._forward_hooks for m in [*narrow.modules(), *teacher.modules()])


@pytest.mark.parametrize(
    "kwargs,field,limit",
    [
        ({"epochs": MAX_EPOCHS + 1}, "train.epochs", "10000"),
        ({"epochs": 10**9}, "train.epochs", "10000"),
        ({"batch_size": MAX_BATCH_SIZE + 1}, "train.batch_size", "65536"),
        ({"batch_size": 10**9}, "train.batch_size", "65536"),
    ],
)
def test_train_config_upper_bounds_are_stated(kwargs, field, limit):
    assert (MAX_EPOCHS, MAX_BATCH_SIZE) == (10_000, 65_536)
    with pytest.raises(UserInputError) as info:
        TrainConfig(**kwargs)
    message = str(info.value)
    assert message.startswith(f"{field}:") and f"at most {limit}" in message


def test_train_config_accepts_the_bounds():
    config = TrainConfig(epochs=MAX_EPOCHS, batch_size=MAX_BATCH_SIZE)
    assert (config.epochs, config.batch_size) == (MAX_EPOCHS, MAX_BATCH_SIZE)


def test_optimizer_and_schedule_tables_drive_validation_and_messages():
    assert list(OPTIMIZERS) == ["sgd", "adamw"] and list(SCHEDULES) == ["onecycle", "cosine"]
    for name in OPTIMIZERS:
        TrainConfig(optimizer=name)
    for name in SCHEDULES:
        TrainConfig(schedule=name)
    with pytest.raises(UserInputError, match=", ".join(OPTIMIZERS)):
        TrainConfig(optimizer="adam")
    with pytest.raises(UserInputError, match=", ".join(SCHEDULES)):
        TrainConfig(schedule="step")
    with pytest.raises(UserInputError, match=r"^train\.optimizer:"):
        TrainConfig(optimizer=["sgd"])
    model = nn.Linear(2, 2)
    groups = [{"params": list(model.parameters()), "weight_decay": 0.0}]
    assert isinstance(OPTIMIZERS["sgd"].build(groups, 0.1), torch.optim.SGD)
    assert isinstance(OPTIMIZERS["adamw"].build(groups, 0.1), torch.optim.AdamW)
