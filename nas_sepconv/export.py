"""Take a trial's model away: from its saved weights (Pareto trials keep them), or rebuilt and
re-trained from the trial's parameters with its seed; written as safetensors + recipe (loads
back with :func:`nas_sepconv.io.load_model`) or ONNX.

Nothing is written that would not load back: the model must match its recipe tensor for tensor
(saved weights replaced by another model's, or data of another class count, are refused before
anything is written), and files are written atomically (a full disk leaves the file that was
there and raises :class:`~nas_sepconv.errors.StorageError`; a link at the path is replaced, its
target never written).  An ONNX model whose weights pass 1.75 GiB keeps them in one file beside
it, ``<out>.data`` (see :mod:`nas_sepconv.measure.onnx`)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
import torch
import torch.nn as nn

from . import results
from .errors import StorageError, UserInputError
from .files import ensure_writable_dir
from .io import build_on_meta, check_device, load_model, save_model, state_mismatch
from .jsonfile import loads
from .measure import need_module, output_tensors, to_onnx
from .measure.inputs import model_device
from .recipe import REGISTRY_SOURCES, Recipe, trusted_names
from .results.stored import STUDY_ATTRS, TAMPERED, data_seed_of, stored_attr, with_finalized
from .search import StoredTrial, TrialContext, parse_space, trial_resolution, with_data_root
from .search.finalization import refinalize
from .train import evaluate

__all__ = ["MODEL_FILES", "check_model_file", "export_trial", "rebuild_trial", "write_model"]


def _study_and_dir(source: str | Path, study: str | None) -> tuple[optuna.Study, Path]:
    df = results.load(source, study=study)
    storage = df.attrs["storage"]
    name = df.attrs["study"]
    folder = Path(source) if Path(str(source)).is_dir() else Path("results") / name
    return optuna.load_study(study_name=name, storage=storage), folder


def _check_stored_space(space: Any, trusted: frozenset[str]) -> None:
    """The space stored in a study came from the results folder, not from the user: it may name
    only registry models and data sets whose loaders unpickle nothing, unless the user vouches
    for the name (``allow_import`` / ``--allow-import``)."""
    named = []
    if space.spec.space_kind.from_base and space.spec.convert.model.split(":", 1)[0].strip() not in REGISTRY_SOURCES:
        named.append(("convert.model", space.spec.convert.model))
    if str(space.spec.data.dataset).startswith("torchvision:"):  # torchvision's loaders unpickle their files
        named.append(("data.dataset", space.spec.data.dataset))
    for field, name in named:
        if name not in trusted:
            raise UserInputError(
                "allow_import",
                f"the study's stored space names {field} {name!r}, which rebuilding would import and run",
                f"if you trust the results folder, pass allow_import={name!r}",
            )


def rebuild_trial(
    source: str | Path,
    number: int,
    *,
    study: str | None = None,
    device: str = "cpu",
    allow_import: str | Iterable[str] | None = None,
    data_root: str | Path | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The model of trial ``number`` and how it was obtained (``how``), with its validation
    accuracy measured now (``accuracy``) next to the recorded one.  ``data_root``: where the
    data set is, when the search was given ``--data-root`` (the stored space keeps its own
    ``data.root``, not the command line's).

    Nothing named by the results folder is imported or called unless ``allow_import`` names it
    (see :mod:`nas_sepconv.io`)."""
    check_device(device, field="device")
    trusted = trusted_names(allow_import, field="allow_import")
    the_study, folder = _study_and_dir(source, study)
    where = str(folder)
    frozen = with_finalized([_complete_trial(the_study, number)], the_study.user_attrs, source=where)[0]
    space = _stored_space(the_study, where)
    _check_stored_space(space, trusted)
    space = space if data_root is None else with_data_root(space, data_root)
    try:
        ctx = TrialContext.for_rebuild(
            space,
            device=device,
            out_dir=folder,
            study=the_study.study_name,
            data_seed=data_seed_of(the_study.user_attrs, source=where),
        )
    except UserInputError as exc:
        if data_root is not None or not exc.field.endswith("root"):
            raise
        raise UserInputError(exc.field, exc.problem, "give data_root=PATH, the data the search was run on") from None
    # everything the folder says is checked before minutes of work (stored.py, StoredTrial)
    attr = functools.partial(stored_attr, frozen.user_attrs, owner=f"trial {number}", source=where)
    resolution = _trial_side(space, frozen, ctx.data.input_shape[-1], where)
    recipe = _with_input_size(_stored_recipe(frozen, where), (ctx.data.input_shape[0], resolution, resolution))
    reference = build_on_meta(recipe, allow_import=trusted)  # what the written file must load as
    _check_data(reference, recipe, ctx.data, number)
    seed, threads = attr("seed"), attr("threads")
    weights = folder / "weights" / f"trial_{number}.safetensors"
    if weights.is_file():
        model, how = load_model(weights, allow_import=trusted, device=device), "loaded saved weights"
        _check_model(
            model,
            reference,
            f"{weights} does not hold trial {number}'s model",
            "restore the file the search wrote, or delete it to re-train the trial from its parameters",
        )
    elif attr("accuracy_source") == "finalized":
        model = refinalize(ctx, frozen, source=where)
        how = "finalised again from the trial's parameters and seed"
    else:
        seed = number if seed is None else seed
        model = ctx.retrain(frozen.params, number=number, seed=seed, threads=threads, source=where)
        how = "re-trained from the trial's parameters and seed"
        if attr("stopped_early"):  # the multi-fidelity mode stopped it: its recorded accuracy is a rung's
            how += f", to the full budget (the search stopped it early, after {attr('epochs_trained')} epochs)"
        _check_model(
            model,
            reference,
            f"trial {number}, re-trained, does not match its recorded recipe",
            "the study's space was changed since the search; export from the results folder the search wrote",
        )
    accuracy = evaluate(model.to(device), ctx.data.val, data=ctx.data, device=device, resolution=resolution)
    recorded = attr("accuracy")
    info = {
        "how": how,
        "accuracy": accuracy,
        "recorded_accuracy": float("nan") if recorded is None else float(recorded),
        "recipe": recipe,
        "input_size": [ctx.data.input_shape[0], resolution, resolution],
    }
    return model.eval(), info


