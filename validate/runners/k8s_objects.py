"""The Kubernetes objects the k8s runner creates and reads: manifests, pod health, port-forward.

``plain_manifests`` gives a Deployment + Service serving one engine with vLLM's or SGLang's own
OpenAI server (GPU limits, ``/health`` readiness probe, shared memory); ``measurement_graph`` a
DynamoGraphDeployment with a Frontend and one aggregated worker. ``pod_problem`` says why a pod will
never become ready. ``PortForward`` serves a loopback port whose connections are tunnelled to a pod
through the API server (``kubernetes.stream.portforward``).
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from dataclasses import replace
from typing import Any

from estimator.artifacts.k8s import (
    HTTP_PORT,
    GraphDeployment,
    Role,
    backend_flags,
    default_image,
    engine_args,
    frontend_service,
    worker_service,
)
from estimator.candidates import Candidate
from estimator.errors import DeploymentError

log = logging.getLogger(__name__)

MANAGED_BY = {"app.kubernetes.io/managed-by": "sla-estimate"}
ENGINE_LABEL = "sla-estimate/engine"
FAILING_WAIT_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)


def pod_problem(pod: Any) -> str | None:
    """Why a pod will never become ready (a V1Pod), or None while it may still."""
    st, name = pod.status, pod.metadata.name
    for c in (st and st.conditions) or ():
        if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
            return f"pod {name} Unschedulable: {c.message or ''}".rstrip()
    for cs in ((st and st.init_container_statuses) or []) + ((st and st.container_statuses) or []):
        for term in (cs.state and cs.state.terminated, cs.last_state and cs.last_state.terminated):
            if term is not None and term.reason == "OOMKilled":
                return f"pod {name} OOMKilled: container {cs.name} ran out of memory (exit {term.exit_code})"
        waiting = cs.state and cs.state.waiting
        if waiting is not None and waiting.reason in FAILING_WAIT_REASONS:
            return f"pod {name} {waiting.reason}: {waiting.message or ''}".rstrip()
    if st is not None and st.phase == "Failed":
        return f"pod {name} failed: {st.reason or ''} {st.message or ''}".rstrip()
    return None


def pod_ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status and pod.status.conditions) or ())


def plain_manifests(
    *,
    name: str,
    namespace: str,
    backend: str,
    model: str,
    candidate: Candidate,
    image: str | None,
    prefix_caching: bool,
    extra_args: tuple[str, ...] = (),
    hf_token_secret: str | None = None,
    gpus_per_node: int = 8,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Deployment and Service serving one engine with the backend's own OpenAI server (no Dynamo)."""
    b = backend_flags(backend)
    if b.serve_command is None:
        raise DeploymentError(f"backend {backend!r} needs the Dynamo operator here (no plain server command)")
    if candidate.num_gpus > gpus_per_node:
        raise DeploymentError(f"{candidate.name} spans nodes; a plain Deployment runs on one node")
    model_args = (model,) if b.serve_model_flag is None else (b.serve_model_flag, model)
    cache = engine_args(backend, candidate, Role.AGG, prefix_caching=prefix_caching)
    gpus = {"nvidia.com/gpu": str(candidate.num_gpus)}
    container: dict[str, Any] = {
        "name": "engine",
        "image": image or b.serve_image,
        "command": list(b.serve_command),
        "args": [*model_args, "--host", "0.0.0.0", "--port", str(HTTP_PORT), *cache, *extra_args],
        "ports": [{"name": "http", "containerPort": HTTP_PORT}],
        "resources": {"limits": gpus, "requests": dict(gpus)},
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    if hf_token_secret:
        container["envFrom"] = [{"secretRef": {"name": hf_token_secret}}]
    labels = {**MANAGED_BY, ENGINE_LABEL: name, "sla-estimate/candidate": candidate.name}
    meta = {"name": name, "namespace": namespace, "labels": labels}
    pod_spec = {"containers": [container], "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {ENGINE_LABEL: name}},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": dict(meta),
        "spec": {
            "selector": {ENGINE_LABEL: name},
            "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http"}],
        },
    }
    return deployment, service


