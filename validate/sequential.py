"""Measure one point at a time until the recommendation is confident (``validate --until-confident``).

Loop: measure the first planned points (the selected prefill and decode engines at the workload), then
repeat: recalibrate on everything measured, re-rank with bands, estimate the probability that the
recommendation is right, and measure the probe that can change the decision most, until that
probability reaches the level or the budget is spent.

*Probability that the recommendation is right* (``decision_confidence``), by sampling the source's
posterior jointly (``PerfSource.latency_draws``: for a calibration one parameter vector per draw, so a
shared phase scale moves every engine alike; for a source that knows only its bands, one quantile per
engine and phase, independent between engines): the TTFT of every engine at the workload ISL and the ITL
of every engine over its sweep, in one draw; in each draw apply Dynamo's rule to the drawn values.
Prefill is right when the recommended engine meets the TTFT target and has the highest tokens/s/GPU of
those that do; decode when the recommended engine has the highest tokens/s/GPU at its best concurrency
within the ITL target (only the engine is kept, as in Dynamo; the concurrency is a planner setting).
Confidence = P(prefill right and decode right), over the same draws.

*Next probe*: the measurable point whose band is widest where the decision is contested, near the
contested engine's operating point (``validate/next_probe.py``).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from estimator.confidence import NUM_DRAWS, band_draws
from estimator.errors import CalibrationError
from estimator.measurements import Measurement, MeasurementStore, Probe
from estimator.select import Selection, select
from estimator.sources.base import LatencyQuery, PerfSource
from estimator.surfaces import DecodeSweep, PrefillPoint, decode_sweep, prefill_point

from .next_probe import candidate_probes, nearest, probe_scores
from .plan import plan_probes
from .run import RunResult, remeasured_warning, run_plan, runner_fingerprint

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Decision:
    """The recommendation on one source and how sure it is (probabilities from the bands)."""

    selection: Selection
    p_prefill: float  # P(recommended prefill engine meets TTFT and is the best that does)
    p_decode: float  # P(recommended decode engine is the best within ITL)
    p_best: dict[str, dict[str, float]]  # phase -> engine name -> P(it is the best of its phase)
    p_both: float | None = None  # P(both right) over the same joint draws; None: taken as independent

    @property
    def confidence(self) -> float:
        return self.p_prefill * self.p_decode if self.p_both is None else self.p_both

    @property
    def engines(self) -> tuple[str, str]:
        return self.selection.best_prefill.candidate.name, self.selection.best_decode.candidate.name


@dataclass(frozen=True, slots=True)
class Step:
    index: int
    probe: Probe
    why: str
    confidence_before: float | None  # None: before the first calibration
    confidence_after: float | None
    prefill: str
    decode: str
    points_measured: int
    elapsed_s: float
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.index, "probe": self.probe.to_dict(), "why": self.why,
                "confidence_before": self.confidence_before, "confidence_after": self.confidence_after,
                "recommendation": {"prefill": self.prefill, "decode": self.decode},
                "points_measured": self.points_measured, "elapsed_s": round(self.elapsed_s, 2),
                **({"error": self.error} if self.error else {})}  # fmt: skip


@dataclass
class SequentialResult:
    level: float
    budget: int
    steps: list[Step] = field(default_factory=list)
    run: RunResult = field(default_factory=RunResult)
    decision: Decision | None = None
    source: PerfSource | None = None  # the last calibration
    stopped_because: str = ""
    tie_tolerance: float = 0.0  # an engine within this fraction of the best's tokens/s/GPU counts as right

    def to_dict(self) -> dict[str, Any]:
        d = self.decision
        return {"level": self.level, "budget": self.budget, "tie_tolerance": self.tie_tolerance,
                "points_measured": len(self.run.measurements),
                "confidence": d.confidence if d else None, "p_prefill": d.p_prefill if d else None,
                "p_decode": d.p_decode if d else None, "recommendation": dict(zip(("prefill", "decode"),
                d.engines, strict=True)) if d else None, "p_best": d.p_best if d else None,
                "stopped_because": self.stopped_because, "steps": [s.to_dict() for s in self.steps]}  # fmt: skip

    def summary_lines(self) -> list[str]:
        tie = f", engines within {self.tie_tolerance:.0%} of the best count as right" if self.tie_tolerance \
            else ""
        head = (f"Until confident ({self.level:.0%}{tie}): {len(self.run.measurements)} points measured "
                f"(budget {self.budget}); stopped: {self.stopped_because}")  # fmt: skip
        lines = [head]
        for s in self.steps:
            what = (
                f"{s.probe.kind.value} {s.probe.candidate.name} isl {s.probe.isl} conc {s.probe.concurrency}"
            )
            lines.append(f"  step {s.index}: {what}: confidence {_pct(s.confidence_before)} -> {_pct(s.confidence_after)} "
                         f"(prefill {s.prefill}, decode {s.decode}){' FAILED: ' + s.error[:80] if s.error else ''}")  # fmt: skip
            lines.append(f"      why: {s.why}")
        if self.decision:
            p, dec = self.decision.engines
            lines.append(f"  confidence in the recommendation (prefill {p}, decode {dec}): "
                         f"{self.decision.confidence:.0%} (prefill {self.decision.p_prefill:.0%}, "
                         f"decode {self.decision.p_decode:.0%})")  # fmt: skip
        return lines


def _pct(p: float | None) -> str:
    return "-" if p is None else f"{p:.0%}"


# ---- the decision and its probability ------------------------------------------------------------
def rank(source: PerfSource, profile: Any) -> tuple[list[PrefillPoint], list[DecodeSweep], Selection]:
    """Points, sweeps and selection of the profile's usable candidates on ``source`` (no surfaces)."""
    spec = profile.spec
    points = [prefill_point(source, c, spec.isl) for c in profile.candidates]
    sweeps = [s for c in profile.candidates if (s := decode_sweep(source, c, spec.isl, spec.osl,
              num_points=2 * spec.num_decode_concurrencies, cap=spec.max_concurrency)) is not None]  # fmt: skip
    if not points or not sweeps:
        raise CalibrationError(
            "no candidate engine can be estimated for prefill and decode on the calibration"
        )
    sel = select(points, sweeps, ttft_target_ms=spec.ttft_ms, itl_target_ms=spec.itl_ms, isl=spec.isl,
                 osl=spec.osl, confidence=spec.confidence, source=source)  # the profile's rule: same pick
    return points, sweeps, sel


