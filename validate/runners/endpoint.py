"""EndpointRunner: measure probes against a running OpenAI-compatible server (vLLM, SGLang, TRT-LLM).

Every request streams with exactly the output length asked for, timed per chunk (see ``stream.py``).
Prompts have an exact token count (see ``endpoint_server.py``, which also discovers the served model)
and are unique per request, except in decode probes, whose prompts are sent once to warm the prefix
cache so that the measured waves skip prefill. KV capacity comes from ``/metrics`` (``metrics.py``),
never from logs.

It measures one engine: the deployment at ``base_url``. Which candidate that is comes from the user
(runner option ``candidate=TP2``) or from the server where it says (vLLM's ``/server_info``); a probe
for any other candidate is refused with ``ProbeNotSupported``, and with neither source every probe is.
Which model it serves comes from the user (runner option ``serves=Qwen/Qwen3-32B``) or from
``/v1/models`` (each id and its root, compared by ``estimator.model.model_key``); a probe of another
model is refused, so a record is never labelled with a model the server does not run. A server that lists
no model cannot be checked: the runner says so once, in the log.
Each measurement is cross-checked with the server's own TTFT/ITL histograms (``server_check.py``): a
disagreement beyond the tolerance is measured once more, then raised as ``ImplausibleMeasurement``.

Errors (classified in ``stream.py``): ``BadResponse`` or ``EndpointTimeout``. Each carries ``partial``:
the samples of the repetitions finished before the failure, and ``tokens_received`` of the failing request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import statistics
from typing import ClassVar

import httpx

from estimator.candidates import Candidate
from estimator.errors import BadResponse, ImplausibleMeasurement, MeasurementError, SpecError
from estimator.measurements import Measurement, Probe, ProbeKind
from estimator.study_file import as_float, as_int

from .base import Capabilities, Runner
from .endpoint_server import (
    TOKENIZER_STRATEGIES,
    exact_prompts,
    listed_models,
    pick_tokenizer_strategy,
    served_model,
    server_candidate,
    server_software,
)
from .metrics import MetricsPeak, engine_extra, poll_metrics, scrape_metrics
from .server_check import describe, server_check
from .stream import RequestTiming, stream_completion

log = logging.getLogger(__name__)

PREFILL_OSL = 2  # prefill probes need only the first token; the second confirms the stream goes on
METRICS_POLL_S = 0.5
SERVER_INFO_TIMEOUT_S = 60.0  # vLLM's first /server_info collects its environment (pip, GPUs): seconds


def request_options(timeout_s: object, warmup: object, repeats: object) -> tuple[float, int, int | None]:
    """``timeout_s`` > 0, ``warmup`` >= 0 and ``repeats`` >= 1 (or None), checked when the runner is built:
    a negative one would only fail (or measure nothing) at the first request."""
    return (as_float("runner_options.timeout_s", timeout_s), as_int("runner_options.warmup", warmup, lo=0),
            None if repeats is None else as_int("runner_options.repeats", repeats))  # fmt: skip


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation of repetitions (None from one: its spread is unknown)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


class EndpointRunner(Runner):
    """Streams completions to ``base_url`` and turns their timings into Measurements.

    Parameters
    ----------
    base_url : server root, e.g. ``http://127.0.0.1:8000`` (no ``/v1``).
    candidate : the engine the server runs, e.g. ``"TP2"``; None: ask the server (vLLM ``/server_info``).
    model : served model name (what requests ask for); None asks ``/v1/models`` and takes the first.
    serves : the model the server runs, as the study names it (an id or a directory), where its served
        name says otherwise; None: the ids and roots of ``/v1/models``.
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
        candidate: str | Candidate | None = None,
        serves: str | None = None,
    ):
        if api != "completions":
            raise SpecError("api", f"only 'completions' is supported, got {api!r}")
        if tokenizer not in TOKENIZER_STRATEGIES:
            raise SpecError("tokenizer", f"{tokenizer!r} is not one of {TOKENIZER_STRATEGIES}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s, self.warmup, self.repeats = request_options(timeout_s, warmup, repeats)
        self.api = api
        self.tokenizer = tokenizer
        self.vllm_extensions = vllm_extensions
        self.token_id_range = token_id_range
        self.serves = serves or None
        try:
            self.candidate = Candidate.parse(candidate) if isinstance(candidate, str) else candidate
        except ValueError as exc:
            raise SpecError("runner_options.candidate", str(exc)) from None
        self._capabilities: Capabilities | None = None
        # fresh prompts per runner instance, so that no run hits the prefix cache of an earlier one
        self._seed = random.SystemRandom().getrandbits(40)
        self.kv_capacity_tokens_: int | None = None
        self.tokenizer_: str | None = None
        self.model_: str | None = model
        self.software_: dict[str, str] = {}

    # ---- public -------------------------------------------------------------------------------
    def capabilities(self) -> Capabilities:
        """Every probe kind, on the one engine this endpoint runs (asked of the server once it answers)."""
        if self._capabilities is not None:
            return self._capabilities
        kinds = frozenset(ProbeKind)
        reported, where, answered = server_candidate(self.base_url, SERVER_INFO_TIMEOUT_S)
        given = self.candidate
        if given is not None and reported is not None and given != reported:
            caps = Capabilities(kinds, frozenset(), why=f"runner option candidate={given.name}, "
                                f"but the server reports {reported.name} ({where})")  # fmt: skip
        elif given is not None:
            caps = Capabilities(kinds, frozenset({given}), why=f"runner option candidate={given.name}")
        elif reported is not None:
            caps = Capabilities(kinds, frozenset({reported}), why=f"reported by the server, {where}")
        else:
            caps = Capabilities(kinds, frozenset(), why=f"the server does not say which engine it runs "
                                f"({where}); give the runner option candidate=TP2 (or TEP8, DEP8)")  # fmt: skip
        models, models_why, listed = self._served_models()
        caps = dataclasses.replace(caps, models=models, models_why=models_why)
        if answered and listed:
            self._capabilities = caps
        return caps

    def _served_models(self) -> tuple[frozenset[str] | None, str, bool]:
        """(the models this server runs or None if it cannot tell, where that came from, answered)."""
        if self.serves:
            return frozenset({self.serves}), f"runner option serves={self.serves}", True
        names, where, answered = listed_models(self.base_url, SERVER_INFO_TIMEOUT_S)
        if names:
            hint = f"{where}; if that is this model under another name, give runner option serves=MODEL"
            return frozenset(names), hint, True
        if answered:
            log.warning("%s does not say which model it serves (%s): its records are labelled with the "
                        "study's model unchecked; give runner option serves=MODEL to check it",
                        self.base_url, where)  # fmt: skip
        return None, "", answered

    def measure(self, probe: Probe) -> Measurement:
        if probe.isl < 1 or probe.osl < 1 or probe.concurrency < 1:
            raise SpecError("probe", f"isl, osl and concurrency must be >= 1 (got {probe.to_dict()})")
        if probe.kind is not ProbeKind.PREFILL and probe.osl < 2:
            raise SpecError(
                "probe", f"{probe.kind.value} probes need osl >= 2 to time tokens after the first"
            )
        self.require(probe)
        first = asyncio.run(self._measure(probe))
        check = first.extra["server_check"]
        if check["ok"] is not False:
            return first
        log.warning("%s %s: %s; measuring once more", probe.kind.value, probe.candidate.name, describe(check))
        second = asyncio.run(self._measure(probe))
        second.extra["server_check"]["first_attempt"] = check
        if second.extra["server_check"]["ok"] is not False:
            return second
        raise ImplausibleMeasurement(
            f"{probe.kind.value} {probe.candidate.name} isl {probe.isl} concurrency {probe.concurrency} at "
            f"{self.base_url}: the client's timing disagrees with the server's own metrics twice: "
            f"{describe(second.extra['server_check'])}",
            probe,
            measurement=second,
        )

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
                before = await scrape_metrics(client)
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
            server_check=server_check(probe.kind, fields, extra),
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
            self.model_ = await served_model(client, base_url=self.base_url, timeout_s=self.timeout_s)
        if not self.software_:
            self.software_ = await server_software(client, base_url=self.base_url, model=self.model_)
        if self.tokenizer_ is None:
            self.tokenizer_ = (
                self.tokenizer
                if self.tokenizer != "auto"
                else await pick_tokenizer_strategy(
                    client, base_url=self.base_url, model=self.model_, token_id_range=self.token_id_range
                )
            )
            log.info("%s: exact-length prompts via %s", self.base_url, self.tokenizer_)

    async def _prompts(self, client: httpx.AsyncClient, count: int, num_tokens: int) -> list[str | list[int]]:
        """``count`` unique prompts of exactly ``num_tokens`` tokens (seeds never repeat in this runner)."""
        seeds = [self._seed + i for i in range(count)]
        self._seed += count
        return await exact_prompts(
            client,
            seeds,
            num_tokens,
            strategy=self.tokenizer_,
            model=self.model_,
            token_id_range=self.token_id_range,
            base_url=self.base_url,
            timeout_s=self.timeout_s,
        )

    # ---- probes ---------------------------------------------------------------------------------
    def _repeats(self, probe: Probe) -> int:
        return max(1, self.repeats if self.repeats is not None else probe.repeats)

    async def _prefill(self, client, probe: Probe, samples: dict) -> tuple[dict, dict]:
        """Batch-1 TTFT of unique ISL-token prompts, one request at a time."""
        prompts = await self._prompts(client, self.warmup + self._repeats(probe), probe.isl)
        for prompt in prompts[: self.warmup]:
            await self._stream(client, prompt, PREFILL_OSL)
        before = await scrape_metrics(client)
        timings = []
        for prompt in prompts[self.warmup :]:
            timings.append(await self._stream(client, prompt, PREFILL_OSL))
            samples.setdefault("ttft_ms", []).append(timings[-1].ttft_ms)
        after = await scrape_metrics(client)
        ttft_ms, ttft_std_ms = _mean_std(samples["ttft_ms"])
        cand = probe.candidate
        thpt = probe.isl / ttft_ms * 1000 / cand.num_gpus * cand.attention_dp_size
        extra = engine_extra(before, after)
        extra.pop("server_itl_ms", None)  # one token after the first: not a decode measurement
        return (
            {"ttft_ms": ttft_ms, "ttft_std_ms": ttft_std_ms, "thpt_per_gpu": thpt},
            extra | {"_prompt_tokens": [t.prompt_tokens for t in timings], "osl": PREFILL_OSL},
        )

    async def _decode(self, client, probe: Probe, samples: dict) -> tuple[dict, dict]:
        """Warm the prefix cache with the prompts, then waves of ``concurrency`` requests reusing them."""
        prompts = await self._prompts(client, probe.concurrency, probe.isl)
        for _ in range(max(1, self.warmup)):
            await self._wave(client, prompts, min(probe.osl, 16))
        before = await scrape_metrics(client)
        stats = MetricsPeak()
        poller = asyncio.create_task(poll_metrics(client, stats, METRICS_POLL_S))
        try:
            timings: list[RequestTiming] = []
            for _ in range(self._repeats(probe)):
                wave = await self._wave(client, prompts, probe.osl)
                timings += wave
                itls = [t.itl_ms for t in wave if t.itl_ms is not None]
                if not itls:  # every token came in the first chunk: no time between tokens to measure
                    raise BadResponse(
                        f"no request of the wave streamed a token after its first chunk (osl {probe.osl})"
                    )
                samples.setdefault("itl_ms", []).append(statistics.fmean(itls))
                samples.setdefault("ttft_prefix_cached_ms", []).append(
                    statistics.fmean(t.ttft_ms for t in wave)
                )
                samples.setdefault("thpt_per_gpu", []).append(_output_rate(wave) / probe.candidate.num_gpus)
        finally:
            poller.cancel()
        after = await scrape_metrics(client)
        itl_ms, itl_std_ms = _mean_std(samples["itl_ms"])
        extra = engine_extra(before, after, stats) | {
            "_prompt_tokens": [t.prompt_tokens for t in timings],
            "_warnings": _short_outputs(timings, probe.osl),
        }
        extra["ttft_prefix_cached_ms"] = statistics.fmean(samples["ttft_prefix_cached_ms"])
        extra.pop("server_ttft_ms", None)  # TTFT of prefix-cached prompts: not what this probe measures
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
        before = await scrape_metrics(client)
        stats = MetricsPeak()
        poller = asyncio.create_task(poll_metrics(client, stats, METRICS_POLL_S))

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
        after = await scrape_metrics(client)
        ttft_ms, ttft_std_ms = _mean_std(samples["ttft_ms"])
        tpot = samples.get("tpot_ms")
        tpot_ms, tpot_std_ms = _mean_std(tpot) if tpot else (None, None)
        extra = engine_extra(before, after, stats) | {
            "_prompt_tokens": [t.prompt_tokens for t in timings],
            "_warnings": _short_outputs(timings, probe.osl),
        }
        return (
            {
                "ttft_ms": ttft_ms,
                "ttft_std_ms": ttft_std_ms,
                "tpot_ms": tpot_ms,
                "itl_ms": tpot_ms,
                "itl_std_ms": tpot_std_ms,
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
