"""One measurement engine on a Kubernetes cluster: create its objects, wait until it serves, delete them.

Split from the k8s runner so that scheduling (waves of engines, signals, measuring) and the life of a
single engine can be read apart. ``Engine`` records what it created, in order, so that deletion undoes
exactly that. Waiting polls the pods and fails at once with ``DeploymentError`` on pods that will never
become ready (OOMKilled, CrashLoopBackOff, image pull errors, Unschedulable) or a failed
DynamoGraphDeployment, instead of waiting out the timeout. ``api_call`` translates the client's errors
at this edge; ``kube`` imports the client on first use and names the extra to install when it is missing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from estimator.artifacts.k8s import (
    DGD_GROUP,
    DGD_LABEL_COMPONENT_TYPE,
    DGD_LABEL_NAME,
    DGD_PLURAL,
    DGD_VERSION,
)
from estimator.candidates import Candidate
from estimator.errors import DeploymentError, MeasurementError
from estimator.measurements import Probe, ProbeKind
from estimator.sources.base import Stack

from .base import Runner
from .k8s_objects import ENGINE_LABEL, PortForward, measurement_graph, plain_manifests, pod_problem, pod_ready

log = logging.getLogger(__name__)


def kube() -> Any:
    try:
        import kubernetes
    except ImportError as exc:
        raise MeasurementError(
            "the k8s runner needs the kubernetes client: pip install 'sla-estimate[k8s]'"
        ) from exc
    return kubernetes


def api_call(namespace: str, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, with API errors and an unreachable API server as ``DeploymentError``."""
    k = kube()
    try:
        return fn(*args, **kwargs)
    except k.client.ApiException as exc:
        raise DeploymentError(f"{what} in namespace {namespace}: HTTP {exc.status} {exc.reason}") from exc
    except (OSError, k.client.rest.urllib3.exceptions.HTTPError) as exc:
        raise DeploymentError(f"{what}: Kubernetes API unreachable: {exc}") from exc


@dataclass(frozen=True, slots=True)
class EngineKey:
    """What makes two probes share one deployed engine. Prefill probes run without prefix caching."""

    stack: Stack
    candidate: Candidate
    prefix_caching: bool

    @classmethod
    def of(cls, probe: Probe) -> EngineKey:
        return cls(probe.stack, probe.candidate, probe.kind is not ProbeKind.PREFILL)


@dataclass(eq=False)
class Engine:
    """One deployed engine: a DynamoGraphDeployment (``dynamo``) or a plain Deployment + Service."""

    key: EngineKey
    name: str
    dynamo: bool
    namespace: str
    created: list[tuple[str, str]] = field(default_factory=list)  # (kind, name), in creation order
    endpoint: Runner | None = None
    forward: PortForward | None = None

    @property
    def service(self) -> str:
        return f"{self.name}-frontend" if self.dynamo else self.name

    @property
    def selector(self) -> str:
        return f"{DGD_LABEL_NAME}={self.name}" if self.dynamo else f"{ENGINE_LABEL}={self.name}"

    def create(self, api: Any, manifest_args: dict[str, Any]) -> None:
        """Create the DGD, or the Deployment and Service, from ``k8s_objects``' manifests."""
        k = kube()
        if self.dynamo:
            body = measurement_graph(name=self.name, **manifest_args)
            create = k.client.CustomObjectsApi(api).create_namespaced_custom_object
            self._call("create DGD", create, DGD_GROUP, DGD_VERSION, self.namespace, DGD_PLURAL, body)
            self.created.append(("dgd", self.name))
        else:
            deployment, service = plain_manifests(name=self.name, **manifest_args)
            apps, core = k.client.AppsV1Api(api), k.client.CoreV1Api(api)
            self._call("create Deployment", apps.create_namespaced_deployment, self.namespace, deployment)
            self.created.append(("deployment", self.name))
            self._call("create Service", core.create_namespaced_service, self.namespace, service)
            self.created.append(("service", self.name))

    def wait_ready(
        self, api: Any, *, timeout_s: float, poll_interval_s: float, check_cancelled: Callable[[], None]
    ) -> str:
        """Poll until the serving pod is ready; returns its name. Fails fast on pods that cannot start."""
        k = kube()
        core, custom = k.client.CoreV1Api(api), k.client.CustomObjectsApi(api)
        deadline = time.monotonic() + timeout_s
        while True:
            check_cancelled()
            pods = self._call(
                "list pods", core.list_namespaced_pod, self.namespace, label_selector=self.selector
            ).items
            for pod in pods:
                problem = pod_problem(pod)
                if problem:
                    raise DeploymentError(f"{self.name} ({self.key.candidate.name}): {problem}")
            serving = [p for p in pods if pod_ready(p)]
            if self.dynamo:
                get = custom.get_namespaced_custom_object
                obj = self._call(
                    "get DGD", get, DGD_GROUP, DGD_VERSION, self.namespace, DGD_PLURAL, self.name
                )
                state = (obj.get("status") or {}).get("state")
                if state == "failed":
                    raise DeploymentError(f"{self.name}: DynamoGraphDeployment failed: {obj.get('status')}")
                serving = [
                    p
                    for p in serving
                    if (p.metadata.labels or {}).get(DGD_LABEL_COMPONENT_TYPE) == "frontend"
                ]
                serving = serving if state == "successful" else []
            if serving:
                return serving[0].metadata.name
            if time.monotonic() > deadline:
                raise DeploymentError(f"{self.name} not ready after {timeout_s:.0f} s")
            time.sleep(poll_interval_s)

    def delete(self, api: Any, *, timeout_s: float, poll_interval_s: float) -> None:
        """Delete what this engine created (404 is fine) and wait until its pods are gone. Never raises:
        it runs while another error unwinds, and a failed delete is logged with the label to clean up by."""
        if not self.created:
            return
        k = kube()
        deleters = {
            "dgd": lambda n: k.client.CustomObjectsApi(api).delete_namespaced_custom_object(
                DGD_GROUP, DGD_VERSION, self.namespace, DGD_PLURAL, n
            ),
            "deployment": lambda n: k.client.AppsV1Api(api).delete_namespaced_deployment(
                n, self.namespace, propagation_policy="Foreground"
            ),
            "service": lambda n: k.client.CoreV1Api(api).delete_namespaced_service(n, self.namespace),
        }
        while self.created:
            kind, name = self.created.pop()
            try:
                deleters[kind](name)
            except Exception as exc:
                if getattr(exc, "status", None) != 404:
                    hint = f"delete objects labelled {ENGINE_LABEL}={self.name} by hand"
                    log.error("could not delete %s %s in %s (%s); %s", kind, name, self.namespace, exc, hint)
        deadline = time.monotonic() + timeout_s
        core = k.client.CoreV1Api(api)
        try:
            while core.list_namespaced_pod(self.namespace, label_selector=self.selector).items:
                if time.monotonic() > deadline:
                    log.warning("pods of %s still terminating after %.0f s", self.name, timeout_s)
                    break
                time.sleep(poll_interval_s)
        except Exception as exc:
            log.warning("could not check that the pods of %s are gone: %s", self.name, exc)

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return api_call(self.namespace, what, fn, *args, **kwargs)
