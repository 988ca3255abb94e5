"""One engine (stack + candidate) as the regression sees it: terms and features for any point.

Both training and prediction go through :class:`EngineFeatures`, so the two can never disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

import numpy as np

from ...candidates import Candidate
from ...errors import SpecError
from ...features import (
    ModelShape,
    Precision,
    decode_terms,
    descriptors,
    kv_bytes_per_token_per_gpu,
    model_shape,
    prefill_terms,
    weight_bytes_per_gpu,
)
from ...hardware import HardwareSpec, hardware_spec
from ...model import bundled_models, resolve_model_name
from ..base import Stack

BACKEND_CODES = {"vllm": 0.0, "sglang": 1.0, "trtllm": 2.0}
FEATURE_NAMES = (
    "log_gemm_flops_ms", "log_attn_flops_ms", "log_weight_ms", "log_kv_ms", "log_act_ms", "log_comm_ms",
    "log_tokens", "log_batch", "log_context", "flops_over_bytes",
    "log_hidden", "layers", "log_params_per_gpu", "is_moe", "mla", "tp", "dp", "ep", "weight_bytes",
    "log_bw", "log_peak", "backend",
)  # fmt: skip
ACTIVATION_TOKENS = 8192  # the engines' default token budget: activation memory reserved per GPU


def shape_of(model: str) -> ModelShape:
    """The model's shape; an id we lack whose name matches a bundled config is read from that config.

    Real deployments name checkpoints by publisher and quantisation (``nvidia/Qwen3-32B-NVFP4``,
    ``zhipuai/GLM-5`` for ``zai-org/GLM-5``): same shape, and the data states the quantisation.
    """
    try:
        return model_shape(model)
    except SpecError:
        org, _, name = model.partition("/")
        base = re.sub(r"-(fp8|nvfp4|fp4)$", "", name, flags=re.IGNORECASE)
        for guess in (f"{o}/{base}" for o in (org, *_bundled_orgs())):
            try:
                return model_shape(resolve_model_name(guess))
            except SpecError:
                continue
        raise


@cache
def _bundled_orgs() -> tuple[str, ...]:
    return tuple(sorted({m.split("/", 1)[0] for m in bundled_models()}))


@dataclass(frozen=True, slots=True)
class EngineFeatures:
    """Shape, GPU and precision of one engine; terms and residual features for its points."""

    stack: Stack
    candidate: Candidate
    shape: ModelShape
    hw: HardwareSpec
    precision: Precision

    @classmethod
    def of(
        cls, stack: Stack, candidate: Candidate, hardware: dict[str, HardwareSpec] | None = None
    ) -> EngineFeatures:
        shape = shape_of(stack.model)
        hw = (hardware or {}).get(stack.system) or hardware_spec(stack.system)
        return cls(stack, candidate, shape, hw, Precision.of(shape, stack.gemm_quant, stack.kvcache_quant))

    def _features(
        self, terms: np.ndarray, tokens: np.ndarray, batch: np.ndarray, ctx: np.ndarray
    ) -> np.ndarray:
        d = descriptors(self.shape, self.hw, self.candidate, self.precision)
        logs = np.log(np.maximum(terms[:, :6], 1e-6))
        ratio = np.log(
            np.maximum(terms[:, 0] + terms[:, 1], 1e-6) / np.maximum(terms[:, 2] + terms[:, 3], 1e-6)
        )
        per_point = np.column_stack([logs, np.log(tokens), np.log(batch), np.log(ctx), ratio])
        engine = np.array([*d.values(), BACKEND_CODES.get(self.stack.backend, 3.0)])
        return np.hstack([per_point, np.broadcast_to(engine, (terms.shape[0], engine.size))])

    def prefill(self, isl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(terms, features) of batch-1 prefill at each ISL."""
        isl = np.asarray(isl, dtype=float)
        terms = prefill_terms(self.shape, self.hw, self.candidate, self.precision, isl)
        return terms, self._features(terms, isl, np.ones_like(isl), isl)

    def decode(self, batch: np.ndarray, context: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(terms, features) of one decode step at engine-wide ``batch`` and ``context``."""
        b, ctx = np.broadcast_arrays(np.asarray(batch, dtype=float), np.asarray(context, dtype=float))
        terms = decode_terms(self.shape, self.hw, self.candidate, self.precision, b, ctx)
        per_rank = np.maximum(1.0, np.ceil(b / self.candidate.attention_dp_size))
        return terms, self._features(terms, per_rank, per_rank, ctx)

    # ---- memory ------------------------------------------------------------------------------
    def kv_bytes_per_token(self) -> float:
        return kv_bytes_per_token_per_gpu(self.shape, self.candidate, self.precision)

    def weight_bytes(self) -> float:
        return weight_bytes_per_gpu(self.shape, self.candidate, self.precision)

    def activation_bytes(self) -> float:
        return ACTIVATION_TOKENS * self.shape.hidden_size * 2.0 * 8.0

    def kv_row(self, engine_tokens: float) -> np.ndarray:
        """(KV bytes per GPU, weight bytes per GPU, memory, activation bytes) of a measured capacity."""
        per_rank = engine_tokens / self.candidate.attention_dp_size
        return np.array([per_rank * self.kv_bytes_per_token(), self.weight_bytes(), self.hw.mem_capacity,
                         self.activation_bytes()])  # fmt: skip

    def kv_capacity(self, a: float, b: float, c: float) -> int:
        free = a * self.hw.mem_capacity - b - c * self.activation_bytes() - self.weight_bytes()
        return max(0, int(free / self.kv_bytes_per_token())) * self.candidate.attention_dp_size
