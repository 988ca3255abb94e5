"""Choose prefill and decode engines under the SLA, rank alternatives, derive planner bounds and replicas.

Rule (Dynamo's, kept so results compare): among points whose latency meets the target, the highest
tokens/s/GPU wins; if no point meets it, the lowest-latency point is returned with a warning. With
``--confidence L`` a point meets the target when P(latency <= target) >= L, that probability from the
source itself (``PerfSource.prob_within``); if none does, the most probable point is returned (safety
first; ties: the lower latency). We also keep every candidate ranked (alternatives), and size the fleet
for a target request rate through capacity planning (``capacity.py``: agg or disagg, queueing included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .candidates import Candidate
from .deployment import Deployment, WorkerRole
from .sources.base import LatencyQuery, PerfSource
from .surfaces import DecodeSweep, PrefillPoint


def rate_text(requests_per_s: float) -> str:
    """A request rate for the summary and warnings: 4 significant digits, whole numbers from 1000 up
    (13.4564 -> 13.46, 10 -> 10, 12345.6 -> 12346); report.json keeps the exact value."""
    r = requests_per_s
    return f"{r:.0f}" if abs(r) >= 1000 else f"{r:.4g}"


@dataclass(frozen=True, slots=True)
class PrefillChoice:
    """A ranked prefill engine; ``p_meets``: P(TTFT <= target) from the source (``PerfSource.prob_within``),
    or from the point's band when ranked without one; None: ranked on the point alone, no source given."""

    point: PrefillPoint
    meets_sla: bool
    p_meets: float | None = None

    @property
    def candidate(self) -> Candidate:
        return self.point.candidate


@dataclass(frozen=True, slots=True)
class DecodeChoice:
    """The best operating point of one decode engine (highest tokens/s/GPU within the ITL target)."""

    candidate: Candidate
    concurrency: int
    context_tokens: int
    itl_ms: float
    thpt_per_gpu: float
    kv_capacity_tokens: int
    itl_low_ms: float
    itl_high_ms: float
    meets_sla: bool
    p_meets: float | None = None  # P(ITL <= target), as ``PrefillChoice.p_meets``

    @property
    def kv_usage(self) -> float:
        return self.concurrency * self.context_tokens / self.kv_capacity_tokens


@dataclass(frozen=True, slots=True)
class PlannerBounds:
    """Load-based scaling bounds of the deployed engines: prefill queue in requests of ISL tokens per
    engine, decode KV-cache usage as a fraction (Dynamo 0.x's units; ``load_thresholds`` gives 1.6's)."""

    prefill_queue_lower: float
    prefill_queue_upper: float
    decode_kv_lower: float
    decode_kv_upper: float

    def load_thresholds(self, isl: int) -> dict[str, int | float]:
        """As Dynamo 1.6's load-based planner reads them (``optimization_target: load``): queued prefill
        tokens per engine rank and decode KV usage in %, each pair with scale-up above scale-down."""
        up = max(2, round(self.prefill_queue_upper * isl))
        kv_up = round(100 * self.decode_kv_upper, 1)
        return {
            "prefill_scale_up_queue_tokens": up,
            "prefill_scale_down_queue_tokens": min(round(self.prefill_queue_lower * isl), up - 1),
            "decode_scale_up_kv_rate": kv_up,
            "decode_scale_down_kv_rate": min(round(100 * self.decode_kv_lower, 1), round(kv_up - 0.1, 1)),
        }


