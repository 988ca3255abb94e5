"""One engine's speed, tabulated once for a workload: what the fleet search evaluates millions of times.

``EngineTable`` holds batch-1 prefill time over prompt length and the decode step time over the
engine-wide batch at the workload's mean decode context, plus the batch limits (KV capacity and the
scheduler's ``max_num_seqs``). It is built from any ``PerfSource`` (point values, or the pessimistic
edge of the source's band) or from a study's prefill points and decode sweeps; lookups interpolate
linearly (prefill in tokens, decode in batch).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from .candidates import Candidate
from .serving import SchedulerConfig
from .sources.base import PerfSource
from .surfaces import DecodeSweep, PrefillPoint
from .workload import Workload

DECODE_GRID_POINTS = 40
PREFILL_GRID_POINTS = 24


@dataclass(frozen=True, slots=True, eq=False)  # identity hash: tables are keys of the search's dicts
class EngineTable:
    candidate: Candidate
    kv_capacity_tokens: int
    context_tokens: float  # decode context the ITL column was evaluated at
    prefill_tokens: np.ndarray  # ascending prompt tokens
    prefill_ms: np.ndarray  # batch-1 TTFT at those tokens
    decode_batch: np.ndarray  # ascending engine-wide batches
    decode_ms: np.ndarray  # one decode step at those batches
    token_budget: int = 8192  # per-step tokens of an agg engine (chunked prefill)
    max_num_seqs: int = 1024  # running requests per attention-DP rank
    # the decode column as Python floats, for scalar lookups (None if the batches are not strictly ascending)
    _steps: tuple[list[float], list[float]] | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        b, ms = np.asarray(self.decode_batch, float), np.asarray(self.decode_ms, float)
        ok = b.ndim == 1 and b.size >= 2 and b.shape == ms.shape and bool(np.all(np.diff(b) > 0))
        object.__setattr__(self, "_steps", (b.tolist(), ms.tolist()) if ok else None)

    @property
    def num_gpus(self) -> int:
        return self.candidate.num_gpus

    @property
    def dp(self) -> int:
        return self.candidate.attention_dp_size

    def prefill_time_ms(self, tokens: np.ndarray) -> np.ndarray:
        """Batch-1 prefill of ``tokens`` prompt tokens; linear through the table, proportional outside it."""
        x, y = self.prefill_tokens, self.prefill_ms
        t = np.asarray(tokens, dtype=float)
        if x.size == 1:
            return y[0] * t / x[0]
        out = np.interp(t, x, y)
        lo_slope, hi_slope = y[0] / x[0], (y[-1] - y[-2]) / (x[-1] - x[-2])
        out = np.where(t < x[0], t * lo_slope, out)
        return np.where(t > x[-1], y[-1] + (t - x[-1]) * hi_slope, out)

    def step_ms(self, batch: float | np.ndarray) -> np.ndarray | float:
        """Decode step at an engine-wide batch (clamped to the table's first point below it)."""
        if self._steps is not None and isinstance(batch, float):
            return _interp_scalar(batch, *self._steps)
        return np.interp(batch, self.decode_batch, self.decode_ms)

    def max_batch(self, request_tokens: float) -> float:
        """Most requests of ``request_tokens`` KV tokens decoding at once (KV, max_num_seqs, the table)."""
        kv = self.kv_capacity_tokens / max(1.0, request_tokens)
        return float(min(kv, self.max_num_seqs * self.dp, self.decode_batch[-1]))


def _interp_scalar(x: float, xs: list[float], ys: list[float]) -> float:
    """``np.interp`` for one float, to the bit (same branches and arithmetic), without numpy's per-call
    cost: the fleet search looks up millions of single decode steps."""
    if x != x:
        return x
    if x < xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    j = bisect.bisect_right(xs, x) - 1
    if xs[j] == x:
        return ys[j]
    y = (ys[j + 1] - ys[j]) / (xs[j + 1] - xs[j]) * (x - xs[j]) + ys[j]
    return y if y == y else float(np.interp(x, xs, ys))  # numpy's own recovery from inf - inf


def _prefill_grid(tokens: np.ndarray) -> np.ndarray:
    u = np.unique(np.maximum(1, np.round(tokens)))
    if u.size <= PREFILL_GRID_POINTS:
        return u.astype(float)
    return np.unique(np.round(np.geomspace(u[0], u[-1], PREFILL_GRID_POINTS)))


def _batch_grid(cap: float, dp: int) -> np.ndarray:
    top = max(float(dp), cap)
    return np.unique(np.maximum(dp, np.round(np.geomspace(dp, top, DECODE_GRID_POINTS) / dp) * dp))


def engine_table(
    source: PerfSource,
    candidate: Candidate,
    workload: Workload,
    *,
    band: bool = False,
    scheduler: SchedulerConfig | None = None,
) -> EngineTable:
    """Tabulate ``candidate`` for ``workload``; ``band=True`` takes the high edge of the source's band."""
    cfg = scheduler or SchedulerConfig.for_backend(source.stack.backend)
    kv = int(source.kv_capacity_tokens(candidate))
    ctx = workload.decode_context_tokens
    x = _prefill_grid(workload.prefill_tokens)
    cap = min(kv / max(1.0, ctx), cfg.max_num_seqs * candidate.attention_dp_size)
    b = _batch_grid(cap, candidate.attention_dp_size)
    c = np.full_like(b, ctx)
    if band:
        ttft = source.prefill_ttft_band(candidate, x)[1]
        itl = source.decode_itl_band(candidate, b, c)[1]
    else:
        ttft = source.prefill_ttft_ms(candidate, x)
        itl = source.decode_itl_ms(candidate, b, c)
    return EngineTable(candidate, kv, ctx, x, np.asarray(ttft, float), b, np.asarray(itl, float),
                       cfg.token_budget, cfg.max_num_seqs)  # fmt: skip


def tables_from_points(
    points: list[PrefillPoint], sweeps: list[DecodeSweep], scheduler: SchedulerConfig | None = None
) -> list[EngineTable]:
    """Tables from a study's own samples (one prefill point at the ISL, one decode sweep per engine)."""
    cfg = scheduler or SchedulerConfig()
    by_cand = {p.candidate: p for p in points}
    out = []
    for s in sweeps:
        p = by_cand.get(s.candidate)
        if p is None:
            continue
        out.append(
            EngineTable(
                s.candidate,
                s.kv_capacity_tokens,
                float(s.context_tokens),
                np.array([float(p.isl)]),
                np.array([p.ttft_ms]),
                np.asarray(s.concurrency, float),
                np.asarray(s.itl_ms, float),
                cfg.token_budget,
                cfg.max_num_seqs,
            )
        )
    return out


__all__ = ["EngineTable", "engine_table", "tables_from_points"]
