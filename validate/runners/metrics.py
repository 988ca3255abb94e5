"""Read engine state from its metrics endpoint: KV-cache capacity, usage and preemptions.

Prometheus text format (vLLM, SGLang) is parsed here; TRT-LLM's JSON iteration stats are read too.
Values come from metrics, never from log lines (Dynamo's log scraping has been off by 60x).
A missing metric is ``None``, never a guess: the caller records a warning.
Parsing is pure; ``scrape_metrics`` and ``poll_metrics`` do the HTTP, and ``engine_extra`` sums up what
the server saw during one measured span (preemptions, peak KV usage, its own inter-token latency).
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any

import httpx

_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(?P<key>[A-Za-z_][A-Za-z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse_prometheus(text: str) -> list[Sample]:
    """Samples of a Prometheus text exposition; comments and unparsable lines are skipped."""
    out: list[Sample] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        try:
            value = float(m["value"])
        except ValueError:
            continue
        labels = {
            lm["key"]: bytes(lm["value"], "utf-8").decode("unicode_escape")
            for lm in _LABEL.finditer(m["labels"] or "")
        }
        out.append(Sample(m["name"], labels, value))
    return out


def _sum(samples: list[Sample], *names: str) -> float | None:
    """Sum over label sets (several engines / DP ranks) of the first name present."""
    for name in names:
        vals = [s.value for s in samples if s.name == name]
        if vals:
            return sum(vals)
    return None


@dataclass(frozen=True, slots=True)
class EngineMetrics:
    """What one scrape of the metrics endpoint tells. Token counts for the whole engine."""

    kv_capacity_tokens: int | None = None
    kv_usage_frac: float | None = None
    num_preemptions: float | None = None
    num_requests_running: float | None = None
    num_requests_waiting: float | None = None
    itl_seconds_sum: float | None = None  # the server's own inter-token latency histogram
    itl_seconds_count: float | None = None
    ttft_seconds_sum: float | None = None  # the server's own time-to-first-token histogram
    ttft_seconds_count: float | None = None
    warnings: list[str] = field(default_factory=list)


def _vllm_kv_capacity(samples: list[Sample]) -> int | None:
    infos = [s for s in samples if s.name == "vllm:cache_config_info"]
    total = 0
    for s in infos:
        blocks, size = s.labels.get("num_gpu_blocks"), s.labels.get("block_size")
        if blocks and size and blocks != "None":
            total += int(float(blocks)) * int(float(size))
        elif s.labels.get("kv_cache_size_tokens", "None") != "None":
            total += int(float(s.labels["kv_cache_size_tokens"]))
        else:
            return None
    return total or None


def parse_metrics(text: str) -> EngineMetrics:
    """EngineMetrics from a /metrics body (Prometheus text, or TRT-LLM's JSON list of iteration stats)."""
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        return _parse_trtllm_json(stripped)
    samples = parse_prometheus(text)
    capacity = _vllm_kv_capacity(samples)
    if capacity is None:
        sg = _sum(samples, "sglang:max_total_num_tokens")
        capacity = int(sg) if sg else None
    warnings = (
        [] if capacity else ["no KV capacity metric (vllm:cache_config_info / sglang:max_total_num_tokens)"]
    )
    usage = _sum(samples, "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage")
    n_usage = sum(1 for s in samples if s.name in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"))
    return EngineMetrics(
        kv_capacity_tokens=capacity,
        kv_usage_frac=usage / n_usage if usage is not None and n_usage > 1 else usage,
        num_preemptions=_sum(
            samples, "vllm:num_preemptions_total", "vllm:num_preemptions", "sglang:num_retracted_reqs"
        ),
        num_requests_running=_sum(samples, "vllm:num_requests_running", "sglang:num_running_reqs"),
        num_requests_waiting=_sum(samples, "vllm:num_requests_waiting", "sglang:num_queue_reqs"),
        itl_seconds_sum=_sum(
            samples, "vllm:inter_token_latency_seconds_sum", "vllm:time_per_output_token_seconds_sum"
        ),
        itl_seconds_count=_sum(
            samples, "vllm:inter_token_latency_seconds_count", "vllm:time_per_output_token_seconds_count"
        ),
        ttft_seconds_sum=_sum(
            samples, "vllm:time_to_first_token_seconds_sum", "sglang:time_to_first_token_seconds_sum"
        ),
        ttft_seconds_count=_sum(
            samples, "vllm:time_to_first_token_seconds_count", "sglang:time_to_first_token_seconds_count"
        ),
        warnings=warnings,
    )


def _parse_trtllm_json(text: str) -> EngineMetrics:
    """trtllm-serve /metrics: a JSON list of iteration stats with ``kvCacheStats``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return EngineMetrics(warnings=["metrics body is neither Prometheus text nor JSON"])
    stats = data[-1] if isinstance(data, list) and data else data
    kv = stats.get("kvCacheStats", {}) if isinstance(stats, dict) else {}
    blocks, per_block = kv.get("maxNumBlocks"), kv.get("tokensPerBlock")
    if not blocks or not per_block:
        return EngineMetrics(warnings=["no kvCacheStats in TRT-LLM metrics (send a request first)"])
    used = kv.get("usedNumBlocks")
    return EngineMetrics(
        kv_capacity_tokens=int(blocks) * int(per_block),
        kv_usage_frac=used / blocks if used is not None else None,
        num_requests_running=stats.get("numActiveRequests"),
        num_requests_waiting=stats.get("numQueuedRequests"),
    )


# ---- scraping during a measurement ------------------------------------------------------------
async def scrape_metrics(client: httpx.AsyncClient) -> EngineMetrics:
    """One GET ``/metrics``; unreachable or HTTP != 200 gives empty metrics with a warning."""
    try:
        r = await client.get("/metrics")
    except httpx.HTTPError as exc:
        return EngineMetrics(warnings=[f"/metrics unreachable: {type(exc).__name__}"])
    if r.status_code != 200:
        return EngineMetrics(warnings=[f"/metrics answered HTTP {r.status_code}"])
    return parse_metrics(r.text)


@dataclass(slots=True)
class MetricsPeak:
    """Highest values seen by ``poll_metrics`` over a measured span (usage and running are not counters)."""

    kv_usage_frac: float | None = None
    num_requests_running: float | None = None


async def poll_metrics(client: httpx.AsyncClient, peak: MetricsPeak, interval_s: float) -> None:
    """Scrape every ``interval_s`` seconds into ``peak`` until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        m = await scrape_metrics(client)
        peak.kv_usage_frac = max(peak.kv_usage_frac or 0.0, m.kv_usage_frac or 0.0)
        peak.num_requests_running = max(peak.num_requests_running or 0.0, m.num_requests_running or 0.0)


def engine_extra(
    before: EngineMetrics, after: EngineMetrics, peak: MetricsPeak | None = None
) -> dict[str, Any]:
    """Server-side view of the measured span: preemptions, peak KV usage, the server's own TTFT and ITL
    (means over the requests of the span, from the histograms' sum and count)."""
    extra: dict[str, Any] = {}
    if peak is not None:
        extra.update(kv_usage_peak_frac=peak.kv_usage_frac, num_running_peak=peak.num_requests_running)
    if before.num_preemptions is not None and after.num_preemptions is not None:
        extra["num_preemptions"] = after.num_preemptions - before.num_preemptions
    for key, name in (("server_itl_ms", "itl_seconds"), ("server_ttft_ms", "ttft_seconds")):
        mean = _histogram_mean_ms(before, after, name)
        if mean is not None:
            extra[key] = mean
    return extra


def _histogram_mean_ms(before: EngineMetrics, after: EngineMetrics, name: str) -> float | None:
    values = [getattr(m, f"{name}_{part}") for m in (before, after) for part in ("sum", "count")]
    if None in values:
        return None
    sum0, n0, sum1, n1 = values
    return (sum1 - sum0) / (n1 - n0) * 1e3 if n1 > n0 else None
