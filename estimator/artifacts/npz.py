"""Interpolation data of the selected engines in the exact format Dynamo's SLA planner reads.

This is the only module that knows Dynamo's key names:

- ``selected_prefill_interpolation/raw_data.npz``: ``prefill_isl`` (tokens, int64), ``prefill_ttft``
  (ms, batch 1), ``prefill_thpt_per_gpu`` (input tokens/s/GPU); all 1-D float64 unless noted.
- ``selected_decode_interpolation/raw_data.npz``: ``max_kv_tokens`` (1-element int64 array),
  ``x_kv_usage`` (active-KV fraction 0-1), ``y_context_length`` (tokens, ISL + OSL/2), ``z_itl`` (ms),
  ``z_thpt_per_gpu`` (output tokens/s/GPU); all 1-D float64, one entry per (context, concurrency) point.

The same data as plain dicts of lists (``prefill_raw_data`` / ``decode_raw_data``) fill the
``planner-profile-data`` ConfigMap, where ``max_kv_tokens`` is a scalar. The same surfaces write
byte-identical files (no timestamps inside).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SlaEstimateError
from ..surfaces import DecodeSurface, PrefillSurface

PREFILL_DIR = "selected_prefill_interpolation"
DECODE_DIR = "selected_decode_interpolation"
RAW_DATA_FILE = "raw_data.npz"
PREFILL_KEYS = ("prefill_isl", "prefill_ttft", "prefill_thpt_per_gpu")
DECODE_KEYS = ("max_kv_tokens", "x_kv_usage", "y_context_length", "z_itl", "z_thpt_per_gpu")


def prefill_arrays(surface: PrefillSurface) -> dict[str, np.ndarray]:
    """Dynamo's prefill arrays from a prefill surface."""
    return {
        "prefill_isl": np.rint(surface.isl).astype(np.int64),
        "prefill_ttft": np.asarray(surface.ttft_ms, dtype=np.float64),
        "prefill_thpt_per_gpu": np.asarray(surface.thpt_per_gpu, dtype=np.float64),
    }


def decode_arrays(surface: DecodeSurface) -> dict[str, np.ndarray]:
    """Dynamo's decode arrays from a decode surface (x = concurrency × context / max_kv_tokens)."""
    return {
        "max_kv_tokens": np.array([surface.kv_capacity_tokens], dtype=np.int64),
        "x_kv_usage": np.asarray(surface.kv_usage, dtype=np.float64),
        "y_context_length": np.asarray(surface.context_tokens, dtype=np.float64),
        "z_itl": np.asarray(surface.itl_ms, dtype=np.float64),
        "z_thpt_per_gpu": np.asarray(surface.thpt_per_gpu, dtype=np.float64),
    }


def prefill_raw_data(surface: PrefillSurface) -> dict[str, list]:
    """``prefill_raw_data.json`` of the ConfigMap: the prefill keys as lists."""
    return {k: v.tolist() for k, v in prefill_arrays(surface).items()}


def decode_raw_data(surface: DecodeSurface) -> dict[str, Any]:
    """``decode_raw_data.json`` of the ConfigMap: the decode keys as lists, ``max_kv_tokens`` a scalar."""
    out: dict[str, Any] = {k: v.tolist() for k, v in decode_arrays(surface).items()}
    out["max_kv_tokens"] = int(surface.kv_capacity_tokens)
    return out


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """``np.savez`` as Dynamo writes it. Deterministic: zipfile stamps members written through
    ``ZipFile.open(name, "w")`` with the fixed 1980-01-01 date (checked by tests/test_artifacts.py)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        np.savez(fh, **arrays)
    return path


def write_prefill_npz(surface: PrefillSurface, out_dir: str | Path) -> Path:
    return write_npz(Path(out_dir) / PREFILL_DIR / RAW_DATA_FILE, prefill_arrays(surface))


def write_decode_npz(surface: DecodeSurface, out_dir: str | Path) -> Path:
    return write_npz(Path(out_dir) / DECODE_DIR / RAW_DATA_FILE, decode_arrays(surface))


def _read(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise SlaEstimateError(f"{path}: missing key(s) {', '.join(missing)}")
            arrays = {k: np.asarray(data[k]) for k in keys}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise SlaEstimateError(f"cannot read {path}: {exc}") from exc
    lengths = {arr.shape for k, arr in arrays.items() if k != "max_kv_tokens"}
    if len(lengths) != 1 or len(next(iter(lengths))) != 1:
        raise SlaEstimateError(
            f"{path}: arrays must be 1-D and of equal length, got shapes {sorted(lengths)}"
        )
    return arrays


def _resolve(path: str | Path, subdir: str) -> Path:
    """Accept the npz file itself, its folder, or the profile results folder above it."""
    p = Path(path)
    if p.is_dir():
        p = p / RAW_DATA_FILE if (p / RAW_DATA_FILE).is_file() else p / subdir / RAW_DATA_FILE
    return p


def read_prefill_npz(path: str | Path) -> dict[str, np.ndarray]:
    return _read(_resolve(path, PREFILL_DIR), PREFILL_KEYS)


def read_decode_npz(path: str | Path) -> dict[str, np.ndarray]:
    arrays = _read(_resolve(path, DECODE_DIR), DECODE_KEYS)
    if arrays["max_kv_tokens"].shape != (1,):
        raise SlaEstimateError(
            f"max_kv_tokens must be a 1-element array, got shape {arrays['max_kv_tokens'].shape}"
        )
    return arrays


__all__ = [
    "DECODE_DIR",
    "DECODE_KEYS",
    "PREFILL_DIR",
    "PREFILL_KEYS",
    "RAW_DATA_FILE",
    "decode_arrays",
    "decode_raw_data",
    "prefill_arrays",
    "prefill_raw_data",
    "read_decode_npz",
    "read_prefill_npz",
    "write_decode_npz",
    "write_npz",
    "write_prefill_npz",
]
