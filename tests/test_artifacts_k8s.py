"""config_with_planner.yaml: content per backend and mapping, schema validation, input errors.

The ConfigMap is validated against the Kubernetes OpenAPI schema (``kubernetes-validate``, offline,
strict: unknown fields fail) and deserialized with the client's model class. The
DynamoGraphDeployment is a custom resource whose schema ships with Dynamo's operator, not with
Kubernetes: it is checked structurally here (field names and types as in Dynamo's own manifests),
and the pod parts it embeds (each service's main container and volumes) are validated as a real
Pod against the Kubernetes schema.
"""

from __future__ import annotations

import json

import kubernetes_validate  # test extra: ships the Kubernetes OpenAPI schemas, works offline
import numpy as np
import pytest
import yaml

from estimator.artifacts.k8s import (
    PROFILE_CONFIGMAP,
    Role,
    config_with_planner,
    engine_args,
    render_config_with_planner,
    write_config_with_planner,
)
from estimator.candidates import Candidate, Mapping
from estimator.errors import SpecError

K8S_SCHEMA_VERSION = "1.33.0"

PREFILL_RAW = {
    "prefill_isl": [100, 1000, 4000],
    "prefill_ttft": [8.5, 40.25, 160.0],
    "prefill_thpt_per_gpu": [5882.4, 12422.4, 12500.0],
}
DECODE_RAW = {
    "x_kv_usage": [0.01, 0.2, 0.5],
    "y_context_length": [3075, 3075, 6000],
    "z_itl": [4.8, 6.1, 9.7],
    "z_thpt_per_gpu": [51.2, 400.0, 820.5],
    "max_kv_tokens": 446_000,
}


def _docs(**overrides):
    kw = dict(
        name="qwen3-sla",
        namespace="llm",
        model="Qwen/Qwen3-32B",
        backend="vllm",
        prefill=Candidate(Mapping.TP, 4),
        decode=Candidate(Mapping.TP, 2),
        ttft_ms=200.0,
        itl_ms=20.0,
        prefill_raw=PREFILL_RAW,
        decode_raw=DECODE_RAW,
        planner_args=(("adjustment-interval", "60"),),
    )
    kw.update(overrides)
    return list(yaml.safe_load_all(render_config_with_planner(**kw)))


def _validate(obj: dict) -> None:
    kubernetes_validate.validate(obj, K8S_SCHEMA_VERSION, strict=True)


