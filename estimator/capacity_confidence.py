"""Fleet sizing by the probability of meeting the SLA (``sla-estimate plan --confidence C``).

A fleet's latency depends on how fast its engines really are, which the source knows only up to its band.
We take ``SIZING_DRAWS`` joint draws of every engine table from the source (``PerfSource.latency_draws``:
a calibration's posterior, where one phase scale moves every engine alike; otherwise one quantile per
engine and phase, read from the bands), and call

    P(fleet) = share of the draws in which the fleet meets every target at its load

(for a closed loop of clients: at the rate those clients settle at in that draw). The search itself runs on
tables at one quantile ``q`` of every point's band, for ``q`` on a ladder from ``C`` towards 1
(``1 - (1 - C) / 2^k``): a fleet found at ``q`` is kept when its P is at least ``C``; the ladder stops once
the best fleet of a step is kept, since every shape only grows (or, for a GPU budget, slows) higher up.
A band's ``C`` quantile is stricter than the joint draws need (one phase scale moves every point, and a
fleet meets when *both* groups do), so each kept fleet is then sized on P itself: every split of its shape
from the point estimate's GPUs to its own is tried, fewest GPUs first (for a GPU budget: every split of the
budget, at rates up to the point estimate's). Each kept fleet shows its point-estimate latencies (at its
clients' point-estimate rate for a closed loop) and its P. The draws are shared by all steps and fleets
(common random numbers), so P is a deterministic function of the fleet for a given seed; the fleets are
chosen on the same draws, so a P just above ``C`` leans optimistic by up to the sampling sd (2.5 points at
400 draws).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .capacity import PlanResult, _Search, plan_fleets
from .capacity_engine import EngineTable
from .capacity_types import Fleet, Load, Sla
from .confidence import quantile
from .deployment import Deployment, ServingMode, WorkerRole
from .sources.base import LatencyQuery, PerfSource
from .workload import Workload

SIZING_DRAWS = 400  # joint draws behind P(fleet): sampling sd <= 2.5 percentage points
LADDER_STEPS = 6  # quantiles C, then halving the distance to 1 five times (0.9 -> ... 0.997)


def _queries(t: EngineTable) -> list[LatencyQuery]:
    return [LatencyQuery.ttft(t.candidate, x) for x in t.prefill_tokens] + [
        LatencyQuery.itl(t.candidate, b, t.context_tokens) for b in t.decode_batch
    ]


def drawn_tables(
    source: PerfSource, tables: list[EngineTable], n: int, seed: int = 0
) -> list[list[EngineTable]]:
    """``n`` joint draws of every table (one list of tables per draw, in the order of ``tables``); one draw
    when all ``n`` are equal (a source without uncertainty, such as raw AIC: the answer is the same)."""
    queries = [_queries(t) for t in tables]
    flat = [q for qs in queries for q in qs]
    draws = source.latency_draws(flat, n, np.random.default_rng(seed))
    if np.all(draws == draws[:1]):
        draws = draws[:1]
    out = []
    for row in draws:
        at, tabs = 0, []
        for t in tables:
            k, m = t.prefill_tokens.size, t.decode_batch.size
            tabs.append(
                replace(t, prefill_ms=row[at : at + k].copy(), decode_ms=row[at + k : at + k + m].copy())
            )
            at += k + m
        out.append(tabs)
    return out


def quantile_tables(source: PerfSource, tables: list[EngineTable], q: float) -> list[EngineTable]:
    """Every table at the ``q`` quantile of each point's band (a lognormal: ``confidence.quantile``)."""
    out = []
    for t in tables:
        lo_p, hi_p = source.prefill_ttft_band(t.candidate, t.prefill_tokens)
        lo_d, hi_d = source.decode_itl_band(
            t.candidate, t.decode_batch, np.full_like(t.decode_batch, t.context_tokens)
        )
        out.append(replace(t, prefill_ms=quantile(q, lo_p, hi_p), decode_ms=quantile(q, lo_d, hi_d)))
    return out


def ladder(confidence: float) -> list[float]:
    return [1.0 - (1.0 - confidence) / 2**k for k in range(LADDER_STEPS)]


def _shape(dep: Deployment) -> tuple:
    return (dep.mode.value, *((w.role.value, w.candidate.name) for w in dep.workers))


class _Odds:
    """P(fleet) over a fixed set of drawn tables; one search per draw, so evaluations are reused."""

    def __init__(self, drawn: list[list[EngineTable]], w: Workload, sla: Sla, ca2: float, price: float):
        self.searches = [_Search(ts, w, sla, ca2, price) for ts in drawn]

    def __call__(self, dep: Deployment, rate: float, clients: int | None, need: float | None = None) -> float:
        """P(``dep`` meets the SLA at ``rate``, or with ``clients`` closed-loop clients); with ``need``, an
        upper bound below it as soon as the misses rule ``need`` out (rejected fleets cost less)."""
        n = len(self.searches)
        hits = misses = 0
        for s in self.searches:
            r = rate if clients is None else s.closed_loop_rate(dep, clients)
            if r > 0 and s.meets(dep, r):
                hits += 1
            else:
                misses += 1
                if need is not None and (n - misses) / n < need:
                    return (n - misses) / n
        return hits / n


