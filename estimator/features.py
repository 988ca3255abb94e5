"""Roofline terms of one engine step, per GPU after parallelism: what the regression learns from.

Why these: a model that predicts time from FLOPs and bytes per GPU over the GPU's peaks carries
to a model or GPU it has not seen, where one keyed on names cannot. Each term is a time in ms at
peak speed (or a count of fixed costs), and each is non-decreasing in ISL, batch and context, so a
non-negative combination of them is monotone where physics says it must be.

Terms (columns of :data:`TERM_NAMES`): GEMM FLOPs / peak for the GEMM precision; attention FLOPs /
bf16 peak; weight bytes, KV bytes and activation bytes / memory bandwidth; TP all-reduce and EP
all-to-all bytes / NVLink bandwidth; collective count × latency; layers × 10 µs; one fixed 1 ms.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from functools import cache
from typing import Any

import numpy as np

from .candidates import Candidate
from .errors import SourceError
from .hardware import HardwareSpec
from .model import ModelInfo, bundled_config_dir, load_model_info

TERM_NAMES = (
    "gemm_flops_ms", "attn_flops_ms", "weight_ms", "kv_ms", "act_ms", "comm_ms", "sync_ms", "layer_ms", "const_ms",
)  # fmt: skip
_BYTES = {
    "fp8": 1.0,
    "fp8_block": 1.0,
    "int8": 1.0,
    "nvfp4": 0.5625,
    "fp4": 0.5625,
    "mxfp4": 0.53,
    "int4_wo": 0.53,
}


@dataclass(frozen=True, slots=True)
class ModelShape:
    """Parameter and KV sizes of a model, the MLA / sliding-window / hybrid-attention facts included."""

    name: str
    num_layers: int
    kv_layers: float  # layers holding a full-length KV cache (hybrid/sliding models hold fewer)
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    kv_elems_per_token_layer: float  # 2 * kv_heads * head_dim, or the MLA latent (kv_lora + rope)
    mla: bool  # latent KV is replicated across TP ranks
    attn_params_per_layer: float
    dense_mlp_params: float  # all dense MLP layers together
    expert_params: float  # one routed expert of one layer
    num_moe_layers: int
    num_experts: int
    experts_per_token: int
    shared_expert_params: float  # all layers together
    vocab_size: int
    weight_bytes_per_param: float  # of the checkpoint (1 fp8, 0.5625 nvfp4, 2 bf16)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelShape:
        return cls(**{f.name: d[f.name] for f in fields(cls)})


def _config(info: ModelInfo) -> dict:
    from pathlib import Path

    p = Path(info.name)
    path = (
        p / "config.json"
        if p.is_dir()
        else bundled_config_dir() / (info.name.replace("/", "--", 1) + "_config.json")
    )
    cfg = json.loads(path.read_text())
    return cfg.get("text_config") or cfg


@cache
def model_shape(model: str) -> ModelShape:
    """Shape of ``model`` (bundled id or local directory) from its config.json."""
    info = load_model_info(model)
    try:
        cfg = _config(info)
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot read config of {model!r}: {exc}") from exc
    h, layers, heads, kvh, hd = (
        info.hidden_size,
        info.num_layers,
        info.num_heads,
        info.num_kv_heads,
        info.head_dim,
    )
    kv_lora = int(cfg.get("kv_lora_rank") or 0)
    if kv_lora:
        rope, nope = int(cfg.get("qk_rope_head_dim") or 64), int(cfg.get("qk_nope_head_dim") or 128)
        v_dim, q_lora = int(cfg.get("v_head_dim") or 128), int(cfg.get("q_lora_rank") or 0)
        q = h * q_lora + q_lora * heads * (nope + rope) if q_lora else h * heads * (nope + rope)
        attn = q + h * (kv_lora + rope) + kv_lora * heads * (nope + v_dim) + heads * v_dim * h
        kv_elems, hd = float(kv_lora + rope), nope + rope
    else:
        attn = h * hd * (2 * heads + 2 * kvh)
        kv_elems = 2.0 * kvh * hd
    types = cfg.get("layer_types") or []
    window = int(cfg.get("sliding_window") or 0)
    kv_layers = float(sum(t == "full_attention" for t in types)) if types else float(layers)
    if types and window:  # sliding layers hold at most the window; counted as a small share
        kv_layers += sum(t == "sliding_attention" for t in types) * min(1.0, window / 4096)
    dense_layers = layers
    moe_layers = 0
    if info.is_moe:
        first_dense = int(cfg.get("first_k_dense_replace") or 0)
        moe_layers, dense_layers = layers - first_dense, first_dense
    shared = int(cfg.get("n_shared_experts") or 0) * 3 * h * info.moe_intermediate_size * moe_layers
    if cfg.get("shared_expert_intermediate_size"):
        shared = 3 * h * int(cfg["shared_expert_intermediate_size"]) * moe_layers
    return ModelShape(
        name=info.name, num_layers=layers, kv_layers=max(kv_layers, 1.0), hidden_size=h, num_heads=heads,
        num_kv_heads=kvh, head_dim=hd, kv_elems_per_token_layer=kv_elems, mla=bool(kv_lora),
        attn_params_per_layer=float(attn), dense_mlp_params=float(dense_layers * 3 * h * info.intermediate_size),
        expert_params=float(3 * h * info.moe_intermediate_size) if info.is_moe else 0.0, num_moe_layers=moe_layers,
        num_experts=info.num_experts, experts_per_token=max(1, info.experts_per_token) if info.is_moe else 0,
        shared_expert_params=float(shared), vocab_size=info.vocab_size,
        weight_bytes_per_param=info.weight_bytes_per_param if info.weight_bytes_per_param != 0.5 else 0.5625,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Precision:
    """Bytes per weight and per KV element, and which GEMM peak applies."""

    gemm_quant: str  # "bfloat16", "fp8", "nvfp4", ...
    weight_bytes: float
    kv_bytes: float

    @classmethod
    def of(cls, shape: ModelShape, gemm_quant: str | None, kvcache_quant: str | None) -> Precision:
        if gemm_quant:
            q = gemm_quant.lower()
            wb = _BYTES.get(q, 2.0)
        else:  # inferred from the checkpoint, as AIC does
            wb = shape.weight_bytes_per_param
            q = {1.0: "fp8", 0.5625: "nvfp4"}.get(wb, "bfloat16")
        if kvcache_quant:
            kv = 1.0 if kvcache_quant.lower() in ("fp8", "int8") else 2.0
        else:  # as AIC infers it: a quantised checkpoint (fp8, nvfp4) serves an fp8 KV cache
            kv = 1.0 if shape.weight_bytes_per_param < 2.0 else 2.0
        return cls(q, wb, kv)


def kv_bytes_per_token_per_gpu(shape: ModelShape, cand: Candidate, prec: Precision) -> float:
    """KV bytes one token occupies on one GPU of its attention rank (MLA latent is replicated)."""
    per_layer = shape.kv_elems_per_token_layer * prec.kv_bytes
    if not shape.mla:
        per_layer /= min(cand.tp_size, max(1, shape.num_kv_heads))  # KV heads replicate beyond TP = kv heads
    return per_layer * shape.kv_layers


def weight_bytes_per_gpu(shape: ModelShape, cand: Candidate, prec: Precision) -> float:
    """Resident weight bytes on one GPU (attention/dense split by TP, experts by TP × EP)."""
    tp, n = cand.tp_size, cand.num_gpus
    dense = (
        shape.num_layers * shape.attn_params_per_layer + shape.dense_mlp_params + shape.shared_expert_params
    )
    dense += 2 * shape.vocab_size * shape.hidden_size
    experts = shape.num_moe_layers * shape.num_experts * shape.expert_params
    return (dense / tp + experts / n) * prec.weight_bytes


def _experts_touched(shape: ModelShape, tokens: np.ndarray) -> np.ndarray:
    """Expected share of a layer's experts that ``tokens`` routed tokens touch (uniform routing)."""
    if not shape.is_moe:
        return np.zeros_like(tokens)
    return 1.0 - (1.0 - shape.experts_per_token / shape.num_experts) ** tokens