def _complete_trial(the_study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    """Trial ``number`` of the study, which must exist and be COMPLETE (``--trial``)."""
    trials = {t.number: t for t in the_study.get_trials(deepcopy=False)}
    if number not in trials:
        raise UserInputError(
            "trial",
            f"study {the_study.study_name!r} has no trial {number}",
            f"trials are 0..{max(trials) if trials else -1}",
        )
    frozen = trials[number]
    if frozen.state != optuna.trial.TrialState.COMPLETE:
        raise UserInputError(
            "trial",
            f"trial {number} is {frozen.state.name}, not COMPLETE",
            "pick a completed trial (nas-sepconv report)",
        )
    return frozen


def _stored_space(study: optuna.Study, where: str) -> Any:
    """The space the study was made with (its ``space_yaml``), parsed and checked."""
    text = stored_attr(study.user_attrs, "space_yaml", owner="the study", source=where, table=STUDY_ATTRS)
    if text is None:
        raise UserInputError("space_yaml", f"the study in {where} records no space", TAMPERED)
    return parse_space(text, source=f"study {study.study_name}")


def _trial_side(space: Any, frozen: optuna.trial.FrozenTrial, data_side: int, where: str) -> int:
    """The input side trial ``frozen`` ran at: the one its parameters draw from ``space`` (each
    checked, :class:`~nas_sepconv.search.StoredTrial`), which its record must agree with."""
    side = trial_resolution(space, StoredTrial(frozen.params, number=frozen.number, source=where), data_side)
    recorded = stored_attr(frozen.user_attrs, "resolution", owner=f"trial {frozen.number}", source=where)
    if recorded is not None and recorded != side:
        raise UserInputError(
            "resolution",
            f"trial {frozen.number} in {where} records {recorded}, but its parameters give {side}"
            f" (data side {data_side})",
            "give the data the search ran on (data_root=), or restore the results folder",
        )
    return side


def _stored_recipe(frozen: optuna.trial.FrozenTrial, where: str) -> Recipe:
    """The trial's recipe (its ``arch_json``), parsed by the bounded reader and checked; its
    ``arch`` or ``plan`` is read into an object, which the exported file is written from: it
    carries what was validated, never the folder's text."""
    owner = f"trial {frozen.number}"
    text = stored_attr(frozen.user_attrs, "arch_json", owner=owner, source=where)
    if text is None:
        raise UserInputError("arch_json", f"{owner} in {where} records no recipe", TAMPERED)
    data = loads(text, field="arch_json", what=f"the recipe of {owner} in {where}", fix=TAMPERED)
    return Recipe.from_dict(data, where=f"{owner}'s arch_json in {where}")


def _check_data(reference: nn.Module, recipe: Recipe, data: Any, number: int) -> None:
    """The data set (where the model is evaluated, or re-trained) must have the input channels
    and the classes of the trial's recipe: another data set would make a model the recipe does
    not describe, or an accuracy that means nothing."""
    channels = recipe.input_size[0]
    device = model_device(reference)
    try:
        with torch.no_grad():
            outputs = output_tensors(reference.eval()(torch.zeros(1, *recipe.input_size, device=device)))
    except Exception:  # noqa: BLE001 - no forward to count classes with: the tensors are compared later
        outputs = []
    classes = outputs[0].shape[-1] if outputs and outputs[0].dim() == 2 else data.num_classes
    if (channels, classes) != (data.input_shape[0], data.num_classes):
        raise UserInputError(
            "data_root",
            f"the data set has {data.num_classes} classes of {data.input_shape[0]}-channel images, "
            f"trial {number} was trained on {classes} of {channels}-channel images",
            "give data_root=PATH, the data the search was run on",
        )


def _check_model(model: nn.Module, reference: nn.Module, problem: str, fix: str) -> None:
    difference = state_mismatch(model, reference)
    if difference:
        raise UserInputError("trial", f"{problem} ({difference})", fix)


def _with_input_size(recipe: Recipe, size: tuple[int, int, int]) -> Recipe:
    """``recipe`` stating the input size the trial ran at (trials recorded before built recipes
    carried it have none), so that the exported file's MACs are the trial's."""
    return recipe if recipe.input_size is not None else dataclasses.replace(recipe, input_size=size)


MODEL_FILES = {
    ".safetensors": "loads with nas_sepconv.load_model",
    ".onnx": "ONNX by torch's dynamo exporter (torch.export), batch dimension dynamic; runs in ONNX Runtime",
}


def check_model_file(out: str | Path | None, field: str = "out") -> Path | None:
    """``out`` as a path a model can be written to: a known extension (:data:`MODEL_FILES`), a
    folder that can be written, and for ONNX the ``onnx`` package.  Checked before any work.
    ``None`` (nothing to write) passes."""
    if out is None:
        return None
    out = Path(out)
    if out.suffix not in MODEL_FILES:
        raise UserInputError(field, f"{out.name} has an unknown extension", f"use {' or '.join(MODEL_FILES)}")
    if out.is_dir():
        raise UserInputError(field, f"{out} is a folder", f"give a file name, e.g. {out / ('model' + out.suffix)}")
    ensure_writable_dir(out.parent, field)
    if out.suffix == ".onnx":
        for module in ("onnx", "onnxscript"):  # torch.onnx.export(dynamo=True) needs both
            need_module(module, field, fix="pip install 'nas-sepconv[onnx]' or write .safetensors")
    return out


def write_model(
    out: str | Path,
    model: nn.Module,
    recipe: Recipe,
    *,
    output_name: str = "output",
    allow_import: str | Iterable[str] | None = None,
) -> str:
    """Write ``model`` to ``out``: safetensors + ``recipe``, or ONNX by torch's default exporter
    (``torch.export``, then dynamo: :func:`~nas_sepconv.measure.to_onnx`) at the recipe's input
    size (the batch dimension stays dynamic).  Returns how it loads.

    A model that does not match ``recipe`` (which ``load_model`` would refuse) raises
    :class:`UserInputError`; ``allow_import``: the ``package.module:factory`` the recipe may
    name (see :func:`nas_sepconv.io.build_from_recipe`).  A write that fails (a full disk)
    raises :class:`StorageError` and leaves whatever ``out`` was."""
    out = check_model_file(out)
    if out.suffix == ".safetensors":
        difference = state_mismatch(model, build_on_meta(recipe, allow_import=allow_import))
        if difference:
            problem = f"the model does not match its recipe ({difference}): {out} would not load"
            raise UserInputError("model", problem, "give the recipe that builds this model")
    try:
        if out.suffix == ".onnx":
            to_onnx(model.cpu(), torch.randn(1, *recipe.input_size), out, output_name=output_name)
        else:
            save_model(out, model, recipe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise StorageError(
            f"cannot write {out} ({reason}): it is as it was; make room or choose another path, "
            "and run the command again"
        ) from exc
    return MODEL_FILES[out.suffix]


def export_trial(
    source: str | Path,
    number: int,
    *,
    study: str | None = None,
    out: str | Path,
    device: str = "cpu",
    allow_import: str | Iterable[str] | None = None,
    data_root: str | Path | None = None,
) -> dict[str, Any]:
    """Rebuild trial ``number`` (see :func:`rebuild_trial`) and write it to ``out``
    (``.safetensors`` or ``.onnx``, :func:`write_model`)."""
    out = check_model_file(out)  # before a trial is re-trained for minutes
    model, info = rebuild_trial(
        source, number, study=study, device=device, allow_import=allow_import, data_root=data_root
    )
    write_model(out, model.cpu(), info["recipe"], output_name="logits", allow_import=allow_import)
    return info
