"""Queueing formulas capacity planning uses (see docs/capacity.md for why these and how well they hold).

- Prefill: a G/G/c FCFS queue of ``c`` prefill servers (engines x attention-DP ranks). The chance to
  wait is Erlang C of M/M/c; the wait, when there is one, is exponential with the Allen-Cunneen
  mean ``E[S] / (c (1 - rho)) * (ca2 + cs2) / 2``. Exact for M/M/c, exact in the mean for M/D/1 and
  M/G/1 (Pollaczek-Khinchine); response-time percentiles come from convolving that wait with the
  service-time samples of the workload.
- Decode: requests occupy decode slots for their whole output (an infinite-server queue), so the
  number decoding is Poisson with mean ``N = rate x decode time`` (Little's law); bursty arrivals
  widen it (negative binomial with variance ``N (1 + ca2) / 2``). A token sees the batch of the step
  it is in: the size-biased distribution, ``1 + Poisson(N)`` for Poisson.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PERCENTILES = (50.0, 90.0, 99.0)


def erlang_c(servers: int, offered_load: float) -> float:
    """P(wait > 0) in M/M/c with ``offered_load`` = arrival rate x mean service time (< servers)."""
    c, a = servers, offered_load
    if a <= 0:
        return 0.0
    if a >= c:
        return 1.0
    inv_b = 1.0  # Erlang B by the stable recursion, then C from B
    for k in range(1, c + 1):
        inv_b = 1.0 + inv_b * k / a
    b = 1.0 / inv_b
    rho = a / c
    return b / (1.0 - rho + rho * b)


@dataclass(frozen=True, slots=True)
class Service:
    """Service-time samples (ms, sorted) with their mean and squared CV, computed once."""

    samples: np.ndarray
    mean_ms: float
    cs2: float

    @classmethod
    def of(cls, service_ms: np.ndarray | Service) -> Service:
        if isinstance(service_ms, Service):
            return service_ms
        s = np.sort(np.atleast_1d(np.asarray(service_ms, dtype=float)))
        if s.size == 1:
            return cls(s, float(s[0]), 0.0)
        m = float(s.mean())
        return cls(s, m, float(s.var()) / m**2 if m > 0 else 0.0)


def wait_params(
    rate_per_ms: float, service_ms: np.ndarray | Service, servers: int, ca2: float = 1.0
) -> tuple[float, float]:
    """(P(wait > 0), mean wait given a wait, ms). Infinite mean wait when the queue is unstable."""
    sv = Service.of(service_ms)
    a = rate_per_ms * sv.mean_ms
    rho = a / servers
    if rho >= 1.0:
        return 1.0, math.inf
    pw = erlang_c(servers, a)
    cond_mean = sv.mean_ms / (servers * (1.0 - rho)) * (ca2 + sv.cs2) / 2.0
    return pw, cond_mean


def mean_response_ms(
    rate_per_ms: float, service_ms: np.ndarray | Service, servers: int, ca2: float = 1.0
) -> float:
    sv = Service.of(service_ms)
    pw, cond = wait_params(rate_per_ms, sv, servers, ca2)
    return pw * cond + sv.mean_ms


def response_percentiles(
    rate_per_ms: float, service_ms: np.ndarray | Service, servers: int, ca2: float = 1.0, pcts=PERCENTILES
) -> np.ndarray:
    """Percentiles (ms) of wait + service; the wait is an atom at 0 plus an exponential tail."""
    sv = Service.of(service_ms)
    s = sv.samples
    pw, cond = wait_params(rate_per_ms, sv, servers, ca2)
    q = np.asarray(pcts, dtype=float) / 100.0
    if not math.isfinite(cond):
        return np.full(q.shape, math.inf)
    if pw <= 0 or cond <= 0:
        return np.quantile(s, q, method="inverted_cdf") if s.size > 1 else np.full(q.shape, s[0])
    if s.size == 1 or s[0] == s[-1]:  # one service time: P(T > t) = pw exp(-(t - s) / cond)
        return s[0] + cond * np.maximum(0.0, np.log(pw / np.maximum(1e-300, 1 - q)))
    lo = np.full(q.shape, s[0])
    hi = s[-1] + cond * (np.maximum(0.0, np.log(max(pw, 1e-12) / np.maximum(1e-12, 1 - q))) + 1.0)
    for _ in range(48):  # bisection on F(t) = mean_i [t >= s_i] (1 - pw exp(-(t - s_i) / cond))
        mid = (lo + hi) / 2
        d = mid[:, None] - s[None, :]
        cdf = np.where(d >= 0, 1.0 - pw * np.exp(-np.maximum(d, 0) / cond), 0.0).mean(axis=1)
        below = cdf < q
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return hi


def _poisson_ppf(q: np.ndarray, mean: float) -> np.ndarray:
    """Smallest k with P(K <= k) >= q for K ~ Poisson(mean) (scipy's ppf, without its per-call overhead)."""
    from scipy import special  # here, not at import: the CLI imports this module to build its parser

    spread = 12 * math.sqrt(mean) + 30
    low, top = max(0, int(mean - spread)), int(mean + spread)
    cdf = special.pdtr(np.arange(low, top + 1), mean)  # below ``low`` the CDF is < 1e-30
    return (low + np.minimum(np.searchsorted(cdf, q * (1 - 1e-12)), top - low)).astype(float)


def batch_quantiles(
    mean_batch: float, pcts=PERCENTILES, ca2: float = 1.0, size_biased: bool = True
) -> np.ndarray:
    """Quantiles of the decode batch a token sees when on average ``mean_batch`` requests decode."""
    q = np.asarray(pcts, dtype=float) / 100.0
    n = max(mean_batch, 1e-9)
    var = n * max(1.0, (1.0 + ca2) / 2.0)
    if var <= n * (1 + 1e-9):
        base = _poisson_ppf(q, n)
    else:  # negative binomial with mean n and variance var
        from scipy import stats

        p = n / var
        base = stats.nbinom.ppf(q, n * p / (1 - p), p)
    return base + 1.0 if size_biased else np.maximum(base, 1.0)


def batch_tail(mean_batch: float, pct: float = 99.0, ca2: float = 1.0) -> float:
    """The ``pct`` percentile of requests decoding at once (for KV and max_num_seqs limits).

    Cornish-Fisher for the Poisson / negative binomial (within one request of the exact quantile
    from a mean of ~1 up; the search asks this thousands of times per scenario).
    """
    n = max(mean_batch, 1e-9)
    var = n * max(1.0, (1.0 + ca2) / 2.0)
    if pct != 99.0:
        from scipy import stats

        z = float(stats.norm.ppf(pct / 100.0))
    else:
        z = 2.3263478740408408
    skew = (2 * var - n) / (var * math.sqrt(var))  # Poisson: 1/sqrt(n); NB: (2 var - n) / var^1.5
    return n + math.sqrt(var) * (z + (z * z - 1) * skew / 6)


__all__ = [
    "PERCENTILES",
    "Service",
    "batch_quantiles",
    "batch_tail",
    "erlang_c",
    "mean_response_ms",
    "response_percentiles",
    "wait_params",
]
