"""ONNX: a model written to ONNX by one of the exporters of :data:`ONNX_EXPORTERS`, and run with
ONNX Runtime (``onnxruntime``), the runtime models are commonly deployed with on CPUs.

``dynamo`` (the default, as in ``torch.onnx.export`` since torch 2.9): the model captured with
``torch.export`` (:func:`~.program.export_program`), translated by ``onnxscript``, at its own
opset (18 and up); what ``torch.export`` cannot capture whole is refused.  ``torchscript``: the
legacy tracing exporter (``dynamo=False``, opset :data:`ONNX_OPSET`), kept because it exports a
small block in a fraction of the time, which the latency tables' per-block exports need
(:mod:`.runtimes`).  The packages are the ``onnx`` extra: ``pip install 'nas-sepconv[onnx]'``.

A file is exported in a private folder beside it and moved into place in one rename
(:func:`~nas_sepconv.files.publish`): a full disk or a failed export leaves the file that was
there, a symbolic link at the path is replaced (its target is never written), and nothing else
beside it is touched.  Weights of more than :data:`EXTERNAL_DATA_BYTES` (an ONNX file is a
protobuf, which stops at 2 GiB) go to ONE file beside it, named after it: ``<out>.data`` (ONNX
external data, as ``onnx.save_model(..., all_tensors_to_one_file=True)`` writes it), which
must stay next to the ``.onnx`` file.

What cannot be exported is refused (:class:`UserInputError` naming the model), never written.
With ``torchscript``: an operator ONNX lacks at opset :data:`ONNX_OPSET`, an adaptive pool it cannot express, and a
forward that branches on a tensor's values (a Python ``if`` on a tensor): the exporter traces
one example, so its graph would keep the branch that example took.  Such a branch is told from
a branch on shapes (ViT's and Swin's size checks, exported as usual) by torch's
``TracerWarning`` ("Converting a tensor to a Python boolean ...") together with a forward on
the meta device, which has shapes but no values and stops where a value is read.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.jit import TracerWarning

from ..errors import UserInputError
from ..files import publish, staging_dir
from ..tables import lookup
from .inputs import as_inputs, output_tensors
from .program import export_program

__all__ = [
    "EXTERNAL_DATA_BYTES",
    "ONNX_EXPORTERS",
    "ONNX_OPSET",
    "OnnxExporter",
    "OnnxTraceWarning",
    "need_module",
    "onnx_session",
    "run_onnx",
    "to_onnx",
]

ONNX_OPSET = 17
#: Weights (parameters and buffers) of more bytes than this are written as ONNX external data,
#: in one file ``<out>.data`` beside the ``.onnx`` file (a protobuf stops at 2 GiB).
EXTERNAL_DATA_BYTES = 2**31 - 2**28
_HINT = "pip install 'nas-sepconv[onnx]'"
_INSTEAD = "write .safetensors instead"
_CONVERSION = "Converting a tensor to a Python"  # the TracerWarning of a tensor read as a bool/int/float
_VALUE_READS = ("cannot be called on meta tensors", "copy out of meta tensor", "meta device type tensor to numpy")


class OnnxTraceWarning(UserWarning):
    """The exported graph may not do what the model does: the trace turned tensors into Python
    values, and a forward on the meta device could not tell whether they were shapes or values."""


def need_module(name: str, field: str, *, fix: str = _HINT) -> Any:
    """Import ``name`` (``onnx``, ``onnxruntime``), or raise :class:`UserInputError` naming
    ``field`` and how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserInputError(field, f"needs the {name} package", fix) from None


def _names(prefix: str, n: int) -> list[str]:
    return [prefix] if n == 1 else [f"{prefix}_{i}" for i in range(n)]


