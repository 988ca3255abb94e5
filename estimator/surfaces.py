"""Sample a performance source into the points and surfaces the selection and artifacts use.

- ``prefill_point``: TTFT and tokens/s/GPU of one candidate at the workload's ISL.
- ``decode_sweep``: ITL and tokens/s/GPU of one candidate over concurrency at context ISL+OSL/2.
- ``prefill_surface``: the selected prefill engine over ISL, up to the model's context, denser near the ISL.
- ``decode_surface``: the selected decode engine over (active-KV fraction × context length).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .candidates import Candidate
from .sources.base import PerfSource


def prefill_thpt_per_gpu(candidate: Candidate, isl: np.ndarray, ttft_ms: np.ndarray) -> np.ndarray:
    """Input tokens/s/GPU of a prefill engine (each attention-DP rank prefills its own request)."""
    return isl / ttft_ms * 1000.0 / candidate.num_gpus * candidate.attention_dp_size


def decode_thpt_per_gpu(candidate: Candidate, batch: np.ndarray, itl_ms: np.ndarray) -> np.ndarray:
    """Output tokens/s/GPU of a decode engine with ``batch`` requests in flight."""
    return batch / itl_ms * 1000.0 / candidate.num_gpus


@dataclass(frozen=True, slots=True)
class PrefillPoint:
    candidate: Candidate
    isl: int
    ttft_ms: float
    thpt_per_gpu: float
    ttft_low_ms: float
    ttft_high_ms: float


@dataclass(frozen=True, slots=True)
class DecodeSweep:
    """ITL over concurrency at one context; ``kv_usage`` = concurrency × context / capacity."""

    candidate: Candidate
    kv_capacity_tokens: int
    context_tokens: int
    concurrency: np.ndarray
    itl_ms: np.ndarray
    thpt_per_gpu: np.ndarray
    itl_low_ms: np.ndarray
    itl_high_ms: np.ndarray

    @property
    def kv_usage(self) -> np.ndarray:
        return self.concurrency * self.context_tokens / self.kv_capacity_tokens


@dataclass(frozen=True, slots=True)
class PrefillSurface:
    candidate: Candidate
    isl: np.ndarray
    ttft_ms: np.ndarray
    thpt_per_gpu: np.ndarray
    ttft_low_ms: np.ndarray
    ttft_high_ms: np.ndarray


@dataclass(frozen=True, slots=True)
class DecodeSurface:
    """Flat arrays over a (context × concurrency) grid, as Dynamo's decode raw_data stores them."""

    candidate: Candidate
    kv_capacity_tokens: int
    kv_usage: np.ndarray
    context_tokens: np.ndarray
    concurrency: np.ndarray
    itl_ms: np.ndarray
    thpt_per_gpu: np.ndarray
    itl_low_ms: np.ndarray
    itl_high_ms: np.ndarray


def concurrency_levels(max_concurrency: int, num_points: int, step: int = 1) -> np.ndarray:
    """1..max, log-spaced (dense where ITL bends), multiples of ``step`` (the attention-DP size)."""
    max_concurrency = max(step, max_concurrency - max_concurrency % step)
    raw = np.geomspace(1, max_concurrency, num=num_points)
    levels = np.unique(np.maximum(step, np.round(raw / step) * step).astype(int))
    return levels[levels <= max_concurrency]


