"""Latency of one worker group (prefill, decode, or agg engines) at an open-loop request rate.

Prefill group (disagg): ``replicas x dp`` FCFS servers, each prefilling one request at a time at its
batch-1 time (Dynamo's convention); TTFT = queue wait + prefill (``queueing.response_percentiles``).

Decode group (disagg): requests spread evenly over the replicas; on each, ``N`` requests decode at
once with ``N = rate x OSL x step(N + 1)`` (Little's law: a token sees its own request plus a Poisson
number of others). ITL percentiles are the step time at the batch percentiles.

Agg group: the same step rules the serving model replays (``serving.py``), in the mean. Prefill
work takes the fraction ``u = rate x E[prefill]`` of the engine's time, so a decode step averages
``step(N + 1) / (1 - u)``; a prompt is served in chunks of ``token_budget - N`` tokens, each chunk
riding on one decode step, so its service time is ``prefill + chunks x step``, queued FCFS in one
server per attention-DP rank, after the rest of the decode step it arrived in (half a step on average),
plus the chunks of prompts that arrive while it waits and share its step (bulk service).
ITL mixes plain steps and steps that carry a chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .capacity_engine import EngineTable
from .queueing import (
    PERCENTILES,
    Service,
    batch_quantiles,
    batch_tail,
    mean_response_ms,
    response_percentiles,
    wait_params,
)
from .workload import Workload

STATS = ("mean", "p50", "p90", "p99")
_LEVELS = np.linspace(0.5, 99.5, 34)  # batch quantile levels for the agg ITL mixture


@dataclass(frozen=True, slots=True)
class Latency:
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float

    def at(self, stat: str) -> float:
        return getattr(self, f"{stat}_ms")

    def to_dict(self) -> dict[str, float]:
        return {s: self.at(s) for s in STATS}


INF = Latency(math.inf, math.inf, math.inf, math.inf)


@dataclass(frozen=True, slots=True)
class GroupPrediction:
    """What one worker group does at its share of the load. ``reason`` says why it cannot ("" if it can)."""

    ttft: Latency | None
    itl: Latency | None
    mean_batch: float = 0.0  # requests decoding per engine
    utilisation: float = 0.0  # prefill servers busy fraction (prefill/agg) or batch / batch limit (decode)
    reason: str = ""

    @property
    def stable(self) -> bool:
        return not self.reason


def _latency(mean: float, pcts: np.ndarray | None) -> Latency:
    if pcts is None:
        return Latency(mean, math.nan, math.nan, math.nan)
    return Latency(mean, *(float(v) for v in pcts))


_SERVICE: dict[tuple[int, int], tuple[EngineTable, Workload, Service, np.ndarray]] = {}


def _prefill(t: EngineTable, w: Workload) -> tuple[Service, np.ndarray]:
    """Batch-1 prefill times of the workload's prompts on ``t`` and their prompt tokens, in the same
    (sorted) order; memoised per table and workload (the search asks thousands of times)."""
    key = (id(t), id(w))
    hit = _SERVICE.get(key)
    if hit is not None and hit[0] is t and hit[1] is w:
        return hit[2], hit[3]
    if len(_SERVICE) > 4096:
        _SERVICE.clear()
    times = t.prefill_time_ms(w.prefill_tokens)
    order = np.argsort(times, kind="stable")
    sv = Service.of(times[order])
    _SERVICE[key] = (t, w, sv, np.asarray(w.prefill_tokens, dtype=float)[order])
    return sv, _SERVICE[key][3]


def prefill_group(t: EngineTable, replicas: int, rate_rps: float, w: Workload, *, ca2: float = 1.0,
                  full: bool = True) -> GroupPrediction:  # fmt: skip
    servers = replicas * t.dp
    service = _prefill(t, w)[0]
    lam = rate_rps / 1000.0
    rho = lam * service.mean_ms / servers
    if rho >= 1.0:
        return GroupPrediction(
            INF, None, utilisation=rho, reason=f"prefill saturated (utilisation {rho:.2f})"
        )
    mean = mean_response_ms(lam, service, servers, ca2)
    pcts = response_percentiles(lam, service, servers, ca2) if full else None
    return GroupPrediction(_latency(mean, pcts), None, utilisation=rho)


def _decode_fixed_point(t: EngineTable, lam_engine: float, osl: float, slowdown: float, limit: float):
    """Mean decoding batch N with N = rate x OSL x step(N + 1) x slowdown; None if it passes ``limit``."""
    n = lam_engine * osl * float(t.step_ms(1.0)) * slowdown
    for _ in range(200):
        if n > limit:
            return None
        nxt = lam_engine * osl * float(t.step_ms(n + 1.0)) * slowdown
        if abs(nxt - n) <= 1e-4 * max(1.0, n):
            return nxt
        n = nxt
    return n


def decode_group(t: EngineTable, replicas: int, rate_rps: float, w: Workload, *, ca2: float = 1.0,
                 full: bool = True) -> GroupPrediction:  # fmt: skip
    lam = rate_rps / 1000.0 / replicas
    limit = t.max_batch(w.decode_context_tokens)
    n = _decode_fixed_point(t, lam, w.mean_osl, 1.0, limit)
    if n is None or batch_tail(n, 99.0, ca2) > limit:
        return GroupPrediction(None, INF, reason=f"decode batch exceeds the engine's limit of {limit:.0f}")
    mean = float(t.step_ms(n + 1.0))
    pcts = np.asarray(t.step_ms(batch_quantiles(n, PERCENTILES, ca2))) if full else None
    return GroupPrediction(None, _latency(mean, pcts), mean_batch=n, utilisation=n / limit)


@dataclass(frozen=True, slots=True)
class PrefillPerStep:
    """How much prefill the steps of an agg engine carry: ``share[x]`` of its steps prefill ``x`` units of
    ``unit_ms`` each (a mean prompt is ``units_per_prompt`` units, a step's token budget ``cap`` units)."""

    share: np.ndarray
    unit_ms: float
    units_per_prompt: int


UNITS_PER_PROMPT = 8  # chain resolution: at least this many units per prompt, half as many per budget
QUEUE_PROMPTS = 16  # prompts waiting beyond a step's budget that the chain tracks (deeper queues are lumped)
MIN_FIT = 1 / 16  # prompts longer than 16 budgets: no chain (each is many chunk steps; bunching is rare)
MAX_BUDGET_UNITS = 256  # a step's budget in units at most: past it whole prompts (or coarser) are units


def _units_per_prompt(fit: float) -> int:
    """Units per prompt, at least ``UNITS_PER_PROMPT`` per prompt and half that per budget, chosen among up
    to twice that so that the budget is closest to a whole number of units (it is rounded down to one);
    fewer where the budget holds so many prompts that it would pass ``MAX_BUDGET_UNITS``."""
    if fit * UNITS_PER_PROMPT > MAX_BUDGET_UNITS:
        return max(1, math.floor(MAX_BUDGET_UNITS / fit))
    low = max(UNITS_PER_PROMPT, math.ceil(UNITS_PER_PROMPT / 2 / fit))
    return min(range(low, 2 * low + 1), key=lambda m: (fit * m - math.floor(fit * m)) / (fit * m))


def prefill_per_step(lam_per_ms: float, step_ms: float, prompt_ms: float, fit: float,
                     queue_prompts: int = QUEUE_PROMPTS) -> PrefillPerStep | None:  # fmt: skip
    """Stationary law of the prefill each step carries, by a Markov chain on the prefill work waiting at a
    step's start, in units of a prompt (``fit`` = prompts per step budget, < 1 when prompts are chunked).

    Why: the p99 ITL of an agg engine is a step that prefills more than one prompt: prompts that arrived
    during a step start together in the next, up to the token budget, the budget cuts the last one and
    its rest waits for the next step, and a step carrying x units lasts ``step_ms + x * unit_ms``, so
    arrivals bunch behind long steps (the step replay: 92 ms where one prompt's step gave 48, H100 TP2 at
    12 req/s; 324 where whole prompts alone gave 170, Qwen3-32B TP2 at 3 req/s, where two prompts and a
    budget-cut third share a step). Arrivals during a step of x units: Poisson(rate x its duration).
    None for prompts longer than 1 / ``MIN_FIT`` budgets (``agg_group``'s one-chunk mixture then). The
    chain has at most a few thousand states (a budget of ``MAX_BUDGET_UNITS`` units, the queue cut where
    the arrivals of a busy stretch would not reach)."""
    from scipy import sparse
    from scipy.sparse.linalg import spsolve

    if fit < MIN_FIT:
        return None
    m = _units_per_prompt(fit)
    cap = max(1, math.floor(fit * m))
    unit_ms = prompt_ms / m
    top = max(cap, m) + queue_prompts * m
    u = lam_per_ms * prompt_ms
    if u < 1.0:  # prompts waiting at a step start: Poisson around rate x step / (1 - u), far in the tail
        waiting = lam_per_ms * step_ms / (1.0 - u)
        top = min(top, m * (math.ceil(waiting + 10.0 * math.sqrt(waiting) + 10.0) + 1))
    w = np.arange(top + 1)  # units waiting at a step's start
    x = np.minimum(w, cap)  # units the step prefills
    mu = lam_per_ms * (step_ms + x * unit_ms)
    # prompts arriving during the step, up to far in the Poisson tail (the last entry: that many or more)
    a = np.arange(min(top // m, math.ceil(mu[-1] + 10.0 * math.sqrt(mu[-1]) + 10.0)) + 2)
    logf = np.array([math.lgamma(v + 1.0) for v in a])
    arrive = np.exp(a[None, :] * np.log(np.maximum(mu[:, None], 1e-300)) - mu[:, None] - logf[None, :])
    arrive[:, -1] = np.maximum(0.0, 1.0 - arrive[:, :-1].sum(axis=1))
    src = np.repeat(w, a.size)
    dst = np.minimum(top, (w - x)[:, None] + a[None, :] * m).ravel()
    # stationary law: (P - I)' pi = 0 with its last equation replaced by sum(pi) = 1 (irreducible: every
    # state reaches 0 without arrivals); P has a.size entries per row: a sparse solve (dense: 60 ms at 1000)
    keep = dst < top
    lhs = sparse.csc_matrix(
        (np.r_[arrive.ravel()[keep], -np.ones(top), np.ones(top + 1)],
         (np.r_[dst[keep], w[:-1], np.full(top + 1, top)], np.r_[src[keep], w[:-1], w])),
        shape=(top + 1, top + 1),
    )  # fmt: skip
    pi = np.clip(spsolve(lhs, np.r_[np.zeros(top), 1.0]), 0.0, None)
    share = np.bincount(x, weights=pi / pi.sum(), minlength=min(cap, top) + 1)
    return PrefillPerStep(share, unit_ms, m)


def agg_group(t: EngineTable, replicas: int, rate_rps: float, w: Workload, *, ca2: float = 1.0,
              full: bool = True) -> GroupPrediction:  # fmt: skip
    dp = t.dp
    lam_rank = rate_rps / 1000.0 / replicas / dp
    pre, tokens = _prefill(t, w)
    u = lam_rank * pre.mean_ms
    if u >= 1.0:
        return GroupPrediction(
            INF, INF, utilisation=u, reason=f"prefill work alone saturates the engine ({u:.2f})"
        )
    limit = t.max_batch(w.decode_context_tokens)
    n = _decode_fixed_point(t, lam_rank * dp, w.mean_osl, 1.0 / (1.0 - u), limit)
    if n is None or batch_tail(n, 99.0, ca2) > limit:
        return GroupPrediction(INF, INF, reason=f"decode batch exceeds the engine's limit of {limit:.0f}")
    chunk = t.token_budget - n / dp
    if chunk < 1:
        return GroupPrediction(INF, INF, reason="decodes fill the whole token budget")
    step = float(t.step_ms(n + 1.0))
    chunks = np.maximum(1.0, np.ceil(tokens / chunk))
    service = Service.of(pre.samples + chunks * step)
    rho = lam_rank * service.mean_ms
    if rho >= 1.0:
        return GroupPrediction(
            INF, INF, mean_batch=n, utilisation=rho, reason=f"prefill queue saturated ({rho:.2f})"
        )
    residual = (1.0 - math.exp(-n)) * step / 2  # an arriving prompt waits for the running decode step
    # prompts that arrive while this one waits share its step when the budget has room: its first
    # token then also waits for their chunks (bulk service)
    pw, cond = wait_params(lam_rank, service, 1, ca2)
    room = max(0.0, chunk / max(1.0, float(np.mean(tokens))) - 1.0)
    residual += min(lam_rank * pw * cond, room) * pre.mean_ms
    ttft_mean = mean_response_ms(lam_rank, service, 1, ca2) + residual
    itl_mean = step / (1.0 - u)
    if not full:
        return GroupPrediction(_latency(ttft_mean, None), _latency(itl_mean, None), n, rho)
    ttft_p = response_percentiles(lam_rank, service, 1, ca2) + residual
    mixed_frac = min(1.0, lam_rank * float(np.mean(chunks)) * itl_mean)  # steps that prefill (one per chunk)
    per_step = prefill_per_step(lam_rank, step, pre.mean_ms, chunk / max(1.0, float(np.mean(tokens))))
    if per_step is None:  # prompts of many chunks: one chunk (its mean time) per prefilling step
        per_step = PrefillPerStep(np.array([0.0, 1.0]), pre.mean_ms / float(np.mean(chunks)), 1)
    carried = per_step.share[1:]
    shares = np.concatenate([[1.0 - mixed_frac], mixed_frac * carried / max(carried.sum(), 1e-300)])
    plain = np.asarray(t.step_ms(batch_quantiles(n, _LEVELS, ca2)))
    values = np.concatenate([plain + x * per_step.unit_ms for x in range(shares.size)])
    weights = np.concatenate([np.full(plain.size, f) for f in shares])
    order = np.argsort(values)
    cdf = np.cumsum(weights[order]) / weights.sum()
    idx = np.minimum(np.searchsorted(cdf, np.asarray(PERCENTILES) / 100.0), values.size - 1)
    return GroupPrediction(_latency(ttft_mean, ttft_p), _latency(itl_mean, values[order][idx]), n, rho)


__all__ = ["INF", "STATS", "GroupPrediction", "Latency", "agg_group", "decode_group", "prefill_group"]
