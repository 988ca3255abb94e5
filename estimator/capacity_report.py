"""What ``sla-estimate plan`` prints and writes: the ranked fleets as text, a JSON document, a table row.

Beside the best agg fleet it shows two other agg estimates for one engine at the same per-engine
load: the serving model's open-loop step replay (``serving_open.predict_agg_rate``) and AIC's own
``run_agg`` at the fleet's mean concurrency, so a reader sees how far the models agree.
"""

from __future__ import annotations

import math
from typing import Any

from .artifacts.report import jsonable, package_versions
from .capacity_study import CapacityStudy
from .capacity_types import Fleet
from .errors import SlaEstimateError


def _ms(v: float) -> str:
    return "inf" if not math.isfinite(v) else (f"{v:.0f}" if v >= 100 else f"{v:.1f}")


def agg_cross_check(study: CapacityStudy, source: Any) -> dict[str, Any] | None:
    """The best agg fleet's engine at its per-replica load through the step replay and AIC's run_agg
    (on point values: with ``--size-for band`` the fleet of the point-estimate plan)."""
    result = study.point_result or study.result  # the replay and run_agg use point values
    f = result.best_of("agg")
    if f is None or result.load.gpu_budget is not None:
        return None
    g = f.deployment.workers[0]
    rate = f.request_rate / g.replicas
    w = study.workload
    isl, osl = round(w.mean_isl), round(w.mean_osl)
    out: dict[str, Any] = {"candidate": g.candidate.name, "request_rate_per_replica": rate,
                           "capacity_model": {"ttft_ms": f.ttft.mean_ms, "itl_ms": f.itl.mean_ms}}  # fmt: skip
    from .serving_open import predict_agg_rate

    try:
        ttft, tpot = predict_agg_rate(source, g.candidate, rate, isl, osl, num_requests=1000)
        out["step_replay"] = {"ttft_ms": ttft, "itl_ms": tpot}
    except SlaEstimateError as exc:
        out["step_replay"] = {"error": str(exc)}
    if getattr(source, "name", "") == "aic":
        from .sources.aic import run_agg

        conc = max(1, round(f.groups[0].mean_batch))
        try:
            ttft, tpot = run_agg(source.stack, g.candidate, conc, isl, osl)
            out["aic_run_agg"] = {"concurrency": conc, "ttft_ms": ttft, "itl_ms": tpot}
        except SlaEstimateError as exc:
            out["aic_run_agg"] = {"error": str(exc)}
    return out


def plan_dict(study: CapacityStudy, top: int, cross_check: dict | None = None) -> dict[str, Any]:
    r = study.result
    a, d = r.best_of("agg"), r.best_of("disagg")
    doc = {
        "spec": {
            k: study.spec.to_dict()[k] for k in ("model", "system", "backend", "backend_version", "source")
        },
        "workload": study.workload.describe(),
        "load": {
            "kind": r.load.kind,
            "request_rate": r.load.request_rate,
            "concurrency": r.load.concurrency,
            "gpu_budget": r.load.gpu_budget,
        },
        "sla": {"targets": {t.name: t.ms for t in r.sla.targets}, "headroom": r.sla.headroom},
        "gpu_price_usd_per_hour": study.price_per_gpu_hour,
        "size_for": study.size_for,
        "confidence": study.confidence,
        "verdict": r.verdict(),
        "best_agg": a.to_dict() if a else None,
        "best_disagg": d.to_dict() if d else None,
        "fleets": [dict(rank=i + 1, **f.to_dict()) for i, f in enumerate(r.fleets[:top])],
        "fleets_meeting_sla": len(r.fleets),
        "group_evaluations": r.considered,
        "band_extra_gpus": study.band_extra_gpus,
        "point_estimate_best_p_meets_sla": study.point_best_p,
        "point_estimate_best": study.point_result.best.to_dict()
        if study.point_result and study.point_result.best
        else None,
        "agg_cross_check": cross_check,
        "rejections": [{"candidate": x.candidate.name, "reason": x.reason} for x in study.rejections],
        "warnings": list(r.warnings),
        "provenance": {"packages": package_versions(), "source": study.provenance},
    }
    return jsonable(doc)


def _row(i: int, f: Fleet) -> str:
    m = f.min_margin
    p = "" if f.p_meets_sla is None else f"  {f.p_meets_sla:>5.3f}"
    return (f"{i:>3}  {f.mode:<6} {f.label():<38} {f.total_gpus:>4} {f.usd_per_hour:>8.2f} "
            f"{f.usd_per_million_output_tokens:>8.3f} {f.request_rate:>8.3g}  "
            f"{_ms(f.ttft.mean_ms):>5}/{_ms(f.ttft.p90_ms):>5}/{_ms(f.ttft.p99_ms):>5}  "
            f"{_ms(f.itl.mean_ms):>5}/{_ms(f.itl.p90_ms):>5}/{_ms(f.itl.p99_ms):>5}  "
            f"{m:>+6.0%}{p}")  # fmt: skip