@dataclass(frozen=True, slots=True)
class Sizing:
    """The smallest fleet for a steady request rate, from capacity planning (``capacity.plan_fleets``).

    ``deployment`` is agg or disagg, over every estimated engine (not only the selected pair);
    ``meets_sla`` is False when no fleet meets the SLA and the selected pair was sized for
    throughput alone (Dynamo planner's formulas).
    """

    request_rate: float
    deployment: Deployment
    meets_sla: bool = True
    ttft_ms: float = math.nan  # predicted mean TTFT of the fleet at the rate (queueing included)
    itl_ms: float = math.nan
    confidence: float | None = None  # sized for P(meeting every target) >= this (``capacity_confidence``)
    p_meets_sla: float | None = None  # that probability, for the fleet chosen

    def _group(self, role: WorkerRole) -> int:
        g = self.deployment.group(role)
        return g.replicas if g is not None else 0

    @property
    def prefill_replicas(self) -> int:
        return self._group(WorkerRole.PREFILL)

    @property
    def decode_replicas(self) -> int:
        return self._group(WorkerRole.DECODE)

    @property
    def agg_replicas(self) -> int:
        return self._group(WorkerRole.AGG)

    @property
    def prefill_gpus(self) -> int:
        g = self.deployment.group(WorkerRole.PREFILL)
        return g.num_gpus if g is not None else 0

    @property
    def decode_gpus(self) -> int:
        g = self.deployment.group(WorkerRole.DECODE)
        return g.num_gpus if g is not None else 0

    @property
    def total_gpus(self) -> int:
        return self.deployment.total_gpus

    def describe(self) -> str:
        parts = " + ".join(
            f"{w.replicas} {'' if w.role is WorkerRole.AGG else w.role.value + ' '}x {w.candidate.name}"
            for w in self.deployment.workers
        )
        gpus = f"{self.total_gpus} GPU{'s' if self.total_gpus != 1 else ''}"
        return f"{self.deployment.mode.value} {parts} = {gpus}"


@dataclass(frozen=True, slots=True)
class Selection:
    """Ranked choices (index 0 is the recommendation), bounds, optional sizing and warnings."""

    prefill: tuple[PrefillChoice, ...]
    decode: tuple[DecodeChoice, ...]
    bounds: PlannerBounds
    sizing: Sizing | None
    warnings: tuple[str, ...]
    # P(the prefill pick meets TTFT and the decode pick meets ITL): from the source's joint draws where it
    # has them (capped at each pick's exact p_meets), else the product of the two
    # (``confidence.prob_all_within``); None: no source was given
    p_meets_sla: float | None = None

    @property
    def best_prefill(self) -> PrefillChoice:
        return self.prefill[0]

    @property
    def best_decode(self) -> DecodeChoice:
        return self.decode[0]

    @property
    def sla_met(self) -> bool:
        return self.best_prefill.meets_sla and self.best_decode.meets_sla


def rank_prefill(points: list[PrefillPoint], ttft_target_ms: float) -> tuple[PrefillChoice, ...]:
    """SLA-meeting points by tokens/s/GPU (desc), then the rest by TTFT (asc); ties: fewer GPUs first."""
    ok = [PrefillChoice(p, True) for p in points if p.ttft_ms <= ttft_target_ms]
    bad = [PrefillChoice(p, False) for p in points if p.ttft_ms > ttft_target_ms]
    ok.sort(key=lambda c: (-c.point.thpt_per_gpu, c.candidate.num_gpus))
    bad.sort(key=lambda c: (c.point.ttft_ms, c.candidate.num_gpus))
    return tuple(ok + bad)


def best_decode_point(sweep: DecodeSweep, itl_target_ms: float) -> DecodeChoice:
    """Highest tokens/s/GPU with ITL within target, else the lowest-ITL point (meets_sla False)."""
    ok = np.flatnonzero(sweep.itl_ms <= itl_target_ms)
    meets = ok.size > 0
    i = int(ok[np.argmax(sweep.thpt_per_gpu[ok])]) if meets else int(np.argmin(sweep.itl_ms))
    return _decode_choice(sweep, i, meets)