def decision_confidence(
    points: list[PrefillPoint], sweeps: list[DecodeSweep], sel: Selection, ttft_target_ms: float,
    itl_target_ms: float, *, source: PerfSource | None = None, draws: int = NUM_DRAWS, seed: int = 0,
    tie_tolerance: float = 0.0,
) -> Decision:  # fmt: skip
    """P(the recommendation is right) by sampling ``source`` jointly (see the module docstring); without a
    source, from the points' and sweeps' bands (one quantile per engine and phase, independent engines).
    ``tie_tolerance``: in a draw the recommended engine is also right when its tokens/s/GPU is at least
    (1 - tie_tolerance) x the best's there (an indifference zone: two engines within it are a tie that no
    number of points may settle, and either serves the SLA at that cost)."""
    rng = np.random.default_rng(seed)
    queries = [LatencyQuery.ttft(p.candidate, p.isl) for p in points]
    queries += [
        LatencyQuery.itl(s.candidate, float(c), float(s.context_tokens)) for s in sweeps for c in s.concurrency
    ]
    if source is not None:
        drawn = source.latency_draws(queries, draws, rng)
    else:
        lows = np.concatenate([[p.ttft_low_ms for p in points], *(s.itl_low_ms for s in sweeps)])
        highs = np.concatenate([[p.ttft_high_ms for p in points], *(s.itl_high_ms for s in sweeps)])
        drawn = band_draws(lows, highs, [(q.candidate.name, q.kind) for q in queries], draws, rng)
    # prefill: thpt scales as 1 / TTFT
    ttft = drawn[:, : len(points)]
    thpt = np.array([p.thpt_per_gpu * p.ttft_ms for p in points]) / ttft
    thpt = np.where(ttft <= ttft_target_ms, thpt, -np.inf)
    best_p = np.where(np.isfinite(thpt.max(axis=1)), np.argmax(thpt, axis=1), -1)
    rec_p = [p.candidate for p in points].index(sel.best_prefill.candidate)
    # decode: each engine's best concurrency within the ITL target in each draw
    best_thpt = np.empty((draws, len(sweeps)))
    col = len(points)
    for j, s in enumerate(sweeps):
        itl = drawn[:, col : col + s.concurrency.size]
        col += s.concurrency.size
        t = np.where(
            itl <= itl_target_ms, s.concurrency[None, :] * 1000.0 / itl / s.candidate.num_gpus, -np.inf
        )
        best_thpt[:, j] = t.max(axis=1)
    best_d = np.where(np.isfinite(best_thpt.max(axis=1)), np.argmax(best_thpt, axis=1), -1)
    rec_d = [s.candidate for s in sweeps].index(sel.best_decode.candidate)
    keep = 1.0 - tie_tolerance
    right_p = (best_p == rec_p) | (thpt[:, rec_p] >= keep * thpt.max(axis=1))  # -inf: misses the target
    right_d = (best_d == rec_d) | (best_thpt[:, rec_d] >= keep * best_thpt.max(axis=1))
    right_p &= np.isfinite(thpt[:, rec_p])
    right_d &= np.isfinite(best_thpt[:, rec_d])
    return Decision(
        sel,
        float(np.mean(right_p)),
        float(np.mean(right_d)),
        {"prefill": {p.candidate.name: float(np.mean(best_p == i)) for i, p in enumerate(points)},
         "decode": {s.candidate.name: float(np.mean(best_d == i)) for i, s in enumerate(sweeps)}},
        float(np.mean(right_p & right_d)),
    )  # fmt: skip