def plan_text(study: CapacityStudy, top: int, cross_check: dict | None = None) -> str:
    s, r, w = study.spec, study.result, study.workload
    sla = ", ".join(f"{t.metric.upper()} {t.stat} <= {t.ms:g} ms" for t in r.sla.targets)
    head = "rank  mode   engines                                GPUs    $/h  $/Mtok   req/s  TTFT ms mean/p90/p99  ITL ms mean/p90/p99  margin"
    lines = [
        f"sla-estimate plan: {s.model} on {s.system}, {s.backend.value} (source: {s.source})",
        f"Workload: {w.name} (mean ISL {w.mean_isl:.0f}, OSL {w.mean_osl:.0f}, prefix reuse {w.prefix_reuse:.0%}, "
        f"arrival cv2 {w.arrival_cv2:.2f}).  Load: {r.load.describe()}.  SLA: {sla}"
        + (f", headroom {r.sla.headroom:.0%}" if r.sla.headroom else ""),
        f"GPU price: ${study.price_per_gpu_hour:g}/GPU-hour.  Sized for: {study.sized_for}.",
        "",
        head + ("  P(SLA)" if study.confidence is not None else ""),
    ]
    lines += [_row(i + 1, f) for i, f in enumerate(r.fleets[:top])]
    if not r.fleets:
        lines += ["  (none)", "", "!!! " + "; ".join(r.warnings)]
    counts = f"{len(r.fleets)} fleets meet the SLA; {r.considered} group evaluations"
    lines += ["", f"Verdict: {r.verdict()}  ({counts})"]
    if study.size_for == "band" and study.point_result is not None:
        pb, bb = study.point_result.best, r.best
        if pb and bb:
            lines.append(f"Band: sizing for the band's pessimistic edge needs {bb.total_gpus} GPUs, the point estimate "
                         f"{pb.total_gpus} ({study.band_extra_gpus:+d} GPU{'' if abs(study.band_extra_gpus) == 1 else 's'}).")  # fmt: skip
    if study.confidence is not None and study.point_result is not None:
        lines.append(_confidence_line(study))
    if cross_check:
        c = cross_check
        parts = [
            f"capacity model TTFT {_ms(c['capacity_model']['ttft_ms'])} / ITL {_ms(c['capacity_model']['itl_ms'])}"
        ]
        for key, name in (("step_replay", "step replay"), ("aic_run_agg", "AIC run_agg")):
            v = c.get(key)
            if v and "error" not in v:
                at = f" at concurrency {v['concurrency']}" if "concurrency" in v else ""
                parts.append(f"{name}{at} TTFT {_ms(v['ttft_ms'])} / ITL {_ms(v['itl_ms'])}")
        lines.append(f"Agg cross-check, one {c['candidate']} at {c['request_rate_per_replica']:.3g} req/s, mean ISL/OSL, "
                     "no prefix reuse, Poisson (ms): " + "; ".join(parts))  # fmt: skip
    if study.rejections:
        lines += ["", "Engines not considered:"] + [
            f"  {x.candidate.name}: {x.reason}" for x in study.rejections
        ]
    return "\n".join(lines)


def _confidence_line(study: CapacityStudy) -> str:
    """How the confident pick compares with the point-estimate pick (GPUs, or rate for a budget)."""
    pb, cb, c = study.point_result.best, study.result.best, study.confidence
    if pb is None:
        found = "." if cb is None else f"; at P >= {c:g}: {cb.label()}, {cb.total_gpus} GPUs."
        return f"Confidence: the point estimate finds no fleet{found}"
    p = "" if study.point_best_p is None else f" meets every target with probability {study.point_best_p:.2f}"
    head = f"Confidence: the point-estimate pick ({pb.label()}, {pb.total_gpus} GPUs){p}"
    if cb is None:
        return f"{head}; no fleet reaches {c:g}."
    if study.result.load.gpu_budget is not None:
        return (f"{head}; at P >= {c:g} the budget sustains {cb.request_rate:.3g} requests/s "
                f"against {pb.request_rate:.3g} on the point estimate.")  # fmt: skip
    extra = study.band_extra_gpus or 0
    return f"{head}; sizing for P >= {c:g} needs {cb.total_gpus} GPUs ({extra:+d})."


def scenario_row(name: str, study: CapacityStudy) -> dict[str, Any]:
    """One line of plan.csv: the scenario, its best fleet and the best of the other mode."""
    r = study.result
    b = r.best
    other = r.best_of("disagg" if b and b.mode == "agg" else "agg") if b else None
    row = {"scenario": name, "model": study.spec.model, "system": study.spec.system,
           "backend": study.spec.backend.value, "workload": study.workload.name, "load": r.load.describe(),
           "sla": ";".join(f"{t.name}<={t.ms:g}" for t in r.sla.targets)}  # fmt: skip
    if b is None:
        return {**row, "best": "none meets the SLA", "verdict": r.verdict()}
    row = {**row, "best": b.label(), "mode": b.mode, "total_gpus": b.total_gpus, "request_rate": b.request_rate,
            "usd_per_hour": b.usd_per_hour, "usd_per_million_output_tokens": b.usd_per_million_output_tokens,
            "ttft_p90_ms": b.ttft.p90_ms, "itl_p90_ms": b.itl.p90_ms, "min_margin": b.min_margin,
            "other_mode_best": other.label() if other else "", "other_mode_gpus": other.total_gpus if other else None,
            "verdict": r.verdict()}  # fmt: skip
    if study.confidence is not None:
        row |= {"confidence": study.confidence, "p_meets_sla": b.p_meets_sla}
    return row


__all__ = ["agg_cross_check", "plan_dict", "plan_text", "scenario_row"]
