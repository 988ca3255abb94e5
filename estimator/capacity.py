"""Fleet search: from a target load to a ranked list of agg and disagg fleets that meet the SLA.

Fleets: agg = ``n`` replicas of one engine; disagg = ``x`` prefill engines of one candidate plus
``y`` decode engines of any candidate. Every latency at a given replica count falls as replicas are
added (the load per engine drops), so for a request rate the smallest count that meets the SLA is
found by doubling then bisection, per engine and role; in disagg, TTFT depends only on the prefill
group and ITL only on the decode group, so the best pair is the best prefill count plus the best
decode count. The ranked list holds every agg engine and every (prefill, decode) pair at its own
minimum, sorted by total GPUs, then $/hour, then the smallest margin (largest first).

For a GPU budget the answer is the highest request rate a fleet within the budget sustains; for a
number of concurrent clients the rate each fleet runs at is solved from Little's law
(``clients = rate x (TTFT + (OSL - 1) x ITL)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from .capacity_engine import EngineTable
from .capacity_model import GroupPrediction, agg_group, decode_group, prefill_group
from .capacity_types import Fleet, GroupLoad, Load, Sla
from .cost import usd_per_hour, usd_per_million_output_tokens
from .deployment import Deployment, ServingMode, WorkerRole
from .workload import Workload

CLIENTS_TOLERANCE = 1e-3  # a closed-loop fleet must hold this close to every client (Little's law)
CLOSED_LOOP_REL = 1e-9  # precision of the largest rate a group keeps its targets at, for a closed loop
MAX_REPLICAS = 65536  # per group; a rate plan's search is logarithmic in it, a closed loop's bounded by the load


@dataclass(frozen=True, slots=True)
class PlanResult:
    load: Load
    sla: Sla
    workload: Workload
    fleets: tuple[Fleet, ...]  # ranked; all meet the SLA
    considered: int  # worker-group evaluations of the search (one queueing model of one group size each)
    warnings: tuple[str, ...] = ()

    @property
    def best(self) -> Fleet | None:
        return self.fleets[0] if self.fleets else None

    def best_of(self, mode: str) -> Fleet | None:
        return next((f for f in self.fleets if f.mode == mode), None)

    def verdict(self) -> str:
        """Which mode wins and by how much (GPUs, or rate for a budget)."""
        a, d = self.best_of("agg"), self.best_of("disagg")
        if a is None and d is None:
            return f"no fleet meets the SLA at {self.load.describe()}"
        if a is None or d is None:
            only = a or d
            return f"only {only.mode} meets the SLA ({only.label()}, {only.total_gpus} GPUs)"
        if self.load.gpu_budget is not None:
            win, lose = (a, d) if a.request_rate >= d.request_rate else (d, a)
            return (f"{win.mode} wins: {win.request_rate:.3g} vs {lose.request_rate:.3g} requests/s "
                    f"({win.request_rate / lose.request_rate:.2f}x) within {self.load.gpu_budget} GPUs")  # fmt: skip
        win, lose = (a, d) if self.fleets.index(a) < self.fleets.index(d) else (d, a)  # the ranking decides
        if win.total_gpus == lose.total_gpus:
            if win.usd_per_hour != lose.usd_per_hour:
                why = "costs less"
            elif win.p_meets_sla is not None and win.p_meets_sla != lose.p_meets_sla:
                why = "is likelier to meet the SLA"
            else:
                why = "has more margin"
            return f"{win.mode} and {lose.mode} tie at {win.total_gpus} GPUs; {win.mode} {why}"
        return (f"{win.mode} wins: {win.total_gpus} vs {lose.total_gpus} GPUs "
                f"({lose.total_gpus - win.total_gpus} fewer, {lose.total_gpus / win.total_gpus:.2f}x)")  # fmt: skip


def _smallest(ok: Callable[[int], bool], hi: int) -> int | None:
    """Smallest n in [1, hi] with ok(n), for ok monotone in n (doubling, then bisection)."""
    lo, n = 0, 1
    while not ok(n):
        lo = n
        if n >= hi:
            return None
        n = min(hi, n * 2)
    while n - lo > 1:
        mid = (lo + n) // 2
        lo, n = (lo, mid) if ok(mid) else (mid, n)
    return n


def _largest_rate(ok: Callable[[float], bool], hi: float, rel: float = 1e-3) -> float:
    """Largest rate in (0, hi] with ok(rate), for ok monotone (true below a threshold); 0 if none."""
    lo = 0.0
    if ok(hi):
        return hi
    while hi - lo > rel * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


class _Search:
    """Evaluations of one plan (tables, workload, SLA), counted."""

    def __init__(self, tables: list[EngineTable], w: Workload, sla: Sla, ca2: float, price: float):
        self.tables, self.w, self.sla, self.ca2, self.price = tables, w, sla, ca2, price
        self.by_candidate = {t.candidate: t for t in tables}
        self.count = 0
        self.cache: dict[tuple, GroupPrediction] = {}
        self.full_ttft, self.full_itl = sla.needs_percentiles("ttft"), sla.needs_percentiles("itl")
        self.limits = {m: tuple((f"{t.stat}_ms", t.ms) for t in sla.of(m)) for m in ("ttft", "itl")}

    def _memo(self, fn, t: EngineTable, n: int, rate: float, full: bool) -> GroupPrediction:
        key = (fn, id(t), n, rate, full)
        g = self.cache.get(key)
        if g is None:
            self.count += 1
            g = self.cache[key] = fn(t, n, rate, self.w, ca2=self.ca2, full=full)
        return g

    def prefill(self, t: EngineTable, x: int, rate: float, full: bool | None = None) -> GroupPrediction:
        return self._memo(prefill_group, t, x, rate, self.full_ttft if full is None else full)

    def decode(self, t: EngineTable, y: int, rate: float, full: bool | None = None) -> GroupPrediction:
        return self._memo(decode_group, t, y, rate, self.full_itl if full is None else full)

    def agg(self, t: EngineTable, n: int, rate: float, full: bool | None = None) -> GroupPrediction:
        return self._memo(agg_group, t, n, rate, (self.full_ttft or self.full_itl) if full is None else full)

    def ok(self, g: GroupPrediction, metrics: tuple[str, ...]) -> bool:
        if g.reason:
            return False
        scale = 1.0 - self.sla.headroom
        for m in metrics:
            lat = g.ttft if m == "ttft" else g.itl
            if lat is None or any(getattr(lat, attr) > limit * scale for attr, limit in self.limits[m]):
                return False
        return True

    def agg_fleet(self, t: EngineTable, n: int, rate: float) -> Fleet:
        g = self.agg(t, n, rate, full=True)
        loads = (GroupLoad("agg", t.candidate.name, n, t.num_gpus, g.mean_batch, g.utilisation),)
        return self._fleet(Deployment.agg(t.candidate, n), rate, g, g, loads)

    def disagg_fleet(self, p: EngineTable, x: int, d: EngineTable, y: int, rate: float) -> Fleet:
        gp, gd = self.prefill(p, x, rate, full=True), self.decode(d, y, rate, full=True)
        loads = (
            GroupLoad("prefill", p.candidate.name, x, p.num_gpus, 0.0, gp.utilisation),
            GroupLoad("decode", d.candidate.name, y, d.num_gpus, gd.mean_batch, gd.utilisation),
        )
        return self._fleet(Deployment.disagg(p.candidate, d.candidate, x, y), rate, gp, gd, loads)

    def _fleet(self, dep: Deployment, rate: float, gt: GroupPrediction, gi: GroupPrediction, loads) -> Fleet:
        usd = usd_per_hour(dep.total_gpus, self.price)
        meets = self.ok(gt, ("ttft",)) and self.ok(gi, ("itl",))
        return Fleet(dep, rate, gt.ttft, gi.itl, self.sla.margins(gt.ttft, gi.itl), meets, usd,
                     usd_per_million_output_tokens(usd, rate, self.w.mean_osl), loads)  # fmt: skip

    # ---- one given deployment ------------------------------------------------------------------
    def meets(self, dep: Deployment, rate: float) -> bool:
        """Whether ``dep`` on this search's tables meets every target at ``rate``."""
        if dep.mode is ServingMode.AGG:
            g = dep.workers[0]
            return self.ok(self.agg(self.by_candidate[g.candidate], g.replicas, rate), ("ttft", "itl"))
        p, d = dep.group(WorkerRole.PREFILL), dep.group(WorkerRole.DECODE)
        return self.ok(self.prefill(self.by_candidate[p.candidate], p.replicas, rate), ("ttft",)) and self.ok(
            self.decode(self.by_candidate[d.candidate], d.replicas, rate), ("itl",)
        )

    def closed_loop_rate(self, dep: Deployment, clients: int) -> float:
        """The rate ``clients`` closed-loop clients drive ``dep`` at (Little's law on the mean E2E)."""
        osl1 = max(0.0, self.w.mean_osl - 1)

        def e2e(gt: GroupPrediction, gi: GroupPrediction) -> float:
            return gt.ttft.mean_ms + osl1 * gi.itl.mean_ms if gt.stable and gi.stable else math.inf

        if dep.mode is ServingMode.AGG:
            g = dep.workers[0]
            t, n = self.by_candidate[g.candidate], g.replicas
            hi = min(self.prefill_rate_hi(t, n), self.decode_rate_hi(t, n))
            return _closed_loop_rate(lambda r: e2e(*(2 * (self.agg(t, n, r, full=False),))), clients, hi)
        pg, dg = dep.group(WorkerRole.PREFILL), dep.group(WorkerRole.DECODE)
        p, x = self.by_candidate[pg.candidate], pg.replicas
        d, y = self.by_candidate[dg.candidate], dg.replicas
        hi = min(self.prefill_rate_hi(p, x), self.decode_rate_hi(d, y))
        return _closed_loop_rate(
            lambda r: e2e(self.prefill(p, x, r, full=False), self.decode(d, y, r, full=False)), clients, hi
        )

    # ---- per-group capacity ---------------------------------------------------------------------
    def prefill_rate_hi(self, t: EngineTable, x: int) -> float:
        return x * t.dp * 1000.0 / float(t.prefill_time_ms(self.w.prefill_tokens).mean())

    def decode_rate_hi(self, t: EngineTable, y: int) -> float:
        lim = t.max_batch(self.w.decode_context_tokens)
        return y * 1000.0 * lim / (self.w.mean_osl * float(t.step_ms(lim)))


