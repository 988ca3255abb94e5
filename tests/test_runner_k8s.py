"""KubernetesRunner against a stand-in API server (``k8s_standin.py``); no cluster, no operator, no GPU.

Exercised for real: the official ``kubernetes`` client (REST calls, its pydantic models deserializing
the stand-in's answers, the ``kubernetes.stream.portforward`` websocket client); the runner's
Deployment/Service/DGD manifests as received by the server; CRD detection; readiness polling; fail-fast
on OOMKilled, CrashLoopBackOff, ImagePullBackOff and Unschedulable (plain and Dynamo); the not-ready
timeout; deletion after success, failure, KeyboardInterrupt, other exceptions and an interrupted
parallel wave; the SIGTERM handler; node GPU counting and parallel waves; the ``base_url`` template; the
missing-client and unreachable-API errors; a client hanging up mid-response. Measuring goes through the
port-forward for real: client -> loopback listener -> websocket (v4.channel.k8s.io) -> stand-in ->
``_FakeEngine``, a tiny OpenAI-compatible HTTP server on loopback that streams canned tokens (not a
model). The two happy paths use the project's real ``EndpointRunner`` (default factory) over that
tunnel; other tests inject a small runner (``_ProbeRunner``: one GET /health over the tunnel;
``_Recorder``: no network). The ``engine``-marked test points the tunnel at the session's real vLLM CPU
server (``tests/engine_server.py``) and measures it with the real ``EndpointRunner``.

Not exercised: a real API server (admission, defaulting, RBAC, watch streams, scheduling, pod status
written by a kubelet, Foreground deletion that takes time), Dynamo's operator (DGD reconciliation;
its pod labels and ``status.state`` values are taken from its source, not observed), real images,
GPUs or model servers inside pods, a port-forward through a real kubelet, SIGTERM delivered to a live process.
Manifests are validated offline against the Kubernetes 1.33 schema with ``kubernetes-validate``
(Deployment, Service; strict) and deserialized with the client's models; the DGD is checked
structurally only (its schema ships with the operator).
"""

from __future__ import annotations

import json
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import kubernetes_validate  # test extra: ships the Kubernetes OpenAPI schemas, works offline
import pytest
from k8s_standin import StandIn

from estimator.candidates import Candidate, Mapping
from estimator.errors import DeploymentError, ImplausibleMeasurement, MeasurementError, SpecError
from estimator.sources.base import Stack
from estimator.measurements import Measurement, Probe, ProbeKind
from validate.runners import k8s as k8s_runner
from validate.runners.base import Runner
from validate.runners.k8s import KubernetesRunner, measurement_graph, plain_manifests

STACK = Stack("Qwen/Qwen3-0.6B", "h100_sxm", "vllm")
TP1, TP2 = Candidate(Mapping.TP, 1), Candidate(Mapping.TP, 2)


