"""HTTP side of EndpointRunner: one streamed completion timed per chunk, JSON requests, error classes.

A completion streams (``stream=true``) with ``ignore_eos``/``min_tokens`` so it yields exactly the
output length asked for; chunk arrival times give TTFT and inter-token latency, with tokens per chunk
counted from ``token_ids`` (vLLM's ``return_token_ids``) because some tokens decode to empty text.

Errors: connect failure, HTTP 4xx/5xx or a stream cut short -> ``BadResponse`` (``status_code``,
``body``); no data for ``timeout_s`` -> ``EndpointTimeout``. Each carries ``tokens_received`` of the
failing request and an empty ``partial``, which the runner fills with the finished repetitions.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

from estimator.errors import BadResponse, EndpointTimeout, MeasurementError

BODY_EXCERPT_CHARS = 300


@dataclass(slots=True)
class RequestTiming:
    """Arrival times (``time.perf_counter`` seconds) and token counts of one streamed completion."""

    t_start: float
    t_first: float | None = None
    t_last: float | None = None
    num_tokens: int = 0
    first_chunk_tokens: int = 0
    prompt_tokens: int | None = None

    @property
    def ttft_ms(self) -> float:
        return (self.t_first - self.t_start) * 1e3

    @property
    def itl_ms(self) -> float | None:
        """Mean gap per token after the first chunk: (last - first arrival) / tokens after it."""
        after_first = self.num_tokens - self.first_chunk_tokens
        return (self.t_last - self.t_first) * 1e3 / after_first if after_first > 0 else None

    @property
    def tpot_ms(self) -> float | None:
        return (self.t_last - self.t_first) * 1e3 / (self.num_tokens - 1) if self.num_tokens > 1 else None


def endpoint_error(
    cls: type[MeasurementError],
    message: str,
    *,
    status: int | None = None,
    body: str | None = None,
    tokens: int = 0,
) -> MeasurementError:
    """``cls(message)`` carrying the HTTP status, a body excerpt and the tokens received so far."""
    exc = cls(message)
    exc.status_code, exc.body, exc.tokens_received, exc.partial = status, body, tokens, {}
    return exc


DRAIN_TIMEOUT_S = 1.0  # how long the end of a body after [DONE] may take before the connection is dropped


async def _read_to_end(lines: Any) -> None:
    """Read what follows ``[DONE]`` (the chunked body's last chunk) so httpx returns the connection to its
    pool: otherwise every request opens a new one (through a k8s port-forward, a new tunnel) and pays for
    it inside its TTFT. A server that keeps the stream open after [DONE] gets ``DRAIN_TIMEOUT_S``, then
    the connection is dropped, as it always was before; the timing is already complete either way."""
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            async for _ in lines:
                pass
    except (TimeoutError, httpx.HTTPError):
        pass


async def stream_completion(
    client: httpx.AsyncClient,
    model: str | None,
    prompt: str | list[int],
    max_tokens: int,
    *,
    return_token_ids: bool,
    base_url: str,
    timeout_s: float,
) -> RequestTiming:
    """One streamed completion of exactly ``max_tokens`` tokens; raises on any failure.

    ``base_url`` and ``timeout_s`` only word the error messages (``client`` already carries them).
    """
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "min_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if return_token_ids:
        body["return_token_ids"] = True
    t = RequestTiming(t_start=time.perf_counter())
    done, counted_by_ids, usage_tokens = False, False, None
    try:
        async with client.stream("POST", "/v1/completions", json=body) as resp:
            if resp.status_code >= 400:
                text = (await resp.aread()).decode(errors="replace")[:BODY_EXCERPT_CHARS]
                raise endpoint_error(
                    BadResponse,
                    f"HTTP {resp.status_code} from /v1/completions: {text}",
                    status=resp.status_code,
                    body=text,
                )
            lines = resp.aiter_lines()
            async for line in lines:
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                now = time.perf_counter()
                chunk = json.loads(data)
                if "error" in chunk:
                    raise endpoint_error(
                        BadResponse,
                        f"error in stream: {str(chunk['error'])[:BODY_EXCERPT_CHARS]}",
                        body=data[:BODY_EXCERPT_CHARS],
                        tokens=t.num_tokens,
                    )
                if chunk.get("usage"):
                    t.prompt_tokens = chunk["usage"].get("prompt_tokens", t.prompt_tokens)
                    usage_tokens = chunk["usage"].get("completion_tokens")
                for choice in chunk.get("choices") or []:
                    ids = choice.get("token_ids")
                    counted_by_ids |= ids is not None
                    n = len(ids) if ids is not None else int(bool(choice.get("text")))
                    if n:
                        if t.t_first is None:
                            t.t_first, t.first_chunk_tokens = now, n
                        t.t_last = now
                        t.num_tokens += n
            if done:
                await _read_to_end(lines)
    except httpx.ConnectError as exc:
        raise endpoint_error(BadResponse, f"cannot connect to {base_url}: {exc}") from exc
    except httpx.TimeoutException as exc:
        raise endpoint_error(
            EndpointTimeout,
            f"no data from {base_url} for {timeout_s:g} s after {t.num_tokens} of {max_tokens} tokens",
            tokens=t.num_tokens,
        ) from exc
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        raise endpoint_error(
            BadResponse,
            f"stream broken after {t.num_tokens} of {max_tokens} tokens: {type(exc).__name__}: {exc}",
            tokens=t.num_tokens,
        ) from exc
    if not done or t.t_first is None:
        raise endpoint_error(
            BadResponse,
            f"stream ended early after {t.num_tokens} of {max_tokens} tokens",
            tokens=t.num_tokens,
        )
    if not counted_by_ids and usage_tokens:
        t.num_tokens = usage_tokens  # text chunks undercount tokens that decode to empty text
    return t


async def request_json(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    body: dict | None,
    *,
    base_url: str,
    timeout_s: float,
) -> Any:
    """Decoded JSON answer of one request; transport failures, HTTP >= 400 and non-JSON raise."""
    try:
        r = await client.request(method, path, json=body)
    except httpx.TimeoutException as exc:
        raise endpoint_error(EndpointTimeout, f"{path}: no answer within {timeout_s:g} s") from exc
    except httpx.HTTPError as exc:
        raise endpoint_error(BadResponse, f"{path} on {base_url}: {type(exc).__name__}: {exc}") from exc
    if r.status_code >= 400:
        text = r.text[:BODY_EXCERPT_CHARS]
        raise endpoint_error(
            BadResponse, f"HTTP {r.status_code} from {path}: {text}", status=r.status_code, body=text
        )
    try:
        return r.json()
    except ValueError as exc:
        raise endpoint_error(BadResponse, f"{path} answered non-JSON: {r.text[:BODY_EXCERPT_CHARS]}") from exc
