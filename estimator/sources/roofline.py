"""Roofline baseline: the memory-bandwidth and compute floor of an engine (our DummyRegressor).

Prefill time = max(FLOPs / peak FLOP/s, weight bytes / bandwidth); decode step = max(weight bytes +
KV bytes read, FLOPs) over bandwidth and peak. GPU figures come from AIC's system YAML files
(read as plain YAML, without the SDK). No efficiency factors: this is a floor, not an estimate.
"""

from __future__ import annotations

from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..candidates import Candidate
from ..errors import DataNotAvailable
from ..model import ModelInfo, load_model_info
from .base import PerfSource, as_positive_array

_MEMORY_FRACTION = {"vllm": 0.92, "sglang": 0.88, "trtllm": 0.9}


@cache
def system_gpu(system: str) -> dict[str, float]:
    """Peak bandwidth (B/s), bf16 FLOP/s and memory (bytes) of one GPU of ``system``."""
    root = Path(str(metadata.distribution("aiconfigurator-core").locate_file("aiconfigurator_core/systems")))
    path = root / f"{system}.yaml"
    if not path.is_file():
        raise DataNotAvailable(f"no system description for {system!r}")
    gpu = yaml.safe_load(path.read_text())["gpu"]
    return {
        "mem_bw": float(gpu["mem_bw"]),
        "flops": float(gpu.get("bfloat16_tc_flops") or gpu.get("float16_tc_flops")),
        "mem_capacity": float(gpu["mem_capacity"]),
    }


def kv_bytes_per_token(m: ModelInfo, kv_bytes: float = 2.0) -> float:
    return 2.0 * m.num_layers * m.num_kv_heads * m.head_dim * kv_bytes


class RooflineSource(PerfSource):
    """Speed-of-light floor for dense and MoE models on one system."""

    name = "roofline"

    def _model(self) -> ModelInfo:
        return load_model_info(self.stack.model)

    def _active_params(self, m: ModelInfo) -> float:
        if not m.is_moe:
            return m.num_params
        dense = m.num_params - m.num_layers * m.num_experts * 3 * m.hidden_size * m.moe_intermediate_size
        return dense + m.num_layers * max(1, m.experts_per_token) * 3 * m.hidden_size * m.moe_intermediate_size

    def prefill_ttft_ms(self, candidate: Candidate, isl: Any) -> np.ndarray:
        isl = as_positive_array("isl", isl)
        m, g = self._model(), system_gpu(self.stack.system)
        gpus = candidate.num_gpus / candidate.attention_dp_size  # GPUs sharing one request
        attn_flops = 2.0 * m.num_layers * m.num_heads * m.head_dim * isl**2  # causal QK^T + PV
        flops = 2.0 * self._active_params(m) * isl + attn_flops
        t_compute = flops / (g["flops"] * gpus)
        t_memory = m.weight_bytes / (g["mem_bw"] * candidate.num_gpus)
        return np.maximum(t_compute, t_memory) * 1000.0

    def decode_itl_ms(self, candidate: Candidate, batch: Any, context: Any) -> np.ndarray:
        b, ctx = np.broadcast_arrays(as_positive_array("batch", batch), as_positive_array("context", context))
        m, g = self._model(), system_gpu(self.stack.system)
        kv = b * ctx * kv_bytes_per_token(m) / candidate.num_gpus
        weights = m.weight_bytes / candidate.num_gpus
        flops = 2.0 * self._active_params(m) * b / candidate.num_gpus
        return np.maximum((weights + kv) / g["mem_bw"], flops / g["flops"]) * 1000.0

    def kv_capacity_tokens(self, candidate: Candidate) -> int:
        m, g = self._model(), system_gpu(self.stack.system)
        budget = g["mem_capacity"] * candidate.num_gpus * _MEMORY_FRACTION.get(self.stack.backend, 0.9)
        free = budget - m.weight_bytes
        return max(0, int(free / kv_bytes_per_token(m)))


