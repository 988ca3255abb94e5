"""One conformance suite, run against every runner (the Runner contract in ``validate/runners/base.py``).

Runners: replay (recorded points), endpoint on the stdlib stand-in server (``sse_standin.py``) and on the
real vLLM CPU server (``engine``), local (starts its own vLLM CPU server, ``engine``), k8s on the stand-in
API server (``k8s_standin.py``, which forwards to the SSE stand-in), gpu on its CPU path (tiny Llama).

Each runner: declares its capabilities; refuses a probe outside them with ``ProbeNotSupported`` (and
returns no record), a probe of another model too where it runs one model (all but k8s, which deploys
the probe's model); measures a supported probe into a Measurement labelled with that probe (candidate,
stack); values finite and positive; the spread consistent with the samples (``*_ms`` their mean,
``*_std_ms`` their sample standard deviation, None from one repetition); ``close()`` idempotent; the
context manager closes.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sse_standin import SseStandIn

from estimator.candidates import Candidate, Mapping
from estimator.errors import ImplausibleMeasurement, ProbeNotSupported
from estimator.measurements import Measurement, Probe, ProbeKind
from estimator.sources.base import Stack
from validate.runners.base import Capabilities, Runner

STACK = Stack("tiny-llama", "cpu", "vllm")
OTHER = Stack("Qwen/Qwen3-32B", "cpu", "vllm")  # a model none of the runners under test runs
TP1, TP2 = Candidate(Mapping.TP, 1), Candidate(Mapping.TP, 2)
TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "vocab_size": 256, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}  # fmt: skip


def prefill(cand: Candidate = TP1, stack: Stack = STACK, isl: int = 32) -> Probe:
    return Probe(ProbeKind.PREFILL, stack, cand, isl=isl, osl=1, repeats=3, reason="conformance")


def agg(cand: Candidate = TP1, stack: Stack = STACK) -> Probe:
    return Probe(ProbeKind.AGG, stack, cand, isl=32, osl=6, concurrency=2, repeats=2, reason="conformance")


def decode(cand: Candidate = TP1, stack: Stack = STACK, isl: int = 32, osl: int = 8, n: int = 2) -> Probe:
    return Probe(
        ProbeKind.DECODE, stack, cand, isl=isl, osl=osl, concurrency=n, repeats=2, reason="conformance"
    )


@dataclass
class Case:
    """One runner under test: the probes it must measure and one it must refuse."""

    runner: Runner
    supported: list[Probe]
    unsupported: Probe
    other_model: Probe | None = None  # a probe of a model the runner does not run (None: it runs any)
    after_close: Callable[[Runner], None] = lambda r: None
    measured: dict[str, Measurement] = field(default_factory=dict)
    cleanup: list[Callable[[], Any]] = field(default_factory=list)

    def measurement(self, probe: Probe) -> Measurement:
        """Measured once per case and probe (engine runs are slow). A record the runner flagged as
        implausible (the real vLLM CPU server's frontend can burst tokens when starved of CPU) is
        checked like any other: it is still a record of this probe."""
        if probe.key not in self.measured:
            try:
                self.measured[probe.key] = self.runner.measure(probe)
            except ImplausibleMeasurement as exc:
                assert exc.measurement.extra["server_check"]["ok"] is False
                self.measured[probe.key] = exc.measurement
        return self.measured[probe.key]


def _replay(request) -> Case:
    from validate.runners.replay import ReplayRunner

    p, d = prefill(), decode()
    ttft, itl = [10.0, 12.0, 11.0], [2.0, 2.2]
    records = [
        Measurement(p, "gpu", ttft_ms=statistics.fmean(ttft), ttft_std_ms=statistics.stdev(ttft),
                    thpt_per_gpu=32 / 11.0 * 1e3, samples={"ttft_ms": ttft}),
        Measurement(d, "gpu", itl_ms=statistics.fmean(itl), itl_std_ms=statistics.stdev(itl),
                    thpt_per_gpu=2 / 2.1 * 1e3, samples={"itl_ms": itl}),
    ]  # fmt: skip
    return Case(ReplayRunner(records), [p, d], prefill(Candidate(Mapping.TP, 4)), prefill(stack=OTHER))


def _endpoint_standin(request) -> Case:
    from validate.runners.endpoint import EndpointRunner

    srv = SseStandIn(token_delay_s=0.003).__enter__()
    # the stand-in lists no model at /v1/models: the user says which it serves
    runner = EndpointRunner(srv.url, model="standin", tokenizer="token_ids", warmup=0, candidate="TP1",
                            timeout_s=10, serves=STACK.model)  # fmt: skip
    case = Case(runner, [prefill(), decode(), agg()], prefill(TP2), prefill(stack=OTHER))
    case.cleanup.append(lambda: srv.__exit__(None, None, None))
    return case


def _endpoint_vllm(request) -> Case:
    from validate.runners.endpoint import EndpointRunner

    url = request.getfixturevalue("vllm_url")  # the server says it is TP1 (/server_info, dev mode)
    runner = EndpointRunner(url, timeout_s=60)  # and which model it serves (/v1/models)
    return Case(runner, [prefill(isl=200), decode(isl=100, osl=64)], decode(TP2), prefill(stack=OTHER))


def _local(request) -> Case:
    from engine_server import ENGINE_ENV, SERVER_ARGS, START_TIMEOUT_S, require_engine_python

    from validate.runners.local import LocalEngineRunner

    model_dir = request.getfixturevalue("tiny_model_dir")
    work = request.getfixturevalue("tmp_path_factory").mktemp("local-conformance")
    runner = LocalEngineRunner(str(model_dir), "vllm", python=str(require_engine_python()), extra_args=SERVER_ARGS,
                               env=ENGINE_ENV, work_dir=work, start_timeout_s=START_TIMEOUT_S, gpus=0)  # fmt: skip

    def stopped(r: Runner) -> None:
        assert r.process_ is None and not r.is_running()

    stack = Stack(str(model_dir), "cpu", "vllm")  # the model it starts
    return Case(runner, [prefill(isl=200, stack=stack), decode(isl=100, osl=64, stack=stack)],
                prefill(TP2, stack=stack), prefill(stack=OTHER), after_close=stopped)  # fmt: skip


def _k8s(request) -> Case:
    pytest.importorskip("kubernetes")
    from k8s_standin import StandIn

    from validate.runners.k8s import KubernetesRunner

    engine = SseStandIn(token_delay_s=0.003).__enter__()
    cluster = StandIn(forward_to=("127.0.0.1", engine.port))
    cluster.start()
    runner = KubernetesRunner(api_client=cluster.api_client(), namespace="bench", mode="plain",
                              poll_interval_s=0.005, request_timeout_s=10, gpus_per_node=8)  # fmt: skip

    def deleted(r: Runner) -> None:
        assert cluster.live() == []

    case = Case(runner, [prefill(), decode(), agg()], prefill(Candidate(Mapping.TP, 16)), after_close=deleted)
    case.cleanup += [cluster.stop, lambda: engine.__exit__(None, None, None)]
    return case


def _gpu_cpu_path(request) -> Case:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from validate.runners.torch_gpu import TorchGpuRunner

    model_dir = request.getfixturevalue("tmp_path_factory").mktemp("tiny-llama")
    (model_dir / "config.json").write_text(json.dumps(TINY_LLAMA))
    stack = Stack(str(model_dir), "cpu", "vllm")
    runner = TorchGpuRunner(str(model_dir), model_path=str(model_dir), device="cpu", dtype="float32",
                            use_cuda_graph=False, warmup_iters=1, min_iters=3)  # fmt: skip

    def unloaded(r: Runner) -> None:
        assert r._model is None

    supported = [prefill(stack=stack), decode(stack=stack, n=3)]
    return Case(runner, supported, prefill(TP2, stack=stack), prefill(stack=OTHER), after_close=unloaded)


CASES = {
    "replay": _replay,
    "endpoint-standin": _endpoint_standin,
    "endpoint-vllm": _endpoint_vllm,
    "local": _local,
    "k8s-standin": _k8s,
    "gpu-cpu": _gpu_cpu_path,
}
ENGINE = {"endpoint-vllm", "local"}


@pytest.fixture(
    scope="module",
    params=[pytest.param(n, marks=[pytest.mark.engine] if n in ENGINE else []) for n in CASES],
)
def case(request):
    c = CASES[request.param](request)
    yield c
    c.runner.close()
    for undo in c.cleanup:
        undo()


def test_declares_capabilities(case):
    caps = case.runner.capabilities()
    assert isinstance(caps, Capabilities)
    assert caps.kinds, "a runner that measures no kind of probe"
    for p in case.supported:
        assert case.runner.can_measure(p) is None, case.runner.can_measure(p)


def test_says_why_it_cannot_measure(case):
    reason = case.runner.can_measure(case.unsupported)
    assert isinstance(reason, str) and case.unsupported.candidate.name in reason


def test_refuses_an_unsupported_probe(case):
    with pytest.raises(ProbeNotSupported) as info:
        case.runner.measure(case.unsupported)
    assert info.value.probe == case.unsupported


def test_refuses_a_probe_of_another_model(case):
    if case.other_model is None:
        pytest.skip("this runner deploys the probe's model")
    reason = case.runner.can_measure(case.other_model)
    assert isinstance(reason, str) and case.other_model.stack.model in reason
    with pytest.raises(ProbeNotSupported):
        case.runner.measure(case.other_model)


def test_supported_probe_gives_a_measurement_labelled_with_it(case):
    for p in case.supported:
        m = case.measurement(p)
        assert isinstance(m, Measurement)
        assert (m.probe.candidate, m.probe.stack, m.probe.kind) == (p.candidate, p.stack, p.kind)
        assert m.probe.key == p.key and m.runner == case.runner.name


def test_values_are_finite_and_positive(case):
    for p in case.supported:
        m = case.measurement(p)
        main = m.ttft_ms if p.kind is ProbeKind.PREFILL else m.itl_ms
        assert main is not None, f"{p.kind.value} probe without its latency"
        for name in ("ttft_ms", "itl_ms", "tpot_ms", "thpt_per_gpu", "kv_capacity_tokens"):
            value = getattr(m, name)
            assert value is None or (math.isfinite(value) and value > 0), (name, value)


def test_spread_is_the_sample_deviation_of_the_repetitions(case):
    for p in case.supported:
        m = case.measurement(p)
        for name, std_name in (("ttft_ms", "ttft_std_ms"), ("itl_ms", "itl_std_ms")):
            sampled_as = (
                "tpot_ms" if p.kind is ProbeKind.AGG and name == "itl_ms" else name
            )  # agg: ITL = TPOT
            value, std, samples = getattr(m, name), getattr(m, std_name), m.samples.get(sampled_as)
            if value is None:
                continue
            assert samples, f"{name} without its repetitions in samples"
            assert len(samples) >= min(p.repeats, 2) and all(math.isfinite(s) and s > 0 for s in samples)
            assert value == pytest.approx(statistics.fmean(samples))
            if len(samples) > 1:
                assert std == pytest.approx(statistics.stdev(samples))
            else:
                assert std is None  # one repetition: its spread is unknown, not zero


def test_context_manager_closes_and_close_is_idempotent(case):
    runner = case.runner
    with runner as entered:
        assert entered is runner
        assert entered.measure(case.supported[0]).probe == case.supported[0]  # a prefill probe: TTFT only
    case.after_close(runner)
    runner.close()
    runner.close()
    case.after_close(runner)