def _decode_choice(sweep: DecodeSweep, i: int, meets: bool, p_meets: float | None = None) -> DecodeChoice:
    return DecodeChoice(
        candidate=sweep.candidate,
        concurrency=int(sweep.concurrency[i]),
        context_tokens=sweep.context_tokens,
        itl_ms=float(sweep.itl_ms[i]),
        thpt_per_gpu=float(sweep.thpt_per_gpu[i]),
        kv_capacity_tokens=sweep.kv_capacity_tokens,
        itl_low_ms=float(sweep.itl_low_ms[i]),
        itl_high_ms=float(sweep.itl_high_ms[i]),
        meets_sla=meets,
        p_meets=p_meets,
    )


def rank_decode(sweeps: list[DecodeSweep], itl_target_ms: float) -> tuple[DecodeChoice, ...]:
    best = [best_decode_point(s, itl_target_ms) for s in sweeps]
    ok = sorted((c for c in best if c.meets_sla), key=lambda c: (-c.thpt_per_gpu, c.candidate.num_gpus))
    bad = sorted((c for c in best if not c.meets_sla), key=lambda c: (c.itl_ms, c.candidate.num_gpus))
    return tuple(ok + bad)


# ---- decisions under uncertainty (``--confidence``) ---------------------------------------------
def prefill_probs(
    points: list[PrefillPoint], ttft_target_ms: float, source: PerfSource | None = None
) -> np.ndarray:
    """P(TTFT <= target) of each point: from ``source``'s own predictive when given (a calibration's is
    Student-t, heavier-tailed than its band shows), else from the point's band read as a lognormal."""
    from .confidence import prob_within

    if source is None:
        return prob_within(ttft_target_ms, [p.ttft_low_ms for p in points], [p.ttft_high_ms for p in points])
    return source.prob_within([LatencyQuery.ttft(p.candidate, p.isl) for p in points], ttft_target_ms)


def sweep_probs(sweep: DecodeSweep, itl_target_ms: float, source: PerfSource | None = None) -> np.ndarray:
    """P(ITL <= target) at each concurrency of ``sweep`` (see ``prefill_probs``)."""
    from .confidence import prob_within

    if source is None:
        return prob_within(itl_target_ms, sweep.itl_low_ms, sweep.itl_high_ms)
    queries = [LatencyQuery.itl(sweep.candidate, c, sweep.context_tokens) for c in sweep.concurrency]
    return source.prob_within(queries, itl_target_ms)


def rank_prefill_confident(
    points: list[PrefillPoint], ttft_target_ms: float, level: float, source: PerfSource | None = None
) -> tuple[PrefillChoice, ...]:
    """Like ``rank_prefill``, but a point meets the SLA when P(TTFT <= target) >= ``level``
    (``prefill_probs``); the rest by P (desc, safety first), then TTFT."""
    probs = [float(x) for x in prefill_probs(points, ttft_target_ms, source)] if points else []
    chosen = [PrefillChoice(pt, p >= level, p) for pt, p in zip(points, probs, strict=True)]
    ok = sorted((c for c in chosen if c.meets_sla),
                key=lambda c: (-c.point.thpt_per_gpu, c.candidate.num_gpus))  # fmt: skip
    bad = sorted((c for c in chosen if not c.meets_sla),
                 key=lambda c: (-(c.p_meets or 0.0), c.point.ttft_ms, c.candidate.num_gpus))  # fmt: skip
    return tuple(ok + bad)


def best_decode_point_confident(
    sweep: DecodeSweep, itl_target_ms: float, level: float, source: PerfSource | None = None
) -> DecodeChoice:
    """Highest tokens/s/GPU whose P(ITL <= target) >= ``level`` (``sweep_probs``), else the most probable
    point, ties to the lower ITL (meets_sla False)."""
    p = sweep_probs(sweep, itl_target_ms, source)
    ok = np.flatnonzero(p >= level)
    meets = ok.size > 0
    i = int(ok[np.argmax(sweep.thpt_per_gpu[ok])]) if meets else int(np.lexsort((sweep.itl_ms, -p))[0])
    return _decode_choice(sweep, i, meets, float(p[i]))


