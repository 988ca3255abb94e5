"""final_config.yaml rendering without Dynamo installed: planner_config.json, ConfigMaps, the v1beta1 DGD.

The same output is checked by Dynamo 1.6.1's own code in tests/test_dynamo_planner.py (marker ``dynamo``).
"""

from __future__ import annotations

import json

import pytest

from estimator.artifacts.dynamo16 import final_config, image_for
from estimator.artifacts.planner_config import planner_config
from estimator.candidates import Candidate, Mapping
from estimator.deployment import Deployment
from estimator.errors import SpecError

PREFILL = {
    "prefill_isl": [1500, 3000, 6000],
    "prefill_ttft": [30.0, 65.0, 140.0],
    "prefill_thpt_per_gpu": [5e4, 4.6e4, 4.3e4],
}
DECODE = {
    "max_kv_tokens": 1_000_000,
    "x_kv_usage": [0.1, 0.2, 0.3],
    "y_context_length": [3075.0, 3075.0, 3075.0],
    "z_itl": [8.0, 11.0, 14.0],
    "z_thpt_per_gpu": [1e3, 1.5e3, 2e3],
}


def _docs(dep: Deployment, backend: str = "vllm", **kw):
    args = {
        "name": "m-disagg",
        "model": "org/m",
        "backend": backend,
        "ttft_ms": 200,
        "itl_ms": 20,
        "prefill_raw": PREFILL,
        "decode_raw": DECODE,
    }
    return final_config(dep, **(args | kw))


def _components(docs):
    return {c["name"]: c for c in docs[-1]["spec"]["components"]}


def _args(c):
    return c["podTemplate"]["spec"]["containers"][0]["args"]


def test_disagg_documents_planner_config_and_mounts():
    docs = _docs(Deployment.disagg(Candidate(Mapping.TP, 1), Candidate(Mapping.TP, 2), 3, 2))
    cm_names = [d["metadata"]["name"] for d in docs[:2]]
    assert cm_names[0].startswith("planner-config-") and cm_names[1].startswith("planner-profile-data-")
    cfg = json.loads(docs[0]["data"]["planner_config.json"])
    assert cfg["mode"] == "disagg" and cfg["optimization_target"] == "sla"
    assert (cfg["prefill_engine_num_gpu"], cfg["decode_engine_num_gpu"]) == (1, 2)
    assert cfg["pre_deployment_sweeping_mode"] == "thorough" and cfg["ttft_ms"] == 200.0
    assert json.loads(docs[1]["data"]["decode_raw_data.json"])["max_kv_tokens"] == 1_000_000
    comps = _components(docs)
    assert [c["type"] for c in comps.values()] == ["frontend", "prefill", "decode", "planner"]
    assert (comps["prefill"]["replicas"], comps["decode"]["replicas"]) == (3, 2)
    limits = comps["decode"]["podTemplate"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"nvidia.com/gpu": "2"}
    mounts = comps["Planner"]["podTemplate"]["spec"]["containers"][0]["volumeMounts"]
    assert [(m["name"], m["mountPath"]) for m in mounts] == [
        (cm_names[0], "/workspace/planner_config"),
        (cm_names[1], "/workspace/profiling_results"),
    ]
    assert (
        _docs(Deployment.disagg(Candidate(Mapping.TP, 1), Candidate(Mapping.TP, 2), 3, 2)) == docs
    )  # stable names


def test_agg_has_no_profile_data_and_a_decode_typed_worker():
    docs = _docs(Deployment.agg(Candidate(Mapping.TP, 4), replicas=2), backend="sglang")
    assert len(docs) == 2
    cfg = json.loads(docs[0]["data"]["planner_config.json"])
    assert (
        cfg["mode"] == "agg"
        and cfg["pre_deployment_sweeping_mode"] == "none"
        and "prefill_engine_num_gpu" not in cfg
    )
    worker = _components(docs)["decode"]  # the SGLang agg template's worker name
    assert (
        worker["type"] == "decode"
        and worker["replicas"] == 2
        and "--disaggregation-mode" not in _args(worker)
    )
    assert _args(worker)[_args(worker).index("--tp") + 1] == "4"


def test_backend_role_and_moe_flags():
    docs = _docs(Deployment.disagg(Candidate(Mapping.TP, 2), Candidate(Mapping.DEP, 8)), backend="vllm")
    p, d = _args(_components(docs)["prefill"]), _args(_components(docs)["decode"])
    assert (
        p[p.index("--disaggregation-mode") + 1] == "prefill"
        and '"kv_role":"kv_producer"' in p[p.index("--kv-transfer-config") + 1]
    )
    assert d[d.index("--data-parallel-size") + 1] == "8" and "--enable-expert-parallel" in d
    docs = _docs(Deployment.disagg(Candidate(Mapping.TEP, 4), Candidate(Mapping.TP, 2)), backend="sglang")
    p = _args(_components(docs)["prefill"])
    assert p[p.index("--ep") + 1] == "4" and p[p.index("--disaggregation-transfer-backend") + 1] == "nixl"
    docs = _docs(Deployment.disagg(Candidate(Mapping.TP, 2), Candidate(Mapping.TP, 4)), backend="trtllm")
    d = _args(_components(docs)["decode"])
    engine = json.loads(d[d.index("--override-engine-args") + 1])
    assert engine["tensor_parallel_size"] == 4 and engine["enable_chunked_prefill"] is True


