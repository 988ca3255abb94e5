"""EndpointRunner: measure probes against a running OpenAI-compatible server (vLLM, SGLang, TRT-LLM).

Every request streams with exactly the output length asked for, timed per chunk (see ``stream.py``).
Prompts have an exact token count (see ``prompts.py``) and are unique per request, except in decode
probes, whose prompts are sent once to warm the prefix cache so that the measured waves skip prefill.
KV capacity comes from ``/metrics`` (``metrics.py``), never from logs.

Errors (classified in ``stream.py``): ``BadResponse`` or ``EndpointTimeout``. Each carries ``partial``:
the samples of the repetitions finished before the failure, and ``tokens_received`` of the failing request.
"""

from __future__ import annotations

import asyncio
import logging
import random
import statistics
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx

from estimator.errors import BadResponse, MeasurementError, SpecError

from ..measurement import Measurement, Probe, ProbeKind
from .base import Runner
from .metrics import EngineMetrics, parse_metrics
from .prompts import exact_text_prompt, random_token_ids
from .stream import BODY_EXCERPT_CHARS, RequestTiming, endpoint_error, request_json, stream_completion

log = logging.getLogger(__name__)

PREFILL_OSL = 2  # prefill probes need only the first token; the second confirms the stream goes on
TOKENIZER_STRATEGIES = ("auto", "tokenize", "token_ids", "usage")
METRICS_POLL_S = 0.5


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