def rank_decode_confident(
    sweeps: list[DecodeSweep], itl_target_ms: float, level: float, source: PerfSource | None = None
) -> tuple[DecodeChoice, ...]:
    """Each engine's ``best_decode_point_confident``: those that meet by tokens/s/GPU, the rest by P (desc),
    then ITL."""
    best = [best_decode_point_confident(s, itl_target_ms, level, source) for s in sweeps]
    ok = sorted((c for c in best if c.meets_sla), key=lambda c: (-c.thpt_per_gpu, c.candidate.num_gpus))
    bad = sorted((c for c in best if not c.meets_sla),
                 key=lambda c: (-(c.p_meets or 0.0), c.itl_ms, c.candidate.num_gpus))  # fmt: skip
    return tuple(ok + bad)


def with_probabilities(
    prefill: tuple[PrefillChoice, ...], decode: tuple[DecodeChoice, ...], ttft_target_ms: float,
    itl_target_ms: float, source: PerfSource,
) -> tuple[tuple[PrefillChoice, ...], tuple[DecodeChoice, ...]]:  # fmt: skip
    """The ranked choices with ``p_meets`` from ``source``: what the report prints for the point rule too."""
    p_pre = source.prob_within([LatencyQuery.ttft(c.candidate, c.point.isl) for c in prefill], ttft_target_ms)
    queries = [LatencyQuery.itl(c.candidate, c.concurrency, c.context_tokens) for c in decode]
    p_dec = source.prob_within(queries, itl_target_ms)
    return (tuple(replace(c, p_meets=float(p)) for c, p in zip(prefill, p_pre, strict=True)),
            tuple(replace(c, p_meets=float(p)) for c, p in zip(decode, p_dec, strict=True)))  # fmt: skip


def planner_bounds(
    ttft_target_ms: float, prefill: PrefillChoice, decode: DecodeChoice, isl: int, osl: int
) -> PlannerBounds:
    """Dynamo's load-based planner bounds: prefill queue size and decode KV-cache utilisation."""
    ratio = ttft_target_ms / prefill.point.ttft_ms
    usage = decode.concurrency * (isl + osl / 2) / decode.kv_capacity_tokens
    return PlannerBounds(
        prefill_queue_lower=max(0.1, ratio * 0.8 - 1),
        prefill_queue_upper=max(0.1, ratio * 1.2 - 1),
        decode_kv_lower=max(0.1, usage - 0.2),
        decode_kv_upper=min(1.0, usage + 0.2),
    )


def size_replicas(
    request_rate: float, isl: int, osl: int, prefill: PrefillChoice, decode: DecodeChoice
) -> Sizing:
    """Throughput-only sizing of one prefill + decode pair (Dynamo planner's formulas, no queueing)."""
    n_prefill = max(1, math.ceil(request_rate * isl / (prefill.point.thpt_per_gpu * prefill.candidate.num_gpus)))
    n_decode = max(1, math.ceil(request_rate * osl / (decode.thpt_per_gpu * decode.candidate.num_gpus)))
    dep = Deployment.disagg(prefill.candidate, decode.candidate, n_prefill, n_decode)
    return Sizing(request_rate, dep, meets_sla=False)


