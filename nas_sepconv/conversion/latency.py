"""Per-layer latency tables: what each conv site and each candidate block costs in time on this
machine, and the latency of a converted model predicted from them.

Fewer MACs is not the same as faster: on a CPU a 3×3 depthwise convolution runs at a small
fraction of the dense convolution's MAC rate (results/latency/), so a block that cuts a site's
MACs by 8× may cut its time by 2×, or not at all.  Platform-aware searches answer this with
measured latency instead of MACs: M. Tan et al., "MnasNet: Platform-Aware Neural Architecture
Search for Mobile", CVPR 2019 (arXiv:1807.11626) and A. Howard et al., "Searching for
MobileNetV3", ICCV 2019 (arXiv:1905.02244) measure candidates on the device; B. Wu et al.,
"FBNet: Hardware-Aware Efficient ConvNet Design via Differentiable Neural Architecture Search",
CVPR 2019 (arXiv:1812.03443) and H. Cai et al., "Once-for-All: Train One Network and Specialize
it for Efficient Deployment", ICLR 2020 (arXiv:1908.09791) sum per-layer latency lookup tables;
nn-Meter (L. L. Zhang et al., MobiSys 2021) sums the runtime's fused kernels instead of ops.

:func:`latency_table` measures, in one runtime of :data:`~nas_sepconv.measure.RUNTIMES`, in one
session (:mod:`~nas_sepconv.conversion.latency_session`): every conv site of a model with the
BatchNorm and activation that follow it (``keep``), each candidate block at the sites a policy
would convert with the same neighbours, the whole model, and ``calibrate`` converted models
(one uniform plan per candidate), all in the same interleaved rounds, medians with stalls
rejected.  The session is cached on disk as one record (:class:`~nas_sepconv.measure.LatencyCache`)
and reused whole, or timed afresh whole; entries measured later (:meth:`LatencyTable.ensure`) are
rescaled to the session and added to its record.

**Prediction.**  The remainder (everything but the conv sites: pooling, the head, the runtime's
per-call overhead) is the whole model less the sites' entries; a converted model's raw
prediction is the whole model less each converted site's saving (its ``keep`` entry less its
block's, times its calls); a pruned plan's also counts each layer it narrows (a pruned site,
its producer) by its narrowed entry, raw, and a ``prune_r<keep>`` entry is those two layers'
saving for one site (:mod:`.latency_lookup`).  Sums of isolated kernels miss what the runtime
shares between them (caches, threads, memory planning), so the savings are **calibrated** with
the converted models measured whole: per block spec, the measured saving of its uniform plan over its raw predicted
saving (a least-squares scale; one scale fitted to all the calibration plans, through the
origin, for specs without a plan of their own).  ``table.calibration`` holds the records
(``spec``, ``sites``, ``median_ms``, ``p10_ms``, ``p90_ms``), ``table.scales`` the fit.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
import torch.nn as nn

from ..blocks import BlockSpec, as_spec
from ..errors import UserInputError
from ..measure import as_inputs
from .latency_lookup import TABLE_COLUMNS, LatencyTable, table_row
from .latency_session import LatencySettings, model_key, op_key, session_record, site_tails
from .onnx_table import onnx_session
from .plan import Plan
from .planning import make_plan
from .rewrite import plan_of

__all__ = [
    "DEFAULT_CANDIDATES",
    "LatencySettings",
    "LatencyTable",
    "TABLE_COLUMNS",
    "latency_table",
    "predict_latency",
]

#: the candidates a latency table (and :func:`~nas_sepconv.conversion.sensitivity`) measures by default
DEFAULT_CANDIDATES = ("dwsep_m1", "dwsep_m2", "dwsep_m4")


def latency_table(
    model: nn.Module | str | os.PathLike,
    example_inputs: Any = None,
    *,
    candidates: Sequence[str | BlockSpec] = DEFAULT_CANDIDATES,
    policy: Any = "dwsep",
    runtime: str = "eager",
    threads: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    repeats: int = 20,
    warmup: int = 3,
    calibrate: int = 3,
    cache_dir: Any = None,
    progress: bool = False,
) -> LatencyTable:
    """Measure each conv site of ``model`` and each of ``candidates`` at the sites ``policy``
    would convert (as :func:`~nas_sepconv.conversion.sensitivity` chooses them), each with the
    BatchNorm and activation after it, on ``device`` in ``runtime`` (a name of
    :data:`~nas_sepconv.measure.RUNTIMES`) with ``threads`` intra-op threads (default: torch's
    setting), at each site's input shape from ``example_inputs`` (its batch size is the
    table's) in ``dtype``; the whole model and ``calibrate`` converted models (a uniform plan of
    each of the first ``calibrate`` candidates; 0: no calibration) in the same ``repeats``
    interleaved rounds after ``warmup``.

    The session is read from and written to the cache in ``cache_dir`` (default
    :func:`~nas_sepconv.measure.latency_cache_dir`) as one record, reused only whole (entries
    :meth:`LatencyTable.ensure` measures later are rescaled to the session and added to it).
    ``progress``: a bar (or plain lines) on stderr.  ``model`` is never changed.  Returns a
    :class:`LatencyTable` (its ``frame`` is the DataFrame; ``predict(plan)`` a converted
    model's latency).
    An ``.onnx`` file's path for ``model``: its Conv nodes and the whole model (:mod:`.onnx_table`;
    the arguments only a model's table uses are refused unless left at their defaults).
    """
    if isinstance(model, (str, os.PathLike)):
        unused = dict(candidates=candidates, policy=policy, runtime=runtime, device=device, calibrate=calibrate)
        measuring = dict(threads=threads, dtype=dtype, repeats=repeats, warmup=warmup)
        unused["cache_dir"] = cache_dir
        frame, w, context, settings = onnx_session(model, example_inputs, latency_table, unused=unused, **measuring)
        return LatencyTable(frame[TABLE_COLUMNS], w["median_ms"], w["p10_ms"], w["p90_ms"], context, {}, settings)
    settings = LatencySettings.checked(runtime, threads, device, dtype, repeats, warmup, cache_dir)
    specs = _checked_specs(candidates, calibrate)
    inputs = as_inputs(example_inputs)
    chosen = [e.name for e in make_plan(model, policy, example_inputs=inputs).converted]
    base = make_plan(model, {}, example_inputs=inputs)  # every site, kept
    context = settings.context()
    groups = [
        (e, [None] + ([s for s in specs if not s.unsupported(e.geometry)] if e.name in chosen else []))
        for e in base.entries
        if e.reached
    ]  # a site no example input reaches has no shape, and no time
    tails = site_tails(model)
    uniform = [make_plan(model, {glob.escape(n): str(s) for n in chosen}, example_inputs=inputs) for s in specs]
    calibration = [p for p in uniform if p.converted][:calibrate]
    key = model_key(model, inputs)
    wanted = {(str(p.converted[0].spec), tuple(e.name for e in p.converted)) for p in calibration}
    record, reuse = session_record(model, inputs, groups, tails, calibration, settings, context, key, progress)
    rows = [
        table_row(e, s, record["entries"][op_key(e, s, tails.get(e.name, ()))], "cache" if reuse else "measured")
        for e, ss in groups
        for s in ss
    ]
    return LatencyTable(
        pd.DataFrame(rows, columns=TABLE_COLUMNS),
        record["median_ms"],
        record["p10_ms"],
        record["p90_ms"],
        context,
        {e.name: e for e in base.entries},
        settings,
        tails=tails,
        calibration=[r for r in record["calibration"] if (r["spec"], tuple(r["sites"])) in wanted],
        key=key,
        model=model,
        inputs=inputs,
    )


def _checked_specs(candidates: Any, calibrate: Any) -> list[BlockSpec]:
    """``candidates`` as block specs, each once; raises unless they are a list and ``calibrate``
    a count."""
    if isinstance(candidates, (str, BlockSpec)):
        raise UserInputError(
            "candidates", f"expected a list of block specs, got {candidates!r}", "use e.g. ['dwsep_m1', 'dwsep_m2']"
        )
    if isinstance(calibrate, bool) or not isinstance(calibrate, int) or calibrate < 0:
        raise UserInputError("calibrate", f"expected an integer >= 0, got {calibrate!r}", "use e.g. calibrate=3")
    return list(dict.fromkeys(as_spec(c) for c in candidates))


def predict_latency(model_or_plan: nn.Module | Plan, table: LatencyTable) -> float:
    """The latency (ms) ``table`` predicts for a converted model (one :func:`apply_plan` made)
    or a :class:`Plan`: the measured whole original model, less each converted site's
    calibrated saving (:meth:`LatencyTable.predict`; entries it lacks are measured first)."""
    if not isinstance(table, LatencyTable):
        raise UserInputError(
            "table", f"expected a LatencyTable, got {type(table).__name__}", "build one with ns.latency_table(model, x)"
        )
    plan = model_or_plan if isinstance(model_or_plan, Plan) else plan_of(model_or_plan)
    if plan is None:
        raise UserInputError(
            "model",
            "is not a model converted by ns.apply_plan (it carries no plan)",
            "pass the plan, or the converted model",
        )
    return table.predict(plan)
