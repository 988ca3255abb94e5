"""EndpointRunner: against the real vLLM CPU server (``engine``), and its failure paths.

Failure paths that a healthy vLLM will not produce on demand (a stream cut mid-way, HTTP 500, a
stalled stream) use ``SseStandIn``: a real HTTP server on loopback that streams SSE chunks and then
misbehaves as told. The HTTP 400 case and every successful measurement use the real server.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from engine_server import KV_CAPACITY_TOKENS
from sse_standin import SseStandIn

from estimator.candidates import Candidate, Mapping
from estimator.errors import (
    BadResponse,
    EndpointTimeout,
    ImplausibleMeasurement,
    ProbeNotSupported,
    SpecError,
)
from estimator.measurements import Measurement, Probe, ProbeKind
from estimator.sources.base import Stack
from validate.runners.endpoint import EndpointRunner
from validate.runners.metrics import parse_metrics, parse_prometheus
from validate.runners.prompts import exact_text_prompt
from validate.runners.server_check import server_check

STACK = Stack("tiny-llama", "cpu", "vllm")
TP1 = Candidate(Mapping.TP, 1)


def probe(kind: ProbeKind, isl: int, osl: int = 1, concurrency: int = 1, repeats: int = 2) -> Probe:
    return Probe(kind, STACK, TP1, isl=isl, osl=osl, concurrency=concurrency, repeats=repeats)


def standin_runner(url: str, **kw) -> EndpointRunner:
    kw.setdefault("candidate", "TP1")
    return EndpointRunner(url, model="standin", tokenizer="token_ids", warmup=0, **kw)


def test_stream_cut_midway_is_bad_response_with_partial_results():
    with SseStandIn(["ok", "drop"]) as srv, pytest.raises(BadResponse) as info:
        standin_runner(srv.url, timeout_s=10).measure(probe(ProbeKind.PREFILL, isl=16, repeats=3))
    exc = info.value
    assert "stream broken after 1 of 2 tokens" in str(exc) and exc.tokens_received == 1
    assert len(exc.partial["ttft_ms"]) == 1  # the first repetition finished and is kept
    assert exc.probe.kind is ProbeKind.PREFILL


def test_a_stream_left_open_after_done_costs_only_the_drain_timeout():
    """The runner reads past [DONE] so the connection can be reused; a server that never ends the body
    must not turn a complete answer into a timeout: after ``DRAIN_TIMEOUT_S`` it is dropped, as before."""
    import time

    from validate.runners.stream import DRAIN_TIMEOUT_S

    with SseStandIn(["linger", "linger"]) as srv:
        t0 = time.perf_counter()
        m = standin_runner(srv.url, timeout_s=30).measure(probe(ProbeKind.PREFILL, isl=16, repeats=2))
        elapsed = time.perf_counter() - t0
    assert len(m.samples["ttft_ms"]) == 2 and m.ttft_ms < 1000 * DRAIN_TIMEOUT_S  # timing ends at [DONE]
    assert 2 * DRAIN_TIMEOUT_S <= elapsed < 2 * DRAIN_TIMEOUT_S + 10


def test_decode_stream_cut_reports_tokens_received():
    with SseStandIn(["ok", "drop"]) as srv, pytest.raises(BadResponse) as info:
        standin_runner(srv.url, timeout_s=10).measure(probe(ProbeKind.DECODE, isl=16, osl=20, repeats=1))
    assert info.value.tokens_received == 10
    assert "10 of 20 tokens" in str(info.value)


def test_http_500_is_bad_response_with_status_and_body():
    with SseStandIn(["500"]) as srv, pytest.raises(BadResponse) as info:
        standin_runner(srv.url, timeout_s=10).measure(probe(ProbeKind.PREFILL, isl=16, repeats=1))
    assert info.value.status_code == 500
    assert "engine crashed" in info.value.body


def test_stalled_stream_times_out():
    with SseStandIn(["stall"]) as srv, pytest.raises(EndpointTimeout) as info:
        standin_runner(srv.url, timeout_s=1).measure(probe(ProbeKind.PREFILL, isl=16, repeats=1))
    assert info.value.tokens_received == 1


def test_connection_refused_is_bad_response():
    with SseStandIn([]) as srv:
        url = srv.url
    with pytest.raises(BadResponse, match="cannot connect"):
        standin_runner(url, timeout_s=2).measure(probe(ProbeKind.PREFILL, isl=16, repeats=1))


def test_bad_arguments_are_spec_errors():
    with pytest.raises(SpecError):
        EndpointRunner("http://127.0.0.1:1", api="responses")
    with pytest.raises(SpecError):
        EndpointRunner("http://127.0.0.1:1", tokenizer="guess")
    with pytest.raises(SpecError, match="osl >= 2"):
        EndpointRunner("http://127.0.0.1:1").measure(probe(ProbeKind.DECODE, isl=16, osl=1))


# ---- pure helpers -------------------------------------------------------------------------------------
VLLM_METRICS = """\
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:num_preemptions_total{engine="0",model_name="m"} 3.0
vllm:cache_config_info{block_size="128",cache_dtype="auto",engine="0",num_gpu_blocks="64",num_gpu_blocks_override="64"} 1.0
vllm:inter_token_latency_seconds_sum{engine="0",model_name="m"} 0.5
vllm:inter_token_latency_seconds_count{engine="0",model_name="m"} 100.0
"""


def test_metrics_vllm_sglang_trtllm_and_missing():
    m = parse_metrics(VLLM_METRICS)
    assert (m.kv_capacity_tokens, m.kv_usage_frac, m.num_preemptions, m.warnings) == (8192, 0.25, 3.0, [])
    assert parse_metrics('sglang:max_total_num_tokens{name="m"} 123456\n').kv_capacity_tokens == 123456
    trt = json.dumps([{"kvCacheStats": {"maxNumBlocks": 100, "tokensPerBlock": 32, "usedNumBlocks": 10}}])
    assert parse_metrics(trt).kv_capacity_tokens == 3200
    missing = parse_metrics("# nothing here\nfoo 1\n")
    assert missing.kv_capacity_tokens is None and missing.warnings
    assert parse_prometheus('a{x="q\\"uote"} 2')[0].labels == {"x": 'q"uote'}


def test_exact_text_prompt_with_a_word_tokenizer():
    def count(text: str) -> int:  # word pieces of at most 3 letters, punctuation separate
        return sum(len(w) // 3 + 1 for w in re.findall(r"\w+", text)) + len(re.findall(r"[^\w\s]", text))

    async def counted(text: str) -> int:
        return count(text)

    for n in (1, 2, 5, 64, 1000):
        text = asyncio.run(exact_text_prompt(counted, n, seed=n))
        assert count(text) == n
    assert asyncio.run(exact_text_prompt(counted, 64, seed=1)) != asyncio.run(
        exact_text_prompt(counted, 64, seed=2)
    )


def test_exact_text_prompt_gives_up_clearly():
    async def always_even(text: str) -> int:
        return 2 * len(text.split())

    with pytest.raises(BadResponse, match="exactly 7 tokens"):
        asyncio.run(exact_text_prompt(always_even, 7, seed=0))


# ---- the real vLLM server -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runner(vllm_url: str) -> EndpointRunner:
    return EndpointRunner(vllm_url, timeout_s=60)


@pytest.mark.engine
def test_prefill_probe_real_server(runner: EndpointRunner):
    m = runner.measure(probe(ProbeKind.PREFILL, isl=500, repeats=3))
    assert m.runner == "endpoint" and m.extra["prompt_tokens"] == 500
    assert len(m.samples["ttft_ms"]) == 3 and all(t > 0 for t in m.samples["ttft_ms"])
    assert m.ttft_ms > 0 and m.ttft_std_ms >= 0
    assert m.thpt_per_gpu == pytest.approx(500 / m.ttft_ms * 1000)
    assert m.kv_capacity_tokens == KV_CAPACITY_TOKENS
    assert m.extra["tokenizer_strategy"] == "tokenize" and m.extra["warnings"] == []
    assert m.software["server_version"] == "0.32.0"
    assert m.extra["server_ttft_ms"] > 0 and m.extra["server_check"]["ok"] is True


@pytest.mark.engine
def test_decode_probe_real_server(runner: EndpointRunner):
    p = probe(ProbeKind.DECODE, isl=300, osl=48, concurrency=4, repeats=2)
    try:
        m = runner.measure(p)
    except ImplausibleMeasurement as exc:
        # the CPU server's frontend, starved of CPU, can deliver a stream in bursts: then the client's ITL
        # is far below the engine's, twice, and the record must come flagged (benchmarks/server_check_agreement.py)
        check = exc.measurement.extra["server_check"]
        assert check["ok"] is False and check["first_attempt"]["ok"] is False
        assert check["itl_ms"]["ok"] is False and exc.measurement.probe == p
        pytest.skip(f"the server delivered the stream in bursts twice: {exc}")
    assert m.extra["prompt_tokens"] == 300 and m.extra["warnings"] == []
    assert len(m.samples["itl_ms"]) == 2 and m.itl_ms > 0 and m.itl_std_ms >= 0 and m.thpt_per_gpu > 0
    assert m.extra["num_preemptions"] == 0
    # the server's own inter-token histogram over the same waves agrees within the stated tolerance
    assert m.extra["server_itl_ms"] > 0 and m.extra["server_check"]["itl_ms"]["ok"] is True
    assert m.kv_capacity_tokens == KV_CAPACITY_TOKENS


@pytest.mark.engine
def test_real_server_says_which_engine_it_runs(runner: EndpointRunner):
    caps = runner.capabilities()  # /server_info (VLLM_SERVER_DEV_MODE=1, engine_server.ENGINE_ENV)
    assert [c.name for c in caps.candidates] == ["TP1"] and "tensor_parallel_size 1" in caps.why
    with pytest.raises(ProbeNotSupported, match="not TP2"):
        runner.measure(Probe(ProbeKind.PREFILL, STACK, Candidate(Mapping.TP, 2), isl=16))


def flagged_or_measured(runner, p: Probe) -> Measurement:
    """The measurement, or the record the server cross-check kept aside (flagged as such)."""
    try:
        return runner.measure(p)
    except ImplausibleMeasurement as exc:
        assert exc.measurement.extra["server_check"]["ok"] is False
        return exc.measurement


@pytest.mark.engine
def test_agg_probe_real_server(runner: EndpointRunner):
    # 64 output tokens: the client's TPOT window (~0.1 s) stays long against the CPU server flushing a burst
    # of tokens at once when its API process is starved; if the server cross-check still flags it (twice),
    # the record kept aside must be just as complete (as in tests/test_runners_common.py)
    m = flagged_or_measured(runner, probe(ProbeKind.AGG, isl=200, osl=64, concurrency=3, repeats=2))
    assert len(m.samples["ttft_ms"]) == 6 and len(m.samples["tpot_ms"]) == 6
    assert m.ttft_ms > 0 and m.tpot_ms > 0 and m.thpt_per_gpu > 0
    assert m.extra["prompt_tokens"] == 200


@pytest.mark.engine
@pytest.mark.parametrize("strategy", ["tokenize", "token_ids", "usage"])
def test_exact_prompt_lengths_real_server(vllm_url: str, strategy: str):
    r = EndpointRunner(vllm_url, tokenizer=strategy, warmup=0, repeats=1)
    for isl in (1, 3, 17, 129):
        m = r.measure(probe(ProbeKind.PREFILL, isl=isl, repeats=1))
        assert m.extra["prompt_tokens"] == isl, (strategy, isl, m.extra)


@pytest.mark.engine
def test_over_long_prompt_is_http_400_from_real_server(vllm_url: str):
    r = EndpointRunner(vllm_url, tokenizer="token_ids", warmup=0)
    with pytest.raises(BadResponse) as info:
        r.measure(probe(ProbeKind.PREFILL, isl=5000, repeats=1))
    assert info.value.status_code == 400 and "maximum context length" in info.value.body


# ---- which engine it measures ---------------------------------------------------------------------------
def test_endpoint_refuses_a_probe_for_another_engine_and_sends_nothing():
    with SseStandIn() as srv:
        r = standin_runner(srv.url, candidate="TP2")
        with pytest.raises(ProbeNotSupported, match="runs TP2 .*candidate=TP2.*, not TP1"):
            r.measure(probe(ProbeKind.PREFILL, isl=16))
        assert srv.requests == 0  # refused before anything was measured: no mislabelled record
        m = r.measure(Probe(ProbeKind.PREFILL, STACK, Candidate(Mapping.TP, 2), isl=16, repeats=2))
    assert m.probe.candidate.name == "TP2"


def test_endpoint_with_no_known_engine_refuses_every_probe():
    with SseStandIn() as srv:  # answers /server_info with 404, as vLLM without dev mode
        r = standin_runner(srv.url, candidate=None)
        reason = r.can_measure(probe(ProbeKind.PREFILL, isl=16))
        with pytest.raises(ProbeNotSupported):
            r.measure(probe(ProbeKind.PREFILL, isl=16))
        assert srv.requests == 0
    assert "candidate=TP2" in reason and "HTTP 404" in reason


@pytest.mark.parametrize(
    "parallel, engine",
    [
        ({"tensor_parallel_size": 4}, "TP4"),
        ({"tensor_parallel_size": 8, "enable_expert_parallel": True}, "TEP8"),
        ({"tensor_parallel_size": 1, "data_parallel_size": 8, "enable_expert_parallel": True}, "DEP8"),
    ],
)
def test_endpoint_reads_its_engine_from_server_info(parallel, engine):
    with SseStandIn(parallel=parallel) as srv:
        caps = standin_runner(srv.url, candidate=None).capabilities()
    assert [c.name for c in caps.candidates] == [engine] and "server_info" in caps.why


def test_endpoint_refuses_everything_when_user_and_server_disagree():
    with SseStandIn(parallel={"tensor_parallel_size": 4}) as srv:
        r = standin_runner(srv.url, candidate="TP2")
        reasons = [
            r.can_measure(Probe(ProbeKind.PREFILL, STACK, Candidate(Mapping.TP, n), isl=16)) for n in (2, 4)
        ]
    assert all(reasons) and "server reports TP4" in reasons[0]


def test_bad_candidate_option_is_a_spec_error():
    with pytest.raises(SpecError, match="runner_options.candidate"):
        EndpointRunner("http://127.0.0.1:1", candidate="TPX")


# ---- cross-check with the server's own numbers ------------------------------------------------------------
def test_agreeing_server_numbers_are_recorded_as_checked():
    with SseStandIn(token_delay_s=0.004) as srv:
        m = standin_runner(srv.url).measure(probe(ProbeKind.DECODE, isl=16, osl=12, concurrency=2))
    check = m.extra["server_check"]
    assert check["ok"] is True and check["itl_ms"]["server"] == m.extra["server_itl_ms"]
    assert m.extra["server_itl_ms"] > 2.0  # the stand-in's own clock saw its 4 ms token delay


def test_the_issues_example_is_a_disagreement():
    """An endpoint decode probe stored ITL 0.015 ms while the server's own metric said 1.0 ms (issue 11)."""
    check = server_check(ProbeKind.DECODE, {"itl_ms": 0.015}, {"server_itl_ms": 1.0})
    assert check["ok"] is False and check["itl_ms"]["ok"] is False
    assert server_check(ProbeKind.DECODE, {"itl_ms": 0.9}, {"server_itl_ms": 1.0})["ok"] is True
    assert server_check(ProbeKind.DECODE, {"itl_ms": 4.0}, {"server_itl_ms": 1.0})["ok"] is False
    # TTFT one way: the client may see the first token later than the engine sent it, never earlier
    assert server_check(ProbeKind.PREFILL, {"ttft_ms": 90.0}, {"server_ttft_ms": 10.0})["ok"] is True
    assert server_check(ProbeKind.PREFILL, {"ttft_ms": 2.0}, {"server_ttft_ms": 10.0})["ok"] is False
    assert server_check(ProbeKind.PREFILL, {"ttft_ms": 2.0}, {})["ok"] is None  # nothing to check against


