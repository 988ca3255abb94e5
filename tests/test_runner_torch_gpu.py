"""TorchGpuRunner on CPU with a tiny random Llama: the same code path as on the GPU, without CUDA graphs."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from estimator.candidates import Candidate, Mapping
from estimator.errors import EngineStartError, MeasurementError
from estimator.sources.base import Stack
from estimator.measurements import MeasurementStore, Probe, ProbeKind
from validate.runners.torch_gpu import TorchGpuRunner
from validate.runners.torch_kv import (
    EXACT_KV_ATTENTION,
    ExactKvCache,
    attach_kv_cache,
    last_token_logits,
    register_exact_kv_attention,
)
from validate.runners.torch_tp import add_tp_collectives, shard_config

TINY = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "vocab_size": 256, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}  # fmt: skip
TP1 = Candidate(Mapping.TP, 1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_llama")
    (d / "config.json").write_text(json.dumps(TINY))
    return str(d)


@pytest.fixture(scope="module")
def runner(model_dir):
    r = TorchGpuRunner(model_dir, model_path=model_dir, device="cpu", dtype="float32",
                       use_cuda_graph=False, warmup_iters=2, min_iters=3)  # fmt: skip
    yield r
    r.close()


def probe(model_dir, kind=ProbeKind.PREFILL, isl=32, concurrency=1, cand=TP1, model=None):
    stack = Stack(model or model_dir, "h100_sxm", "vllm")
    return Probe(kind, stack, cand, isl=isl, osl=1, concurrency=concurrency, repeats=3)


def test_prefill_measurement_is_structurally_valid(runner, model_dir, tmp_path):
    m = runner.measure(probe(model_dir, isl=48))
    assert m.runner == "gpu" and m.probe.kind is ProbeKind.PREFILL
    assert m.ttft_ms > 0 and m.ttft_std_ms >= 0 and m.itl_ms is None
    assert len(m.samples["ttft_ms"]) == 3
    assert m.thpt_per_gpu == pytest.approx(48 / m.ttft_ms * 1000)
    assert m.kv_capacity_tokens > 0
    assert m.extra["ratio_to_bw_floor"] == pytest.approx(m.ttft_ms / m.extra["bw_floor_ms"])
    assert m.extra["cuda_graph"] is False and m.extra["weights"] == "random"
    assert {"torch", "transformers", "cuda", "gpu"} <= set(m.software)
    store = MeasurementStore(tmp_path / "m.jsonl")
    store.append(m)
    (back,) = store.load()
    assert back.probe == m.probe and back.ttft_ms == m.ttft_ms and back.extra == m.extra


def test_decode_measurement_is_structurally_valid(runner, model_dir):
    m = runner.measure(probe(model_dir, ProbeKind.DECODE, isl=40, concurrency=3))
    assert m.itl_ms > 0 and m.ttft_ms is None
    assert m.thpt_per_gpu == pytest.approx(3 / m.itl_ms * 1000)
    assert m.extra["kv_tokens_read"] == 3 * 41
    kv_bytes = 3 * 41 * 2 * 2 * 2 * 16 * 4  # tokens × (k,v) × layers × kv heads × head_dim × fp32
    assert m.extra["bytes_moved"] == runner.weight_bytes_read_per_step + kv_bytes
    assert m.extra["bw_floor_ms"] > 0 and m.extra["eager_itl_ms"] > 0


def test_weight_bytes_read_skips_untied_input_embeddings(runner):
    emb = runner.load().get_input_embeddings().weight
    assert runner.weight_bytes - runner.weight_bytes_read_per_step == emb.numel() * 4


def _twin_models():
    """The same random weights with the stock eager attention and with the exact-KV attention."""
    config = transformers.AutoConfig.for_model(**TINY)
    torch.manual_seed(1)
    ref = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    ours = transformers.AutoModelForCausalLM.from_config(
        config, attn_implementation=register_exact_kv_attention()
    )
    ours.load_state_dict(ref.state_dict())
    return ref, ours.eval()


@pytest.mark.parametrize("batch,prompt_len", [(1, 7), (3, 20)])
def test_exact_kv_attention_matches_stock_eager_attention(batch, prompt_len):
    ref, ours = _twin_models()
    prompt = torch.randint(0, TINY["vocab_size"], (batch, prompt_len))
    nxt = torch.randint(0, TINY["vocab_size"], (batch, 1))
    with torch.inference_mode():
        out = ref(input_ids=prompt, use_cache=True)
        ref_prefill = out.logits[:, -1:]
        ref_decode = ref(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True).logits
        # buffers longer than needed and full of noise: reading past the valid length would show
        cache = ExactKvCache.allocate(ours.config, batch, prompt_len + 9, "cpu", torch.float32)
        cache.fill_random(0, seed=3)
        attach_kv_cache(ours, cache)
        our_prefill = last_token_logits(ours, prompt)
        cache.pos = prompt_len
        pos = torch.full((batch, 1), prompt_len)
        our_decode = last_token_logits(ours, nxt, pos)
        attach_kv_cache(ours, None)
    assert ours.config._attn_implementation == EXACT_KV_ATTENTION
    torch.testing.assert_close(our_prefill, ref_prefill, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(our_decode, ref_decode, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(our_decode, ref_prefill, atol=1e-3)  # the decode step really moved on


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"kind": ProbeKind.AGG}, "not agg"),
        ({"cand": Candidate(Mapping.TP, 2)}, "TP1"),
        ({"model": "someone/else"}, "not someone/else"),
        ({"isl": 0}, ">= 1"),
        ({"concurrency": 2}, "batch 1"),
        ({"kind": ProbeKind.DECODE, "isl": 10**7, "concurrency": 10**7}, "capacity"),
    ],
)
def test_bad_probes_raise_measurement_error(runner, model_dir, kwargs, match):
    with pytest.raises(MeasurementError, match=match):
        runner.measure(probe(model_dir, **kwargs))


def test_torch_out_of_memory_becomes_measurement_error(runner, model_dir, monkeypatch):
    def boom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")

    monkeypatch.setattr(ExactKvCache, "allocate", boom)
    with pytest.raises(MeasurementError, match="out of memory at decode batch 2 context 16"):
        runner.measure(probe(model_dir, ProbeKind.DECODE, isl=16, concurrency=2))


def test_start_errors(tmp_path, model_dir):
    with pytest.raises(EngineStartError, match="no config.json"):
        TorchGpuRunner("x", model_path=str(tmp_path), device="cpu").load()
    with pytest.raises(EngineStartError, match="CUDA graphs need a CUDA device"):
        TorchGpuRunner(model_dir, model_path=model_dir, device="cpu", use_cuda_graph=True).load()
    with pytest.raises(EngineStartError, match="cannot find a config"):
        TorchGpuRunner("no-such/model", device="cpu").load()
    if not torch.cuda.is_available():
        with pytest.raises(EngineStartError, match="no CUDA GPU"):
            TorchGpuRunner(model_dir, model_path=model_dir, device="cuda").load()


def test_bundled_model_id_resolves_to_aic_config():
    pytest.importorskip("aiconfigurator_core")
    path = TorchGpuRunner("meta-llama/Meta-Llama-3.1-8B")._config_source()
    assert json.loads(path.read_text())["num_key_value_heads"] == 8


def test_shard_config_splits_heads_mlp_and_vocab():
    shard = shard_config(TINY, 2)
    assert (shard["num_attention_heads"], shard["num_key_value_heads"]) == (2, 1)
    assert (shard["intermediate_size"], shard["vocab_size"], shard["head_dim"]) == (64, 128, 16)
    assert shard["hidden_size"] == 64
    with pytest.raises(EngineStartError, match="num_key_value_heads 2 does not split by TP 4"):
        shard_config(TINY, 4)


def test_tp_needs_a_process_group(model_dir):
    with pytest.raises(EngineStartError, match="process group of 2 ranks"):
        TorchGpuRunner(model_dir, model_path=model_dir, device="cpu", tp_size=2).load()


def test_tp_collectives_keep_a_one_rank_forward_unchanged(tmp_path):
    """With one rank the all-reduces are identities: the hooked model must give the same logits."""
    dist = torch.distributed
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        _, model = _twin_models()
        ids = torch.randint(0, TINY["vocab_size"], (2, 9))
        with torch.inference_mode():
            before = last_token_logits(model, ids)
            add_tp_collectives(model, 1)
            after = last_token_logits(model, ids)
        torch.testing.assert_close(after, before)
    finally:
        dist.destroy_process_group()


def test_real_weights_load_from_a_local_checkpoint(tmp_path):
    ref, _ = _twin_models()
    ref.save_pretrained(tmp_path)  # config.json + model.safetensors
    r = TorchGpuRunner(str(tmp_path), model_path=str(tmp_path), device="cpu", dtype="float32",
                       use_cuda_graph=False, warmup_iters=1, min_iters=2)  # fmt: skip
    ids = torch.randint(0, TINY["vocab_size"], (1, 5))
    with torch.inference_mode():
        torch.testing.assert_close(last_token_logits(r.load(), ids), ref(input_ids=ids).logits[:, -1:])
    m = r.measure(probe(str(tmp_path), isl=8))
    assert m.extra["weights"] == "real" and m.ttft_ms > 0


@pytest.mark.parametrize(("gemm", "kv"), [("fp8", None), (None, "fp8"), ("bfloat16", None)])
def test_a_quantisation_the_runner_does_not_build_is_refused_not_mislabelled(runner, model_dir, gemm, kv):
    """It builds float32 (here) weights and KV cache: an fp8 record measured that way would be wrong."""
    p = probe(model_dir)
    asked = Probe(p.kind, Stack(model_dir, "h100_sxm", "vllm", gemm_quant=gemm, kvcache_quant=kv), TP1, 32)
    assert "quant" in (runner.can_measure(asked) or "")
    with pytest.raises(MeasurementError, match="cannot measure"):
        runner.measure(asked)
    own = Stack(model_dir, "h100_sxm", "vllm", gemm_quant="float32")
    assert runner.can_measure(Probe(p.kind, own, TP1, isl=32)) is None


def test_a_quantised_checkpoint_is_measured_only_when_asked_for_the_runners_own_weights(tmp_path):
    d = tmp_path / "fp8_llama"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({**TINY, "quantization_config": {"quant_method": "fp8"}}))
    r = TorchGpuRunner(str(d), model_path=str(d), device="cpu", dtype="float32", use_cuda_graph=False)
    default = Probe(ProbeKind.PREFILL, Stack(str(d), "h100_sxm", "vllm"), TP1, isl=32)
    assert "quantised checkpoint" in (r.can_measure(default) or "")
    own = Probe(ProbeKind.PREFILL, Stack(str(d), "h100_sxm", "vllm", gemm_quant="float32"), TP1, isl=32)
    assert r.can_measure(own) is None
