"""The GPU runner's floors (weights a step reads, dense and MoE) and its exact-KV check, on CPU.

MoE: only the routed experts' weights are read per step (top_k per layer for one token, all experts at
most), the dense part (attention, router, shared experts, LM head) always. The exact-KV check compares
our attention with transformers' stock sdpa in fp32 and must fail on a deliberately broken attention.
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from estimator.candidates import Candidate, Mapping
from estimator.errors import ExactKvMismatch, ProbeNotSupported
from estimator.measurements import Probe, ProbeKind
from estimator.sources.base import Stack
from validate.runners import torch_kv
from validate.runners.torch_floors import count_experts_read, weight_split
from validate.runners.torch_gpu import TorchGpuRunner
from validate.runners.torch_kv import (
    EXACT_KV_REL_TOLERANCE,
    attach_kv_cache,
    check_exact_kv,
    last_token_logits,
)

HIDDEN, INTER, MOE_INTER, EXPERTS, TOP_K, LAYERS, VOCAB = 64, 128, 32, 8, 2, 2, 256
COMMON = {"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": 4, "num_key_value_heads": 2,
          "head_dim": 16, "vocab_size": VOCAB, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
          "rope_theta": 10000.0, "tie_word_embeddings": False}  # fmt: skip
DENSE = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "intermediate_size": INTER, **COMMON}
MOE = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "intermediate_size": INTER,
       "moe_intermediate_size": MOE_INTER, "num_experts": EXPERTS, "num_experts_per_tok": TOP_K,
       "decoder_sparse_step": 1, "norm_topk_prob": True, **COMMON}  # fmt: skip
SHARED = {"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "intermediate_size": INTER,
          "moe_intermediate_size": MOE_INTER, "shared_expert_intermediate_size": 48, "num_experts": EXPERTS,
          "num_experts_per_tok": TOP_K, "decoder_sparse_step": 1, **COMMON}  # fmt: skip
FP32 = 4
# per layer: q (64x64) + k, v (64x32 each) + o (64x64), two RMSNorm weights (64 each)
ATTN = (HIDDEN * 64 + 2 * HIDDEN * 32 + 64 * HIDDEN + 2 * HIDDEN) * FP32
EMB = HEAD = VOCAB * HIDDEN * FP32
EXPERT = 3 * HIDDEN * MOE_INTER * FP32  # gate, up, down


def build(raw: dict, seed: int = 0):
    cfg = dict(raw)
    config = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def test_dense_floor_reads_every_weight_but_the_input_embedding():
    w = weight_split(build(DENSE))
    mlp = 3 * HIDDEN * INTER * FP32
    assert (w.moe_layers, w.expert_bytes) == (0, 0)
    assert w.dense_bytes == LAYERS * (ATTN + mlp) + HIDDEN * FP32 + HEAD  # + final norm, LM head
    assert w.bytes_read() == w.bytes_read(10**6) == w.dense_bytes
    assert w.active_params_per_token * FP32 == w.dense_bytes


def test_moe_floor_reads_the_routed_experts_only():
    w = weight_split(build(MOE))
    router = EXPERTS * HIDDEN * FP32
    qk_norms = 2 * 16 * FP32  # Qwen3: q_norm and k_norm over the head dim
    assert (w.moe_layers, w.num_experts, w.top_k, w.expert_bytes) == (LAYERS, EXPERTS, TOP_K, EXPERT)
    assert w.dense_bytes == LAYERS * (ATTN + qk_norms + router) + HIDDEN * FP32 + HEAD
    assert w.bytes_read() == w.dense_bytes + LAYERS * TOP_K * EXPERT  # the fewest: top_k per layer
    assert w.bytes_read(5) == w.dense_bytes + 5 * EXPERT
    assert w.bytes_read(10**6) == w.dense_bytes + LAYERS * EXPERTS * EXPERT  # bounded by all experts
    assert w.active_params_per_token * FP32 == w.dense_bytes + LAYERS * TOP_K * EXPERT


def test_shared_experts_are_read_every_step():
    w = weight_split(build(SHARED))
    shared = 3 * HIDDEN * 48 * FP32 + HIDDEN * FP32  # the shared expert and its 1-wide gate
    router = EXPERTS * HIDDEN * FP32
    qkv_bias = (64 + 32 + 32) * FP32  # Qwen2 attention has q, k, v biases
    assert w.expert_bytes == EXPERT and w.moe_layers == LAYERS
    assert w.dense_bytes == LAYERS * (ATTN + qkv_bias + router + shared) + HIDDEN * FP32 + HEAD


def test_routing_is_counted_from_the_step_itself():
    model = build(MOE)
    one = torch.randint(0, VOCAB, (1, 1))
    many = torch.randint(0, VOCAB, (1, 64), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        single = count_experts_read(model, lambda: last_token_logits(model, one))
        prompt = count_experts_read(model, lambda: last_token_logits(model, many))
    assert single == LAYERS * TOP_K  # one token: exactly its top_k distinct experts per layer
    assert LAYERS * TOP_K < prompt <= LAYERS * EXPERTS
    assert count_experts_read(build(DENSE), lambda: None) is None


@pytest.fixture
def moe_runner(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(MOE))
    r = TorchGpuRunner(str(tmp_path), model_path=str(tmp_path), device="cpu", dtype="float32",
                       use_cuda_graph=False, warmup_iters=1, min_iters=2)  # fmt: skip
    yield r
    r.close()


def test_an_moe_model_on_one_gpu_is_the_tep1_candidate(moe_runner, tmp_path):
    """The estimator enumerates TEP1 (not TP1) for one GPU of an MoE model: the runner measures that."""
    assert moe_runner.engine == Candidate(Mapping.TEP, 1)
    assert moe_runner.capabilities().candidates == frozenset({Candidate(Mapping.TEP, 1)})
    stack, TP1 = Stack(moe_runner.model, "cpu", "vllm"), Candidate(Mapping.TP, 1)
    with pytest.raises(ProbeNotSupported, match="TEP1"):
        moe_runner.measure(Probe(ProbeKind.DECODE, stack, TP1, isl=20, osl=2, concurrency=1))
    dense = tmp_path / "dense"
    dense.mkdir()
    (dense / "config.json").write_text(json.dumps(DENSE))
    assert TorchGpuRunner(str(dense), model_path=str(dense), device="cpu").engine == Candidate(Mapping.TP, 1)


def test_moe_runner_floor_uses_the_experts_the_step_read(moe_runner):
    stack = Stack(moe_runner.model, "cpu", "vllm")
    m = moe_runner.measure(
        Probe(ProbeKind.DECODE, stack, Candidate(Mapping.TEP, 1), isl=20, osl=2, concurrency=1)
    )
    w = moe_runner.weights
    kv = (21 + 1) * moe_runner.kv_bytes_per_token  # context isl + osl // 2, plus the new token
    assert m.extra["moe_experts_read"] == LAYERS * TOP_K and m.extra["moe_experts_counted"] is True
    assert m.extra["bytes_moved"] == w.dense_bytes + LAYERS * TOP_K * EXPERT + kv
    assert m.extra["bytes_moved"] < moe_runner.weight_bytes_read_per_step + kv  # the old all-experts count
    flops = 2 * (w.dense_bytes + LAYERS * TOP_K * EXPERT) / FP32
    assert m.extra["compute_floor_ms"] == pytest.approx(flops / (m.extra["matmul_tflops"] * 1e12) * 1e3)


# ---- the exact-KV check ---------------------------------------------------------------------------------------
_EXACT = torch_kv.exact_kv_attention  # the correct one (the runner test below replaces the module's)


def _reads_the_whole_buffer(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Broken on purpose: attends over the whole cache buffer, noise past the valid tokens included."""
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    cache = getattr(module, torch_kv._KV_ATTR, None)
    if cache is None or query.shape[2] > 1:
        return _EXACT(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    i = module.layer_idx
    cache.keys[i][:, :, cache.pos : cache.pos + 1].copy_(key)
    cache.values[i][:, :, cache.pos : cache.pos + 1].copy_(value)
    out = sdpa(query, cache.keys[i], cache.values[i], scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def _drops_the_newest_token(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Broken on purpose: a decode step attends to the cached tokens but not to its own."""
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    cache = getattr(module, torch_kv._KV_ATTR, None)
    if cache is None or query.shape[2] > 1:
        return _EXACT(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    i, pos = module.layer_idx, cache.pos
    cache.keys[i][:, :, pos : pos + 1].copy_(key)
    cache.values[i][:, :, pos : pos + 1].copy_(value)
    out = sdpa(query, cache.keys[i][:, :, :pos], cache.values[i][:, :, :pos], scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


@pytest.mark.parametrize("raw", [DENSE, MOE], ids=["dense", "moe"])
def test_exact_kv_check_passes_with_the_correct_attention(raw):
    err = check_exact_kv(build(raw).config)
    assert 0.0 <= err <= EXACT_KV_REL_TOLERANCE


@pytest.mark.parametrize("broken", [_reads_the_whole_buffer, _drops_the_newest_token])
def test_exact_kv_check_fails_loudly_on_a_broken_attention(broken):
    from transformers import AttentionInterface

    AttentionInterface.register("sla_broken_kv", broken)
    with pytest.raises(ExactKvMismatch, match=r"relative logit error .* > 0.0001"):
        check_exact_kv(build(DENSE).config, attention="sla_broken_kv")


def test_the_runner_refuses_to_start_on_a_broken_attention(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps(DENSE))
    monkeypatch.setattr(torch_kv, "exact_kv_attention", _drops_the_newest_token)
    r = TorchGpuRunner(
        str(tmp_path), model_path=str(tmp_path), device="cpu", dtype="float32", use_cuda_graph=False
    )
    with pytest.raises(ExactKvMismatch):
        r.load()
    assert r._model is None
    monkeypatch.undo()
    torch_kv.register_exact_kv_attention()  # the correct one again, for the tests after this one
    assert r.load() is not None and r.exact_kv_rel_err_ <= EXACT_KV_REL_TOLERANCE
    attach_kv_cache(r.load(), None)
    r.close()