def size_fleet(
    prefill_points: list[PrefillPoint],
    decode_sweeps: list[DecodeSweep],
    *,
    ttft_target_ms: float,
    itl_target_ms: float,
    isl: int,
    osl: int,
    request_rate: float | None,
    modes: tuple[str, ...] = ("agg", "disagg"),
    confidence: float | None = None,
    source: PerfSource | None = None,
    gpu_budget: int | None = None,
) -> Sizing | None:
    """The minimum-GPU fleet of ``modes`` over every engine that meets the mean SLA at ``request_rate``
    (with ``confidence`` and the points' ``source``: whose probability of meeting it is at least that),
    within ``gpu_budget`` GPUs when one is given. Without a rate, or when no fleet within the budget
    carries it, the fleet of at most ``gpu_budget`` GPUs that carries the most load within the SLA: its
    ``request_rate`` is then that load, below the one asked."""
    from .capacity import plan_fleets
    from .capacity_confidence import plan_confident
    from .capacity_engine import tables_from_points
    from .capacity_types import Load, Sla
    from .workload import fixed

    tables = tables_from_points(prefill_points, decode_sweeps)
    w, sla = fixed(isl, osl), Sla.means(ttft_target_ms, itl_target_ms)

    def plan(load: Load):
        if confidence is not None and source is not None:
            return plan_confident(source, tables, w, load, sla, confidence=confidence, price_per_gpu_hour=1.0,
                                  modes=modes).result  # fmt: skip
        return plan_fleets(tables, w, load, sla, price_per_gpu_hour=1.0, modes=modes)

    fleets = plan(Load(request_rate=request_rate)).fleets if request_rate else ()
    fits = [f for f in fleets if gpu_budget is None or f.total_gpus <= gpu_budget]
    if not fits and gpu_budget is not None:
        fits = list(plan(Load(gpu_budget=gpu_budget)).fleets)
    if not fits:
        return None
    best = fits[0]
    return Sizing(best.request_rate, best.deployment, True, best.ttft.mean_ms, best.itl.mean_ms,
                  confidence if best.p_meets_sla is not None else None, best.p_meets_sla)  # fmt: skip


def _budget_sizing(
    sizing: Sizing | None, request_rate: float | None, gpu_budget: int, pair_gpus: int, size
) -> tuple[Sizing | None, str | None]:
    """The fleet to deploy in ``gpu_budget`` GPUs, and what the user must hear about it. ``sizing`` is
    the plan within the budget (None: nothing fits and meets the SLA: an error, the output could not be
    deployed); ``pair_gpus`` the GPUs of the selected prefill + decode engines, one of each."""
    from .errors import SpecError

    if sizing is None:
        raise SpecError("total_gpus", f"no fleet of the estimated engines fits in {gpu_budget} GPUs and meets "
                                      "the SLA; raise the GPU budget or relax the SLA")  # fmt: skip
    if request_rate is None:
        return sizing, (f"the selected prefill and decode engines need {pair_gpus} GPUs, more than the budget "
                        f"of {gpu_budget}; deploying the fleet within it that carries the most load, "
                        f"{rate_text(sizing.request_rate)} requests/s: {sizing.describe()}")  # fmt: skip
    if sizing.request_rate < request_rate * (1 - 1e-9):
        unbounded = size(None)
        need = f" (the cheapest fleet for it needs {unbounded.total_gpus} GPUs)" if unbounded else ""
        return sizing, (f"no fleet within the budget of {gpu_budget} GPUs meets the SLA at "
                        f"{rate_text(request_rate)} requests/s{need}; deploying the one that carries "
                        f"the most, {rate_text(sizing.request_rate)} requests/s: "
                        f"{sizing.describe()}")  # fmt: skip
    return sizing, None


def _fallback(candidate: Candidate, confidence: float | None, p_meets: float | None) -> str:
    """Who the warning names when nothing meets a target: the closest point, or under ``--confidence``
    the most probable one, with its probability."""
    if confidence is None or p_meets is None:
        return f"closest is {candidate.name}"
    return f"most probable is {candidate.name} (P {math.floor(p_meets * 1e4) / 1e4:.4f})"  # down: below L


