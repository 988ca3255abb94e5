"""``final_config.yaml`` as Dynamo 1.6's profiler writes it: ConfigMaps + a ``nvidia.com/v1beta1`` DGD.

Documents, in Dynamo's order: the ``planner-config-<hash>`` ConfigMap (``planner_config.json``, see
``planner_config.py``), the ``planner-profile-data-<hash>`` ConfigMap (the selected engines' profile
data, disaggregated deployments only, as Dynamo's thorough mode) and the DynamoGraphDeployment with
``spec.components[]`` (Frontend, the workers of a ``deployment.Deployment``, Planner). Component names,
types, commands, working directories and role flags follow the wheel's templates
``dynamo/profiler/templates/dgd/{vllm,sglang,trtllm}/{agg,disagg}.yaml``; vLLM workers get the NIXL
KV-transfer roles and ``DYN_BENCHMARK_MODE`` (Dynamo's profiler sets it so the Planner can ask live
workers for perf data first). Described as frozen dataclasses, rendered once (``render_yaml``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..candidates import Candidate
from ..candidates import Mapping as ParallelMapping
from ..deployment import Deployment, ServingMode, WorkerRole
from ..errors import SpecError
from .k8s_backends import Role, _trtllm_engine
from .k8s_profile_data import ProfileData
from .planner_config import PLANNER_CONFIG_MOUNT, PROFILE_DATA_MOUNT, planner_config

DGD_API_VERSION = "nvidia.com/v1beta1"
DYNAMO_RUNTIME_VERSION = "1.6.1"
IMAGE_REGISTRY = "nvcr.io/nvidia/ai-dynamo"
PLANNER_IMAGE_NAME = "dynamo-planner"
HF_TOKEN_SECRET = "hf-token-secret"
_VLLM_KV = {
    Role.PREFILL: '{"kv_connector":"NixlConnector","kv_role":"kv_producer"}',
    Role.DECODE: '{"kv_connector":"NixlConnector","kv_role":"kv_consumer"}',
}
_SGLANG_DISAGG = ("--disaggregation-transfer-backend", "nixl", "--disaggregation-bootstrap-port", "12345")


@dataclass(frozen=True, slots=True)
class BackendV16:
    module: str
    runtime: str  # image name under the registry
    working_dir: str
    agg_name: str  # the template's agg worker component name


BACKENDS_V16 = {
    "vllm": BackendV16("dynamo.vllm", "vllm-runtime", "/workspace/examples/backends/vllm", "worker"),
    "sglang": BackendV16("dynamo.sglang", "sglang-runtime", "/workspace/examples/backends/sglang", "decode"),
    "trtllm": BackendV16("dynamo.trtllm", "tensorrtllm-runtime", "/workspace/", "TRTLLMWorker"),
}


def image_for(name: str, runtime_image: str | None) -> str:
    """``<registry>/<name>:<tag>``; ``runtime_image`` is a tag or a reference lending its registry and tag."""
    if not runtime_image:
        return f"{IMAGE_REGISTRY}/{name}:{DYNAMO_RUNTIME_VERSION}"
    if "/" not in runtime_image and ":" not in runtime_image:
        return f"{IMAGE_REGISTRY}/{name}:{runtime_image}"
    ref, digest = runtime_image.partition("@")[::2]
    path, _, last = ref.rpartition("/")
    tag = last.partition(":")[2] or DYNAMO_RUNTIME_VERSION
    out = f"{path + '/' if path else ''}{name}:{tag}"
    return out + (f"@{digest}" if digest else "")


def _parallel_args(backend: str, c: Candidate) -> tuple[str, ...]:
    n = str(c.num_gpus)
    if backend == "vllm":
        if c.mapping is ParallelMapping.DEP:
            return ("--tensor-parallel-size", "1", "--data-parallel-size", n, "--enable-expert-parallel")
        ep = ("--enable-expert-parallel",) if c.mapping is ParallelMapping.TEP else ()
        return ("--tensor-parallel-size", n, *ep)
    if backend == "sglang":  # Dynamo 1.6's sglang modifier: --tp, --ep, --dp + --enable-dp-attention
        if c.mapping is ParallelMapping.DEP:
            return ("--tp", n, "--dp", n, "--enable-dp-attention", "--ep", n)
        return ("--tp", n, "--ep", n) if c.mapping is ParallelMapping.TEP else ("--tp", n)
    raise SpecError("backend", f"{backend!r} has no flag-form parallelism")


def worker_args(backend: str, model: str, c: Candidate, role: Role) -> tuple[str, ...]:
    """Arguments after ``python3 -m dynamo.<backend>``, as the 1.6 templates and modifiers lay them out."""
    if backend == "vllm":
        mode = (
            ()
            if role is Role.AGG
            else ("--disaggregation-mode", role.value, "--kv-transfer-config", _VLLM_KV[role])
        )
        return ("--model", model, *_parallel_args(backend, c), *mode)
    if backend == "sglang":
        mode = (
            ()
            if role is Role.AGG
            else ("--disaggregation-mode", role.value, *_SGLANG_DISAGG, "--host", "0.0.0.0")
        )
        head = ("--model-path", model, "--served-model-name", model, "--page-size", "16")
        return (*head, *_parallel_args(backend, c), "--trust-remote-code", *mode)
    if backend == "trtllm":
        engine = _trtllm_engine(c, role, None) | {"enable_chunked_prefill": True}
        mode = () if role is Role.AGG else ("--disaggregation-mode", role.value)
        events = ("--publish-kv-events",) if role in (Role.PREFILL, Role.AGG) else ()
        head = ("--model-path", model, "--served-model-name", model)
        return (*head, "--override-engine-args", json.dumps(engine, sort_keys=True), *mode, *events)
    raise SpecError("backend", f"{backend!r} is not one of {', '.join(BACKENDS_V16)}")


# ---- the typed deployment -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Component:
    """One ``spec.components[]`` entry; ``num_gpus`` per engine (an engine may span nodes)."""

    name: str
    type: str  # frontend | prefill | decode | worker | planner
    image: str
    command: tuple[str, ...]
    args: tuple[str, ...] = ()
    replicas: int = 1
    num_gpus: int = 0
    gpus_per_node: int = 8
    working_dir: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    env_from_secret: str | None = HF_TOKEN_SECRET
    config_maps: tuple[tuple[str, str], ...] = ()  # (ConfigMap name, mount path)
    scaling_adapter: bool = False
    runtime_version_override: str | None = None

    def to_manifest(self) -> dict[str, Any]:
        c: dict[str, Any] = {"name": "main", "image": self.image}
        if self.working_dir:
            c["workingDir"] = self.working_dir
        c["command"] = list(self.command)
        if self.args:
            c["args"] = list(self.args)
        if self.env_from_secret:
            c["envFrom"] = [{"secretRef": {"name": self.env_from_secret}}]
        if self.env:
            c["env"] = [{"name": k, "value": v} for k, v in self.env]
        if self.num_gpus:
            gpus = min(self.num_gpus, self.gpus_per_node)
            c["resources"] = {
                "limits": {"nvidia.com/gpu": str(gpus)},
                "requests": {"ephemeral-storage": "2Gi"},
            }
        pod: dict[str, Any] = {"containers": [c]}
        if self.config_maps:
            c["volumeMounts"] = [{"name": n, "mountPath": p, "readOnly": True} for n, p in self.config_maps]
            pod["volumes"] = [{"name": n, "configMap": {"name": n}} for n, _ in self.config_maps]
        out: dict[str, Any] = {"name": self.name, "type": self.type, "replicas": self.replicas}
        nodes = math.ceil(self.num_gpus / self.gpus_per_node) if self.num_gpus else 1
        if nodes > 1:
            out["multinode"] = {"nodeCount": nodes}
        if self.scaling_adapter:
            out["scalingAdapter"] = {"enabled": True}
        if self.runtime_version_override:
            out["runtimeVersionOverride"] = self.runtime_version_override
        out["podTemplate"] = {"spec": pod}
        return out


@dataclass(frozen=True, slots=True)
class GraphDeployment:
    name: str
    components: tuple[Component, ...]

    def to_manifest(self) -> dict[str, Any]:
        return {
            "apiVersion": DGD_API_VERSION,
            "kind": "DynamoGraphDeployment",
            "metadata": {"name": self.name},
            "spec": {"components": [c.to_manifest() for c in self.components]},
        }


def _config_map(prefix: str, data: Mapping[str, str]) -> dict[str, Any]:
    """A ConfigMap named ``<prefix>-<8 hex of its content>`` (Dynamo: a random suffix; ours is stable)."""
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{prefix}-{digest}"},
        "data": dict(data),
    }


_ROLE = {WorkerRole.PREFILL: Role.PREFILL, WorkerRole.DECODE: Role.DECODE, WorkerRole.AGG: Role.AGG}


def final_config(
    deployment: Deployment,
    *,
    name: str,
    model: str,
    backend: str,
    ttft_ms: float,
    itl_ms: float,
    prefill_raw: Mapping[str, Any] | None,
    decode_raw: Mapping[str, Any] | None,
    planner_args: tuple[tuple[str, str], ...] = (),
    runtime_image: str | None = None,
    gpus_per_node: int = 8,
    max_gpu_budget: int | None = None,
    load_thresholds: dict[str, int | float] | None = None,
    kv_router: bool = False,
    runtime_version_override: str | None = None,
    planner: bool = True,
) -> list[dict[str, Any]]:
    """The documents of ``final_config.yaml`` for ``deployment`` (agg or disagg) as plain dicts.

    ``planner=False`` (a DGDR without ``features.planner``): the DGD alone, as Dynamo's profiler writes it
    then: no planner ConfigMaps, no Planner, no scaling adapters, no vLLM benchmark mode."""
    if backend not in BACKENDS_V16:
        raise SpecError("backend", f"{backend!r} is not one of {', '.join(BACKENDS_V16)}")
    b = BACKENDS_V16[backend]
    agg = deployment.mode is ServingMode.AGG
    prefill = deployment.group(WorkerRole.PREFILL)
    decode = deployment.group(WorkerRole.AGG if agg else WorkerRole.DECODE)
    assert decode is not None  # Deployment checks its roles
    profile_data = not agg and prefill_raw is not None and decode_raw is not None
    cfg = planner_config(
        mode=deployment.mode.value,
        backend=backend,
        model=model,
        ttft_ms=ttft_ms,
        itl_ms=itl_ms,
        prefill_num_gpus=prefill.candidate.num_gpus if prefill else None,
        decode_num_gpus=decode.candidate.num_gpus,
        profile_data=profile_data,
        planner_args=planner_args,
        max_gpu_budget=max_gpu_budget,
        deployed_gpus=deployment.total_gpus,
        load_thresholds=load_thresholds,
    )
    docs = [_config_map("planner-config", {"planner_config.json": json.dumps(cfg, sort_keys=True)})]
    if not planner:
        docs, profile_data = [], False
    if profile_data:
        cm = ProfileData.from_raw(prefill_raw, decode_raw).to_config_map(None)
        docs.append(_config_map("planner-profile-data", cm["data"]))
    planner_mounts = tuple(
        (d["metadata"]["name"], p) for d, p in zip(docs, (PLANNER_CONFIG_MOUNT, PROFILE_DATA_MOUNT))
    )

    image = image_for(b.runtime, runtime_image)
    frontend_env = (("DYN_ROUTER_MODE", "kv"),) if kv_router else ()
    components = [
        Component("Frontend", "frontend", image, ("python3",), ("-m", "dynamo.frontend"), env=frontend_env)
    ]
    for group in deployment.workers:
        role = _ROLE[group.role]
        # Dynamo retypes a lone agg worker "decode" when its Planner scales it (enable_planner_worker_scaling_adapters).
        ctype = ("decode" if planner else "worker") if role is Role.AGG else role.value
        bench = (("DYN_BENCHMARK_MODE", "agg" if agg else role.value),) if backend == "vllm" and planner else ()
        components.append(
            Component(
                name=b.agg_name if agg else role.value,
                type=ctype,
                image=image,
                command=("python3", "-m", b.module),
                args=worker_args(backend, model, group.candidate, role),
                replicas=group.replicas,
                num_gpus=group.candidate.num_gpus,
                gpus_per_node=gpus_per_node,
                working_dir=b.working_dir,
                env=bench,
                scaling_adapter=planner and not cfg.get("advisory", False),
            )
        )
    if planner:
        components.append(
            Component(
                "Planner",
                "planner",
                image_for(PLANNER_IMAGE_NAME, runtime_image),
                ("python3", "-m", "dynamo.planner"),
                ("--config", f"{PLANNER_CONFIG_MOUNT}/planner_config.json"),
                working_dir="/workspace/components/src/dynamo/planner",
                env_from_secret=None,
                config_maps=planner_mounts,
            )
        )
    if runtime_version_override:
        components = [_with_override(c, runtime_version_override) for c in components]
    docs.append(GraphDeployment(name, tuple(components)).to_manifest())
    return docs


def _with_override(c: Component, version: str) -> Component:
    from dataclasses import replace

    return replace(c, runtime_version_override=version)


__all__ = [
    "DGD_API_VERSION",
    "DYNAMO_RUNTIME_VERSION",
    "Component",
    "GraphDeployment",
    "final_config",
    "image_for",
]
