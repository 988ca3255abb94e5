"""Kubernetes manifests from typed data: ``config_with_planner.yaml`` and the runner's engines.

``config_with_planner.yaml`` holds two YAML documents, as Dynamo's profiler writes them: a ConfigMap
``planner-profile-data`` with the selected engines' interpolation data as JSON strings, and a
DynamoGraphDeployment (``nvidia.com/v1alpha1``) with a Frontend, a prefill and a decode worker and an
SLA Planner that mounts the ConfigMap at its profile results directory. The planner arguments follow
Dynamo's ``planner_sla`` command line (``--ttft``/``--itl`` in ms, ``--<flag>=<value>``).

The deployment is described as frozen dataclasses and rendered once. Every backend quirk (module,
model flag, parallel flags, role flags, prefix caching, images) sits in ``k8s_backends.BACKENDS``; the
ConfigMap's data and its checks sit in ``k8s_profile_data`` (names re-exported here).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..candidates import Candidate
from ..errors import SpecError
from .k8s_backends import Role, backend_flags, engine_args
from .k8s_profile_data import DECODE_KEYS, PREFILL_KEYS, PROFILE_CONFIGMAP, ProfileData  # noqa: F401

DGD_GROUP, DGD_VERSION, DGD_PLURAL = "nvidia.com", "v1alpha1", "dynamographdeployments"
DGD_LABEL_NAME = "nvidia.com/dynamo-graph-deployment-name"  # set by the operator on every pod
DGD_LABEL_COMPONENT_TYPE = "nvidia.com/dynamo-component-type"
DEFAULT_PROFILE_DIR = "/workspace/profiling_results"
DYNAMO_VERSION = "0.7.1"  # runtime image tag used when no image is given
HTTP_PORT = 8000
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def check_name(field: str, name: str) -> str:
    if not _DNS_LABEL.match(name):
        raise SpecError(
            field, f"{name!r} is not a DNS-1123 label (lowercase letters, digits, '-', at most 63)"
        )
    return name


# ---- the typed deployment -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DgdService:
    """One service of a DynamoGraphDeployment; ``num_gpus`` is per engine (may span nodes)."""

    name: str
    component_type: str  # frontend | worker | planner
    image: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    sub_component_type: str | None = None
    replicas: int = 1
    num_gpus: int = 0
    gpus_per_node: int = 8
    mount_config_map: tuple[str, str] | None = None  # (ConfigMap name, mount path)
    env_from_secret: str | None = None

    def to_manifest(self, dynamo_namespace: str) -> dict[str, Any]:
        container: dict[str, Any] = {"image": self.image}
        if self.command:
            container["command"] = list(self.command)
        if self.args:
            container["args"] = list(self.args)
        svc: dict[str, Any] = {"dynamoNamespace": dynamo_namespace, "componentType": self.component_type}
        if self.sub_component_type:
            svc["subComponentType"] = self.sub_component_type
        svc["replicas"] = self.replicas
        if self.env_from_secret:
            svc["envFromSecret"] = self.env_from_secret
        if self.num_gpus:
            nodes = math.ceil(self.num_gpus / self.gpus_per_node)
            if nodes > 1:
                svc["multinode"] = {"nodeCount": nodes}
            svc["resources"] = {"limits": {"gpu": str(min(self.num_gpus, self.gpus_per_node))}}
        pod: dict[str, Any] = {"mainContainer": container}
        if self.mount_config_map:
            cm, path = self.mount_config_map
            container["volumeMounts"] = [{"name": cm, "mountPath": path, "readOnly": True}]
            pod["volumes"] = [{"name": cm, "configMap": {"name": cm}}]
        svc["extraPodSpec"] = pod
        return svc


@dataclass(frozen=True, slots=True)
class GraphDeployment:
    name: str
    namespace: str | None
    services: tuple[DgdService, ...]
    labels: tuple[tuple[str, str], ...] = ()

    def to_manifest(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name}
        if self.namespace:
            meta["namespace"] = self.namespace
        if self.labels:
            meta["labels"] = dict(self.labels)
        services = {s.name: s.to_manifest(self.name) for s in self.services}
        return {
            "apiVersion": f"{DGD_GROUP}/{DGD_VERSION}",
            "kind": "DynamoGraphDeployment",
            "metadata": meta,
            "spec": {"services": services},
        }


# ---- builders -------------------------------------------------------------------------------------
def default_image(backend: str) -> str:
    return f"nvcr.io/nvidia/ai-dynamo/{backend_flags(backend).runtime}:{DYNAMO_VERSION}"


def worker_service(
    backend: str,
    model: str,
    candidate: Candidate,
    role: Role,
    image: str,
    *,
    replicas: int = 1,
    gpus_per_node: int = 8,
    prefix_caching: bool | None = None,
    env_from_secret: str | None = None,
) -> DgdService:
    b = backend_flags(backend)
    args = (
        "-m",
        b.module,
        *b.model_flags(model),
        *engine_args(backend, candidate, role, prefix_caching=prefix_caching),
    )
    return DgdService(
        name=b.worker_names[role],
        component_type="worker",
        image=image,
        command=("python3",),
        args=args,
        sub_component_type="prefill" if role is Role.PREFILL else "decode",
        replicas=replicas,
        num_gpus=candidate.num_gpus,
        gpus_per_node=gpus_per_node,
        env_from_secret=env_from_secret,
    )


def frontend_service(image: str) -> DgdService:
    return DgdService(
        name="Frontend",
        component_type="frontend",
        image=image,
        command=("python3",),
        args=("-m", "dynamo.frontend", "--http-port", str(HTTP_PORT)),
    )


# Flags the profiler sets from its results; a pass-through of the same name would contradict them.
_PLANNER_OWNED = (
    "backend",
    "ttft",
    "itl",
    "prefill-engine-num-gpu",
    "decode-engine-num-gpu",
    "profile-results-dir",
)


def _flag_name(key: str) -> str:
    """A planner flag as 0.7's argparse spells it: ``--planner-x_y`` / DGDR ``x_y`` -> ``x-y``."""
    return str(key).removeprefix("--").removeprefix("planner-").replace("_", "-")