# ---- the loop ------------------------------------------------------------------------------------------
def run_until_confident(
    profile: Any, base: PerfSource, runner: Any, store: MeasurementStore, *, level: float, budget: int,
    calibrate_fn: Callable[[PerfSource, list[Measurement]], PerfSource], progress: bool | None = None,
    tie_tolerance: float = 0.0,
) -> SequentialResult:  # fmt: skip
    """The loop for one study (``profile``: the raw estimate on ``base``); appends every result to ``store``."""
    spec = profile.spec
    res = SequentialResult(level, budget, tie_tolerance=tie_tolerance)
    pool = candidate_probes(profile, runner)
    first: list[Probe] = []
    for p in plan_probes(profile, budget=2, max_points_per_engine=1):  # the selected engines at the workload
        exact = next((x for x in pool if x.key == p.key), None)
        q = p if not pool else (_with_reason(exact, p.reason) if exact else nearest(pool, p))
        if q is not None and q.key not in {f.key for f in first}:
            first.append(q if q.key == p.key else _with_reason(q, f"nearest measurable point to: {p.reason}"))
    t0 = time.perf_counter()
    bar = _progress(budget, progress)
    conf: float | None = None  # no calibration yet: the raw source's zero-width bands claim certainty
    queue = [(p, p.reason) for p in first[:budget]]  # a budget of 1 measures only the first of them
    try:
        while True:
            if len(res.run.measurements) >= budget:  # before every probe: never more than the budget
                res.stopped_because = f"budget of {budget} points spent"
                break
            if not queue:
                queue = _next_probe(res, pool, spec)
                if not queue:
                    res.stopped_because = res.stopped_because or "no measurable point left"
                    break
            probe, why = queue.pop(0)
            if bar is not None:
                shown = "-" if conf is None else f"{conf:.0%}"
                bar.set_postfix_str(f"{probe.kind.value} {probe.candidate.name} isl {probe.isl} "
                                    f"conc {probe.concurrency}, confidence {shown}")  # fmt: skip
            pool = [p for p in pool if p.key != probe.key]
            one = run_plan([probe], runner, store, warn_remeasured=False)  # warned once, below
            res.run.remeasured += one.remeasured
            res.run.reused += one.reused
            res.run.measured += one.measured
            res.run.failures += one.failures
            res.run.measurements += one.measurements
            error = one.failures[0][1] if one.failures else None
            before = conf
            if res.run.measurements and not queue:  # the first planned points are fitted together
                try:
                    res.source = calibrate_fn(base, res.run.measurements)
                    points, sweeps, sel = rank(res.source, profile)
                    res.decision = decision_confidence(
                        points, sweeps, sel, spec.ttft_ms, spec.itl_ms, source=res.source, seed=spec.seed,
                        tie_tolerance=tie_tolerance,
                    )
                    conf = res.decision.confidence
                except CalibrationError as exc:
                    error = error or str(exc)
            names = res.decision.engines if res.decision else ("-", "-")
            res.steps.append(Step(len(res.steps) + 1, probe, why, before, conf, *names, len(res.run.measurements),
                                  time.perf_counter() - t0, error))  # fmt: skip
            if bar is not None:
                bar.update(len(res.run.measurements) - bar.n)
            log.info("step %d: %s -> confidence %s", len(res.steps), probe.reason, conf)
            if conf is not None and conf >= level and not queue:
                res.stopped_because = f"confidence {conf:.0%} reached the level {level:.0%}"
                break
    finally:
        if bar is not None:
            bar.close()
    if res.run.remeasured:
        log.warning("%s", remeasured_warning(res.run.remeasured, store, runner_fingerprint(runner)))
    return res


def _next_probe(res: SequentialResult, pool: list[Probe], spec: Any) -> list[tuple[Probe, str]]:
    if res.decision is None or res.source is None:
        res.stopped_because = "the first planned points could not be measured or calibrated"
        return []
    if not pool:
        return []
    scored = probe_scores(res.source, res.decision, pool, spec)
    i = int(np.argmax([s for s, _ in scored]))
    if scored[i][0] <= 0:
        res.stopped_because = "no measurable point can change the decision"
        return []
    why = f"{scored[i][1]} (score {scored[i][0]:.3g}, highest of {len(pool)})"
    return [(_with_reason(pool[i], why), why)]


def _with_reason(p: Probe, reason: str) -> Probe:
    import dataclasses

    return dataclasses.replace(p, reason=reason)


def _progress(total: int, asked: bool | None):
    """A tqdm bar on stderr when it is a terminal, or when asked (``SLA_ESTIMATE_PROGRESS=1``)."""
    if asked is None:
        asked = sys.stderr.isatty() or os.environ.get("SLA_ESTIMATE_PROGRESS") == "1"
    if not asked:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="until confident", unit="point", file=sys.stderr)


__all__ = [
    "Decision",
    "SequentialResult",
    "Step",
    "decision_confidence",
    "probe_scores",
    "run_until_confident",
]
