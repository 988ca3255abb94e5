"""What EndpointRunner asks the server before timing: its engine, served model, version, exact-length prompts.

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

from estimator.candidates import Candidate, Mapping
from estimator.errors import BadResponse

from .prompts import exact_text_prompt, random_token_ids
from .stream import BODY_EXCERPT_CHARS, endpoint_error, request_json

TOKENIZER_STRATEGIES = ("auto", "tokenize", "token_ids", "usage")
MAX_CONCURRENT_COUNTS = 8  # token-count requests in flight while building text prompts


def server_candidate(base_url: str, timeout_s: float = 5.0) -> tuple[Candidate | None, str, bool]:
    """The engine the server says it runs: (candidate or None, where that came from or why not, answered).

    vLLM states its parallel config at ``/server_info`` (served with ``VLLM_SERVER_DEV_MODE=1``):
    TP n; TP n with expert parallelism = TEP n; data parallel n with expert parallelism and TP 1 = DEP n.
    Pipeline parallelism and plain data-parallel replicas are no single candidate. ``answered`` is False
    when the server could not be reached (worth asking again later).
    """
    try:
        r = httpx.get(f"{base_url}/server_info", params={"config_format": "json"}, timeout=timeout_s)
    except httpx.HTTPError as exc:
        return None, f"{base_url} unreachable: {type(exc).__name__}", False
    if r.status_code != 200:
        return (
            None,
            f"/server_info answered HTTP {r.status_code} (vLLM serves it with VLLM_SERVER_DEV_MODE=1)",
            True,
        )
    try:
        par = r.json()["vllm_config"]["parallel_config"]
        tp, dp = int(par.get("tensor_parallel_size", 1)), int(par.get("data_parallel_size", 1))
        pp, ep = int(par.get("pipeline_parallel_size", 1)), bool(par.get("enable_expert_parallel", False))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, "/server_info has no parallel_config", True
    where = f"/server_info: tensor_parallel_size {tp}, data_parallel_size {dp}, expert parallel {ep}"
    if pp > 1:
        return None, f"{where}, pipeline_parallel_size {pp}: not a TP/TEP/DEP engine", True
    if dp == 1:
        return Candidate(Mapping.TEP if ep else Mapping.TP, tp), where, True
    if ep and tp == 1:
        return Candidate(Mapping.DEP, dp), where, True
    return None, f"{where}: data-parallel replicas are no single TP/TEP/DEP engine", True


def listed_models(base_url: str, timeout_s: float = 5.0) -> tuple[tuple[str, ...], str, bool]:
    """The models the server says it serves: every ``id`` of ``/v1/models`` and its ``root`` (vLLM: the
    path or id it was started with); (names, where they came from or why none, answered). ``answered`` is
    False when the server could not be reached (worth asking again later)."""
    try:
        r = httpx.get(f"{base_url}/v1/models", timeout=timeout_s)
    except httpx.HTTPError as exc:
        return (), f"{base_url} unreachable: {type(exc).__name__}", False
    if r.status_code != 200:
        return (), f"/v1/models answered HTTP {r.status_code}", True
    try:
        entries = r.json()["data"]
        names = tuple(dict.fromkeys(str(e[k]) for e in entries for k in ("id", "root") if e.get(k)))
    except (ValueError, KeyError, TypeError, AttributeError):
        return (), "/v1/models lists no model", True
    return names, "/v1/models" if names else "/v1/models lists no model", True


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