def test_itl_far_below_the_servers_is_measured_again_then_raised_with_the_flagged_record():
    # all tokens in one burst: the client sees ~0 ms between tokens, the server says 50 ms
    with SseStandIn(burst=True, server_itl_ms=50.0) as srv:
        r = standin_runner(srv.url)
        with pytest.raises(ImplausibleMeasurement, match=r"itl_ms [0-9.]+ vs the server's 50.000") as info:
            r.measure(probe(ProbeKind.DECODE, isl=16, osl=40, concurrency=1, repeats=2))
        assert srv.requests == 2 * (1 + 2)  # two attempts of a prefix-cache warm-up wave and two waves
    flagged = info.value.measurement
    assert flagged.extra["server_check"]["ok"] is False
    assert flagged.extra["server_check"]["first_attempt"]["ok"] is False
    assert flagged.itl_ms < 50.0 / 3 and flagged.extra["server_itl_ms"] == pytest.approx(50.0)


def test_run_plan_keeps_implausible_records_aside(tmp_path):
    from estimator.measurements import MeasurementStore
    from validate.run import rejected_store, run_plan

    store = MeasurementStore(tmp_path / "m.jsonl")
    with SseStandIn(burst=True, server_itl_ms=50.0) as srv:
        res = run_plan([probe(ProbeKind.DECODE, isl=16, osl=40, repeats=1)], standin_runner(srv.url), store)
    assert store.load() == [] and len(res.failures) == 1 and "disagrees" in res.failures[0][1]
    (kept,) = rejected_store(store).load()
    assert kept.extra["server_check"]["ok"] is False and kept.probe.osl == 40