def to_onnx(
    model: nn.Module,
    example_inputs: Any,
    out: str | Path | None = None,
    *,
    output_name: str = "output",
    instead: str = _INSTEAD,
    exporter: str = "dynamo",
) -> bytes | Path:
    """``model`` (an eval copy; the model itself is not changed) written to ONNX for
    ``example_inputs``, at opset :data:`ONNX_OPSET`, with its batch dimension dynamic.  Inputs
    are named ``input`` (``input_0``, ``input_1``, ... for several), outputs ``output_name``
    likewise.  ``exporter``: a name of :data:`ONNX_EXPORTERS`.  Returns the path ``out``
    (written atomically; weights over :data:`EXTERNAL_DATA_BYTES` in ``<out>.data`` beside
    it), or the model's bytes when ``out`` is None.  A model that cannot be exported faithfully
    raises :class:`UserInputError` (``model``) whose fix ends with ``instead`` (what the caller
    can do instead)."""
    record = lookup(ONNX_EXPORTERS, exporter, field="exporter", what="ONNX exporter")
    need_module("onnx", "onnx")
    for module in record.needs:
        need_module(module, "exporter", fix=f"{_HINT}, or exporter='torchscript'")
    inputs = tuple(t.detach().cpu().float() for t in as_inputs(example_inputs))
    net = copy.deepcopy(model).cpu().float().eval()
    with torch.no_grad():
        n_out = len(output_tensors(net(*inputs)))
    names = (_names("input", len(inputs)), _names(output_name, n_out))
    label = type(model).__name__
    weight_bytes = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    if out is None:
        buffer = io.BytesIO()
        record.write(net, inputs, buffer, names, label=label, instead=instead)
        return buffer.getvalue()
    out = Path(out)
    with staging_dir(out) as folder:
        exported = folder / "export" / "model.onnx"
        exported.parent.mkdir()
        record.write(net, inputs, exported, names, label=label, instead=instead)
        if weight_bytes <= EXTERNAL_DATA_BYTES and [p.name for p in exported.parent.iterdir()] == [exported.name]:
            publish(exported, out)
        else:  # torch wrote one file per tensor, named after it: here, never beside ``out``
            _publish_with_external_data(exported, folder / "final", out)
    return out