def test_multinode_kv_router_override_and_images():
    docs = _docs(
        Deployment.disagg(Candidate(Mapping.TP, 8), Candidate(Mapping.TP, 16)),
        kv_router=True,
        runtime_version_override="1.6.1",
        runtime_image="my.registry/dyn/dynamo-planner:1.6.2",
    )
    comps = _components(docs)
    assert comps["decode"]["multinode"] == {"nodeCount": 2}
    assert comps["decode"]["podTemplate"]["spec"]["containers"][0]["resources"]["limits"] == {
        "nvidia.com/gpu": "8"
    }
    assert {"name": "DYN_ROUTER_MODE", "value": "kv"} in comps["Frontend"]["podTemplate"]["spec"][
        "containers"
    ][0]["env"]
    assert all(c["runtimeVersionOverride"] == "1.6.1" for c in comps.values())
    assert (
        comps["decode"]["podTemplate"]["spec"]["containers"][0]["image"]
        == "my.registry/dyn/vllm-runtime:1.6.2"
    )
    assert (
        comps["Planner"]["podTemplate"]["spec"]["containers"][0]["image"]
        == "my.registry/dyn/dynamo-planner:1.6.2"
    )
    assert image_for("sglang-runtime", None) == "nvcr.io/nvidia/ai-dynamo/sglang-runtime:1.6.1"
    assert image_for("sglang-runtime", "1.7.0") == "nvcr.io/nvidia/ai-dynamo/sglang-runtime:1.7.0"


def _cfg(planner_args=(), mode="disagg"):
    return planner_config(
        mode=mode, backend="vllm", model="m", ttft_ms=200, itl_ms=20, prefill_num_gpus=1, decode_num_gpus=2,
        profile_data=True, planner_args=planner_args,
    )  # fmt: skip


def test_planner_pass_through_is_typed_and_user_settings_win():
    cfg = _cfg(
        (
            ("max-gpu-budget", "16"),
            ("enable_load_scaling", "true"),
            ("ttft", "150"),
            ("load_predictor", "kalman"),
        )
    )
    assert cfg["max_gpu_budget"] == 16 and cfg["enable_load_scaling"] is True
    assert cfg["ttft_ms"] == 150 and cfg["load_predictor"] == "kalman"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((("aic_perf_model", "{}"),), "aic_perf_model"),
        ((("no-such-field", "1"),), "no_such_field"),
        ((("decode_engine_num_gpu", "4"),), "decode_engine_num_gpu"),
        ((("mode", "agg"),), "mode"),
    ],
)
def test_bad_planner_settings_name_the_field(args, field):
    with pytest.raises(SpecError, match=field):
        _cfg(args)


def test_planner_mode_agg_on_a_disagg_deployment_says_where_agg_comes_from():
    """`--planner-mode=agg` without a load: the deployment is disagg, and the error now says that an agg
    one comes from sizing a request rate (the fleet search is what deploys agg)."""
    with pytest.raises(SpecError, match=r"'agg' does not fit a disagg deployment .*give --request-rate"):
        _cfg((("mode", "agg"),))
    with pytest.raises(SpecError) as info:  # another mode: no word about agg
        _cfg((("mode", "disagg"),), mode="agg")
    assert str(info.value) == "planner_args.mode: 'disagg' does not fit an agg deployment (agg)"


def test_non_positive_sla_is_an_error():
    with pytest.raises(SpecError, match="ttft_ms"):
        planner_config(
            mode="agg", backend="vllm", model="m", ttft_ms=0, itl_ms=20, prefill_num_gpus=None, decode_num_gpus=1,
            profile_data=False,
        )  # fmt: skip


def test_the_gpu_budget_holds_the_fleet():
    """No budget of the user's: Dynamo's default of 8, or the fleet's GPUs where they are more (the Planner
    refuses to start below them); a user's budget below the fleet, or not an integer >= -1, is an error."""
    kw = dict(mode="disagg", backend="vllm", model="m", ttft_ms=200, itl_ms=20, prefill_num_gpus=2,
              decode_num_gpus=4, profile_data=True)  # fmt: skip
    assert planner_config(**kw, deployed_gpus=6)["max_gpu_budget"] == 8
    assert planner_config(**kw, deployed_gpus=20)["max_gpu_budget"] == 20
    assert planner_config(**kw, deployed_gpus=20, max_gpu_budget=24)["max_gpu_budget"] == 24
    assert planner_config(**kw, deployed_gpus=20, planner_args=(("max_gpu_budget", "-1"),))["max_gpu_budget"] == -1
    for bad in ("12", "1.5", "true", "-2"):
        with pytest.raises(SpecError, match="max_gpu_budget"):
            planner_config(**kw, deployed_gpus=20, planner_args=(("max_gpu_budget", bad),))