def step_terms(
    shape: ModelShape,
    hw: HardwareSpec,
    cand: Candidate,
    prec: Precision,
    tokens: Any,
    batch: Any,
    context: Any,
) -> np.ndarray:
    """Terms (n, len(TERM_NAMES)) of one step on the busiest GPU.

    ``tokens``: new tokens the step processes per attention rank (prefill: ISL; decode: batch per rank);
    ``batch``: requests per attention rank; ``context``: KV tokens each request attends to.
    """
    t, b, ctx = (np.asarray(x, dtype=float) for x in np.broadcast_arrays(tokens, batch, context))
    tp, dp, n = cand.tp_size, cand.attention_dp_size, cand.num_gpus
    h, layers = shape.hidden_size, shape.num_layers
    dense_params = layers * shape.attn_params_per_layer + shape.dense_mlp_params + shape.shared_expert_params
    # GEMMs: dense part split by TP; routed experts spread over all GPUs; tokens of every DP rank reach the experts
    routed_tokens = t * dp * shape.experts_per_token
    gemm = 2.0 * t * dense_params / tp + 2.0 * routed_tokens * shape.num_moe_layers * shape.expert_params / n
    gemm += 2.0 * b * shape.vocab_size * h / tp  # lm head on the last token of each request
    heads = shape.num_heads / tp
    # causal attention over the new tokens plus the context before them: 2 * 2 * heads * head_dim per pair
    per_request = t / np.maximum(b, 1.0)
    pairs = b * per_request * (np.maximum(ctx - per_request, 0.0) + per_request / 2.0)
    attn = 4.0 * heads * shape.head_dim * shape.kv_layers * pairs
    local_experts = shape.num_experts / max(1, cand.moe_ep_size)
    touched = _experts_touched(shape, t * dp) * local_experts * shape.num_moe_layers
    weights = (weight_bytes_per_gpu(shape, cand, prec)
               - shape.num_moe_layers * shape.num_experts * shape.expert_params / n * prec.weight_bytes
               + touched * shape.expert_params / max(1, cand.moe_tp_size) * prec.weight_bytes)  # fmt: skip
    kv = b * ctx * kv_bytes_per_token_per_gpu(shape, cand, prec)
    act = t * h * layers * 2.0 * 8.0 / tp  # ~8 bf16 reads/writes of the hidden state per layer
    comm = np.zeros_like(t)
    collectives = 0.0
    if tp > 1:
        comm = comm + 2.0 * layers * t * h * 2.0 * 2.0 * (tp - 1) / tp
        collectives += 2.0 * layers
    if cand.moe_ep_size > 1:
        comm = comm + 2.0 * shape.num_moe_layers * t * shape.experts_per_token * h * 2.0 * (n - 1) / n
        collectives += 2.0 * shape.num_moe_layers
    peak = hw.gemm_flops(prec.gemm_quant)
    bw = hw.intra_node_bw if n <= hw.gpus_per_node else hw.inter_node_bw
    ones = np.ones_like(t)
    cols = (
        gemm / peak, attn / hw.bf16_flops, weights / hw.mem_bw * ones, kv / hw.mem_bw, act / hw.mem_bw,
        comm / bw, collectives * hw.collective_latency_s * ones, layers * 1e-5 * ones, 1e-3 * ones,
    )  # fmt: skip
    return np.stack(cols, axis=1) * 1000.0


