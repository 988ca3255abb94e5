"""Open-loop serving replay: requests arrive at given times (a request rate or a trace).

The same scheduler rules as ``serving.simulate`` (closed loop, a concurrency), on a real clock: it is
the discrete-event simulation the capacity model's agg closed form is checked against, and the
serving model's answer for one agg engine at a request rate.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .candidates import Candidate
from .errors import SourceError
from .serving import SchedulerConfig
from .sources.base import PerfSource


@dataclass(frozen=True, slots=True)
class OpenLoopResult:
    """Per-request TTFT (ms), and every decode step's time weighted by the tokens it emitted."""

    ttft_ms: np.ndarray
    tpot_ms: np.ndarray  # per request: (last token - first token) / (OSL - 1); NaN for OSL 1
    step_ms: np.ndarray  # decode step times, one entry per step
    step_tokens: np.ndarray  # decode tokens each of those steps emitted (the ITL weights)


def replay_open(
    decode_ms,
    prefill_ms,
    arrival_ms: np.ndarray,
    isl: np.ndarray,
    osl: np.ndarray,
    cfg: SchedulerConfig,
    cached: np.ndarray | None = None,
) -> OpenLoopResult:
    """Step-level replay of one engine (one attention-DP rank) under open-loop arrivals, in ms.

    ``decode_ms(n)``: decode part of a step with n decoding requests; ``prefill_ms(tokens)``: batch-1
    prefill of a prompt. Same rules as ``simulate``: decodes take one token of the budget each, the
    rest goes FCFS to waiting prompts in chunks; a prompt's first token comes from the step that
    finishes it; at most ``max_num_seqs`` run. Prefill cost of a chunk is its share of the prompt's time.
    """
    n = len(arrival_ms)
    todo = (isl - (cached if cached is not None else 0)).astype(int)
    per_token = np.array([prefill_ms(int(t)) / t for t in todo])
    out_left = osl.astype(int).copy()
    first = np.full(n, np.nan)
    last = np.full(n, np.nan)
    steps, toks = [], []
    clock, nxt = 0.0, 0
    queue: list[int] = []
    running: list[int] = []
    budget = cfg.token_budget
    while nxt < n or queue or running:
        while nxt < n and arrival_ms[nxt] <= clock:
            queue.append(nxt)
            nxt += 1
        if not queue and not running:
            clock = float(arrival_ms[nxt])
            continue
        while queue and len(running) < cfg.max_num_seqs:
            running.append(queue.pop(0))
        decoding = [i for i in running if todo[i] == 0]
        spare = max(0, budget - len(decoding)) if cfg.mixed else budget
        p_ms, finished = 0.0, []
        for i in running:
            if todo[i] == 0 or spare == 0:
                continue
            take = min(spare, todo[i])
            todo[i] -= take
            spare -= take
            p_ms += take * per_token[i]
            if todo[i] == 0:
                finished.append(i)
        k = 1
        if p_ms == 0.0 and decoding:  # decode-only stretch: jump to the next finish or arrival
            k = min(out_left[i] for i in decoding)
            d = decode_ms(len(decoding))
            if nxt < n:
                k = max(1, min(k, int((arrival_ms[nxt] - clock) // max(d, 1e-9)) + 1))
        elif not cfg.mixed:
            decoding = []
        d = decode_ms(len(decoding)) if decoding else 0.0
        dt = p_ms + d
        steps.extend([dt] * k)
        toks.extend([len(decoding)] * k)
        clock += k * dt
        for i in decoding:
            out_left[i] -= k
            last[i] = clock
        for i in finished:
            first[i] = last[i] = clock
            out_left[i] -= 1
        running = [i for i in running if out_left[i] > 0]
    tpot = np.where(osl > 1, (last - first) / np.maximum(osl - 1, 1), np.nan)
    return OpenLoopResult(first - arrival_ms, tpot, np.asarray(steps), np.asarray(toks, dtype=float))


def predict_agg_rate(
    source: PerfSource,
    candidate: Candidate,
    request_rate: float,
    isl: int,
    osl: int,
    config: SchedulerConfig | None = None,
    num_requests: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """(mean TTFT ms, mean TPOT ms) of one agg engine under Poisson arrivals at ``request_rate`` req/s."""
    if request_rate <= 0 or isl < 1 or osl < 1:
        raise SourceError(
            f"serving model needs rate > 0 and isl, osl >= 1 (got {request_rate}, {isl}, {osl})"
        )
    cfg = config or SchedulerConfig.for_backend(source.stack.backend)
    dp = candidate.attention_dp_size
    context = isl + osl / 2.0
    cap = max(1, min(cfg.max_num_seqs, int(source.kv_capacity_tokens(candidate) / dp / context)))
    batches = np.arange(1, cap + 1, dtype=float)
    table = np.concatenate(
        [[0.0], source.decode_itl_ms(candidate, batches * dp, np.full_like(batches, context))]
    )
    ttft = float(source.prefill_ttft_ms(candidate, [isl])[0])
    gaps = np.random.default_rng(seed).exponential(1000.0 * dp / request_rate, num_requests)
    n = np.full(num_requests, float(isl))
    res = replay_open(lambda b: table[min(b, cap)], lambda t: ttft * t / isl, np.cumsum(gaps), n,
                      np.full(num_requests, float(osl)), dataclasses.replace(cfg, max_num_seqs=cap))  # fmt: skip
    warm = num_requests // 10
    return float(np.mean(res.ttft_ms[warm:])), float(np.nanmean(res.tpot_ms[warm:]))


__all__ = ["OpenLoopResult", "predict_agg_rate", "replay_open"]
