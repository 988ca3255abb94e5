"""KubernetesRunner: deploy an engine per candidate, wait until it serves, measure it, delete it.

With the Dynamo operator installed (CRD ``dynamographdeployments.nvidia.com``) an engine is a
DynamoGraphDeployment with a Frontend and one aggregated worker; otherwise a plain Deployment and
Service running vLLM's or SGLang's OpenAI server with a ``/health`` readiness probe. Pods are polled
while waiting, and OOMKilled, CrashLoopBackOff, image pull errors and Unschedulable fail at once with
``DeploymentError`` (Dynamo's profiler waits out a 30-minute timeout instead).

Measuring goes through ``endpoint_factory(base_url) -> Runner`` (default: ``EndpointRunner``); the
base URL is a local port-forward to the serving pod, or ``base_url`` (a template with ``{service}``
and ``{namespace}``, e.g. for in-cluster use). Everything created carries the label
``app.kubernetes.io/managed-by=sla-estimate`` and is deleted on ``close()``, on errors, on Ctrl-C and
on SIGTERM. Needs the ``kubernetes`` client: ``pip install 'sla-estimate[k8s]'``.
"""

from __future__ import annotations

import atexit
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from estimator.artifacts.k8s import (
    DGD_GROUP,
    DGD_LABEL_COMPONENT_TYPE,
    DGD_LABEL_NAME,
    DGD_PLURAL,
    DGD_VERSION,
    HTTP_PORT,
)
from estimator.candidates import Candidate
from estimator.errors import DeploymentError, MeasurementError, SpecError
from estimator.sources.base import Stack

from ..measurement import Measurement, Probe, ProbeKind
from .base import Runner
from .k8s_objects import ENGINE_LABEL, PortForward, measurement_graph, plain_manifests, pod_problem, pod_ready

log = logging.getLogger(__name__)

DGD_CRD = f"{DGD_PLURAL}.{DGD_GROUP}"


def _kube() -> Any:
    try:
        import kubernetes
    except ImportError as exc:
        raise MeasurementError(
            "the k8s runner needs the kubernetes client: pip install 'sla-estimate[k8s]'"
        ) from exc
    return kubernetes


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
class _Engine:
    key: EngineKey
    name: str
    dynamo: bool
    created: list[tuple[str, str]] = field(default_factory=list)  # (kind, name), in creation order
    endpoint: Runner | None = None
    forward: PortForward | None = None

    @property
    def service(self) -> str:
        return f"{self.name}-frontend" if self.dynamo else self.name

    @property
    def selector(self) -> str:
        return f"{DGD_LABEL_NAME}={self.name}" if self.dynamo else f"{ENGINE_LABEL}={self.name}"