def measurement_graph(
    *,
    name: str,
    namespace: str,
    backend: str,
    model: str,
    candidate: Candidate,
    image: str | None,
    prefix_caching: bool,
    extra_args: tuple[str, ...] = (),
    hf_token_secret: str | None = None,
    gpus_per_node: int = 8,
) -> dict[str, Any]:
    """A DynamoGraphDeployment with a Frontend and one aggregated worker: the engine under test."""
    image = image or default_image(backend)
    worker = worker_service(
        backend,
        model,
        candidate,
        Role.AGG,
        image,
        gpus_per_node=gpus_per_node,
        prefix_caching=prefix_caching,
        env_from_secret=hf_token_secret,
    )
    worker = replace(worker, args=(*worker.args, *extra_args))
    labels = tuple({**MANAGED_BY, ENGINE_LABEL: name, "sla-estimate/candidate": candidate.name}.items())
    return GraphDeployment(name, namespace, (frontend_service(image), worker), labels).to_manifest()


class PortForward:
    """A loopback listener; each accepted connection gets its own port-forward stream to the pod.

    ``kubernetes.stream.portforward`` swaps the transport of the ApiClient it is given while it
    connects, so each stream gets a private ApiClient built from the shared configuration.
    """

    def __init__(self, configuration: Any, namespace: str, pod: str, port: int):
        self._configuration, self._namespace, self._pod, self._port = configuration, namespace, pod, port
        self._server: socket.socket | None = None
        self._closed = threading.Event()

    def start(self) -> str:
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        threading.Thread(target=self._accept, name=f"port-forward {self._pod}", daemon=True).start()
        return f"http://127.0.0.1:{self._server.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._server.accept()  # type: ignore[union-attr]
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._splice, args=(conn,), daemon=True).start()

    def _splice(self, conn: socket.socket) -> None:
        from kubernetes import client
        from kubernetes.stream import portforward

        pf, remote, api = None, None, client.ApiClient(self._configuration)
        try:
            core = client.CoreV1Api(api)
            pf = portforward(
                core.connect_get_namespaced_pod_portforward, self._pod, self._namespace, ports=str(self._port)
            )
            remote = pf.socket(self._port)
            remote.setblocking(True)
            peers = {conn.fileno(): (conn, remote), remote.fileno(): (remote, conn)}
            while not self._closed.is_set():
                ready, _, _ = select.select(list(peers), [], [], 0.2)
                for fd in ready:
                    src, dst = peers[fd]
                    data = src.recv(65536)
                    if not data:
                        return
                    dst.sendall(data)
        except (ConnectionResetError, BrokenPipeError) as exc:  # a side hung up mid-response, e.g. httpx
            log.debug("port-forward to pod %s: %s", self._pod, exc)  # dropping a body it left unread
        except Exception as exc:  # a broken stream shows up as a failed request in the endpoint runner
            log.warning("port-forward to pod %s failed: %s", self._pod, exc)
        finally:
            conn.close()
            if remote is not None:
                _hang_up(remote)
            if pf is not None:
                pf.close()
            api.close()

    def close(self) -> None:
        self._closed.set()
        if self._server is not None:
            self._server.close()


def _hang_up(remote: Any, timeout_s: float = 5.0) -> None:
    """Half-close the pod stream and read it to its end before it is closed.

    Closing a socketpair end with unread data resets its peer, and the kubernetes client's proxy
    thread catches neither that nor the broken pipe after it: it dies. After our EOF it closes its end.
    """
    try:
        remote.shutdown(socket.SHUT_WR)
        remote.settimeout(timeout_s)
        while remote.recv(65536):
            pass
    except OSError:  # its end is already gone (reset or timeout): nothing left to protect
        pass
