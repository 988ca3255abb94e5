"""Probabilities of meeting an SLA target, from a source's 90 % band alone.

Every ``PerfSource`` answers with a band (``prefill_ttft_band``, ``decode_itl_band``: (low, high) ms,
a two-sided 90 % interval; zero width means certain). We read a band as a lognormal whose 5 % and
95 % points are its ends:

    log latency ~ Normal(mu, sigma),  mu = (log low + log high) / 2,
                                      sigma = (log high - log low) / (2 * 1.6449)

so ``P(latency <= target) = Phi((log target - mu) / sigma)``. This needs nothing but the band, so it
works for any source (raw AIC: certain; regression: the prior's width) and is the default of the
source contract's ``PerfSource.prob_within``. A zero-width band gives 1 when the value is within the
target and 0 otherwise, i.e. the point-estimate rule. A source whose predictive is not a lognormal
(a calibration: Student-t in log, whose tails the band's ends do not show) answers with its own CDF.

Several targets (TTFT and ITL) are combined by ``prob_all_within``: from the source's joint draws
(``PerfSource.latency_draws``) when the source knows how its errors move together
(``draws_are_joint``, a calibration: one scale per phase shared by the engines, TTFT and TPOT of one
deployment drawn from the same parameter vector), else as independent, ``P(all) = prod P(each)``
(``prob_all``). With positively correlated errors the product is a lower bound of the joint probability.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .sources.base import LatencyQuery, PerfSource

NUM_DRAWS = 4000  # joint draws behind a probability: sampling sd <= 0.8 percentage points
BAND_Z = 1.6448536269514722  # a 90 % two-sided band ends at the 5 % and 95 % points: z = Phi^-1(0.95)
_CERTAIN_REL = 1e-9  # relative band width below which a band counts as zero width


def lognormal_from_band(low: Any, high: Any) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of log latency whose 5 %/95 % points are ``low``/``high`` (sigma 0: certain)."""
    lo = np.asarray(low, dtype=float)
    hi = np.asarray(high, dtype=float)
    if np.any(lo <= 0) or np.any(hi < lo):
        raise ValueError("a band needs 0 < low <= high")
    mu = 0.5 * (np.log(lo) + np.log(hi))
    sigma = (np.log(hi) - np.log(lo)) / (2 * BAND_Z)
    return mu, np.where(hi - lo <= _CERTAIN_REL * hi, 0.0, sigma)


_ERFC = np.frompyfunc(math.erfc, 1, 1)


def normal_cdf(x: Any) -> np.ndarray:
    """Standard normal CDF, elementwise, from the standard library's erfc (full double precision): importing
    scipy.special for it cost ~0.2 s of every CLI run, whose report always gives probabilities."""
    return np.asarray(_ERFC(-np.asarray(x, dtype=float) / math.sqrt(2.0)), dtype=float) * 0.5


def check_targets(target: Any) -> np.ndarray:
    """``target`` as a float array, or ValueError unless every value is positive and finite."""
    t = np.asarray(target, dtype=float)
    if not np.all(t > 0) or not np.all(np.isfinite(t)):
        raise ValueError(f"target must be a positive finite number, got {target!r}")
    return t


def prob_within(target: Any, low: Any, high: Any) -> np.ndarray:
    """P(latency <= ``target``) for each band; elementwise over arrays of bands (and of targets)."""
    t = check_targets(target)
    mu, sigma = lognormal_from_band(low, high)
    safe = np.where(sigma > 0, sigma, 1.0)
    p = normal_cdf((np.log(t) - mu) / safe)
    certain = (np.exp(mu) <= t * (1 + 1e-12)).astype(float)
    return np.where(sigma > 0, p, certain)


def prob_all(*probs: Any) -> np.ndarray:
    """P(every target is met) from the per-target probabilities, taken as independent (see module doc)."""
    out = np.ones(np.broadcast(*[np.asarray(p, float) for p in probs]).shape) if probs else np.ones(())
    for p in probs:
        out = out * np.asarray(p, dtype=float)
    return out


def quantile(q: float, low: Any, high: Any) -> np.ndarray:
    """The ``q`` quantile (0 < q < 1) of the band's lognormal, ms."""
    from scipy.special import ndtri

    mu, sigma = lognormal_from_band(low, high)
    return np.exp(mu + sigma * float(ndtri(q)))


def draw(low: Any, high: Any, z: Any) -> np.ndarray:
    """Latencies for standard-normal draws ``z`` (broadcast against the bands): exp(mu + sigma z); a
    zero-width band gives its value exactly."""
    mu, sigma = lognormal_from_band(low, high)
    z = np.asarray(z, dtype=float)
    return np.where(sigma > 0, np.exp(mu + sigma * z), np.asarray(low, dtype=float) + 0.0 * z)


def band_draws(
    low: Any, high: Any, groups: Sequence[Hashable], n: int, rng: np.random.Generator
) -> np.ndarray:
    """(n, len(groups)) draws from each band's lognormal, one standard-normal quantile per distinct group
    (shared by the columns of that group, independent between groups): the draws of a source that knows
    nothing beyond its bands (``PerfSource.latency_draws``)."""
    index = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    z = rng.standard_normal((n, len(index)))
    cols = np.array([index[g] for g in groups], dtype=int)
    return draw(np.asarray(low, float)[None, :], np.asarray(high, float)[None, :], z[:, cols])


def prob_all_met(draws: np.ndarray, targets_ms: Any) -> float:
    """Share of the joint draws (rows) in which every column is within its target."""
    d = np.asarray(draws, dtype=float)
    t = np.asarray(targets_ms, dtype=float) * (1 + 1e-12)
    return float(np.mean(np.all(d <= t[None, :], axis=1)))


def prob_all_within(
    source: PerfSource, queries: Sequence[LatencyQuery], targets_ms: Sequence[float], *,
    n: int = NUM_DRAWS, seed: int = 0,
) -> float:  # fmt: skip
    """P(every query's latency is within its target): from joint draws when the source has them
    (``draws_are_joint``), else the product of the source's marginals (``PerfSource.prob_within``, exact)."""
    if len(queries) != len(targets_ms):
        raise ValueError("one target per query")
    if source.draws_are_joint:
        return prob_all_met(source.latency_draws(queries, n, np.random.default_rng(seed)), targets_ms)
    return float(prob_all(*source.prob_within(queries, targets_ms)))


__all__ = [
    "BAND_Z", "NUM_DRAWS", "band_draws", "check_targets", "draw", "lognormal_from_band", "prob_all",
    "prob_all_met", "prob_all_within", "prob_within", "quantile",
]  # fmt: skip