class _FakeEngine(BaseHTTPRequestHandler):
    """Just enough of an OpenAI completions server for EndpointRunner: token-id prompts, SSE streams."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            return self._send(200, b"")
        if self.path == "/v1/models":
            return self._send(200, json.dumps({"data": [{"id": STACK.model}]}).encode())
        if self.path == "/big":  # more than the tunnel's socket buffers hold: a client leaves most unread
            return self._send(200, b"x" * (8 << 20), "application/octet-stream")
        self._send(404, b'{"error": "not found"}')

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/completions":
            return self._send(404, b'{"error": "not found"}')
        prompt_tokens = len(req["prompt"]) if isinstance(req["prompt"], list) else len(req["prompt"].split())
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": req["max_tokens"]}
        if not req.get("stream"):
            return self._send(200, json.dumps({"choices": [{"text": "a"}], "usage": usage}).encode())
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        events = [{"choices": [{"text": "a", "token_ids": [7]}]} for _ in range(req["max_tokens"])]
        for data in [*map(json.dumps, events), json.dumps({"choices": [], "usage": usage}), "[DONE]"]:
            line = f"data: {data}\n\n".encode()
            self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")


class _ProbeRunner(Runner):
    """Injected endpoint: one real GET /health through the tunnel; can be told to raise."""

    name = "probe"
    raise_exc: BaseException | None = None

    def __init__(self, base_url: str):
        import httpx

        self.base_url, self.client = base_url, httpx.Client(base_url=base_url, timeout=10)

    def measure(self, probe: Probe) -> Measurement:
        if self.raise_exc is not None:
            raise self.raise_exc
        r = self.client.get("/health")
        return Measurement(
            probe=probe,
            runner=self.name,
            ttft_ms=r.elapsed.total_seconds() * 1e3,
            extra={"status": r.status_code},
        )

    def close(self) -> None:
        self.client.close()


@pytest.fixture(scope="module")
def engine_addr():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeEngine)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address
    server.shutdown()
    server.server_close()


@pytest.fixture
def cluster(engine_addr):
    standin = StandIn(forward_to=engine_addr)
    standin.start()
    yield standin
    standin.stop()


def _runner(cluster: StandIn, **kw) -> KubernetesRunner:
    kw.setdefault("poll_interval_s", 0.005)
    return KubernetesRunner(api_client=cluster.api_client(), namespace="bench", **kw)


def _probe(kind=ProbeKind.PREFILL, cand=TP2, stack=STACK) -> Probe:
    return Probe(kind, stack, cand, isl=64, osl=8, concurrency=2, repeats=2)


def _validate(obj: dict) -> None:
    kubernetes_validate.validate(obj, "1.33.0", strict=True)


def test_plain_deployment_happy_path_with_the_real_endpoint_runner(cluster):
    from kubernetes import client

    with _runner(cluster, request_timeout_s=10) as runner:
        prefill = runner.measure(_probe())
        decode = runner.measure(_probe(ProbeKind.DECODE))
        deployments = [k for k in cluster.created if k[0] == "deployments"]
    assert prefill.runner == "k8s" and prefill.ttft_ms > 0 and prefill.thpt_per_gpu > 0
    assert decode.itl_ms > 0 and decode.extra["k8s"]["kind"] == "Deployment"
    assert prefill.extra["prompt_tokens"] == 64  # the prompt crossed the tunnel intact
    # prefill and decode need different prefix caching, so two engines, one after the other
    assert len(deployments) == 2 and cluster.max_live["deployments"] == 1
    dep = cluster.objects_created[deployments[0]]
    svc = cluster.objects_created[("services", "bench", deployments[0][2])]
    for obj in (dep, svc):
        _validate(obj)
    model = client.V1Deployment.from_dict(dep)
    container = model.spec.template.spec.containers[0]
    assert container.command == ["vllm", "serve"]
    assert container.args == [
        STACK.model,
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--tensor-parallel-size",
        "2",
        "--no-enable-prefix-caching",
    ]
    assert container.resources.limits == {"nvidia.com/gpu": "2"}
    assert container.readiness_probe.http_get.path == "/health"
    assert model.metadata.labels["app.kubernetes.io/managed-by"] == "sla-estimate"
    assert client.V1Service.from_dict(svc).spec.selector == model.spec.selector.match_labels
    decode_dep = cluster.objects_created[deployments[1]]
    assert decode_dep["spec"]["template"]["spec"]["containers"][0]["args"][-1] == "--enable-prefix-caching"
    assert cluster.forwarded and all(
        p.startswith(deployments[0][2]) or p.startswith(deployments[1][2]) for p in cluster.forwarded
    )
    assert cluster.live() == []


def test_streamed_requests_reuse_their_tunnel(cluster):
    """Each request used to hang up after the SSE [DONE] without reading the body's last chunk, so httpx
    dropped the connection and the next request opened a new port-forward inside its TTFT: the number of
    tunnels grew with the repetitions. Read to the end, connections go back to the pool."""
    from dataclasses import replace

    with _runner(cluster, request_timeout_s=10) as runner:
        runner.measure(replace(_probe(), concurrency=1, repeats=2))  # starts the engine
        before = len(cluster.forwarded)
        runner.measure(replace(_probe(), concurrency=1, repeats=8))
    assert len(cluster.forwarded) - before <= 2  # 8 repetitions and a warm-up, one after the other (was 10)


def test_dynamo_graph_deployment_when_the_crd_exists(cluster):
    cluster.dynamo_crd = True
    with _runner(cluster, request_timeout_s=10, image="reg/vllm-runtime:1") as runner:
        m = runner.measure(_probe())
    (dgd_key,) = [k for k in cluster.created if k[0] == "dynamographdeployments"]
    dgd = cluster.objects_created[dgd_key]
    services = dgd["spec"]["services"]
    assert set(services) == {"Frontend", "VllmWorker"}
    worker = services["VllmWorker"]
    assert worker["resources"] == {"limits": {"gpu": "2"}} and worker["componentType"] == "worker"
    assert worker["extraPodSpec"]["mainContainer"]["args"] == [
        "-m",
        "dynamo.vllm",
        "--model",
        STACK.model,
        "--tensor-parallel-size",
        "2",
        "--no-enable-prefix-caching",
    ]
    assert dgd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "sla-estimate"
    assert m.extra["k8s"]["kind"] == "DynamoGraphDeployment" and m.ttft_ms > 0
    assert set(cluster.forwarded) == {f"{dgd_key[2]}-frontend-0"}  # measured through the Frontend pod
    assert not [k for k in cluster.created if k[0] in ("deployments", "services")]
    assert cluster.live() == []


@pytest.mark.parametrize(
    "state,reason",
    [
        ("oomkilled", "OOMKilled"),
        ("crashloop", "CrashLoopBackOff"),
        ("imagepull", "ImagePullBackOff"),
        ("unschedulable", "Unschedulable"),
    ],
)
@pytest.mark.parametrize("dynamo", [False, True])
def test_failing_pods_fail_fast_and_are_deleted(cluster, state, reason, dynamo):
    cluster.dynamo_crd = dynamo
    cluster.script = lambda owner, component: ("pending", state) if component != "Frontend" else ("ready",)
    runner = _runner(cluster, endpoint_factory=_ProbeRunner, ready_timeout_s=2)
    with pytest.raises(DeploymentError, match=reason) as info:
        runner.measure(_probe())
    assert TP2.name in str(info.value)
    assert cluster.pod_lists <= 3  # failed at the first poll that showed the state, no waiting for a timeout
    assert cluster.live() == [] and len(cluster.deleted) >= 1
    runner.close()


def test_not_ready_in_time(cluster):
    cluster.script = lambda owner, component: ("starting",)
    with _runner(cluster, endpoint_factory=_ProbeRunner, ready_timeout_s=0.05) as runner:
        with pytest.raises(DeploymentError, match="not ready after"):
            runner.measure(_probe())
    assert cluster.live() == []


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), RuntimeError("bug")])
def test_interrupt_during_measurement_still_deletes(cluster, exc):
    class Raising(_ProbeRunner):
        raise_exc = exc

    runner = _runner(cluster, endpoint_factory=Raising)
    with pytest.raises(type(exc)):
        with runner:
            runner.measure(_probe())
    assert cluster.live() == [] and {k[0] for k in cluster.deleted} == {"deployments", "services"}


def test_failure_in_endpoint_setup_deletes(cluster):
    def factory(url):
        raise MeasurementError("endpoint refused")

    with pytest.raises(MeasurementError, match="endpoint refused"):
        _runner(cluster, endpoint_factory=factory).measure(_probe())
    assert cluster.live() == []


def test_sigterm_unwinds_and_handler_is_restored(cluster):
    before = signal.getsignal(signal.SIGTERM)
    runner = _runner(cluster, endpoint_factory=_ProbeRunner)
    runner.measure(_probe())
    handler = signal.getsignal(signal.SIGTERM)
    assert handler is k8s_runner._raise_system_exit
    with pytest.raises(SystemExit):
        handler(signal.SIGTERM, None)
    runner.close()
    assert signal.getsignal(signal.SIGTERM) is before and cluster.live() == []


@pytest.mark.parametrize("node_gpus,dynamo,max_live", [((4,), False, 2), ((2,), False, 1), ((8,), True, 1)])
def test_measure_many_runs_in_parallel_only_when_gpus_allow(cluster, node_gpus, dynamo, max_live):
    cluster.node_gpus, cluster.dynamo_crd = node_gpus, dynamo
    cluster.script = lambda owner, component: (
        ("pending", "unschedulable")
        if "tp1-nc" in owner and component != "Frontend"
        else ("pending", "ready")
    )
    probes = [_probe(cand=TP1), _probe(cand=TP2), _probe(ProbeKind.DECODE, cand=TP2), _probe(cand=TP2)]
    with _runner(cluster, endpoint_factory=_ProbeRunner) as runner:
        results = runner.measure_many(probes)
    assert isinstance(results[0], DeploymentError) and "Unschedulable" in str(results[0])
    assert all(isinstance(r, Measurement) and r.runner == "k8s" for r in results[1:])
    assert [r.probe for r in results[1:]] == probes[1:]
    kind = "dynamographdeployments" if dynamo else "deployments"
    assert len([k for k in cluster.created if k[0] == kind]) == 3  # TP1, TP2 prefill, TP2 decode
    assert cluster.max_live[kind] == max_live
    assert cluster.live() == []


def test_cluster_gpus_sums_allocatable(cluster):
    cluster.node_gpus = (8, 8, 4)
    assert _runner(cluster).cluster_gpus() == 20


def test_trtllm_needs_dynamo(cluster):
    with pytest.raises(DeploymentError, match="Dynamo operator"):
        _runner(cluster, endpoint_factory=_ProbeRunner).measure(
            _probe(stack=Stack("M", "h100_sxm", "trtllm"))
        )
    assert cluster.live() == []


def test_unreachable_api_is_a_deployment_error():
    from kubernetes import client

    cfg = client.Configuration(host="http://127.0.0.1:9")
    cfg.retries = 0
    api = client.ApiClient(cfg)
    with pytest.raises(DeploymentError, match="unreachable"):
        KubernetesRunner(api_client=api, mode="plain", endpoint_factory=_ProbeRunner).measure(_probe())
    with pytest.raises(DeploymentError, match="unreachable"):  # CRD lookup and node listing too
        KubernetesRunner(api_client=api).measure_many([_probe()])


def test_missing_client_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "kubernetes", None)
    with pytest.raises(MeasurementError, match=r"sla-estimate\[k8s\]"):
        KubernetesRunner(mode="plain").cluster_gpus()


def test_bad_mode():
    with pytest.raises(SpecError, match="mode"):
        KubernetesRunner(mode="helm")


@pytest.mark.parametrize(
    "backend,cand",
    [("vllm", Candidate(Mapping.DEP, 8)), ("sglang", Candidate(Mapping.TEP, 4)), ("sglang", TP1)],
)
def test_runner_manifests_pass_the_schema(backend, cand):
    from kubernetes import client

    dep, svc = plain_manifests(
        name="sla-x",
        namespace="bench",
        backend=backend,
        model="M",
        candidate=cand,
        image=None,
        prefix_caching=True,
        extra_args=("--max-model-len", "4096"),
        hf_token_secret="hf-token-secret",
    )
    for obj in (dep, svc):
        _validate(obj)
    client.V1Deployment.from_dict(dep), client.V1Service.from_dict(svc)
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-2:] == ["--max-model-len", "4096"]
    graph = measurement_graph(
        name="sla-x",
        namespace="bench",
        backend=backend,
        model="M",
        candidate=cand,
        image=None,
        prefix_caching=True,
    )
    assert graph["metadata"]["namespace"] == "bench" and len(graph["spec"]["services"]) == 2
    for svc in graph["spec"]["services"].values():  # the pod parts a DGD embeds, checked as a real Pod
        main = {"name": "main", **svc["extraPodSpec"]["mainContainer"]}
        _validate(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": [main]}}
        )
    worker = next(s for s in graph["spec"]["services"].values() if s["componentType"] == "worker")
    assert worker["resources"] == {"limits": {"gpu": str(cand.num_gpus)}}


def test_plain_engine_must_fit_one_node():
    with pytest.raises(DeploymentError, match="one node"):
        plain_manifests(
            name="x",
            namespace="n",
            backend="vllm",
            model="M",
            candidate=Candidate(Mapping.TP, 16),
            image=None,
            prefix_caching=True,
        )


class _Recorder(Runner):
    """Injected endpoint that records its base URL and measures nothing over the network."""

    urls: list[str] = []

    def __init__(self, base_url: str):
        self.urls.append(base_url)

    def measure(self, probe: Probe) -> Measurement:
        return Measurement(probe=probe, runner="recorder", ttft_ms=1.0)


@pytest.mark.parametrize("dynamo,service_suffix", [(False, ""), (True, "-frontend")])
def test_base_url_template_skips_the_port_forward(cluster, dynamo, service_suffix):
    cluster.dynamo_crd = dynamo
    _Recorder.urls = []
    template = "http://{service}.{namespace}.svc.cluster.local:8000"
    with _runner(cluster, endpoint_factory=_Recorder, base_url=template) as runner:
        runner.measure(_probe())
    (name,) = {k[2] for k in cluster.created if k[0] in ("deployments", "dynamographdeployments")}
    assert _Recorder.urls == [f"http://{name}{service_suffix}.bench.svc.cluster.local:8000"]
    assert cluster.forwarded == [] and cluster.live() == []


def test_interrupt_in_a_parallel_wave_cancels_and_deletes(cluster):
    class Interrupting(_ProbeRunner):
        def measure(self, probe):
            if probe.candidate == TP1:
                raise KeyboardInterrupt
            return super().measure(probe)

    cluster.node_gpus = (8,)
    probes = [_probe(cand=TP1), _probe(cand=TP2), _probe(ProbeKind.DECODE, cand=TP2)]
    with pytest.raises(KeyboardInterrupt):
        with _runner(cluster, endpoint_factory=Interrupting) as runner:
            runner.measure_many(probes)
    assert cluster.max_live["deployments"] >= 2  # the wave did run side by side
    assert cluster.live() == []


@pytest.mark.engine
def test_real_vllm_server_measured_through_the_port_forward(vllm_url):
    """The stand-in forwards the pod's port to the session's real vLLM CPU server (tests/engine_server.py)."""
    from urllib.parse import urlsplit

    from engine_server import KV_CAPACITY_TOKENS

    target = urlsplit(vllm_url)
    cluster = StandIn(forward_to=(target.hostname, target.port))
    cluster.start()
    stack = Stack("tiny-llama", "h100_sxm", "vllm")  # the session server's served name (engine_server.py)
    try:
        with _runner(cluster, request_timeout_s=60) as runner:
            prefill = runner.measure(Probe(ProbeKind.PREFILL, stack, TP1, isl=256, repeats=2))
            # osl 64: a decode window (~0.2 s) long against the tunnel's relay jitter under load; with
            # 16 tokens (~40 ms) a relay hop delayed by the loaded CI cores batched the first tokens and
            # the server cross-check (rightly) refused the client's ITL as 5x too fast; a record it still
            # flags must be complete and carry this runner's label
            try:
                decode = runner.measure(
                    Probe(ProbeKind.DECODE, stack, TP1, isl=128, osl=64, concurrency=4, repeats=1)
                )
            except ImplausibleMeasurement as exc:  # flagged twice: the record kept aside, labelled k8s
                assert exc.measurement.extra["server_check"]["ok"] is False
                decode = exc.measurement
    finally:
        cluster.stop()
    assert prefill.runner == decode.runner == "k8s"
    assert prefill.extra["prompt_tokens"] == 256 and 0 < prefill.ttft_ms < 60_000
    assert decode.itl_ms > 0 and decode.thpt_per_gpu > 0
    assert decode.kv_capacity_tokens == KV_CAPACITY_TOKENS  # read from /metrics through the tunnel
    assert cluster.forwarded and cluster.live() == []


def test_a_client_hanging_up_mid_response_leaves_the_proxy_thread_clean(cluster, monkeypatch):
    """Our end of the pod stream closed with unread data used to kill the kubernetes client's proxy
    thread (ConnectionResetError, BrokenPipeError); httpx hangs up like this after an SSE [DONE]."""
    import socket
    import time
    from urllib.parse import urlsplit

    from validate.runners.k8s_objects import PortForward

    errors: list = []
    monkeypatch.setattr(threading, "excepthook", errors.append)
    before = set(threading.enumerate())
    forward = PortForward(cluster.api_client().configuration, "bench", "pod-0", 8000)
    url = urlsplit(forward.start())
    try:
        for _ in range(3):
            with socket.create_connection((url.hostname, url.port)) as conn:
                conn.sendall(b"GET /big HTTP/1.1\r\nHost: pod\r\n\r\n")
                assert conn.recv(64).startswith(b"HTTP/1.1 200")
                time.sleep(0.3)  # the proxy fills the tunnel's buffers and blocks in send: then we hang up
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # the proxy threads end once their stream is closed
            proxies = [t for t in set(threading.enumerate()) - before if t.name.startswith("Kubernetes port")]
            if len(cluster.forwarded) == 3 and not proxies:
                break
            time.sleep(0.05)
    finally:
        forward.close()
    assert len(cluster.forwarded) == 3 and not proxies
    assert [e.exc_value for e in errors] == []


def test_capabilities_plain_deployments_fit_on_one_node_dynamo_spans_nodes():
    plain = KubernetesRunner(mode="plain", gpus_per_node=8)
    probe16 = _probe(cand=Candidate(Mapping.TP, 16))
    assert "at most 8 GPUs" in plain.can_measure(probe16) and plain.can_measure(_probe()) is None
    assert KubernetesRunner(mode="dynamo").can_measure(probe16) is None