def select(
    prefill_points: list[PrefillPoint],
    decode_sweeps: list[DecodeSweep],
    *,
    ttft_target_ms: float,
    itl_target_ms: float,
    isl: int,
    osl: int,
    request_rate: float | None = None,
    confidence: float | None = None,
    modes: tuple[str, ...] = ("agg", "disagg"),
    source: PerfSource | None = None,
    gpu_budget: int | None = None,
) -> Selection:
    """``confidence`` (0-1): meeting a target means its probability is at least that (``rank_*_confident``).
    ``modes``: the serving modes a sized fleet may use (the planner's ``mode`` when the user fixes it).
    ``source``: the source the points come from: every P (the confident rule's, each choice's ``p_meets``
    and both picks' ``p_meets_sla``) is its own (``PerfSource.prob_within``, ``latency_draws``).
    ``gpu_budget``: the most GPUs the deployed fleet may take (DGDR ``hardware.totalGpus``)."""
    if not prefill_points or not decode_sweeps:
        raise ValueError("no candidate could be estimated for prefill and decode")
    if confidence is None:
        prefill = rank_prefill(prefill_points, ttft_target_ms)
        decode = rank_decode(decode_sweeps, itl_target_ms)
        if source is not None:
            prefill, decode = with_probabilities(prefill, decode, ttft_target_ms, itl_target_ms, source)
    else:
        prefill = rank_prefill_confident(prefill_points, ttft_target_ms, confidence, source)
        decode = rank_decode_confident(decode_sweeps, itl_target_ms, confidence, source)
    warnings = []
    sure = "" if confidence is None else f" with probability >= {confidence:g}"
    if not prefill[0].meets_sla:
        warnings.append(f"no prefill engine meets TTFT {ttft_target_ms:g} ms{sure}; "
                        f"{_fallback(prefill[0].candidate, confidence, prefill[0].p_meets)} "
                        f"at {prefill[0].point.ttft_ms:.1f} ms")  # fmt: skip
    if not decode[0].meets_sla:
        warnings.append(f"no decode engine meets ITL {itl_target_ms:g} ms{sure}; "
                        f"{_fallback(decode[0].candidate, confidence, decode[0].p_meets)} "
                        f"at {decode[0].itl_ms:.2f} ms (concurrency {decode[0].concurrency})")  # fmt: skip
    bounds = planner_bounds(ttft_target_ms, prefill[0], decode[0], isl, osl)
    sizing = None
    request_rate = request_rate or None

    def size(budget: int | None) -> Sizing | None:
        return size_fleet(prefill_points, decode_sweeps, ttft_target_ms=ttft_target_ms,
                          itl_target_ms=itl_target_ms, isl=isl, osl=osl, request_rate=request_rate,
                          modes=modes, confidence=confidence, source=source, gpu_budget=budget)  # fmt: skip

    if gpu_budget is not None:
        pair = prefill[0].candidate.num_gpus + decode[0].candidate.num_gpus
        if request_rate is not None or pair > gpu_budget:  # else one engine of each, as Dynamo deploys
            sizing, note = _budget_sizing(size(gpu_budget), request_rate, gpu_budget, pair, size)
            warnings += [note] if note else []
    elif request_rate:
        sizing = size(None)
        if sizing is None:
            sizing = size_replicas(request_rate, isl, osl, prefill[0], decode[0])
            sized_sure = sure if source is not None else ""  # without a source the fleet is sized on points
            warnings.append(f"no fleet meets the SLA{sized_sure} at {rate_text(request_rate)} requests/s "
                            "with queueing; sized the selected engines for throughput only: "
                            f"{sizing.describe()}")
    p_all = None
    if source is not None:
        from .confidence import prob_all_within

        pick_p, pick_d = prefill[0], decode[0]
        queries = [LatencyQuery.ttft(pick_p.candidate, pick_p.point.isl),
                   LatencyQuery.itl(pick_d.candidate, pick_d.concurrency, pick_d.context_tokens)]  # fmt: skip
        p_all = prob_all_within(source, queries, [ttft_target_ms, itl_target_ms])
        # P(both) <= each exact marginal: the joint draws' sampling error must not print P(both) > P(prefill)
        p_all = min([p_all] + [p for p in (pick_p.p_meets, pick_d.p_meets) if p is not None])
    return Selection(prefill, decode, bounds, sizing, tuple(warnings), p_all)