def max_concurrency_for(kv_capacity_tokens: int, request_tokens: int, cap: int) -> int:
    """How many requests of ``request_tokens`` fit in the KV cache (Dynamo: capacity // (isl+osl))."""
    return int(min(cap, kv_capacity_tokens // max(1, request_tokens)))


def prefill_point(source: PerfSource, candidate: Candidate, isl: int) -> PrefillPoint:
    x = np.array([float(isl)])
    ttft = source.prefill_ttft_ms(candidate, x)
    lo, hi = source.prefill_ttft_band(candidate, x)
    return PrefillPoint(
        candidate, isl, float(ttft[0]), float(prefill_thpt_per_gpu(candidate, x, ttft)[0]), float(lo[0]), float(hi[0])
    )


def decode_sweep(
    source: PerfSource, candidate: Candidate, isl: int, osl: int, *, num_points: int, cap: int
) -> DecodeSweep | None:
    """None when the KV cache cannot hold one request of ISL+OSL."""
    capacity = source.kv_capacity_tokens(candidate)
    n_max = max_concurrency_for(capacity, isl + osl, cap)
    if n_max < candidate.attention_dp_size:
        return None
    ctx = isl + osl // 2
    conc = concurrency_levels(n_max, num_points, candidate.attention_dp_size).astype(float)
    context = np.full_like(conc, ctx)
    itl = source.decode_itl_ms(candidate, conc, context)
    lo, hi = source.decode_itl_band(candidate, conc, context)
    return DecodeSweep(candidate, capacity, ctx, conc, itl, decode_thpt_per_gpu(candidate, conc, itl), lo, hi)


def isl_grid(isl: int, max_isl: int, num_points: int) -> np.ndarray:
    """ISLs over [64, max_isl]: half linear (Dynamo's spacing), half geometric around the workload ISL
    (÷4 .. ×4), plus a geometric fill so no two neighbours are more than 1.5× apart (a cubic over ISL
    then follows the compute/memory kink of short prompts)."""
    max_isl = max(max_isl, 128)
    lo = min(64, max_isl // 2)
    coarse = np.linspace(lo, max_isl, num=max(2, num_points // 2))
    near = np.geomspace(max(lo, isl / 4), min(max_isl, isl * 4), num=max(2, num_points - num_points // 2))
    fill = np.geomspace(lo, max_isl, num=int(np.ceil(np.log2(max_isl / lo) / np.log2(1.5))) + 1)
    target = float(min(isl, max_isl))
    pts = np.unique(np.round(np.concatenate([coarse, near, fill, [target]])))
    kept = [pts[0]]
    for x in pts[1:]:  # near-duplicates make a cubic spline wiggle: keep points ≥ 3 % apart
        if x / kept[-1] >= 1.03 or x == pts[-1]:
            kept.append(x)
        elif x == target:
            kept[-1] = x
    return np.array(kept, dtype=float)


def decode_contexts(isl: int, osl: int, max_context: int, num_contexts: int) -> np.ndarray:
    """Context lengths on the rows of the 100-row linear grid Dynamo's planner interpolates onto.

    The planner lays ``linspace(min, max, 100)`` over the sampled contexts and snaps lookups to a row;
    sampling on those rows (and on the workload's context ISL+OSL/2 exactly, with its neighbours)
    keeps its cubic from bridging wide gaps where tokens/s/GPU changes like 1/context.
    """
    ctx = isl + osl // 2
    top = max(ctx, max_context - osl)
    k = max(2, int(np.ceil(99 * ctx / top)))
    step = ctx / k
    rows = np.unique(np.concatenate([np.linspace(1, 99, num_contexts).round(), [k - 1, k, k + 1]]))
    rows = rows[(rows >= 1) & (rows <= 99)]
    out = np.unique(np.round(np.concatenate([rows * step, [min(128.0, ctx)]]))).astype(int)
    return out[out >= 1]


def prefill_surface(
    source: PerfSource, candidate: Candidate, *, isl: int, max_isl: int, num_points: int
) -> PrefillSurface:
    x = isl_grid(isl, max_isl, num_points)
    ttft = source.prefill_ttft_ms(candidate, x)
    lo, hi = source.prefill_ttft_band(candidate, x)
    return PrefillSurface(candidate, x, ttft, prefill_thpt_per_gpu(candidate, x, ttft), lo, hi)


def decode_surface(
    source: PerfSource,
    candidate: Candidate,
    *,
    isl: int,
    osl: int,
    max_context: int,
    num_contexts: int,
    num_concurrencies: int,
    cap: int,
) -> DecodeSurface:
    """Contexts from short to near the model's limit on the planner's grid rows (see ``decode_contexts``),
    concurrency up to what KV holds. Each context row spans KV usage from one request to a full cache,
    so Dynamo's planner can look up any (usage, context) cell.
    """
    capacity = source.kv_capacity_tokens(candidate)
    step = candidate.attention_dp_size
    ctxs = decode_contexts(isl, osl, max_context, num_contexts)
    rows_c, rows_x = [], []
    for ctx in ctxs:
        n_max = max_concurrency_for(capacity, int(ctx + osl // 2), cap)
        if n_max < step:
            continue
        conc = concurrency_levels(n_max, num_concurrencies, step)
        rows_c.append(conc.astype(float))
        rows_x.append(np.full(conc.shape, float(ctx)))
    if not rows_c:
        raise ValueError(f"{candidate.name}: KV cache of {capacity} tokens holds no decode request")
    conc = np.concatenate(rows_c)
    ctx_arr = np.concatenate(rows_x)
    itl = source.decode_itl_ms(candidate, conc, ctx_arr)
    lo, hi = source.decode_itl_band(candidate, conc, ctx_arr)
    return DecodeSurface(
        candidate=candidate,
        kv_capacity_tokens=capacity,
        kv_usage=conc * ctx_arr / capacity,
        context_tokens=ctx_arr,
        concurrency=conc,
        itl_ms=itl,
        thpt_per_gpu=decode_thpt_per_gpu(candidate, conc, itl),
        itl_low_ms=lo,
        itl_high_ms=hi,
    )


# ---- planner data: points Dynamo 1.6's linear regressions fit right ---------------------------------
DYNAMO_PREFILL_MAX_TOKENS = 32768  # Dynamo's profiler caps prefill sweeps here (profiler/utils/defaults.py)


def planner_isl_grid(isl: int, max_isl: int, num_points: int = 24) -> np.ndarray:
    """ISLs for Dynamo 1.6's prefill regression (wall time linear in prefill tokens): a ×2 band each
    side of the workload ISL, geometric (densest at the ISL), within Dynamo's 32k cap when the ISL is
    below it. Over a ×4 range the quadratic attention term is small, so the fit holds at the ISL."""
    top = max(isl, min(max_isl, 2 * isl))
    if isl <= DYNAMO_PREFILL_MAX_TOKENS:
        top = min(top, DYNAMO_PREFILL_MAX_TOKENS)
    lo = max(1.0, isl / 2)
    half = max(2, num_points // 2)
    pts = np.concatenate([np.geomspace(lo, isl, half + 1), np.geomspace(isl, max(top, isl), half)])
    return np.unique(np.round(pts))


def planner_prefill_surface(
    source: PerfSource, candidate: Candidate, *, isl: int, max_isl: int, num_points: int = 24
) -> PrefillSurface:
    x = planner_isl_grid(isl, max_isl, num_points)
    ttft = source.prefill_ttft_ms(candidate, x)
    lo, hi = source.prefill_ttft_band(candidate, x)
    return PrefillSurface(candidate, x, ttft, prefill_thpt_per_gpu(candidate, x, ttft), lo, hi)


def planner_decode_surface(
    source: PerfSource,
    candidate: Candidate,
    *,
    isl: int,
    osl: int,
    best_concurrency: int,
    max_context: int,
    cap: int,
    num_contexts: int = 5,
    num_concurrencies: int = 8,
) -> DecodeSurface:
    """Decode points for Dynamo 1.6's decode regression (wall time linear in requests and KV tokens):
    contexts ×½..×2 around ISL+OSL/2 and, at each, concurrencies ¼..2× the selected operating point
    (within what KV holds), so the fit crosses the ITL target where our surface does."""
    capacity = source.kv_capacity_tokens(candidate)
    step = candidate.attention_dp_size
    ctx0 = isl + osl // 2
    top_ctx = max(ctx0, max_context - osl)
    ctxs = np.unique(np.round(np.clip(ctx0 * np.geomspace(0.5, 2.0, num_contexts), 1, top_ctx)))
    if ctx0 not in ctxs:
        ctxs = np.unique(np.append(ctxs, ctx0))
    rows_c, rows_x = [], []
    for ctx in ctxs:
        n_max = min(cap, int(capacity // max(1, ctx)))
        if n_max < step:
            continue
        hi = max(step, min(n_max, 2 * best_concurrency))
        lo = max(step, min(hi, best_concurrency // 4))
        raw = np.geomspace(lo, hi, num_concurrencies)
        conc = np.unique(np.maximum(step, np.round(raw / step) * step)).astype(float)
        rows_c.append(conc[conc <= n_max])
        rows_x.append(np.full(rows_c[-1].shape, float(ctx)))
    if not rows_c:
        raise ValueError(f"{candidate.name}: KV cache of {capacity} tokens holds no decode request")
    conc = np.concatenate(rows_c)
    ctx_arr = np.concatenate(rows_x)
    itl = source.decode_itl_ms(candidate, conc, ctx_arr)
    lo_b, hi_b = source.decode_itl_band(candidate, conc, ctx_arr)
    return DecodeSurface(
        candidate=candidate,
        kv_capacity_tokens=capacity,
        kv_usage=conc * ctx_arr / capacity,
        context_tokens=ctx_arr,
        concurrency=conc,
        itl_ms=itl,
        thpt_per_gpu=decode_thpt_per_gpu(candidate, conc, itl),
        itl_low_ms=lo_b,
        itl_high_ms=hi_b,
    )