# ---- which model the server runs ---------------------------------------------------------------------
QWEN = Stack("Qwen/Qwen3-32B", "cpu", "vllm")


def test_a_probe_of_another_model_than_the_one_given_is_refused_before_any_request():
    with SseStandIn() as srv:
        r = standin_runner(srv.url, serves="Qwen/Qwen3-32B", timeout_s=10)
        reason = r.can_measure(probe(ProbeKind.PREFILL, isl=16))
        assert "Qwen/Qwen3-32B" in reason and "tiny-llama" in reason and "serves=" in reason
        with pytest.raises(ProbeNotSupported):
            r.measure(probe(ProbeKind.PREFILL, isl=16))
        assert srv.requests == 0  # refused before it asked the server anything
        qwen = Probe(ProbeKind.PREFILL, Stack("/models/qwen3-32b/", "cpu", "vllm"), TP1, isl=16)
        assert r.can_measure(qwen) is None  # the same model named by a path


def test_a_server_that_lists_no_model_is_measured_unchecked_and_says_so(caplog):
    with SseStandIn() as srv:  # no /v1/models
        r = standin_runner(srv.url, timeout_s=10)
        assert r.capabilities().models is None
        assert r.can_measure(Probe(ProbeKind.PREFILL, QWEN, TP1, isl=16)) is None
        assert "does not say which model it serves" in caplog.text and "serves=MODEL" in caplog.text


@pytest.mark.engine
def test_the_real_server_names_its_model_and_refuses_another(vllm_url: str, tiny_model_dir):
    r = EndpointRunner(vllm_url, timeout_s=60)
    assert {"tiny-llama", str(tiny_model_dir)} <= set(r.capabilities().models)  # served name and root
    assert r.can_measure(probe(ProbeKind.PREFILL, isl=16)) is None
    by_path = Stack(str(tiny_model_dir), "cpu", "vllm")  # the same model named by its directory (the root)
    assert r.can_measure(Probe(ProbeKind.PREFILL, by_path, TP1, isl=16)) is None
    reason = r.can_measure(Probe(ProbeKind.PREFILL, QWEN, TP1, isl=16))
    assert "Qwen/Qwen3-32B" in reason and "/v1/models" in reason