def _restate(
    s: _Search, dep: Deployment, rate: float, clients: int | None, p: float, confidence: float
) -> Fleet:
    """``dep`` with its point-estimate latencies and margins (at ``rate``, or at the rate ``clients`` drive it
    at on the point estimate), its probability, and meets = (P >= C)."""
    if clients is not None:
        rate = s.closed_loop_rate(dep, clients) or rate
    if dep.mode is ServingMode.AGG:
        g = dep.workers[0]
        point = s.agg_fleet(s.by_candidate[g.candidate], g.replicas, rate)
    else:
        pg, dg = dep.group(WorkerRole.PREFILL), dep.group(WorkerRole.DECODE)
        point = s.disagg_fleet(s.by_candidate[pg.candidate], pg.replicas, s.by_candidate[dg.candidate],
                               dg.replicas, rate)  # fmt: skip
    return replace(point, meets_sla=p >= confidence, p_meets_sla=p)


def _splits(dep: Deployment, gpus: int) -> list[Deployment]:
    """Every deployment of ``dep``'s shape (mode and engines) on at most ``gpus`` GPUs, fewest GPUs first."""
    if dep.mode is ServingMode.AGG:
        c = dep.workers[0].candidate
        return [Deployment.agg(c, n) for n in range(1, gpus // c.num_gpus + 1)]
    p, d = dep.group(WorkerRole.PREFILL).candidate, dep.group(WorkerRole.DECODE).candidate
    out = [Deployment.disagg(p, d, x, y) for x in range(1, (gpus - d.num_gpus) // p.num_gpus + 1)
           for y in range(1, (gpus - x * p.num_gpus) // d.num_gpus + 1)]  # fmt: skip
    return sorted(out, key=lambda dep: dep.total_gpus)


def _budget_splits(dep: Deployment, budget: int) -> list[Deployment]:
    """``dep``'s shape on ``budget`` GPUs: every prefill count with every leftover GPU on decode (agg: the
    most replicas that fit)."""
    if dep.mode is ServingMode.AGG:
        c = dep.workers[0].candidate
        return [Deployment.agg(c, budget // c.num_gpus)]
    p, d = dep.group(WorkerRole.PREFILL).candidate, dep.group(WorkerRole.DECODE).candidate
    return [Deployment.disagg(p, d, x, (budget - x * p.num_gpus) // d.num_gpus)
            for x in range(1, (budget - d.num_gpus) // p.num_gpus + 1)]  # fmt: skip


def _cheapest(odds: _Odds, dep: Deployment, rate: float, clients: int | None, p: float, confidence: float,
              floor_gpus: int) -> tuple[Deployment, float]:  # fmt: skip
    """The fleet of ``dep``'s shape with the fewest GPUs (then the highest P) whose P is at least
    ``confidence``, over every split from ``floor_gpus`` (the point estimate's fleet of the shape: with
    C >= 0.5 a fleet the point estimate says misses would have to meet in most draws) to ``dep``'s GPUs.
    Every split, not a descent: even at a fixed rate, more prefill headroom can buy a tighter decode group
    (P is the share of draws where *both* meet), so the cheapest fleets of a shape need not be one removal
    apart; with a fixed number of clients P is not even monotone in replicas (more decode replicas raise
    the rate the clients drive and can overload prefill)."""
    by_gpus: dict[int, list[Deployment]] = {}
    for d in _splits(dep, dep.total_gpus):
        if d.total_gpus >= floor_gpus:
            by_gpus.setdefault(d.total_gpus, []).append(d)
    for gpus in sorted(by_gpus):
        hits = [(q, d) for d in by_gpus[gpus] if (q := odds(d, rate, clients, need=confidence)) >= confidence]
        if hits:
            q, best = max(hits, key=lambda h: h[0])  # the first of equal P
            return best, q
    return dep, p


def _raise_rate(odds: _Odds, dep: Deployment, rate: float, ceiling: float, confidence: float,
                steps: int = 10) -> tuple[float, float] | None:  # fmt: skip
    """For a GPU budget: the largest rate in [``rate``, ``ceiling``] (bisection) at which P stays >= C, and
    that P; None when P is below C already at ``rate``."""
    p = odds(dep, rate, None, need=confidence)
    if p < confidence:
        return None
    if ceiling <= rate:
        return rate, p
    if (top := odds(dep, ceiling, None, need=confidence)) >= confidence:
        return ceiling, top
    lo, hi = rate, ceiling
    for _ in range(steps):
        mid = (lo + hi) / 2
        q = odds(dep, mid, None, need=confidence)
        if q >= confidence:
            lo, p = mid, q
        else:
            hi = mid
    return lo, p


def _best_budget_fleet(
    odds: _Odds, dep: Deployment, rate: float, p: float, budget: int, ceiling: float | None, confidence: float
) -> tuple[Deployment, float, float]:
    """For a GPU budget: ``dep``'s shape at the highest rate with P >= C over every split of the budget
    (each prefill count with the rest of the budget on decode; the quantile step sized its split for its
    own, lower rate), raised at most to the point estimate's rate of the shape (``ceiling``), then with the
    decode replicas that rate does not need dropped (open loop: fewer never meet more often)."""
    if ceiling is None:
        return dep, rate, p
    best = (dep, rate, p)
    for split in _budget_splits(dep, budget):
        raised = _raise_rate(odds, split, best[1], ceiling, confidence)
        if raised is not None and (raised[0] > best[1] or split == best[0]):
            best = (split, *raised)
    dep, rate, p = best
    while dep.mode is ServingMode.DISAGG and dep.group(WorkerRole.DECODE).replicas > 1:
        dg = dep.group(WorkerRole.DECODE)
        fewer = replace(dep, workers=(dep.group(WorkerRole.PREFILL), replace(dg, replicas=dg.replicas - 1)))
        q = odds(fewer, rate, None, need=confidence)
        if q < confidence:
            break
        dep, p = fewer, q
    return dep, rate, p


def _rank(budget: bool):
    """The plan's ranking, with P breaking a tie of GPUs and cost (then the point estimate's margin)."""
    if budget:
        return lambda f: (-f.request_rate, f.total_gpus, f.usd_per_hour, -f.p_meets_sla, f.label())
    return lambda f: (f.total_gpus, f.usd_per_hour, -f.p_meets_sla, -f.min_margin, f.label())


@dataclass(frozen=True, slots=True)
class ConfidentPlan:
    result: PlanResult  # the fleets with P >= C, each with its P
    point_best_p: float | None  # P of the point-estimate plan's best fleet (None: there is none)


def plan_confident(
    source: PerfSource,
    tables: list[EngineTable],
    workload: Workload,
    load: Load,
    sla: Sla,
    *,
    confidence: float,
    price_per_gpu_hour: float,
    modes: tuple[str, ...] = ("agg", "disagg"),
    point: PlanResult | None = None,
    draws: int = SIZING_DRAWS,
    seed: int = 0,
) -> ConfidentPlan:
    """The fleets whose probability of meeting ``sla`` at ``load`` is at least ``confidence``, ranked as
    ``plan_fleets`` ranks them, and the probability of the point-estimate plan's pick. ``tables`` are the
    point-estimate engine tables; ``point`` their plan (``plan_fleets`` with the same price and modes),
    computed here when not given."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence!r}")
    ca2 = workload.arrival_cv2
    odds = _Odds(drawn_tables(source, tables, draws, seed), workload, sla, ca2, price_per_gpu_hour)
    search = _Search(tables, workload, sla, ca2, price_per_gpu_hour)
    if point is None:
        point = plan_fleets(tables, workload, load, sla, price_per_gpu_hour=price_per_gpu_hour, modes=modes)
    budget = load.gpu_budget is not None
    # the point estimate's fleet of each shape: for a GPU budget, how far a rate may be raised; otherwise
    # the fewest GPUs worth trying
    by_shape = {_shape(f.deployment): f for f in point.fleets}
    kept: dict[tuple, tuple[Deployment, float, float]] = {}  # shape -> (deployment, rate, P)
    considered = 0
    for q in ladder(confidence):
        step = plan_fleets(quantile_tables(source, tables, q), workload, load, sla,
                           price_per_gpu_hour=price_per_gpu_hour, modes=modes)  # fmt: skip
        considered += step.considered
        for f in step.fleets:
            key = _shape(f.deployment)
            if key not in kept:
                p = odds(f.deployment, f.request_rate, load.concurrency, need=confidence)
                if p >= confidence:
                    kept[key] = (f.deployment, f.request_rate, p)
        if step.fleets and _shape(step.fleets[0].deployment) in kept:
            break
    fleets_ = []
    for key, (dep, rate, p) in kept.items():
        if budget:
            top = by_shape.get(key)
            dep, rate, p = _best_budget_fleet(odds, dep, rate, p, load.gpu_budget, top and top.request_rate,
                                              confidence)  # fmt: skip
        else:
            floor = by_shape[key].total_gpus if key in by_shape else 0
            dep, p = _cheapest(odds, dep, rate, load.concurrency, p, confidence, floor)
        fleets_.append(_restate(search, dep, rate, load.concurrency, p, confidence))
    fleets = tuple(sorted(fleets_, key=_rank(budget)))
    searched = f"searched up to the {ladder(confidence)[-1]:.4g} quantile of every band"
    why = f"no fleet of {len(tables)} engines meets the SLA at {load.describe()} with P >= {confidence:g}"
    warnings = () if fleets else (f"{why} ({searched})",)
    pb = point.best
    point_p = None if pb is None else odds(pb.deployment, pb.request_rate, load.concurrency)
    considered += sum(s.count for s in odds.searches)
    return ConfidentPlan(PlanResult(load, sla, workload, fleets, considered, warnings), point_p)


__all__ = [
    "LADDER_STEPS",
    "SIZING_DRAWS",
    "ConfidentPlan",
    "drawn_tables",
    "ladder",
    "plan_confident",
    "quantile_tables",
]
