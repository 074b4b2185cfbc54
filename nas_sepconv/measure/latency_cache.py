"""The on-disk cache of measured latencies: one JSON file per measuring context.

A latency is only worth reusing where it would measure the same again, so an entry's key is
everything that changes the figure: the **context** (device type, CPU model or CUDA device name,
intra-op threads, runtime and its version, torch version, dtype, memory format) names the file,
and the **op** (its geometry, the input shape with the batch size, and the block spec) names the
entry in it.  A second model with the same layer shapes reuses the entries; a change of machine,
threads, runtime or library version reads another file, never a stale figure.

The files are plain JSON (never pickle: loading one runs no code), read through the bounded
reader of :mod:`nas_sepconv.jsonfile`.  A file that cannot be read, that is not a regular file
of at most :data:`MAX_CACHE_BYTES`, or that is not one of ours, is ignored with a warning and
rewritten on the next save; an entry whose latencies are not finite, positive and ordered
(``p10_ms <= median_ms <= p90_ms``) is ignored with a warning.  They live
in :func:`latency_cache_dir`: ``$NAS_SEPCONV_LATENCY_CACHE``, else ``latency/`` of
``$NAS_SEPCONV_CACHE`` or ``~/.cache/nas_sepconv``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import UserInputError
from ..jsonfile import read_json

__all__ = ["CACHE_FORMAT", "LatencyCache", "latency_cache_dir", "latency_context", "processor_name", "valid_record"]

CACHE_FORMAT = 2  # 2: one record per measuring session (a model, its entries and its calibration)
_RECORD_FIELDS = ("median_ms", "p10_ms", "p90_ms")

#: The largest cache file read (a file over it is ignored with a warning, and rewritten).
MAX_CACHE_BYTES = 64 * 2**20

#: The longest latency an entry may hold, in ms (an hour per op: longer is not a measurement).
MAX_LATENCY_MS = 3_600_000.0


def latency_cache_dir() -> Path:
    """``$NAS_SEPCONV_LATENCY_CACHE``, else ``$NAS_SEPCONV_CACHE/latency``, else
    ``~/.cache/nas_sepconv/latency``."""
    env = os.environ.get("NAS_SEPCONV_LATENCY_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("NAS_SEPCONV_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "nas_sepconv") / "latency"


def processor_name(device: torch.device) -> str:
    """The CUDA device's name, or the CPU model (``model name`` of /proc/cpuinfo, else
    :func:`platform.processor`, else the machine type)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def latency_context(
    *, device: torch.device, threads: int, runtime: str, runtime_version: str, dtype: torch.dtype, memory_format: str
) -> dict[str, Any]:
    """What a measured latency depends on besides the op itself (a cache file's key)."""
    return {
        "device": device.type,
        "processor": processor_name(device),
        "threads": int(threads),
        "runtime": runtime,
        "runtime_version": runtime_version,
        "torch": torch.__version__,
        "dtype": str(dtype).replace("torch.", ""),
        "memory_format": memory_format,
    }


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def valid_record(record: Any) -> bool:
    """A measured record: ``p10_ms <= median_ms <= p90_ms``, each a finite number of
    milliseconds in (0, :data:`MAX_LATENCY_MS`]."""
    if not isinstance(record, dict):
        return False
    values = [record.get(k) for k in _RECORD_FIELDS]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        return False
    median, p10, p90 = values
    return 0 < p10 <= median <= p90 <= MAX_LATENCY_MS


class LatencyCache:
    """Measured latencies of one context, read from and written to one JSON file of
    ``cache_dir`` (default :func:`latency_cache_dir`)."""

    def __init__(self, context: dict[str, Any], *, cache_dir: str | Path | None = None):
        self.context = dict(context)
        digest = hashlib.sha1(_canonical(self.context).encode()).hexdigest()[:20]
        self.path = Path(cache_dir if cache_dir is not None else latency_cache_dir()).expanduser() / f"{digest}.json"
        self._entries = self._read()
        self._new: dict[str, dict[str, Any]] = {}

    def _read(self) -> dict[str, dict[str, Any]]:
        """The file's entries; a file that is not one of ours, for this context, is ignored."""
        try:
            data = read_json(self.path, field="latency cache", fix="", max_bytes=MAX_CACHE_BYTES)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            return self._ignored(f"not readable ({exc.strerror or type(exc).__name__})")
        except UserInputError as exc:  # not a regular file, too large, not JSON, nested too deeply
            return self._ignored(exc.problem)
        if (
            not isinstance(data, dict)
            or data.get("format") != CACHE_FORMAT
            or not isinstance(data.get("entries"), dict)
        ):
            return self._ignored(f"not a latency cache of format {CACHE_FORMAT}")
        if data.get("context") != self.context:
            return self._ignored("its context is not this one")
        entries = {k: v for k, v in data["entries"].items() if isinstance(k, str) and valid_record(v)}
        if len(entries) < len(data["entries"]):
            warnings.warn(
                f"latency cache {self.path}: {len(data['entries']) - len(entries)} malformed entries ignored",
                stacklevel=3,
            )
        return entries

    def _ignored(self, why: str) -> dict[str, dict[str, Any]]:
        warnings.warn(f"latency cache {self.path} is ignored: {why}; it will be rewritten", stacklevel=4)
        return {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, op: dict[str, Any]) -> dict[str, Any] | None:
        """The record of ``op`` (``median_ms``, ``p10_ms``, ``p90_ms``, ``repeats``), or None."""
        return self._entries.get(_canonical(op))

    def put(self, op: dict[str, Any], record: dict[str, Any]) -> None:
        """Remember ``record`` for ``op`` (written by :meth:`save`)."""
        key = _canonical(op)
        self._entries[key] = self._new[key] = {**record, "op": op}

    def save(self) -> None:
        """Write the new entries, merged with what the file holds now (another process may have
        added some), atomically.  A folder that cannot be written only costs the reuse."""
        if not self._new:
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                merged = {**self._read(), **self._new}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(
                json.dumps({"format": CACHE_FORMAT, "context": self.context, "entries": merged}, indent=1),
                encoding="utf-8",
            )
            os.replace(tmp, self.path)
            self._new = {}
        except OSError as exc:
            warnings.warn(
                f"latency cache {self.path} could not be written ({exc.strerror or exc}); measurements are not kept",
                stacklevel=2,
            )
