"""TorchGpuRunner on a CUDA GPU (marked ``gpu``: skipped without one; run on the lent GPU, docs/gpu_tests.md).

Shapes of real models with few layers and random bf16 weights: a Llama-3.1-8B layer (dense) and a
Qwen3-30B-A3B layer (MoE, 128 experts, top 8). What a CPU cannot show: the CUDA-graph path, the exact-KV
check on the GPU's kernels, and floors that hold against real timings (ratio >= 1), MoE included.
"""

from __future__ import annotations

import json
import statistics

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from estimator.candidates import Candidate, Mapping
from estimator.errors import ExactKvMismatch
from estimator.measurements import Probe, ProbeKind
from estimator.sources.base import Stack
from validate.runners.torch_gpu import TorchGpuRunner
from validate.runners.torch_kv import EXACT_KV_REL_TOLERANCE, check_exact_kv

pytestmark = pytest.mark.gpu

LLAMA_8B_LAYERS = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 4, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128, "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "tie_word_embeddings": False,
}  # fmt: skip
QWEN3_30B_A3B_LAYERS = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 2048,
    "intermediate_size": 6144, "moe_intermediate_size": 768, "num_experts": 128, "num_experts_per_tok": 8,
    "decoder_sparse_step": 1, "norm_topk_prob": True, "num_hidden_layers": 4, "num_attention_heads": 32,
    "num_key_value_heads": 4, "head_dim": 128, "vocab_size": 151936, "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": False,
}  # fmt: skip
TP1 = Candidate(Mapping.TP, 1)


def _runner(tmp_path_factory, raw: dict, **kw) -> TorchGpuRunner:
    d = tmp_path_factory.mktemp(raw["model_type"])
    (d / "config.json").write_text(json.dumps(raw))
    return TorchGpuRunner(str(d), model_path=str(d), device="cuda", warmup_iters=3, min_iters=10, **kw)


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    r = _runner(tmp_path_factory, LLAMA_8B_LAYERS)
    yield r
    r.close()


@pytest.fixture(scope="module", params=[True, False], ids=["graph", "eager"])
def moe(tmp_path_factory, request):
    r = _runner(tmp_path_factory, QWEN3_30B_A3B_LAYERS, use_cuda_graph=request.param)
    yield r
    r.close()


def _probes(r: TorchGpuRunner) -> list[Probe]:
    stack = Stack(r.model, "h200_sxm", "vllm")
    eng = r.engine  # TP1, or TEP1 for an MoE model on one GPU
    return [
        Probe(ProbeKind.PREFILL, stack, eng, isl=2048, repeats=10),
        Probe(ProbeKind.DECODE, stack, eng, isl=1024, osl=2, concurrency=1, repeats=10),
        Probe(ProbeKind.DECODE, stack, eng, isl=1024, osl=2, concurrency=64, repeats=10),
    ]


def _check_floors(r: TorchGpuRunner) -> list:
    out = []
    for p in _probes(r):
        m = r.measure(p)
        key = "ttft_ms" if p.kind is ProbeKind.PREFILL else "itl_ms"
        value, samples = getattr(m, key), m.samples[key]
        assert value == pytest.approx(statistics.fmean(samples)) and len(samples) >= 10
        assert m.extra["ratio_to_bw_floor"] >= 1.0, (p.kind.value, p.concurrency, m.extra)
        assert m.extra["ratio_to_compute_floor"] >= 1.0, (p.kind.value, p.concurrency, m.extra)
        out.append(m)
        print(f"{r.model.rsplit('/', 1)[-1]} {p.kind.value} isl {p.isl} batch {p.concurrency}: {value:.3f} ms, "
              f"bw floor x{m.extra['ratio_to_bw_floor']:.2f}, compute floor x{m.extra['ratio_to_compute_floor']:.2f}, "
              f"graph {m.extra['cuda_graph']}, experts read {m.extra.get('moe_experts_read')}")  # fmt: skip
    return out


def test_dense_floors_hold_with_cuda_graphs(dense):
    ms = _check_floors(dense)
    assert all(m.extra["cuda_graph"] for m in ms)
    assert dense.exact_kv_rel_err_ is not None and dense.exact_kv_rel_err_ <= EXACT_KV_REL_TOLERANCE


def test_moe_floors_count_only_the_routed_experts(moe):
    ms = _check_floors(moe)
    single = ms[1]
    w = moe.weights
    assert single.extra["moe_experts_counted"] is True
    assert single.extra["moe_experts_read"] == w.moe_layers * w.top_k  # one token: its 8 experts per layer
    assert ms[2].extra["moe_experts_read"] > single.extra["moe_experts_read"]  # a batch of 64 routes wider
    old = single.itl_ms / (moe.weight_bytes_read_per_step / (single.extra["copy_gb_per_s"] * 1e9) * 1e3)
    print(f"batch-1 decode against the old all-experts floor: x{old:.2f} (below 1 is the bug)")


def test_exact_kv_check_on_the_gpu_fails_on_a_broken_attention():
    from transformers import AttentionInterface

    from validate.runners import torch_kv

    def reads_the_whole_buffer(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
        cache = getattr(module, torch_kv._KV_ATTR, None)
        if cache is None or query.shape[2] > 1:
            return torch_kv.exact_kv_attention(
                module, query, key, value, attention_mask, scaling, dropout, **kw
            )
        i = module.layer_idx
        cache.keys[i][:, :, cache.pos : cache.pos + 1].copy_(key)
        cache.values[i][:, :, cache.pos : cache.pos + 1].copy_(value)
        out = torch.nn.functional.scaled_dot_product_attention(
            query, cache.keys[i], cache.values[i], scale=scaling, enable_gqa=True
        )
        return out.transpose(1, 2).contiguous(), None

    config = transformers.AutoConfig.for_model(**{**LLAMA_8B_LAYERS, "num_hidden_layers": 2})
    assert check_exact_kv(config, "cuda") <= EXACT_KV_REL_TOLERANCE
    AttentionInterface.register("sla_broken_kv_cuda", reads_the_whole_buffer)
    with pytest.raises(ExactKvMismatch):
        check_exact_kv(config, "cuda", attention="sla_broken_kv_cuda")