def _as_pod(svc: dict) -> dict:
    """The pod parts a DGD service embeds, as a Pod the Kubernetes schema can check."""
    pod_spec = svc["extraPodSpec"]
    container = {"name": "main", **pod_spec["mainContainer"]}
    spec = {"containers": [container], **({"volumes": pod_spec["volumes"]} if "volumes" in pod_spec else {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": spec}


def _worker_args(dgd: dict, sub: str) -> list[str]:
    (svc,) = [s for s in dgd["spec"]["services"].values() if s.get("subComponentType") == sub]
    return svc["extraPodSpec"]["mainContainer"]["args"]


def test_config_map_holds_the_interpolation_data_and_passes_the_schema():
    from kubernetes import client

    cm, dgd = _docs()
    _validate(cm)
    model = client.V1ConfigMap.from_dict(cm)
    assert model.metadata.name == PROFILE_CONFIGMAP and model.metadata.namespace == "llm"
    assert json.loads(model.data["prefill_raw_data.json"]) == PREFILL_RAW
    decode = json.loads(model.data["decode_raw_data.json"])
    assert decode == DECODE_RAW and isinstance(decode["max_kv_tokens"], int)
    assert dgd["apiVersion"] == "nvidia.com/v1alpha1" and dgd["kind"] == "DynamoGraphDeployment"


def test_numpy_arrays_as_read_from_npz_are_accepted():
    prefill = {k: np.asarray(v) for k, v in PREFILL_RAW.items()}
    decode = {k: np.asarray(v) for k, v in DECODE_RAW.items()} | {"max_kv_tokens": np.array([446_000])}
    cm, _ = _docs(prefill_raw=prefill, decode_raw=decode)
    assert json.loads(cm["data"]["decode_raw_data.json"])["max_kv_tokens"] == 446_000
    assert json.loads(cm["data"]["prefill_raw_data.json"])["prefill_isl"] == [100, 1000, 4000]


@pytest.mark.parametrize("backend", ["vllm", "sglang", "trtllm"])
def test_dgd_structure_per_backend(backend):
    _, dgd = _docs(backend=backend)
    services = dgd["spec"]["services"]
    types = {n: s["componentType"] for n, s in services.items()}
    assert sorted(types.values()) == ["frontend", "planner", "worker", "worker"]
    assert services["Frontend"]["componentType"] == "frontend"
    for name, svc in services.items():
        assert isinstance(svc["replicas"], int) and svc["replicas"] >= 1
        assert svc["dynamoNamespace"] == "qwen3-sla"
        assert set(svc) <= {
            "dynamoNamespace",
            "componentType",
            "subComponentType",
            "replicas",
            "envFromSecret",
            "resources",
            "multinode",
            "extraPodSpec",
        }, name
        assert all(isinstance(a, str) for a in svc["extraPodSpec"]["mainContainer"].get("args", []))
        _validate(_as_pod(svc))
    workers = {s["subComponentType"]: s for s in services.values() if s["componentType"] == "worker"}
    assert workers["prefill"]["resources"] == {"limits": {"gpu": "4"}}
    assert workers["decode"]["resources"] == {"limits": {"gpu": "2"}}
    assert workers["prefill"]["envFromSecret"] == "hf-token-secret"


def test_planner_args_mount_and_passthrough():
    _, dgd = _docs(planner_args=(("planner-adjustment-interval", "60"), ("--load-predictor", "arima")))
    planner = dgd["spec"]["services"]["Planner"]
    main = planner["extraPodSpec"]["mainContainer"]
    assert main["command"] == ["python3", "-m", "dynamo.planner.planner_sla"]
    assert main["args"] == [
        "--environment=kubernetes",
        "--backend=vllm",
        "--ttft=200",
        "--itl=20",
        "--prefill-engine-num-gpu=4",
        "--decode-engine-num-gpu=2",
        "--profile-results-dir=/workspace/profiling_results",
        "--adjustment-interval=60",
        "--load-predictor=arima",
    ]
    assert main["volumeMounts"] == [
        {"name": PROFILE_CONFIGMAP, "mountPath": "/workspace/profiling_results", "readOnly": True}
    ]
    assert planner["extraPodSpec"]["volumes"] == [
        {"name": PROFILE_CONFIGMAP, "configMap": {"name": PROFILE_CONFIGMAP}}
    ]
    assert "resources" not in planner


def test_profile_dir_and_image_are_used():
    _, dgd = _docs(profile_results_dir="/data/prof", image="registry.local/dynamo:1.0")
    planner = dgd["spec"]["services"]["Planner"]["extraPodSpec"]["mainContainer"]
    assert (
        "--profile-results-dir=/data/prof" in planner["args"]
        and planner["volumeMounts"][0]["mountPath"] == "/data/prof"
    )
    assert {s["extraPodSpec"]["mainContainer"]["image"] for s in dgd["spec"]["services"].values()} == {
        "registry.local/dynamo:1.0"
    }


# Expected worker arguments, written out by hand (not derived from the module's table).
EXPECTED = {
    ("vllm", "TP4", "prefill"): [
        "-m",
        "dynamo.vllm",
        "--model",
        "M",
        "--tensor-parallel-size",
        "4",
        "--is-prefill-worker",
    ],
    ("vllm", "TP2", "decode"): ["-m", "dynamo.vllm", "--model", "M", "--tensor-parallel-size", "2"],
    ("vllm", "TEP8", "prefill"): [
        "-m",
        "dynamo.vllm",
        "--model",
        "M",
        "--tensor-parallel-size",
        "8",
        "--enable-expert-parallel",
        "--is-prefill-worker",
    ],
    ("vllm", "DEP8", "decode"): [
        "-m",
        "dynamo.vllm",
        "--model",
        "M",
        "--tensor-parallel-size",
        "1",
        "--data-parallel-size",
        "8",
        "--enable-expert-parallel",
    ],
    ("sglang", "TP4", "prefill"): [
        "-m",
        "dynamo.sglang",
        "--model-path",
        "M",
        "--served-model-name",
        "M",
        "--tp",
        "4",
        "--disaggregation-mode",
        "prefill",
        "--disaggregation-transfer-backend",
        "nixl",
        "--disaggregation-bootstrap-port",
        "12345",
    ],
    ("sglang", "TEP8", "prefill"): [
        "-m",
        "dynamo.sglang",
        "--model-path",
        "M",
        "--served-model-name",
        "M",
        "--tp",
        "8",
        "--ep-size",
        "8",
        "--disaggregation-mode",
        "prefill",
        "--disaggregation-transfer-backend",
        "nixl",
        "--disaggregation-bootstrap-port",
        "12345",
    ],
    ("sglang", "DEP8", "decode"): [
        "-m",
        "dynamo.sglang",
        "--model-path",
        "M",
        "--served-model-name",
        "M",
        "--tp",
        "8",
        "--dp",
        "8",
        "--enable-dp-attention",
        "--ep-size",
        "8",
        "--disaggregation-mode",
        "decode",
        "--disaggregation-transfer-backend",
        "nixl",
        "--disaggregation-bootstrap-port",
        "12345",
    ],
}


@pytest.mark.parametrize("backend,cand,role", list(EXPECTED))
def test_worker_flags(backend, cand, role):
    c = Candidate.parse(cand)
    kw = {"prefill": c} if role == "prefill" else {"decode": c}
    _, dgd = _docs(backend=backend, model="M", **kw)
    assert _worker_args(dgd, role) == EXPECTED[(backend, cand, role)]


@pytest.mark.parametrize(
    "cand,expected",
    [
        (
            "TP4",
            {
                "tensor_parallel_size": 4,
                "cache_transceiver_config": {"backend": "DEFAULT"},
                "disable_overlap_scheduler": True,
            },
        ),
        (
            "TEP8",
            {
                "tensor_parallel_size": 8,
                "moe_expert_parallel_size": 8,
                "moe_tensor_parallel_size": 1,
                "enable_attention_dp": False,
                "cache_transceiver_config": {"backend": "DEFAULT"},
                "disable_overlap_scheduler": True,
            },
        ),
        (
            "DEP8",
            {
                "tensor_parallel_size": 8,
                "moe_expert_parallel_size": 8,
                "moe_tensor_parallel_size": 1,
                "enable_attention_dp": True,
                "cache_transceiver_config": {"backend": "DEFAULT"},
                "disable_overlap_scheduler": True,
            },
        ),
    ],
)
def test_trtllm_parallelism_goes_into_engine_args(cand, expected):
    _, dgd = _docs(backend="trtllm", model="M", prefill=Candidate.parse(cand))
    args = _worker_args(dgd, "prefill")
    assert args[:6] == ["-m", "dynamo.trtllm", "--model-path", "M", "--served-model-name", "M"]
    assert args[6:8] == ["--disaggregation-mode", "prefill"]
    assert args[8] == "--override-engine-args" and json.loads(args[9]) == expected
    decode = _worker_args(dgd, "decode")
    assert "disable_overlap_scheduler" not in json.loads(decode[decode.index("--override-engine-args") + 1])


def test_engine_spanning_nodes_is_multinode():
    _, dgd = _docs(decode=Candidate(Mapping.DEP, 16), backend="sglang")
    decode = dgd["spec"]["services"]["decode"]
    assert decode["multinode"] == {"nodeCount": 2} and decode["resources"] == {"limits": {"gpu": "8"}}
    _, dgd = _docs(prefill_replicas=3, decode_replicas=2)
    assert dgd["spec"]["services"]["VllmPrefillWorker"]["replicas"] == 3
    assert dgd["spec"]["services"]["VllmDecodeWorker"]["replicas"] == 2


def test_prefix_cache_flags_only_when_asked():
    tp1 = Candidate(Mapping.TP, 1)
    assert engine_args("vllm", tp1, Role.AGG) == ("--tensor-parallel-size", "1")
    assert engine_args("vllm", tp1, Role.AGG, prefix_caching=False)[-1] == "--no-enable-prefix-caching"
    assert engine_args("sglang", tp1, Role.AGG, prefix_caching=False)[-1] == "--disable-radix-cache"
    trt = json.loads(engine_args("trtllm", tp1, Role.AGG, prefix_caching=True)[-1])
    assert trt["kv_cache_config"] == {"enable_block_reuse": True}


def test_write_config_with_planner(tmp_path):
    args = dict(
        name="x",
        namespace=None,
        model="M",
        backend="vllm",
        prefill=Candidate(Mapping.TP, 1),
        decode=Candidate(Mapping.TP, 1),
        ttft_ms=50,
        itl_ms=5,
        prefill_raw=PREFILL_RAW,
        decode_raw=DECODE_RAW,
    )
    path = write_config_with_planner(tmp_path / "out" / "config_with_planner.yaml", **args)
    cm, dgd = yaml.safe_load_all(path.read_text())
    assert "namespace" not in cm["metadata"] and "namespace" not in dgd["metadata"]
    assert config_with_planner(**args) == [cm, dgd]


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"backend": "tgi"}, "backend"),
        ({"name": "Bad_Name"}, "name"),
        ({"namespace": "UPPER"}, "namespace"),
        ({"ttft_ms": 0}, "ttft_ms"),
        ({"itl_ms": float("nan")}, "itl_ms"),
        ({"prefill_raw": PREFILL_RAW | {"prefill_ttft": [1.0, 2.0]}}, "prefill_raw"),
        ({"prefill_raw": {"prefill_isl": [1]}}, "prefill_raw"),
        ({"decode_raw": DECODE_RAW | {"z_itl": [1.0, float("inf"), 2.0]}}, "decode_raw.z_itl"),
        (
            {"decode_raw": {k: v for k, v in DECODE_RAW.items() if k != "max_kv_tokens"}},
            "decode_raw.max_kv_tokens",
        ),
        ({"decode_raw": DECODE_RAW | {"max_kv_tokens": [1, 2]}}, "decode_raw.max_kv_tokens"),
        ({"planner_args": (("planner-ttft", "10"),)}, "planner_args"),
        ({"planner_args": (("prefill-engine-num-gpu", "2"),)}, "planner_args"),
        ({"decode_replicas": 0}, "decode_replicas"),
    ],
)
def test_bad_input_raises_spec_error_naming_the_field(overrides, field):
    with pytest.raises(SpecError) as info:
        _docs(**overrides)
    assert info.value.field == field


def test_the_0_7_layout_takes_a_dgdrs_planner_values_as_flags_and_refuses_agg(tmp_path, capsys):
    """A DGDR's typed values arrive JSON-encoded: they were written as --mode="disagg" and
    --optimization_target="sla"; and an agg fleet was written as disagg workers with --mode=agg."""
    from pathlib import Path

    from estimator.cli import main

    example = Path(__file__).resolve().parents[1] / "examples" / "dgdr_qwen3_32b.yaml"
    out = tmp_path / "o"
    assert main(["--dgdr", str(example), "--dynamo-version", "0.7", "--no-plots", "-o", str(out)]) == 0
    text = (out / "config_with_planner.yaml").read_text()
    assert "--mode=disagg" in text and "--optimization-target=sla" in text
    assert "--enable-throughput-scaling=true" in text and '"' not in text.split("--mode=")[1].split("\n")[0]
    capsys.readouterr()
    agg = ["--request-rate", "5", "--planner-mode", "agg", "--dynamo-version", "0.7", "--no-plots"]
    assert main(agg) == 2
    assert "0.7 layout deploys disaggregated workers only" in capsys.readouterr().err
