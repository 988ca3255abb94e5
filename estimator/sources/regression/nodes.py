"""AIC's own answers at the distillation nodes of the engines a file was distilled from (node tables).

Why: the boosted residual leaves ~1-3 % error against AIC, enough to flip near-tied engine choices.
For an engine that was distilled (same model, system, backend, default versions and quantisation,
same parallel layout), the file keeps AIC's prefill TTFT on an ISL grid, its decode ITL on a batch x
context grid and its KV capacity, and the source reads those out (log-log interpolation after a
running max, ``monotone.py``), so it reproduces AIC at the nodes and interpolates between them.
Engines and models not in the table keep the learned path (linear terms + trees), which is what
generalises. The nodes include the decision points of the default workload (its ISL, its decode
context, the concurrencies its decode sweep visits), where the profile compares engines.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..base import Stack
from .checks import finite_list, int_list, integer, obj, text

_KEYS = ("errors", "kv_capacity_tokens", "isl", "prefill_ms", "batch", "context", "decode_ms")


@dataclass(frozen=True)
class EngineTable:
    """One engine's AIC answers. Arrays are None where AIC gave no answer (``errors`` says why)."""

    isl: np.ndarray | None  # (P,) prefill nodes, tokens
    prefill_ms: np.ndarray | None  # (P,) TTFT at the nodes
    batch: np.ndarray | None  # (B,) engine-wide decode batch nodes
    context: np.ndarray | None  # (C,) context nodes, tokens
    decode_ms: np.ndarray | None  # (B, C) ITL at the nodes
    kv_capacity_tokens: int | None
    errors: dict[str, str]  # quantity (prefill | decode | kv) -> AIC's one-line reason

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"errors": dict(sorted(self.errors.items()))}
        if self.kv_capacity_tokens is not None:
            out["kv_capacity_tokens"] = int(self.kv_capacity_tokens)
        if self.prefill_ms is not None:
            out.update(isl=_ints(self.isl), prefill_ms=encode(self.prefill_ms))
        if self.decode_ms is not None:
            out.update(batch=_ints(self.batch), context=_ints(self.context), decode_ms=encode(self.decode_ms))
        return out

    @classmethod
    def from_dict(cls, d: Any) -> EngineTable:
        """Checked, since a file is hand-editable: known keys only, integer nodes, times as ``encode``
        writes them (or lists), AIC's reasons as text. Raises ValueError naming the field."""
        d = obj("table", d, optional=_KEYS)

        def nodes(key: str) -> np.ndarray | None:
            return None if key not in d else np.asarray(int_list(key, d[key], 1, 2**53), dtype=float)

        def times(key: str, ndim: int) -> np.ndarray | None:
            if key not in d:
                return None
            v = d[key]
            if isinstance(v, dict):
                a = decode(v)
            elif ndim == 1:
                a = np.asarray(finite_list(key, v), dtype=float)
            else:  # rows of equal length (numpy refuses ragged ones)
                a = np.asarray([finite_list(f"{key}[{i}]", r) for i, r in enumerate(v)], dtype=float)
            if a.ndim != ndim:
                raise ValueError(f"{key}: must have {ndim} dimension(s), got shape {a.shape}")
            return a

        errors = obj("errors", d.get("errors", {}), optional=("prefill", "decode", "kv"))
        kv = d.get("kv_capacity_tokens")
        t = cls(nodes("isl"), times("prefill_ms", 1), nodes("batch"), nodes("context"), times("decode_ms", 2),
                None if kv is None else integer("kv_capacity_tokens", kv, lo=0),
                {k: text(f"errors.{k}", v) for k, v in errors.items()})  # fmt: skip
        t.check()
        return t

    def check(self) -> None:
        """Raise ValueError unless shapes agree, nodes increase and times are positive and finite."""
        for nodes, values, shape in ((self.isl, self.prefill_ms, None), (self.batch, self.decode_ms, 0),
                                     (self.context, self.decode_ms, 1)):  # fmt: skip
            if (nodes is None) != (values is None):
                raise ValueError("a node table needs both its nodes and its values")
            if nodes is None:
                continue
            n = values.shape[0] if shape is None else values.shape[shape]
            if nodes.ndim != 1 or nodes.size < 2 or n != nodes.size or np.any(np.diff(nodes) <= 0):
                raise ValueError("node table: nodes must increase and match the values' shape")
            if not np.all(np.isfinite(values)) or np.any(values <= 0):
                raise ValueError("node table: times must be positive and finite")


def table_key(stack: Stack, engine: str) -> str | None:
    """Key of a distilled engine; None for stacks a table cannot stand for (non-default versions/quants)."""
    if stack.backend_version or stack.gemm_quant or stack.kvcache_quant:
        return None
    return f"{stack.model}@{stack.system}/{stack.backend}/{engine}"


def _ints(a: np.ndarray) -> list[int]:
    return [int(x) for x in a]


def encode(a: np.ndarray) -> dict[str, Any]:
    """Times as little-endian float64 in base64 (still JSON): AIC's values bit for bit, and a model
    file of ~300k table values parses in milliseconds instead of ~0.1 s as decimal lists."""
    a = np.ascontiguousarray(a, dtype="<f8")
    return {"dtype": "<f8", "shape": list(a.shape), "base64": base64.b64encode(a.tobytes()).decode("ascii")}


def decode(d: dict[str, Any]) -> np.ndarray:
    obj("times", d, ("dtype", "shape", "base64"))
    if d.get("dtype") != "<f8":
        raise ValueError(f"node table dtype {d.get('dtype')!r}, expected '<f8'")
    shape = tuple(int_list("shape", d["shape"], 0, 2**31))
    text("base64", d["base64"])
    raw = base64.b64decode(d["base64"], validate=True)
    if len(raw) != 8 * math.prod(shape):
        raise ValueError(f"node table of shape {shape} holds {len(raw)} bytes")
    return np.frombuffer(raw, dtype="<f8").reshape(shape).astype(float)