def _flag_value(text: str) -> str:
    """A flag's text; a DGDR's typed values arrive as JSON (``"disagg"``, ``true``): unquoted for argv."""
    try:
        v = json.loads(text)
    except (TypeError, ValueError):
        return str(text)
    if isinstance(v, bool):
        return "true" if v else "false"
    return v if isinstance(v, str) else json.dumps(v)


def planner_service(
    backend: str,
    image: str,
    *,
    ttft_ms: float,
    itl_ms: float,
    prefill_num_gpus: int,
    decode_num_gpus: int,
    profile_results_dir: str,
    planner_args: tuple[tuple[str, str], ...],
) -> DgdService:
    passthrough = tuple((_flag_name(k), _flag_value(v)) for k, v in planner_args)
    owned = [k for k, _ in passthrough if k in _PLANNER_OWNED]
    if owned:
        raise SpecError("planner_args", f"{', '.join(owned)} is set from the profiling results; remove it")
    env = () if any(k == "environment" for k, _ in passthrough) else (("environment", "kubernetes"),)
    flags = (
        *env,
        ("backend", str(getattr(backend, "value", backend))),
        ("ttft", f"{ttft_ms:g}"),
        ("itl", f"{itl_ms:g}"),
        ("prefill-engine-num-gpu", str(prefill_num_gpus)),
        ("decode-engine-num-gpu", str(decode_num_gpus)),
        ("profile-results-dir", profile_results_dir),
        *passthrough,
    )
    return DgdService(
        name="Planner",
        component_type="planner",
        image=image,
        command=("python3", "-m", "dynamo.planner.planner_sla"),
        args=tuple(f"--{k}={v}" for k, v in flags),
        mount_config_map=(PROFILE_CONFIGMAP, profile_results_dir),
    )


def config_with_planner(
    *,
    name: str,
    namespace: str | None,
    model: str,
    backend: str,
    prefill: Candidate,
    decode: Candidate,
    ttft_ms: float,
    itl_ms: float,
    prefill_raw: Mapping[str, Any],
    decode_raw: Mapping[str, Any],
    planner_args: tuple[tuple[str, str], ...] = (),
    image: str | None = None,
    profile_results_dir: str = DEFAULT_PROFILE_DIR,
    prefill_replicas: int = 1,
    decode_replicas: int = 1,
    gpus_per_node: int = 8,
    hf_token_secret: str | None = "hf-token-secret",
) -> list[dict[str, Any]]:
    """The two manifests (ConfigMap, DynamoGraphDeployment) as plain dicts."""
    check_name("name", name)
    if namespace is not None:
        check_name("namespace", namespace)
    for field, v in (("ttft_ms", ttft_ms), ("itl_ms", itl_ms)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise SpecError(field, f"expected a positive number of ms, got {v!r}")
    for field, n in (("prefill_replicas", prefill_replicas), ("decode_replicas", decode_replicas)):
        if n < 1:
            raise SpecError(field, f"expected at least 1, got {n}")
    data = ProfileData.from_raw(prefill_raw, decode_raw)
    image = image or default_image(backend)
    workers = tuple(
        worker_service(
            backend,
            model,
            cand,
            role,
            image,
            replicas=reps,
            gpus_per_node=gpus_per_node,
            env_from_secret=hf_token_secret,
        )
        for cand, role, reps in (
            (prefill, Role.PREFILL, prefill_replicas),
            (decode, Role.DECODE, decode_replicas),
        )
    )
    planner = planner_service(
        backend,
        image,
        ttft_ms=ttft_ms,
        itl_ms=itl_ms,
        prefill_num_gpus=prefill.num_gpus,
        decode_num_gpus=decode.num_gpus,
        profile_results_dir=profile_results_dir,
        planner_args=planner_args,
    )
    dgd = GraphDeployment(name, namespace, (frontend_service(image), planner, *workers))
    return [data.to_config_map(namespace), dgd.to_manifest()]


def render_yaml(docs: list[dict[str, Any]]) -> str:
    import yaml

    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, width=1 << 20)


def render_config_with_planner(**kwargs: Any) -> str:
    """``config_with_planner.yaml`` text; keyword arguments as :func:`config_with_planner`."""
    return render_yaml(config_with_planner(**kwargs))


def write_config_with_planner(path: str | Path, **kwargs: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_config_with_planner(**kwargs))
    return path
