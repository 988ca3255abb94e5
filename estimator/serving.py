"""Aggregated-serving model: TTFT and TPOT of ``c`` closed-loop clients from prefill and decode surfaces.

Why a simulation and not a formula: measured TTFT under in-flight batching depends on how prefill
chunks share steps with decodes and how the first wave of ``c`` simultaneous requests queues. Both
follow from the scheduler's token rules, so we replay them step by step (vLLM v1 / SGLang / TRT-LLM
all work this way):

- each step, every running decode takes one token of the budget ``max_num_batched_tokens``; the rest
  goes to waiting prompts first-come-first-served, chunked (a prompt may span several steps);
- a prompt's first token comes out of the step that finishes its last chunk;
- at most ``max_num_seqs`` requests run; clients send the next request when the previous finishes
  (``simulate``, a concurrency), or requests arrive at given times (``serving_open.replay_open``, a
  request rate).

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