class EndpointRunner(Runner):
    """Streams completions to ``base_url`` and turns their timings into Measurements.

    Parameters
    ----------
    base_url : server root, e.g. ``http://127.0.0.1:8000`` (no ``/v1``).
    model : served model name; None asks ``/v1/models`` and takes the first.
    timeout_s : longest wait for any data from the server before ``EndpointTimeout``.
    warmup : unmeasured requests (prefill, agg) or waves (decode prefix warm-up) before measuring.
    repeats : measured repetitions (prefill requests, decode waves, agg requests per client); None: probe's.
    tokenizer : how exact-length prompts are made: "tokenize" (server's /tokenize), "token_ids" (token-id
        prompts), "usage" (count via usage.prompt_tokens of 1-token completions), "auto" (first that works).
    vllm_extensions : send vLLM's ``return_token_ids`` for exact per-chunk token counts.
    """

    name: ClassVar[str] = "endpoint"

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        timeout_s: float = 60.0,
        warmup: int = 1,
        repeats: int | None = None,
        api: str = "completions",
        tokenizer: str = "auto",
        vllm_extensions: bool = True,
        token_id_range: tuple[int, int] = (100, 1000),
    ):
        if api != "completions":
            raise SpecError("api", f"only 'completions' is supported, got {api!r}")
        if tokenizer not in TOKENIZER_STRATEGIES:
            raise SpecError("tokenizer", f"{tokenizer!r} is not one of {TOKENIZER_STRATEGIES}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self.warmup = warmup
        self.repeats = repeats
        self.api = api
        self.tokenizer = tokenizer
        self.vllm_extensions = vllm_extensions
        self.token_id_range = token_id_range
        # fresh prompts per runner instance, so that no run hits the prefix cache of an earlier one
        self._seed = random.SystemRandom().getrandbits(40)
        self.kv_capacity_tokens_: int | None = None
        self.tokenizer_: str | None = None
        self.model_: str | None = model
        self.software_: dict[str, str] = {}

    # ---- public -------------------------------------------------------------------------------
    def measure(self, probe: Probe) -> Measurement:
        if probe.isl < 1 or probe.osl < 1 or probe.concurrency < 1:
            raise SpecError("probe", f"isl, osl and concurrency must be >= 1 (got {probe.to_dict()})")
        if probe.kind is not ProbeKind.PREFILL and probe.osl < 2:
            raise SpecError(
                "probe", f"{probe.kind.value} probes need osl >= 2 to time tokens after the first"
            )
        return asyncio.run(self._measure(probe))

    # ---- orchestration ------------------------------------------------------------------------
    async def _measure(self, probe: Probe) -> Measurement:
        samples: dict[str, list[float]] = {}
        timeout = httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s))
        limits = httpx.Limits(
            max_connections=probe.concurrency + 4, max_keepalive_connections=probe.concurrency + 4
        )
        try:
            async with httpx.AsyncClient(base_url=self.base_url, timeout=timeout, limits=limits) as client:
                await self._discover(client)
                before = await self._metrics(client)
                warnings = list(before.warnings)
                if self.kv_capacity_tokens_ is None:
                    self.kv_capacity_tokens_ = before.kv_capacity_tokens
                run = {
                    ProbeKind.PREFILL: self._prefill,
                    ProbeKind.DECODE: self._decode,
                    ProbeKind.AGG: self._agg,
                }
                fields, extra = await run[probe.kind](client, probe, samples)
        except MeasurementError as exc:
            exc.probe = probe
            exc.partial = samples  # repetitions finished before the failure
            raise
        prompt_tokens = extra.pop("_prompt_tokens")
        counted = sorted({n for n in prompt_tokens if n is not None})
        if len(counted) < len(set(prompt_tokens)) or not counted:
            warnings.append("server did not report the prompt length of every request")
        if any(n != probe.isl for n in counted):
            warnings.append(f"server counted prompt lengths {counted}, asked {probe.isl}")
        extra.update(
            prompt_tokens=prompt_tokens[0] if len(set(prompt_tokens)) == 1 else prompt_tokens,
            tokenizer_strategy=self.tokenizer_,
            warnings=warnings + extra.pop("_warnings", []),
        )
        return Measurement(
            probe=probe,
            runner=self.name,
            kv_capacity_tokens=self.kv_capacity_tokens_,
            samples=samples,
            software=dict(self.software_),
            extra=extra,
            **fields,
        )

    async def _discover(self, client: httpx.AsyncClient) -> None:
        """Model name, server version and tokenizer strategy: asked once per runner."""
        if self.model_ is None:
            data = await self._request_json(client, "GET", "/v1/models")
            try:
                self.model_ = data["data"][0]["id"]
            except (KeyError, IndexError, TypeError) as exc:
                raise endpoint_error(
                    BadResponse, f"/v1/models lists no model: {str(data)[:BODY_EXCERPT_CHARS]}"
                ) from exc
        if not self.software_:
            self.software_ = {"base_url": self.base_url, "served_model": self.model_}
            try:
                version = (await client.get("/version")).json().get("version")
                if version:
                    self.software_["server_version"] = str(version)
            except (httpx.HTTPError, ValueError, AttributeError):
                pass
        if self.tokenizer_ is None:
            self.tokenizer_ = (
                self.tokenizer if self.tokenizer != "auto" else await self._pick_strategy(client)
            )
            log.info("%s: exact-length prompts via %s", self.base_url, self.tokenizer_)

    async def _pick_strategy(self, client: httpx.AsyncClient) -> str:
        try:
            r = await client.post("/tokenize", json={"model": self.model_, "prompt": "a b"})
            if r.status_code == 200 and "count" in r.json():
                return "tokenize"
            r = await client.post(
                "/v1/completions",
                json={"model": self.model_, "prompt": [self.token_id_range[0]] * 4, "max_tokens": 1},
            )
            if r.status_code == 200 and r.json().get("usage", {}).get("prompt_tokens") == 4:
                return "token_ids"
        except (httpx.HTTPError, ValueError) as exc:
            raise endpoint_error(BadResponse, f"cannot reach {self.base_url}: {exc}") from exc
        return "usage"

    # ---- prompts --------------------------------------------------------------------------------
    async def _prompts(self, client: httpx.AsyncClient, count: int, num_tokens: int) -> list[str | list[int]]:
        """``count`` unique prompts of exactly ``num_tokens`` tokens."""
        seeds = [self._seed + i for i in range(count)]
        self._seed += count
        if self.tokenizer_ == "token_ids":
            return [random_token_ids(random.Random(s), num_tokens, self.token_id_range) for s in seeds]
        counter = self._count_tokenize if self.tokenizer_ == "tokenize" else self._count_usage
        gate = asyncio.Semaphore(8)

        async def one(seed: int) -> str:
            async with gate:
                return await exact_text_prompt(lambda text: counter(client, text), num_tokens, seed)

        return list(await asyncio.gather(*(one(s) for s in seeds)))

    async def _count_tokenize(self, client: httpx.AsyncClient, text: str) -> int:
        answer = await self._request_json(client, "POST", "/tokenize", {"model": self.model_, "prompt": text})
        return int(answer["count"])

    async def _count_usage(self, client: httpx.AsyncClient, text: str) -> int:
        body = {"model": self.model_, "prompt": text, "max_tokens": 1}
        answer = await self._request_json(client, "POST", "/v1/completions", body)
        return int(answer["usage"]["prompt_tokens"])

    # ---- probes ---------------------------------------------------------------------------------
    def _repeats(self, probe: Probe) -> int:
        return max(1, self.repeats if self.repeats is not None else probe.repeats)

    async def _prefill(self, client, probe: Probe, samples: dict) -> tuple[dict, dict]:
        """Batch-1 TTFT of unique ISL-token prompts, one request at a time."""
        prompts = await self._prompts(client, self.warmup + self._repeats(probe), probe.isl)
        for prompt in prompts[: self.warmup]:
            await self._stream(client, prompt, PREFILL_OSL)
        timings = []
        for prompt in prompts[self.warmup :]:
            timings.append(await self._stream(client, prompt, PREFILL_OSL))
            samples.setdefault("ttft_ms", []).append(timings[-1].ttft_ms)
        ttft_ms, ttft_std_ms = _mean_std(samples["ttft_ms"])
        cand = probe.candidate
        thpt = probe.isl / ttft_ms * 1000 / cand.num_gpus * cand.attention_dp_size
        return (
            {"ttft_ms": ttft_ms, "ttft_std_ms": ttft_std_ms, "thpt_per_gpu": thpt},
            {"_prompt_tokens": [t.prompt_tokens for t in timings], "osl": PREFILL_OSL},
        )

    async def _decode(self, client, probe: Probe, samples: dict) -> tuple[dict, dict]:
        """Warm the prefix cache with the prompts, then waves of ``concurrency`` requests reusing them."""
        prompts = await self._prompts(client, probe.concurrency, probe.isl)
        for _ in range(max(1, self.warmup)):
            await self._wave(client, prompts, min(probe.osl, 16))
        before = await self._metrics(client)
        stats = _MetricsPeak()
        poller = asyncio.create_task(self._poll_metrics(client, stats))
        try:
            timings: list[RequestTiming] = []
            for _ in range(self._repeats(probe)):
                wave = await self._wave(client, prompts, probe.osl)
                timings += wave
                itls = [t.itl_ms for t in wave if t.itl_ms is not None]
                samples.setdefault("itl_ms", []).append(statistics.fmean(itls))
                samples.setdefault("ttft_ms", []).append(statistics.fmean(t.ttft_ms for t in wave))
                samples.setdefault("thpt_per_gpu", []).append(_output_rate(wave) / probe.candidate.num_gpus)
        finally:
            poller.cancel()
        after = await self._metrics(client)
        itl_ms, itl_std_ms = _mean_std(samples["itl_ms"])
        extra = _engine_extra(before, after, stats) | {
            "_prompt_tokens": [t.prompt_tokens for t in timings],
            "_warnings": _short_outputs(timings, probe.osl),
        }
        extra["ttft_prefix_cached_ms"] = statistics.fmean(samples["ttft_ms"])
        return (
            {
                "itl_ms": itl_ms,
                "itl_std_ms": itl_std_ms,
                "thpt_per_gpu": statistics.fmean(samples["thpt_per_gpu"]),
            },
            extra,
        )

    async def _agg(self, client, probe: Probe, samples: dict) -> tuple[dict, dict]:
        """``concurrency`` closed-loop clients, each sending ``repeats`` unique requests back to back."""
        per_client = self._repeats(probe)
        prompts = await self._prompts(client, self.warmup + probe.concurrency * per_client, probe.isl)
        for prompt in prompts[: self.warmup]:
            await self._stream(client, prompt, PREFILL_OSL)
        queues = [prompts[self.warmup + i :: probe.concurrency] for i in range(probe.concurrency)]
        timings: list[RequestTiming] = []
        before = await self._metrics(client)
        stats = _MetricsPeak()
        poller = asyncio.create_task(self._poll_metrics(client, stats))

        async def client_loop(queue: list) -> None:
            for prompt in queue:
                t = await self._stream(client, prompt, probe.osl)
                timings.append(t)
                samples.setdefault("ttft_ms", []).append(t.ttft_ms)
                if t.tpot_ms is not None:
                    samples.setdefault("tpot_ms", []).append(t.tpot_ms)

        try:
            await _gather_first_error(client_loop(q) for q in queues)
        finally:
            poller.cancel()
        after = await self._metrics(client)
        ttft_ms, ttft_std_ms = _mean_std(samples["ttft_ms"])
        tpot = samples.get("tpot_ms")
        extra = _engine_extra(before, after, stats) | {
            "_prompt_tokens": [t.prompt_tokens for t in timings],
            "_warnings": _short_outputs(timings, probe.osl),
        }
        return (
            {
                "ttft_ms": ttft_ms,
                "ttft_std_ms": ttft_std_ms,
                "tpot_ms": statistics.fmean(tpot) if tpot else None,
                "itl_ms": statistics.fmean(tpot) if tpot else None,
                "thpt_per_gpu": _output_rate(timings) / probe.candidate.num_gpus,
            },
            extra,
        )

    async def _wave(self, client, prompts: list, max_tokens: int) -> list[RequestTiming]:
        return await _gather_first_error(self._stream(client, p, max_tokens) for p in prompts)

    # ---- HTTP (stream.py) -----------------------------------------------------------------------
    async def _stream(
        self, client: httpx.AsyncClient, prompt: str | list[int], max_tokens: int
    ) -> RequestTiming:
        return await stream_completion(
            client,
            self.model_,
            prompt,
            max_tokens,
            return_token_ids=self.vllm_extensions,
            base_url=self.base_url,
            timeout_s=self.timeout_s,
        )

    async def _request_json(
        self, client: httpx.AsyncClient, method: str, path: str, body: dict | None = None
    ) -> Any:
        return await request_json(
            client, method, path, body, base_url=self.base_url, timeout_s=self.timeout_s
        )

    async def _metrics(self, client: httpx.AsyncClient) -> EngineMetrics:
        try:
            r = await client.get("/metrics")
        except httpx.HTTPError as exc:
            return EngineMetrics(warnings=[f"/metrics unreachable: {type(exc).__name__}"])
        if r.status_code != 200:
            return EngineMetrics(warnings=[f"/metrics answered HTTP {r.status_code}"])
        return parse_metrics(r.text)

    async def _poll_metrics(self, client: httpx.AsyncClient, peak: _MetricsPeak) -> None:
        while True:
            await asyncio.sleep(METRICS_POLL_S)
            m = await self._metrics(client)
            peak.kv_usage_frac = max(peak.kv_usage_frac or 0.0, m.kv_usage_frac or 0.0)
            peak.num_requests_running = max(peak.num_requests_running or 0.0, m.num_requests_running or 0.0)


