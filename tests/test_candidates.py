from estimator.candidates import Candidate, Mapping, enumerate_candidates
from estimator.model import load_model_info, resolve_model_name


def test_dense_model_gets_tp_only():
    info = load_model_info(resolve_model_name("Qwen/Qwen3-32B"))
    kept, dropped = enumerate_candidates(info, (1, 2, 4, 8))
    assert [c.name for c in kept] == ["TP1", "TP2", "TP4", "TP8"] and not dropped


def test_kv_heads_divisibility_rejects_with_reason():
    info = load_model_info(resolve_model_name("Qwen/Qwen3-32B"))  # 8 KV heads, 64 heads
    kept, dropped = enumerate_candidates(info, (3, 128))
    assert not kept
    assert {r.candidate.name for r in dropped} == {"TP3", "TP128"}
    assert all("divide" in r.reason for r in dropped)


def test_moe_model_gets_tep_and_dep_with_aic_conventions():
    info = load_model_info(resolve_model_name("Qwen/Qwen3-30B-A3B"))
    kept, _ = enumerate_candidates(info, (1, 2, 4))
    assert [c.name for c in kept] == ["TEP1", "TEP2", "TEP4", "DEP2", "DEP4"]
    dep = Candidate(Mapping.DEP, 4)
    assert (dep.tp_size, dep.attention_dp_size, dep.moe_tp_size, dep.moe_ep_size) == (1, 4, 1, 4)
    tep = Candidate(Mapping.TEP, 4)
    assert (tep.tp_size, tep.attention_dp_size, tep.moe_tp_size, tep.moe_ep_size) == (4, 1, 1, 4)


def test_candidate_parse_roundtrip():
    for name in ("TP4", "TEP8", "DEP2"):
        assert Candidate.parse(name).name == name


def test_model_key_names_one_model_however_it_is_written():
    from estimator.model import model_key

    llama = model_key("meta-llama/Meta-Llama-3.1-8B")
    assert model_key("meta-llama/Llama-3.1-8B") == llama  # the alias
    assert model_key("/models/Meta-Llama-3.1-8B/") == llama  # a server's path
    assert model_key("/hf/hub/models--meta-llama--Meta-Llama-3.1-8B/snapshots/0e9e39f") == llama  # a cache
    assert model_key("Qwen/Qwen3-32B") == model_key("qwen3-32b")
    assert model_key("Qwen/Qwen3-32B") != model_key("Qwen/Qwen3-32B-FP8") != model_key("Qwen/Qwen3-8B")


def test_no_engine_names_gpus_when_the_gpu_count_is_the_cause():
    """`--gpus 3` ended in "no candidate engine could be estimated (TP3: ...)" without naming the field."""
    import pytest

    from estimator.candidates import GpuCountError, Rejection, no_engine_error
    from estimator.errors import DataNotAvailable, SpecError

    info = load_model_info(resolve_model_name("Qwen/Qwen3-32B"))
    kept, dropped = enumerate_candidates(info, (3,))
    assert not kept and all(r.by_gpu_count for r in dropped)
    err = no_engine_error(dropped, (3,))
    assert isinstance(err, GpuCountError) and isinstance(err, SpecError) and isinstance(err, DataNotAvailable)
    assert err.field == "gpus"
    assert str(err) == ("gpus: no engine on 3 GPU(s) can serve this study: no candidate engine could be "
                        "estimated (TP3: 64 attention heads do not divide by TP 3)")  # fmt: skip
    missing = Rejection(Candidate(Mapping.TP, 4), "no kernel data")  # the source's: not the GPU count
    mixed = no_engine_error([*dropped, missing], (3, 4))
    for err in (mixed, no_engine_error(dropped, (3,), all_rejected=False)):
        assert type(err) is DataNotAvailable and str(err).startswith("no candidate engine could be estimated")
    with pytest.raises(DataNotAvailable, match="no candidates"):
        raise no_engine_error([], ())
