"""Runtimes a model's latency is measured in: the table :data:`RUNTIMES`, one record per runtime.

:func:`~nas_sepconv.measure.measure_latency`, the latency tables
(:func:`~nas_sepconv.conversion.latency_table`), ``nas-sepconv profile --latency --runtime`` and
the search's ``latency_ms`` objective all read this table; nothing else lists runtime names.

A runtime's ``prepare(model, inputs, threads)`` turns an eval-mode model and its inputs into a
callable that runs one forward the way that runtime would, so that every runtime is timed by the
same loop.  Fewer MACs is not the same as faster: a 3×3 depthwise convolution runs far below the
dense convolution's MAC rate on CPUs (results/latency/), and by how much depends on the runtime,
which is why the choice of runtime is part of every latency figure (and of a latency table's
cache key).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..errors import UserInputError
from ..tables import lookup
from .onnx import onnx_session, to_onnx
from .optimize import optimize_for_inference

__all__ = ["Runtime", "RUNTIMES", "find_runtime", "prepare_forward"]

Forward = Callable[[], Any]


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def _eager(model: nn.Module, inputs: tuple, threads: int | None) -> Forward:
    return lambda: model(*inputs)


def _channels_last_forward(model: nn.Module, inputs: tuple, threads: int | None) -> Forward:
    if not any(t.dim() == 4 for t in (*model.parameters(), *model.buffers())):  # e.g. a Conv3d or Conv1d model
        problem = f"channels_last stores 4-D weights (of 2-D convolutions) NHWC, and {type(model).__name__} has none"
        raise UserInputError("runtime", problem, f"use another runtime ({_others('channels_last')})")
    net = copy.deepcopy(model)._apply(_channels_last)  # 4-D tensors only: a Conv3d's 5-D weights stay as they are
    xs = tuple(_channels_last(t) for t in inputs)
    return lambda: net(*xs)


def _optimized(model: nn.Module, inputs: tuple, threads: int | None) -> Forward:
    net = optimize_for_inference(model, inputs, fold_bn=True, channels_last=True, compile=False)
    xs = tuple(_channels_last(t) for t in inputs)  # as a previous layer hands them over: no copy per call
    return lambda: net(*xs)


def _onnxruntime(model: nn.Module, inputs: tuple, threads: int | None) -> Forward:
    instead = f"use another runtime ({_others('onnxruntime')})"
    exported = to_onnx(model, inputs, instead=instead, exporter="torchscript")  # fast per block
    try:
        session = onnx_session(exported, threads=threads)
    except (UserInputError, OSError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own error types (an operator it does not implement)
        reason = " ".join(str(exc).split())[:200]
        problem = f"ONNX Runtime cannot run {type(model).__name__} exported to ONNX ({reason})"
        raise UserInputError("model", problem, instead) from None
    feeds = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), inputs)}
    return lambda: session.run(None, feeds)


def _others(name: str) -> str:
    """The runtimes other than ``name`` that can run here, for a message's fix."""
    return ", ".join(n for n, r in RUNTIMES.items() if n != name and r.available())


def _torch_version() -> str:
    return f"torch {torch.__version__}"


def _ort_version() -> str:
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__} (exported by torch {torch.__version__})"


def _importable(name: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            __import__(name)
        except ImportError:
            return False
        return True

    return check


@dataclass(frozen=True)
class Runtime:
    """One way of running a model.

    Attributes:
        name: the runtime's name (``--runtime``, ``runtime=``, a space's ``search.latency_runtime``).
        description: one line: what runs the forward.
        memory_format: the layout of 4-D activations (``contiguous`` or ``channels_last``).
        prepare: ``(model, inputs, threads) -> forward``: a callable running one forward.
        version: the versions of what runs the forward (part of a latency table's cache key).
        available: whether it can run here (its package is installed).
        devices: the device types it runs on.
        dtypes: the dtypes it runs (``None``: any torch dtype).
        install: how to make it available.
    """

    name: str
    description: str
    memory_format: str
    prepare: Callable[[nn.Module, tuple, int | None], Forward]
    version: Callable[[], str]
    available: Callable[[], bool]
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[torch.dtype, ...] | None = None
    install: str = ""


def _table(*records: Runtime) -> dict[str, Runtime]:
    return {r.name: r for r in records}


#: The runtimes, by name.
RUNTIMES: dict[str, Runtime] = _table(
    Runtime("eager", "PyTorch eager, the module as is (NCHW)", "contiguous", _eager, _torch_version, lambda: True),
    Runtime(
        "channels_last",
        "PyTorch eager with channels_last weights and inputs",
        "channels_last",
        _channels_last_forward,
        _torch_version,
        lambda: True,
    ),
    Runtime(
        "optimized",
        "PyTorch eager after ns.optimize_for_inference (BatchNorm folded, blocks inlined, channels_last)",
        "channels_last",
        _optimized,
        _torch_version,
        lambda: True,
    ),
    Runtime(
        "onnxruntime",
        "ONNX Runtime (CPU execution provider, all graph optimisations) on the model exported to ONNX",
        "contiguous",
        _onnxruntime,
        _ort_version,
        _importable("onnxruntime"),
        devices=("cpu",),
        dtypes=(torch.float32,),
        install="pip install 'nas-sepconv[onnx]'",
    ),
)


def find_runtime(name: Any, *, field: str = "runtime") -> Runtime:
    """The record of runtime ``name``; :class:`UserInputError` naming ``field`` if there is no
    such runtime or it cannot run here."""
    record = lookup(RUNTIMES, name, field=field, what="runtime")
    if not record.available():
        raise UserInputError(field, f"runtime {name} is not installed", record.install or "install it")
    return record


def prepare_forward(
    model: nn.Module,
    example_inputs: tuple,
    *,
    runtime: Runtime,
    threads: int | None,
    device: torch.device,
    dtype: torch.dtype | None,
) -> Forward:
    """A forward of ``model`` (in eval mode: a copy is made when the device, dtype or runtime
    needs one, else the model's flags are the caller's to set) on ``example_inputs`` moved to
    ``device`` and ``dtype``, the way ``runtime`` runs it."""
    if device.type not in runtime.devices:
        raise UserInputError(
            "device", f"runtime {runtime.name} does not run on {device.type}", "use device='cpu' or another runtime"
        )
    if runtime.dtypes is not None and dtype is not None and dtype not in runtime.dtypes:
        raise UserInputError(
            "dtype",
            f"runtime {runtime.name} runs {', '.join(map(str, runtime.dtypes))} only, not {dtype}",
            "use dtype=torch.float32",
        )
    first = next(iter(model.parameters()), None)
    same = first is None or (first.device == device and (dtype is None or first.dtype == dtype))
    net = model if same else copy.deepcopy(model).to(device=device, dtype=dtype)
    if dtype is not None:
        inputs = tuple(
            t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device) for t in example_inputs
        )
    else:
        inputs = tuple(t.to(device) for t in example_inputs)
    return runtime.prepare(net, inputs, threads)