def _rank_key(f: Fleet) -> tuple:
    return (f.total_gpus, f.usd_per_hour, -f.min_margin, f.label())


def _rank_key_budget(f: Fleet) -> tuple:
    return (-f.request_rate, f.total_gpus, f.usd_per_hour, f.label())


def _plan_rate(s: _Search, rate: float, modes: tuple[str, ...], max_replicas: int) -> list[Fleet]:
    fleets = []
    if "agg" in modes:
        for t in s.tables:
            n = _smallest(lambda n, t=t: s.ok(s.agg(t, n, rate), ("ttft", "itl")), max_replicas)
            if n is not None:
                fleets.append(s.agg_fleet(t, n, rate))
    if "disagg" in modes:
        xs = {
            t: _smallest(lambda x, t=t: s.ok(s.prefill(t, x, rate), ("ttft",)), max_replicas)
            for t in s.tables
        }
        ys = {
            t: _smallest(lambda y, t=t: s.ok(s.decode(t, y, rate), ("itl",)), max_replicas) for t in s.tables
        }
        for p, x in xs.items():
            for d, y in ys.items():
                if x is not None and y is not None:
                    fleets.append(s.disagg_fleet(p, x, d, y, rate))
    return sorted(fleets, key=_rank_key)


def _plan_budget(s: _Search, budget: int, modes: tuple[str, ...]) -> list[Fleet]:
    fleets = []
    if "agg" in modes:
        for t in s.tables:
            n = budget // t.num_gpus
            if n < 1:
                continue
            hi = min(s.prefill_rate_hi(t, n), s.decode_rate_hi(t, n))
            r = _largest_rate(lambda r, t=t, n=n: s.ok(s.agg(t, n, r), ("ttft", "itl")), hi)
            if r > 0:
                fleets.append(s.agg_fleet(t, n, r))
    if "disagg" in modes:
        per_decode = {}
        for d in s.tables:
            r = _largest_rate(lambda r, d=d: s.ok(s.decode(d, 1, r), ("itl",)), s.decode_rate_hi(d, 1))
            if r > 0:
                per_decode[d] = r
        for p in s.tables:
            prefill_rate: dict[int, float] = {}
            for d, r_d in per_decode.items():
                best = None
                for x in range(1, (budget - d.num_gpus) // p.num_gpus + 1):
                    if x not in prefill_rate:
                        prefill_rate[x] = _largest_rate(lambda r, x=x, p=p: s.ok(s.prefill(p, x, r), ("ttft",)),
                                                        s.prefill_rate_hi(p, x))  # fmt: skip
                    y = (budget - x * p.num_gpus) // d.num_gpus
                    r = min(prefill_rate[x], y * r_d)
                    if r > 0 and (best is None or r > best[0] * (1 + 1e-9)):
                        best = (r, x, math.ceil(r / r_d * (1 - 1e-9)))
                if best is not None:
                    fleets.append(s.disagg_fleet(p, best[1], d, max(1, best[2]), best[0]))
    return sorted(fleets, key=_rank_key_budget)


def _closed_loop_rate(e2e_ms: Callable[[float], float], clients: int, hi: float) -> float:
    """The rate at which ``clients`` closed-loop clients run: clients = rate x E2E(rate); 0 when the fleet
    cannot hold them (past its limits E2E is infinite: the clients it has no room for wait unboundedly,
    where the bisection would stop at the edge with finite latencies and far fewer clients in flight)."""
    lo = 0.0
    for _ in range(40):
        mid = (lo + hi) / 2
        e = e2e_ms(mid)
        if math.isfinite(e) and mid * e / 1000.0 < clients:
            lo = mid
        else:
            hi = mid
    held = lo * e2e_ms(lo) / 1000.0 if lo > 0 else 0.0
    return lo if held >= clients * (1 - CLIENTS_TOLERANCE) else 0.0


def _rates_up_to(max_rate: Callable[[int], float], cap: float, hi: int) -> list[float]:
    """``max_rate(n)`` for n = 1, 2, ... until it reaches ``cap`` (or n = ``hi``); index n - 1. None of one
    replica: none of any (its targets fail at zero load: replicas do not shorten a request)."""
    out = [max_rate(1)]
    while 0 < out[-1] < cap and len(out) < hi:
        out.append(max_rate(len(out) + 1))
    return out


def _plan_concurrency(s: _Search, clients: int, modes: tuple[str, ...], max_replicas: int) -> list[Fleet]:
    """Per shape, the fewest-GPU fleet whose ``clients`` closed-loop clients keep every target.

    Meeting the SLA is monotone in the rate and the clients' rate r* solves clients = r x E2E(r), which
    rises with r; so a fleet meets iff at R, the largest rate each group keeps its targets at (one bisection
    per group size), R x E2E(R) >= clients: one evaluation per fleet, not a bisection. The clients run no
    faster than clients / E2E at zero load, and a group larger than the one that keeps its targets at that
    rate is never needed (fewer replicas only slow the clients down), which bounds the search by the load."""
    osl1, fleets = max(0.0, s.w.mean_osl - 1), []

    def zero_load_rate(p: EngineTable, d: EngineTable) -> float:
        e2e = float(p.prefill_time_ms(s.w.prefill_tokens).mean()) + osl1 * float(d.step_ms(1.0))
        return clients * 1000.0 / e2e

    def holds(rate: float, gt: GroupPrediction, gi: GroupPrediction) -> bool:
        ok = rate > 0 and gt.stable and gi.stable
        return ok and rate * (gt.ttft.mean_ms + osl1 * gi.itl.mean_ms) / 1000.0 >= clients

    def keep(dep: Deployment, build: Callable[[float], Fleet]) -> bool:
        r = s.closed_loop_rate(dep, clients)
        if r > 0 and s.meets(dep, r):
            fleets.append(build(r))
            return True
        return False

    def agg_rate(t: EngineTable, n: int) -> float:
        hi = min(s.prefill_rate_hi(t, n), s.decode_rate_hi(t, n))
        return _largest_rate(lambda r: s.ok(s.agg(t, n, r), ("ttft", "itl")), hi, CLOSED_LOOP_REL)

    def prefill_rate(t: EngineTable, x: int) -> float:
        ok = lambda r: s.ok(s.prefill(t, x, r), ("ttft",))  # noqa: E731
        return _largest_rate(ok, s.prefill_rate_hi(t, x), CLOSED_LOOP_REL)

    def decode_rate(t: EngineTable, y: int) -> float:
        ok = lambda r: s.ok(s.decode(t, y, r), ("itl",))  # noqa: E731
        return _largest_rate(ok, s.decode_rate_hi(t, y), CLOSED_LOOP_REL)

    if "agg" in modes:
        for t in s.tables:
            rates = _rates_up_to(lambda n, t=t: agg_rate(t, n), zero_load_rate(t, t), max_replicas)
            for n, rate in enumerate(rates, start=1):
                g = s.agg(t, n, rate, full=False) if rate > 0 else None
                if g is not None and holds(rate, g, g):
                    if keep(Deployment.agg(t.candidate, n), lambda r, t=t, n=n: s.agg_fleet(t, n, r)):
                        break
    if "disagg" in modes:
        for p in s.tables:
            for d in s.tables:
                cap = zero_load_rate(p, d)
                rp = _rates_up_to(lambda x, p=p: prefill_rate(p, x), cap, max_replicas)
                rd = _rates_up_to(lambda y, d=d: decode_rate(d, y), cap, max_replicas)
                pairs = sorted(((x, y) for x in range(1, len(rp) + 1) for y in range(1, len(rd) + 1)),
                               key=lambda xy, p=p, d=d: xy[0] * p.num_gpus + xy[1] * d.num_gpus)  # fmt: skip
                for x, y in pairs:
                    rate = min(rp[x - 1], rd[y - 1])
                    if rate <= 0:
                        continue
                    gt, gi = s.prefill(p, x, rate, full=False), s.decode(d, y, rate, full=False)
                    if not holds(rate, gt, gi):
                        continue
                    dep = Deployment.disagg(p.candidate, d.candidate, x, y)
                    if keep(dep, lambda r, p=p, x=x, d=d, y=y: s.disagg_fleet(p, x, d, y, r)):
                        break
    return sorted(fleets, key=_rank_key)


def plan_fleets(
    tables: list[EngineTable],
    workload: Workload,
    load: Load,
    sla: Sla,
    *,
    price_per_gpu_hour: float,
    arrival_cv2: float | None = None,
    modes: tuple[str, ...] = ("agg", "disagg"),
    max_replicas: int = MAX_REPLICAS,
) -> PlanResult:
    """Every agg and disagg fleet of ``tables`` that meets ``sla`` at ``load``, ranked (best first)."""
    ca2 = workload.arrival_cv2 if arrival_cv2 is None else arrival_cv2
    s = _Search(tables, workload, sla, ca2, price_per_gpu_hour)
    if load.request_rate is not None:
        fleets = _plan_rate(s, load.request_rate, modes, max_replicas)
    elif load.gpu_budget is not None:
        fleets = _plan_budget(s, load.gpu_budget, modes)
    else:
        fleets = _plan_concurrency(s, load.concurrency, modes, max_replicas)
    warnings = () if fleets else (f"no fleet of {len(tables)} engines meets the SLA at {load.describe()}",)
    return PlanResult(load, sla, workload, tuple(f for f in fleets if f.meets_sla), s.count, warnings)


__all__ = ["MAX_REPLICAS", "PlanResult", "plan_fleets"]