def _export(
    net: nn.Module,
    inputs: tuple,
    target: io.BytesIO | Path,
    names: tuple[list[str], list[str]],
    *,
    label: str,
    instead: str,
) -> None:
    """``torch.onnx.export`` of ``net`` to ``target``; what it cannot export, or would export
    unfaithfully, raises :class:`UserInputError`.  ``net`` is the caller's private copy: it is
    left on the meta device when its trace is checked for branches on values."""
    input_names, output_names = names
    axes = {name: {0: "batch"} for name in input_names + output_names}
    with warnings.catch_warnings(record=True) as caught, _stdout_kept_back():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated in favour of dynamo's
        warnings.simplefilter("always", TracerWarning)  # (recorded: they say where the trace may be wrong)
        try:
            torch.onnx.export(
                net,
                inputs,
                target if isinstance(target, io.BytesIO) else str(target),
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=axes,
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        except (OSError, MemoryError):  # the machine's fault (a full disk), not the model's
            raise
        except Exception as exc:  # noqa: BLE001 - torch.onnx raises several types for what it cannot export
            problem = f"{label} cannot be exported to ONNX opset {ONNX_OPSET} ({_reason(exc)})"
            raise UserInputError("model", problem, instead) from None
    where = _value_reads(net, inputs, [w for w in caught if str(w.message).startswith(_CONVERSION)])
    if where:
        raise UserInputError(
            "model",
            f"{label}'s forward branches on a tensor's values (at {where}): its ONNX graph would keep "
            "only the branch the example input took",
            f"compute the branch with tensor operations (torch.where), or {instead}",
        )


def _export_dynamo(
    net: nn.Module,
    inputs: tuple,
    target: io.BytesIO | Path,
    names: tuple[list[str], list[str]],
    *,
    label: str,
    instead: str,
) -> None:
    """``net`` captured by ``torch.export`` (batch dynamic), then ``torch.onnx.export`` of that
    program with ``dynamo=True``, saved to ``target``; what cannot be captured or translated
    raises :class:`UserInputError`.  Weights over 2 GiB are written as external data beside
    ``target`` (``to_onnx`` gathers them into ``<out>.data``)."""
    program = export_program(net, inputs, instead=instead)
    input_names, output_names = names
    with warnings.catch_warnings(), _stdout_kept_back(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            onnx_program = torch.onnx.export(
                program, input_names=input_names, output_names=output_names, dynamo=True, verbose=False
            )
        except (OSError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - the exporter raises several types for what it cannot translate
            raise UserInputError("model", f"{label} cannot be exported to ONNX ({_reason(exc)})", instead) from None
    if isinstance(target, io.BytesIO):
        target.write(onnx_program.model_proto.SerializeToString())
    else:
        onnx_program.save(str(target))


@dataclass(frozen=True)
class OnnxExporter:
    """One way to write a model to ONNX: its ``name``, what it is (``description``), the
    packages it needs beyond ``onnx``, and ``write(net, inputs, target, names, label=, instead=)``."""

    name: str
    description: str
    needs: tuple[str, ...]
    write: Callable[..., None]


ONNX_EXPORTERS: dict[str, OnnxExporter] = {
    e.name: e
    for e in (
        OnnxExporter(
            "dynamo",
            "torch.export, then torch.onnx.export(dynamo=True): torch's default exporter (needs onnxscript)",
            ("onnxscript",),
            _export_dynamo,
        ),
        OnnxExporter(
            "torchscript",
            f"torch.onnx.export(dynamo=False), the legacy tracing exporter, opset {ONNX_OPSET}",
            (),
            _export,
        ),
    )
}


def _value_reads(net: nn.Module, inputs: tuple, conversions: list[warnings.WarningMessage]) -> str | None:
    """Where (``file:line``) the trace read a tensor's value into Python, when those reads
    depend on the input's values, not only on its shape; else None.  ``net`` is moved to the
    meta device and run there: a read of a value stops it, a read of a shape does not."""
    if not conversions:
        return None
    where = ", ".join(sorted({f"{Path(w.filename).name}:{w.lineno}" for w in conversions})[:3])
    try:
        with torch.no_grad():
            net.to("meta")(*(t.to("meta") for t in inputs))
    except Exception as exc:  # noqa: BLE001 - whatever stops a forward on meta
        if any(marker in str(exc) for marker in _VALUE_READS):
            return where
        warnings.warn(
            f"the ONNX trace turned tensors into Python values (at {where}); if they depend on the input's values, "
            "the graph keeps the branch the example input took",
            OnnxTraceWarning,
            stacklevel=4,
        )
    return None


def _reason(exc: BaseException) -> str:
    """The first part of an exporter's message, in one line."""
    text = " ".join(str(exc).split())
    for cut in (" Please feel free", " [Caused by"):
        text = text.split(cut)[0]
    return text[:200] or type(exc).__name__


@contextlib.contextmanager
def _stdout_kept_back() -> Iterator[None]:
    """What reaches the process's stdout (file descriptor 1) in the block is held back, and
    written out only if the block succeeds: when an export fails, torch's exporter prints its
    whole TorchScript graph there (from C++), and the error raised instead says, in one line,
    what failed."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
        held = tempfile.TemporaryFile()
    except (OSError, ValueError, AttributeError):  # no stdout to redirect: nothing to hold back
        yield
        return
    with held:
        os.dup2(held.fileno(), 1)
        try:
            yield
        except BaseException:
            os.dup2(saved, 1)
            raise
        else:
            os.dup2(saved, 1)
            held.seek(0)
            sys.stdout.flush()
            with open(os.dup(1), "wb", closefd=True) as stdout:
                stdout.write(held.read())
        finally:
            os.close(saved)


def _publish_with_external_data(exported: Path, folder: Path, out: Path) -> None:
    """The model at ``exported`` saved again with its weights in one file, ``<out>.data``,
    then both moved into place (the data first, so that the new ``out`` never names data that
    is not there)."""
    import onnx

    proto = onnx.load(str(exported), load_external_data=True)
    folder.mkdir()
    data = f"{out.name}.data"
    onnx.save_model(
        proto, str(folder / out.name), save_as_external_data=True, all_tensors_to_one_file=True, location=data
    )
    publish(folder / data, out.with_name(data))
    publish(folder / out.name, out)


def onnx_session(model: bytes | str | Path, *, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session of ``model`` (bytes or a path) with ``threads`` intra-op
    threads (default: torch's current setting) and one inter-op thread, all graph
    optimisations on."""
    ort = need_module("onnxruntime", "runtime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, example_inputs: Any) -> list[np.ndarray]:
    """The outputs of an ONNX Runtime ``session`` on ``example_inputs`` (tensors, in order)."""
    inputs = as_inputs(example_inputs)
    feeds = {i.name: t.detach().cpu().float().numpy() for i, t in zip(session.get_inputs(), inputs)}
    return session.run(None, feeds)