@dataclass(slots=True)
class _MetricsPeak:
    kv_usage_frac: float | None = None
    num_requests_running: float | None = None


async def _gather_first_error(coros) -> list:
    """Run concurrently; wait for all, then raise the first failure (others finish or fail on their own)."""
    results = await asyncio.gather(*coros, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return list(results)


def _output_rate(timings: list[RequestTiming]) -> float:
    """Output tokens per second over the span from the first send to the last token."""
    span_s = max(t.t_last for t in timings) - min(t.t_start for t in timings)
    return sum(t.num_tokens for t in timings) / span_s


def _short_outputs(timings: list[RequestTiming], osl: int) -> list[str]:
    short = sum(1 for t in timings if t.num_tokens < osl)
    return [f"{short} of {len(timings)} requests returned fewer than {osl} tokens"] if short else []


def _engine_extra(before: EngineMetrics, after: EngineMetrics, peak: _MetricsPeak) -> dict[str, Any]:
    """Server-side view of the measured span: preemptions, peak KV usage, the server's own ITL."""
    extra: dict[str, Any] = {
        "kv_usage_peak_frac": peak.kv_usage_frac,
        "num_running_peak": peak.num_requests_running,
    }
    if before.num_preemptions is not None and after.num_preemptions is not None:
        extra["num_preemptions"] = after.num_preemptions - before.num_preemptions
    if None not in (
        before.itl_seconds_count,
        after.itl_seconds_count,
        before.itl_seconds_sum,
        after.itl_seconds_sum,
    ):
        n = after.itl_seconds_count - before.itl_seconds_count
        if n > 0:
            extra["server_itl_ms"] = (after.itl_seconds_sum - before.itl_seconds_sum) / n * 1e3
    return extra
