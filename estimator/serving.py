"""Aggregated-serving model: TTFT and TPOT of ``c`` closed-loop clients from prefill and decode surfaces.

Why a simulation and not a formula: measured TTFT under in-flight batching depends on how prefill
chunks share steps with decodes and how the first wave of ``c`` simultaneous requests queues. Both
follow from the scheduler's token rules, so we replay them step by step (vLLM v1 / SGLang / TRT-LLM
all work this way):

- each step, every running decode takes one token of the budget ``max_num_batched_tokens``; the rest
  goes to waiting prompts first-come-first-served, chunked (a prompt may span several steps);
- a prompt's first token comes out of the step that finishes its last chunk;
- at most ``max_num_seqs`` requests run; clients send the next request when the previous finishes
  (``simulate``, a concurrency), or requests arrive at given times (``replay_open``, a request rate).

Step time is additive: ``decode_ms(n_decoding, context) + prefill_tokens * prefill_ms(isl) / isl``.
The step sequence is counted in tokens, so it does not depend on time: every latency is a linear
combination ``prefill_part + decode_part + steps * step_overhead``. ``ServingTerms`` keeps the parts
separately, which lets calibration rescale each phase without re-simulating.

With attention data parallelism every rank schedules its own ``c / dp`` clients; decode steps are
evaluated at the engine-wide batch (the ``PerfSource`` convention).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from .candidates import Candidate
from .errors import SourceError
from .sources.base import PerfSource

# Per-step token budget (max_num_batched_tokens / chunked_prefill_size / max_num_tokens) and max running
# requests the engines use by default for online serving on data-centre GPUs.
DEFAULT_TOKEN_BUDGET = {"vllm": 8192, "sglang": 8192, "trtllm": 8192}
DEFAULT_MAX_NUM_SEQS = {"vllm": 1024, "sglang": 1024, "trtllm": 2048}
UNMIXED_BACKENDS: tuple[
    str, ...
] = ()  # e.g. ("sglang",): prefill batches as their own steps (tried: no gain)


@dataclass(frozen=True, slots=True)
class ServingTerms:
    """Mean TTFT and TPOT split into the parts a phase correction scales (all ms, or steps)."""

    ttft_prefill_ms: float  # prefill work inside TTFT
    ttft_decode_ms: float  # decode work of other requests sharing those steps
    ttft_steps: float  # engine steps inside TTFT (per-step overhead multiplies this)
    tpot_prefill_ms: float  # prefill chunks of other requests interleaved with this one's decode
    tpot_decode_ms: float
    tpot_steps: float
    batch: float  # mean decoding requests per step over the run (engine-wide)
    context_tokens: float  # mean context length during decode

    def ttft_ms(self, prefill_scale: float = 1.0, decode_scale: float = 1.0, step_ms: float = 0.0) -> float:
        return (
            prefill_scale * self.ttft_prefill_ms
            + decode_scale * self.ttft_decode_ms
            + step_ms * self.ttft_steps
        )

    def tpot_ms(self, prefill_scale: float = 1.0, decode_scale: float = 1.0, step_ms: float = 0.0) -> float:
        return (
            prefill_scale * self.tpot_prefill_ms
            + decode_scale * self.tpot_decode_ms
            + step_ms * self.tpot_steps
        )


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    token_budget: int = 8192
    max_num_seqs: int = 1024
    waves: int = 4  # requests each client sends; the first wave arrives all at once
    warmup_waves: int = 0  # leading waves left out of the means (benchmarks that warm up first)
    stagger: bool = False  # clients start spread over one decode cycle instead of all at once
    mixed: bool = True  # prefill chunks share steps with decodes (vLLM, TRT-LLM); SGLang runs prefill alone

    @classmethod
    def for_backend(cls, backend: str, waves: int = 4, warmup_waves: int = 0) -> SchedulerConfig:
        return cls(
            DEFAULT_TOKEN_BUDGET.get(backend, 8192),
            DEFAULT_MAX_NUM_SEQS.get(backend, 1024),
            waves,
            warmup_waves,
            mixed=backend not in UNMIXED_BACKENDS,
        )


def serving_terms(
    source: PerfSource,
    candidate: Candidate,
    concurrency: int,
    isl: int,
    osl: int,
    config: SchedulerConfig | None = None,
    kv_capacity_tokens: int = 0,
) -> ServingTerms:
    """Simulate ``concurrency`` closed-loop clients sending ISL/OSL requests; return the TTFT/TPOT parts.

    ``kv_capacity_tokens`` > 0 limits running requests to those whose mean footprint ISL + OSL/2 fits
    in the KV cache (the others wait in the queue: how TTFT explodes past the engine's capacity).
    """
    if concurrency < 1 or isl < 1 or osl < 1:
        raise SourceError(f"serving model needs concurrency, isl, osl >= 1 (got {concurrency}, {isl}, {osl})")
    cfg = config or SchedulerConfig.for_backend(source.stack.backend)
    dp = candidate.attention_dp_size
    clients = max(1, math.ceil(concurrency / dp))
    running_cap = max(1, min(clients, cfg.max_num_seqs))
    if kv_capacity_tokens > 0:
        running_cap = max(1, min(running_cap, int(kv_capacity_tokens / dp / (isl + osl / 2))))
    cfg = dataclasses.replace(cfg, max_num_seqs=running_cap)
    context = isl + osl / 2.0
    batches = np.arange(1, running_cap + 1, dtype=float)
    decode_ms = np.concatenate(
        [[0.0], source.decode_itl_ms(candidate, batches * dp, np.full_like(batches, context))]
    )
    prefill_ms_per_token = float(source.prefill_ttft_ms(candidate, [isl])[0]) / isl
    return simulate(decode_ms, prefill_ms_per_token, clients, isl, osl, cfg, dp, context)


def simulate(
    decode_ms: np.ndarray,
    prefill_ms_per_token: float,
    clients: int,
    isl: int,
    osl: int,
    cfg: SchedulerConfig,
    dp: int = 1,
    context: float = 0.0,
) -> ServingTerms:
    """Step-level scheduler replay. ``decode_ms[n]`` is the decode part of a step with n decoding requests.

    Clock and per-request times are kept as (prefill ms, decode ms, steps) triples.
    """
    budget, cap = cfg.token_budget, max(1, min(clients, cfg.max_num_seqs))
    clock = np.zeros(3)
    remaining_prompt = [isl] * clients  # tokens of the current request still to prefill (0: decoding)
    remaining_out = [osl] * clients  # tokens still to emit, the first one included
    arrived = [clock.copy() for _ in range(clients)]
    first_tok = [None] * clients
    sent = [1] * clients
    admitted: list[int] = []  # running requests (client ids), FCFS order
    # (step, client) first arrivals: all at step 0, or spread over one decode cycle
    pending = [(int(i * osl / clients) if cfg.stagger else 0, i) for i in range(clients)]
    queue: list[int] = []  # arrived, waiting to be admitted
    ttft_sum, tpot_sum, n_done, n_tpot = np.zeros(3), np.zeros(3), 0, 0
    batch_steps = np.zeros(2)  # sum of decoding-batch × steps, steps
    while admitted or queue or pending:
        while pending and pending[0][0] <= clock[2]:
            i = pending.pop(0)[1]
            arrived[i] = clock.copy()
            queue.append(i)
        if not admitted and not queue:  # idle until the next client starts
            clock[2] = pending[0][0]
            continue
        while queue and len(admitted) < cap:
            admitted.append(queue.pop(0))
        decoding = [i for i in admitted if remaining_prompt[i] == 0]
        n_dec = len(decoding)
        spare = max(0, budget - n_dec) if cfg.mixed else budget
        prefill_tokens, finished_prompt = 0, []
        for i in admitted:
            if remaining_prompt[i] == 0 or spare == 0:
                continue
            take = min(spare, remaining_prompt[i])
            remaining_prompt[i] -= take
            spare -= take
            prefill_tokens += take
            if remaining_prompt[i] == 0:
                finished_prompt.append(i)
        if prefill_tokens == 0:  # decode-only stretch: jump to the next finish or arrival
            k = min(remaining_out[i] for i in decoding)
            if pending:
                k = max(1, min(k, int(pending[0][0] - clock[2])))
        else:
            k = 1
            if not cfg.mixed:  # a prefill-only step: running decodes wait for it
                decoding, n_dec = [], 0
        clock += (prefill_tokens * prefill_ms_per_token, k * decode_ms[n_dec], k)
        batch_steps += (n_dec * k, k)
        for i in decoding:
            remaining_out[i] -= k
        for i in finished_prompt:  # this step emits their first token
            first_tok[i] = clock.copy()
            remaining_out[i] -= 1
            if sent[i] > cfg.warmup_waves:
                ttft_sum += clock - arrived[i]
                n_done += 1
        for i in [i for i in admitted if remaining_out[i] == 0]:
            if osl > 1 and sent[i] > cfg.warmup_waves:
                tpot_sum += (clock - first_tok[i]) / (osl - 1)
                n_tpot += 1
            admitted.remove(i)
            if sent[i] < cfg.waves:  # the client sends its next request right away
                sent[i] += 1
                remaining_prompt[i], remaining_out[i] = isl, osl
                arrived[i] = clock.copy()
                queue.append(i)
    ttft = ttft_sum / max(n_done, 1)
    tpot = tpot_sum / max(n_tpot, 1)
    mean_batch = batch_steps[0] / max(batch_steps[1], 1.0)
    return ServingTerms(
        float(ttft[0]), float(ttft[1]), float(ttft[2]), float(tpot[0]), float(tpot[1]), float(tpot[2]),
        float(mean_batch * dp), float(context),
    )  # fmt: skip


def predict_agg(
    source: PerfSource,
    candidate: Candidate,
    concurrency: int,
    isl: int,
    osl: int,
    config: SchedulerConfig | None = None,
    kv_capacity_tokens: int = 0,
) -> tuple[float, float]:
    """(TTFT ms, TPOT ms) of aggregated serving at ``concurrency`` clients, from the source alone."""  # fmt: skip
    t = serving_terms(source, candidate, concurrency, isl, osl, config, kv_capacity_tokens)
    return t.ttft_ms(), t.tpot_ms()


# ---- open loop: requests arrive at given times (a request rate or a trace) ----------------------


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
