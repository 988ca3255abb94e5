"""What EndpointRunner asks the server before timing: served model, version, and exact-length prompts.

These requests are untimed and happen before a probe's measured requests: discovery once per runner,
prompts once per probe. The tokenizer strategy decides how a prompt gets its exact token count:
"tokenize" counts a text with the server's ``/tokenize`` route, "usage" with ``usage.prompt_tokens`` of a
1-token completion (both via ``prompts.exact_text_prompt``), and "token_ids" sends random token ids,
which need no counting. "auto" takes the first that the server supports.
"""

from __future__ import annotations

import asyncio
import random

import httpx

from estimator.errors import BadResponse

from .prompts import exact_text_prompt, random_token_ids
from .stream import BODY_EXCERPT_CHARS, endpoint_error, request_json

TOKENIZER_STRATEGIES = ("auto", "tokenize", "token_ids", "usage")
MAX_CONCURRENT_COUNTS = 8  # token-count requests in flight while building text prompts


async def served_model(client: httpx.AsyncClient, *, base_url: str, timeout_s: float) -> str:
    """The first model that ``/v1/models`` lists; BadResponse if it lists none."""
    data = await request_json(client, "GET", "/v1/models", None, base_url=base_url, timeout_s=timeout_s)
    try:
        return data["data"][0]["id"]
    except (KeyError, IndexError, TypeError) as exc:
        raise endpoint_error(
            BadResponse, f"/v1/models lists no model: {str(data)[:BODY_EXCERPT_CHARS]}"
        ) from exc


async def server_software(client: httpx.AsyncClient, *, base_url: str, model: str) -> dict[str, str]:
    """Base URL, served model and, if ``/version`` answers, the server version (recorded per Measurement)."""
    software = {"base_url": base_url, "served_model": model}
    try:
        version = (await client.get("/version")).json().get("version")
        if version:
            software["server_version"] = str(version)
    except (httpx.HTTPError, ValueError, AttributeError):
        pass
    return software


async def pick_tokenizer_strategy(
    client: httpx.AsyncClient, *, base_url: str, model: str, token_id_range: tuple[int, int]
) -> str:
    """The first strategy that works: "tokenize", then "token_ids", else "usage" (any server)."""
    try:
        r = await client.post("/tokenize", json={"model": model, "prompt": "a b"})
        if r.status_code == 200 and "count" in r.json():
            return "tokenize"
        r = await client.post(
            "/v1/completions",
            json={"model": model, "prompt": [token_id_range[0]] * 4, "max_tokens": 1},
        )
        if r.status_code == 200 and r.json().get("usage", {}).get("prompt_tokens") == 4:
            return "token_ids"
    except (httpx.HTTPError, ValueError) as exc:
        raise endpoint_error(BadResponse, f"cannot reach {base_url}: {exc}") from exc
    return "usage"


async def exact_prompts(
    client: httpx.AsyncClient,
    seeds: list[int],
    num_tokens: int,
    *,
    strategy: str,
    model: str | None,
    token_id_range: tuple[int, int],
    base_url: str,
    timeout_s: float,
) -> list[str | list[int]]:
    """One prompt of exactly ``num_tokens`` tokens per seed, made with ``strategy`` (not "auto")."""
    if strategy == "token_ids":
        return [random_token_ids(random.Random(s), num_tokens, token_id_range) for s in seeds]

    async def count_tokens(text: str) -> int:
        if strategy == "tokenize":
            body = {"model": model, "prompt": text}
            answer = await request_json(
                client, "POST", "/tokenize", body, base_url=base_url, timeout_s=timeout_s
            )
            return int(answer["count"])
        body = {"model": model, "prompt": text, "max_tokens": 1}
        answer = await request_json(
            client, "POST", "/v1/completions", body, base_url=base_url, timeout_s=timeout_s
        )
        return int(answer["usage"]["prompt_tokens"])

    gate = asyncio.Semaphore(MAX_CONCURRENT_COUNTS)

    async def one(seed: int) -> str:
        async with gate:
            return await exact_text_prompt(count_tokens, num_tokens, seed)

    return list(await asyncio.gather(*(one(s) for s in seeds)))