def prefill_terms(
    shape: ModelShape, hw: HardwareSpec, cand: Candidate, prec: Precision, isl: Any
) -> np.ndarray:
    """One request of ISL tokens on one attention rank (batch 1, no prefix)."""
    isl = np.asarray(isl, dtype=float)
    return step_terms(shape, hw, cand, prec, isl, np.ones_like(isl), isl)


def decode_terms(
    shape: ModelShape, hw: HardwareSpec, cand: Candidate, prec: Precision, batch: Any, context: Any
) -> np.ndarray:
    """One decode step, ``batch`` requests over the whole engine (split over DP ranks) at ``context``."""
    b, ctx = np.broadcast_arrays(np.asarray(batch, dtype=float), np.asarray(context, dtype=float))
    per_rank = np.maximum(1.0, np.ceil(b / cand.attention_dp_size))
    return step_terms(shape, hw, cand, prec, per_rank, per_rank, ctx)


def descriptors(shape: ModelShape, hw: HardwareSpec, cand: Candidate, prec: Precision) -> dict[str, float]:
    """Engine facts (not point facts) the boosted residual may split on."""
    return {
        "log_hidden": float(np.log(shape.hidden_size)),
        "layers": float(shape.num_layers),
        "log_params_per_gpu": float(np.log(weight_bytes_per_gpu(shape, cand, prec) / prec.weight_bytes)),
        "is_moe": float(shape.is_moe),
        "mla": float(shape.mla),
        "tp": float(cand.tp_size),
        "dp": float(cand.attention_dp_size),
        "ep": float(cand.moe_ep_size),
        "weight_bytes": prec.weight_bytes,
        "log_bw": float(np.log(hw.mem_bw)),
        "log_peak": float(np.log(hw.gemm_flops(prec.gemm_quant))),
    }