class KubernetesRunner(Runner):
    """Measures probes on engines it deploys to a Kubernetes cluster, then deletes them."""

    name = "k8s"

    def __init__(
        self,
        *,
        namespace: str = "default",
        image: str | None = None,
        mode: str = "auto",
        model: str | None = None,
        base_url: str | None = None,
        endpoint_factory: Callable[[str], Runner] | None = None,
        api_client: Any = None,
        ready_timeout_s: float = 1800.0,
        delete_timeout_s: float = 300.0,
        poll_interval_s: float = 2.0,
        request_timeout_s: float = 600.0,
        gpus_per_node: int = 8,
        hf_token_secret: str | None = None,
        extra_args: tuple[str, ...] = (),
        run_id: str | None = None,
    ):
        if mode not in ("auto", "dynamo", "plain"):
            raise SpecError("mode", f"k8s runner mode must be auto, dynamo or plain, got {mode!r}")
        self.namespace = namespace
        self.image = image
        self.mode = mode
        self.model = model
        self.base_url = base_url
        self.endpoint_factory = endpoint_factory
        self.api_client = api_client
        self.ready_timeout_s = ready_timeout_s
        self.delete_timeout_s = delete_timeout_s
        self.poll_interval_s = poll_interval_s
        self.request_timeout_s = request_timeout_s
        self.gpus_per_node = gpus_per_node
        self.hf_token_secret = hf_token_secret
        self.extra_args = tuple(extra_args)
        self.run_id = run_id or uuid.uuid4().hex[:6]
        self._lock = threading.Lock()
        self._live: dict[EngineKey, _Engine] = {}
        self._dynamo: bool | None = None
        self._prev_sigterm: Any = None
        self._cancel = threading.Event()  # set when measure_many is interrupted: workers stop early

    # ---- public -----------------------------------------------------------------------------------
    def measure(self, probe: Probe) -> Measurement:
        key = EngineKey.of(probe)
        engine = self._live.get(key)
        if engine is None:
            for other in list(self._live.values()):  # one engine at a time: free its GPUs first
                self._stop(other)
            engine = self._start(key)
        return self._measure_on(engine, probe)

    def measure_many(self, probes: list[Probe]) -> list[Measurement | MeasurementError]:
        """One result per probe, in order; a candidate that fails gives its error for each of its probes.

        Engines run side by side when the cluster's allocatable GPUs hold them all at once (plain
        Deployments only); with Dynamo, one after another.
        """
        self._guard_signals()  # here, in the main thread: workers cannot install signal handlers
        groups: dict[EngineKey, list[int]] = {}
        for i, p in enumerate(probes):
            groups.setdefault(EngineKey.of(p), []).append(i)
        results: list[Any] = [None] * len(probes)
        capacity = 0 if self._use_dynamo() else self.cluster_gpus()
        for other in list(self._live.values()):
            self._stop(other)
        self._cancel.clear()
        for wave in _waves(list(groups), capacity):
            pool = ThreadPoolExecutor(max_workers=len(wave), thread_name_prefix="k8s-engine")
            try:
                for future in [pool.submit(self._run_group, k, groups[k], probes, results) for k in wave]:
                    future.result()
            except BaseException:
                self._cancel.set()  # Ctrl-C: workers stop at their next step and delete their engines
                raise
            finally:
                pool.shutdown(wait=True)
        return results

    def cluster_gpus(self) -> int:
        """Sum of allocatable ``nvidia.com/gpu`` over the nodes; 0 when nodes cannot be listed."""
        k = _kube()
        try:
            nodes = self._call("list nodes", k.client.CoreV1Api(self._api()).list_node).items
        except DeploymentError as exc:
            if not isinstance(exc.__cause__, k.client.ApiException):
                raise  # API unreachable
            log.info("cannot list nodes (%s); engines run one at a time", exc)
            return 0
        return sum(int((n.status.allocatable or {}).get("nvidia.com/gpu", "0")) for n in nodes)

    def close(self) -> None:
        for engine in list(self._live.values()):
            self._stop(engine)
        if self._prev_sigterm is not None:
            signal.signal(signal.SIGTERM, self._prev_sigterm)
            self._prev_sigterm = None
        atexit.unregister(self.close)

    # ---- lifecycle --------------------------------------------------------------------------------
    def _api(self) -> Any:
        if self.api_client is None:
            k = _kube()
            try:
                k.config.load_kube_config()
            except Exception:
                try:
                    k.config.load_incluster_config()
                except Exception as exc:
                    raise DeploymentError(
                        f"no Kubernetes configuration (kubeconfig or in-cluster): {exc}"
                    ) from exc
            self.api_client = k.client.ApiClient()
        return self.api_client

    def _use_dynamo(self) -> bool:
        if self._dynamo is None:
            if self.mode != "auto":
                self._dynamo = self.mode == "dynamo"
            else:
                k = _kube()
                read = k.client.ApiextensionsV1Api(self._api()).read_custom_resource_definition
                try:
                    self._call(f"get CRD {DGD_CRD}", read, DGD_CRD)
                    self._dynamo = True
                except DeploymentError as exc:
                    status = getattr(exc.__cause__, "status", None)
                    if status in (401, 403):
                        raise DeploymentError(f"{exc}; set the runner's mode to 'dynamo' or 'plain'") from exc
                    if status != 404:
                        raise
                    self._dynamo = False
            log.info(
                "k8s runner deploys %s", "DynamoGraphDeployments" if self._dynamo else "plain Deployments"
            )
        return self._dynamo

    def _run_group(self, key: EngineKey, idx: list[int], probes: list[Probe], results: list[Any]) -> None:
        engine = None
        try:
            engine = self._start(key)
            for i in idx:
                self._check_cancelled()
                try:
                    results[i] = self._measure_on(engine, probes[i])
                except MeasurementError as exc:
                    results[i] = exc
        except MeasurementError as exc:
            for i in idx:
                results[i] = results[i] or exc
        finally:
            if engine is not None:
                self._stop(engine)

    def _start(self, key: EngineKey) -> _Engine:
        self._guard_signals()
        dynamo = self._use_dynamo()
        cand = key.candidate
        name = f"sla-{cand.name.lower()}-{'pc' if key.prefix_caching else 'nc'}-{self.run_id}"
        engine = _Engine(key, name, dynamo)
        with self._lock:
            self._live[key] = engine
        k = _kube()
        spec = dict(
            namespace=self.namespace,
            backend=key.stack.backend,
            model=self.model or key.stack.model,
            candidate=cand,
            image=self.image,
            prefix_caching=key.prefix_caching,
            extra_args=self.extra_args,
            hf_token_secret=self.hf_token_secret,
            gpus_per_node=self.gpus_per_node,
        )
        try:
            if dynamo:
                body = measurement_graph(name=name, **spec)
                custom = k.client.CustomObjectsApi(self._api())
                create = custom.create_namespaced_custom_object
                self._call("create DGD", create, DGD_GROUP, DGD_VERSION, self.namespace, DGD_PLURAL, body)
                engine.created.append(("dgd", name))
            else:
                deployment, service = plain_manifests(name=name, **spec)
                apps, core = k.client.AppsV1Api(self._api()), k.client.CoreV1Api(self._api())
                self._call("create Deployment", apps.create_namespaced_deployment, self.namespace, deployment)
                engine.created.append(("deployment", name))
                self._call("create Service", core.create_namespaced_service, self.namespace, service)
                engine.created.append(("service", name))
            log.info("deployed %s (%s); waiting until it serves", name, cand.name)
            pod = self._wait_ready(engine)
            if self.base_url:
                url = self.base_url.format(service=engine.service, namespace=self.namespace, name=name)
            else:
                engine.forward = PortForward(self._api().configuration, self.namespace, pod, HTTP_PORT)
                url = engine.forward.start()
            engine.endpoint = (self.endpoint_factory or self._default_endpoint(spec["model"]))(url)
            return engine
        except BaseException:
            self._stop(engine)
            raise

    def _wait_ready(self, engine: _Engine) -> str:
        """Poll until the serving pod is ready; returns its name. Fails fast on pods that cannot start."""
        k = _kube()
        core, custom = k.client.CoreV1Api(self._api()), k.client.CustomObjectsApi(self._api())
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            self._check_cancelled()
            pods = self._call(
                "list pods", core.list_namespaced_pod, self.namespace, label_selector=engine.selector
            ).items
            for pod in pods:
                problem = pod_problem(pod)
                if problem:
                    raise DeploymentError(f"{engine.name} ({engine.key.candidate.name}): {problem}")
            serving = [p for p in pods if pod_ready(p)]
            if engine.dynamo:
                get = custom.get_namespaced_custom_object
                obj = self._call(
                    "get DGD", get, DGD_GROUP, DGD_VERSION, self.namespace, DGD_PLURAL, engine.name
                )
                state = (obj.get("status") or {}).get("state")
                if state == "failed":
                    raise DeploymentError(f"{engine.name}: DynamoGraphDeployment failed: {obj.get('status')}")
                serving = [
                    p
                    for p in serving
                    if (p.metadata.labels or {}).get(DGD_LABEL_COMPONENT_TYPE) == "frontend"
                ]
                serving = serving if state == "successful" else []
            if serving:
                return serving[0].metadata.name
            if time.monotonic() > deadline:
                raise DeploymentError(f"{engine.name} not ready after {self.ready_timeout_s:.0f} s")
            time.sleep(self.poll_interval_s)

    def _measure_on(self, engine: _Engine, probe: Probe) -> Measurement:
        m = engine.endpoint.measure(probe)  # type: ignore[union-attr]
        where = {
            "kind": "DynamoGraphDeployment" if engine.dynamo else "Deployment",
            "name": engine.name,
            "namespace": self.namespace,
        }
        return replace(m, runner=self.name, extra={**m.extra, "k8s": where})

    def _stop(self, engine: _Engine) -> None:
        """Delete what this engine created (404 is fine) and wait until its pods are gone. Never raises:
        it runs while another error unwinds, and a failed delete is logged with the label to clean up by."""
        with self._lock:
            self._live.pop(engine.key, None)
        for closer in (engine.endpoint, engine.forward):
            if closer is not None:
                closer.close()
        if not engine.created:
            return
        k = _kube()
        api = self._api()
        deleters = {
            "dgd": lambda n: k.client.CustomObjectsApi(api).delete_namespaced_custom_object(
                DGD_GROUP, DGD_VERSION, self.namespace, DGD_PLURAL, n
            ),
            "deployment": lambda n: k.client.AppsV1Api(api).delete_namespaced_deployment(
                n, self.namespace, propagation_policy="Foreground"
            ),
            "service": lambda n: k.client.CoreV1Api(api).delete_namespaced_service(n, self.namespace),
        }
        while engine.created:
            kind, name = engine.created.pop()
            try:
                deleters[kind](name)
            except Exception as exc:
                if getattr(exc, "status", None) != 404:
                    hint = f"delete objects labelled {ENGINE_LABEL}={engine.name} by hand"
                    log.error("could not delete %s %s in %s (%s); %s", kind, name, self.namespace, exc, hint)
        deadline = time.monotonic() + self.delete_timeout_s
        core = k.client.CoreV1Api(api)
        try:
            while core.list_namespaced_pod(self.namespace, label_selector=engine.selector).items:
                if time.monotonic() > deadline:
                    log.warning(
                        "pods of %s still terminating after %.0f s", engine.name, self.delete_timeout_s
                    )
                    break
                time.sleep(self.poll_interval_s)
        except Exception as exc:
            log.warning("could not check that the pods of %s are gone: %s", engine.name, exc)

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        k = _kube()
        try:
            return fn(*args, **kwargs)
        except k.client.ApiException as exc:
            raise DeploymentError(
                f"{what} in namespace {self.namespace}: HTTP {exc.status} {exc.reason}"
            ) from exc
        except (OSError, k.client.rest.urllib3.exceptions.HTTPError) as exc:
            raise DeploymentError(f"{what}: Kubernetes API unreachable: {exc}") from exc

    def _check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise MeasurementError("cancelled")

    def _default_endpoint(self, model: str) -> Callable[[str], Runner]:
        from .endpoint import EndpointRunner

        return lambda url: EndpointRunner(base_url=url, model=model, timeout_s=self.request_timeout_s)

    def _guard_signals(self) -> None:
        """SIGTERM unwinds like Ctrl-C, so ``finally`` blocks delete what was created; atexit as backstop."""
        atexit.unregister(self.close)
        atexit.register(self.close)
        if self._prev_sigterm is None and threading.current_thread() is threading.main_thread():
            self._prev_sigterm = signal.signal(signal.SIGTERM, _raise_system_exit)


def _waves(keys: list[EngineKey], capacity_gpus: int) -> list[list[EngineKey]]:
    """First-fit packing of engines into waves that the cluster's GPUs hold at once."""
    waves: list[list[EngineKey]] = []
    for key in keys:
        need = key.candidate.num_gpus
        fits = [w for w in waves if sum(k.candidate.num_gpus for k in w) + need <= capacity_gpus]
        if fits:
            fits[0].append(key)
        else:
            waves.append([key])
    return waves


def _raise_system_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)
