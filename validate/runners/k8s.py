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

This module schedules engines and measures on them; ``k8s_engine`` creates, waits for and deletes
one engine, and ``k8s_objects`` holds the manifests, pod checks and the port-forward.
"""

from __future__ import annotations

import atexit
import logging
import signal
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from estimator.artifacts.k8s import DGD_GROUP, DGD_PLURAL, HTTP_PORT
from estimator.candidates import Candidate
from estimator.errors import DeploymentError, ImplausibleMeasurement, MeasurementError, SpecError
from estimator.measurements import Measurement, Probe

from .base import Capabilities, Runner
from .k8s_engine import Engine, EngineKey, api_call, kube
from .k8s_objects import PortForward, measurement_graph, plain_manifests

# the manifests are re-exported from k8s_objects: tests and callers import them from here
__all__ = ["KubernetesRunner", "measurement_graph", "plain_manifests"]

log = logging.getLogger(__name__)

DGD_CRD = f"{DGD_PLURAL}.{DGD_GROUP}"


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
        self._live: dict[EngineKey, Engine] = {}
        self._dynamo: bool | None = None
        self._prev_sigterm: Any = None
        self._cancel = threading.Event()  # set when measure_many is interrupted: workers stop early

    # ---- public -----------------------------------------------------------------------------------
    def capabilities(self) -> Capabilities:
        """Every kind, any candidate it can deploy; a plain Deployment (one pod) fits on one node."""
        if self.mode == "plain" or (self.mode == "auto" and not self._use_dynamo()):
            why = f"a plain Deployment runs on one node of gpus_per_node={self.gpus_per_node}"
            return Capabilities(frozenset(self.kinds), max_gpus=self.gpus_per_node, why=why)
        return Capabilities(frozenset(self.kinds))

    def measure(self, probe: Probe) -> Measurement:
        self.require(probe)  # any candidate and kind: it deploys whatever is asked
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
        k = kube()
        try:
            nodes = api_call(self.namespace, "list nodes", k.client.CoreV1Api(self._api()).list_node).items
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
            k = kube()
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
                k = kube()
                read = k.client.ApiextensionsV1Api(self._api()).read_custom_resource_definition
                try:
                    api_call(self.namespace, f"get CRD {DGD_CRD}", read, DGD_CRD)
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

    def _start(self, key: EngineKey) -> Engine:
        self._guard_signals()
        dynamo = self._use_dynamo()
        cand = key.candidate
        name = f"sla-{cand.name.lower()}-{'pc' if key.prefix_caching else 'nc'}-{self.run_id}"
        engine = Engine(key, name, dynamo, self.namespace)
        with self._lock:
            self._live[key] = engine
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
            engine.create(self._api(), spec)
            log.info("deployed %s (%s); waiting until it serves", name, cand.name)
            pod = engine.wait_ready(
                self._api(),
                timeout_s=self.ready_timeout_s,
                poll_interval_s=self.poll_interval_s,
                check_cancelled=self._check_cancelled,
            )
            if self.base_url:
                url = self.base_url.format(service=engine.service, namespace=self.namespace, name=name)
            else:
                engine.forward = PortForward(self._api().configuration, self.namespace, pod, HTTP_PORT)
                url = engine.forward.start()
            engine.endpoint = (self.endpoint_factory or self._default_endpoint(spec["model"], cand))(url)
            return engine
        except BaseException:
            self._stop(engine)
            raise

    def _measure_on(self, engine: Engine, probe: Probe) -> Measurement:
        where = {
            "kind": "DynamoGraphDeployment" if engine.dynamo else "Deployment",
            "name": engine.name,
            "namespace": self.namespace,
        }

        def label(m: Measurement) -> Measurement:
            return replace(m, runner=self.name, extra={**m.extra, "k8s": where})

        try:
            return label(engine.endpoint.measure(probe))  # type: ignore[union-attr]
        except ImplausibleMeasurement as exc:  # the record kept aside is this runner's too
            exc.measurement = label(exc.measurement)
            raise

    def _stop(self, engine: Engine) -> None:
        """Close the engine's endpoint and port-forward, then delete its objects (``Engine.delete``,
        which never raises: this runs while another error unwinds)."""
        with self._lock:
            self._live.pop(engine.key, None)
        for closer in (engine.endpoint, engine.forward):
            if closer is not None:
                closer.close()
        if engine.created:  # else the API may not even be configured
            engine.delete(self._api(), timeout_s=self.delete_timeout_s, poll_interval_s=self.poll_interval_s)

    def _check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise MeasurementError("cancelled")

    def _default_endpoint(self, model: str, candidate: Candidate) -> Callable[[str], Runner]:
        from .endpoint import EndpointRunner

        return lambda url: EndpointRunner(
            base_url=url, model=model, timeout_s=self.request_timeout_s, candidate=candidate
        )

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
