"""The planner's profile data: the ConfigMap ``planner-profile-data`` of ``config_with_planner.yaml``.

Dynamo's SLA planner reads the selected engines' interpolation data from this ConfigMap as two JSON
strings (``prefill_raw_data.json``, ``decode_raw_data.json``). The numbers come in as loose mappings
(numpy arrays or lists, as ``artifacts.npz`` gives them), so they are checked here once, apart from the
deployment's services: the exact keys, equal-length finite columns and one positive ``max_kv_tokens``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import SpecError

PROFILE_CONFIGMAP = "planner-profile-data"
PREFILL_KEYS = ("prefill_isl", "prefill_ttft", "prefill_thpt_per_gpu")
DECODE_KEYS = ("x_kv_usage", "y_context_length", "z_itl", "z_thpt_per_gpu")


@dataclass(frozen=True, slots=True)
class ProfileData:
    """The planner's interpolation data, checked: equal-length finite lists and a positive KV capacity."""

    prefill: tuple[tuple[str, tuple[float, ...]], ...]
    decode: tuple[tuple[str, tuple[float, ...]], ...]
    max_kv_tokens: int

    @classmethod
    def from_raw(cls, prefill_raw: Mapping[str, Any], decode_raw: Mapping[str, Any]) -> ProfileData:
        kv = decode_raw.get("max_kv_tokens")
        kv_list = _floats("decode_raw.max_kv_tokens", kv) if kv is not None else ()
        if len(kv_list) != 1 or kv_list[0] < 1:
            raise SpecError("decode_raw.max_kv_tokens", f"expected one positive number, got {kv!r}")
        rest = {k: v for k, v in decode_raw.items() if k != "max_kv_tokens"}
        return cls(
            _columns("prefill_raw", prefill_raw, PREFILL_KEYS),
            _columns("decode_raw", rest, DECODE_KEYS),
            int(kv_list[0]),
        )

    def to_config_map(self, namespace: str | None) -> dict[str, Any]:
        prefill = {k: list(v) for k, v in self.prefill}
        decode = {**{k: list(v) for k, v in self.decode}, "max_kv_tokens": self.max_kv_tokens}
        meta: dict[str, Any] = {"name": PROFILE_CONFIGMAP}
        if namespace:
            meta["namespace"] = namespace
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta,
            "data": {
                "prefill_raw_data.json": json.dumps(prefill),
                "decode_raw_data.json": json.dumps(decode),
            },
        }


def _floats(field: str, values: Any) -> tuple[float, ...]:
    """Numbers as given (ints stay ints, as numpy's ``tolist`` gives them); raises on NaN or text."""
    values = values.tolist() if hasattr(values, "tolist") else values
    values = values if isinstance(values, (list, tuple)) else [values]
    try:
        out = tuple(v if type(v) is int else float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise SpecError(field, f"expected numbers, got {values!r}") from exc
    if not all(math.isfinite(v) for v in out):
        raise SpecError(field, "holds NaN or infinite values")
    return out


def _columns(
    field: str, raw: Mapping[str, Any], keys: tuple[str, ...]
) -> tuple[tuple[str, tuple[float, ...]], ...]:
    if set(raw) != set(keys):
        raise SpecError(field, f"expected keys {', '.join(keys)}, got {', '.join(sorted(raw))}")
    cols = tuple((k, _floats(f"{field}.{k}", raw[k])) for k in keys)
    lengths = {len(v) for _, v in cols}
    if len(lengths) != 1 or 0 in lengths:
        got = {k: len(v) for k, v in cols}
        raise SpecError(field, f"columns must be non-empty and of equal length, got {got}")
    return cols
