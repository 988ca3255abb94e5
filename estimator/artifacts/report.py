"""``report.json`` (every number of a study, JSON-safe) and the plain-text summary the CLI prints.

The report holds the full spec, every estimated candidate with its prefill point, decode sweep and
KV capacity, every rejection with its reason, the ranked selection, planner bounds, sizing, warnings,
timings and provenance (package versions, the source's data version, date).

``validation`` (optional, from ``validate``) is any object with ``to_dict()``; it goes into the
report under ``"validation"``, and its ``summary_text()`` (if it has one) is appended to the summary.
"""

from __future__ import annotations

import enum
import json
import math
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ..candidates import Candidate
from ..deployment import WorkerRole
from ..select import DecodeChoice, PrefillChoice, Selection, rate_text
from ..surfaces import DecodeSurface, DecodeSweep, PrefillPoint, PrefillSurface

REPORT_FILE = "report.json"
REPORT_FORMAT_VERSION = 1
_PACKAGES = ("sla-estimate", "aiconfigurator-core", "numpy", "scipy")


def jsonable(v: Any) -> Any:
    """Plain JSON types: arrays -> lists, numpy scalars -> Python, enums -> values, NaN/inf -> None."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return jsonable(v.tolist())
    if isinstance(v, np.generic):
        return jsonable(v.item())
    if isinstance(v, enum.Enum):
        return jsonable(v.value)
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None  # e.g. running from a source tree that is not installed
    return out


def _prefill_point(p: PrefillPoint) -> dict[str, Any]:
    return {
        "isl": p.isl,
        "ttft_ms": p.ttft_ms,
        "ttft_low_ms": p.ttft_low_ms,
        "ttft_high_ms": p.ttft_high_ms,
        "thpt_per_gpu": p.thpt_per_gpu,
    }


def _decode_sweep(s: DecodeSweep) -> dict[str, Any]:
    return {
        "kv_capacity_tokens": s.kv_capacity_tokens,
        "context_tokens": s.context_tokens,
        "concurrency": s.concurrency,
        "kv_usage": s.kv_usage,
        "itl_ms": s.itl_ms,
        "itl_low_ms": s.itl_low_ms,
        "itl_high_ms": s.itl_high_ms,
        "thpt_per_gpu": s.thpt_per_gpu,
    }


def _prefill_choice(rank: int, c: PrefillChoice) -> dict[str, Any]:
    return {
        "rank": rank,
        "candidate": c.candidate.name,
        "num_gpus": c.candidate.num_gpus,
        "meets_sla": c.meets_sla,
        **_prefill_point(c.point),
    }


def _decode_choice(rank: int, c: DecodeChoice) -> dict[str, Any]:
    return {
        "rank": rank,
        "candidate": c.candidate.name,
        "num_gpus": c.candidate.num_gpus,
        "meets_sla": c.meets_sla,
        "concurrency": c.concurrency,
        "context_tokens": c.context_tokens,
        "kv_usage": c.kv_usage,
        "kv_capacity_tokens": c.kv_capacity_tokens,
        "itl_ms": c.itl_ms,
        "itl_low_ms": c.itl_low_ms,
        "itl_high_ms": c.itl_high_ms,
        "thpt_per_gpu": c.thpt_per_gpu,
    }


def _candidates(profile: Any) -> list[dict[str, Any]]:
    prefill = {p.candidate: p for p in profile.prefill_points}
    sweeps = {s.candidate: s for s in profile.decode_sweeps}
    p_rank = {c.candidate: i + 1 for i, c in enumerate(profile.selection.prefill)}
    d_rank = {c.candidate: i + 1 for i, c in enumerate(profile.selection.decode)}
    rejected = {r.candidate: r.reason for r in profile.rejections}
    out = []
    for cand in profile.candidates:
        s = sweeps.get(cand)
        out.append(
            {
                **cand.to_dict(),
                "kv_capacity_tokens": s.kv_capacity_tokens if s else None,
                "prefill": _prefill_point(prefill[cand]) if cand in prefill else None,
                "decode": _decode_sweep(s) if s else None,
                "prefill_rank": p_rank.get(cand),
                "decode_rank": d_rank.get(cand),
                "rejected": rejected.get(cand),
            }
        )
    return out


def _surfaces(ps: PrefillSurface, ds: DecodeSurface) -> dict[str, Any]:
    return {
        "prefill": {
            "candidate": ps.candidate.name,
            "isl": ps.isl,
            "ttft_ms": ps.ttft_ms,
            "ttft_low_ms": ps.ttft_low_ms,
            "ttft_high_ms": ps.ttft_high_ms,
            "thpt_per_gpu": ps.thpt_per_gpu,
        },
        "decode": {
            "candidate": ds.candidate.name,
            "kv_capacity_tokens": ds.kv_capacity_tokens,
            "kv_usage": ds.kv_usage,
            "context_tokens": ds.context_tokens,
            "concurrency": ds.concurrency,
            "itl_ms": ds.itl_ms,
            "itl_low_ms": ds.itl_low_ms,
            "itl_high_ms": ds.itl_high_ms,
            "thpt_per_gpu": ds.thpt_per_gpu,
        },
    }


def report_dict(profile: Any, *, validation: Any = None, created: datetime | None = None) -> dict[str, Any]:
    """The report as a JSON-safe dict (``created`` defaults to now, UTC)."""
    spec, sel = profile.spec, profile.selection
    created = created or datetime.now(UTC)
    report = {
        "format_version": REPORT_FORMAT_VERSION,
        "created_utc": created.isoformat(timespec="seconds"),
        "provenance": {
            "packages": package_versions(),
            "python": platform.python_version(),
            "source": profile.provenance,
        },
        "spec": spec.to_dict(),
        "stack": profile.stack.to_dict(),
        "workload": {"isl": spec.isl, "osl": spec.osl, "decode_context_tokens": spec.decode_context_tokens},
        "sla": {
            "ttft_ms": spec.ttft_ms,
            "itl_ms": spec.itl_ms,
            "met": sel.sla_met,
            "prefill_met": sel.best_prefill.meets_sla,
            "decode_met": sel.best_decode.meets_sla,
        },
        "candidates": _candidates(profile),
        "rejections": [{**r.candidate.to_dict(), "reason": r.reason} for r in profile.rejections],
        "selection": {
            "prefill": [_prefill_choice(i + 1, c) for i, c in enumerate(sel.prefill)],
            "decode": [_decode_choice(i + 1, c) for i, c in enumerate(sel.decode)],
        },
        "planner_bounds": {
            "prefill_queue_lower": sel.bounds.prefill_queue_lower,
            "prefill_queue_upper": sel.bounds.prefill_queue_upper,
            "decode_kv_lower": sel.bounds.decode_kv_lower,
            "decode_kv_upper": sel.bounds.decode_kv_upper,
            "dynamo_1_6": sel.bounds.load_thresholds(spec.isl),
        },
        "sizing": _sizing(sel),
        "warnings": list(sel.warnings),
        "timings_s": dict(profile.timings_s),
        "surfaces": _surfaces(profile.prefill_surface, profile.decode_surface),
        "sla_probability": sla_probability(profile),
    }
    if validation is not None:
        report["validation"] = validation.to_dict() if hasattr(validation, "to_dict") else validation
    return jsonable(report)


def _sizing(sel: Selection) -> dict[str, Any] | None:
    z = sel.sizing
    if z is None:
        return None
    return {
        "request_rate": z.request_rate,
        "prefill_replicas": z.prefill_replicas,
        "decode_replicas": z.decode_replicas,
        "prefill_gpus": z.prefill_gpus,
        "decode_gpus": z.decode_gpus,
        "total_gpus": z.total_gpus,
        "mode": z.deployment.mode.value,
        "workers": [
            {"role": w.role.value, "candidate": w.candidate.name, "replicas": w.replicas, "gpus": w.num_gpus}
            for w in z.deployment.workers
        ],
        "meets_sla": z.meets_sla,
        "ttft_ms": z.ttft_ms,
        "itl_ms": z.itl_ms,
        "confidence": z.confidence,
        "p_meets_sla": z.p_meets_sla,
    }


def _sizing_line(z: Any, sel: Selection | None = None) -> str:
    """The fleet capacity planning chose for the request rate (agg or disagg), and whether its engines
    are the per-GPU-throughput picks above (at a given load a smaller engine can need fewer GPUs)."""
    how = "queueing included" if z.meets_sla else "throughput only: no fleet meets the SLA"
    if z.p_meets_sla is not None:
        how += f"; P(meeting every target) {z.p_meets_sla:.2f} >= {z.confidence:g}"
    line = f"Sizing at {rate_text(z.request_rate)} requests/s ({how}): {z.describe()}"
    if sel is None:
        return line
    other = _other_engines(sel, z)
    if other:
        line += (f"\n  (the fewest-GPU fleet at this load uses {', '.join(other)}, not the engine above; the "
                 "surfaces and Dynamo profile data describe the fleet's engines; `sla-estimate plan` ranks every fleet)")  # fmt: skip
    return line


def _other_engines(sel: Selection, z: Any) -> list[str]:
    """The fleet's workers that are not the pick of their role (every agg worker: the picks are disagg)."""
    pick = {WorkerRole.PREFILL: sel.best_prefill.candidate, WorkerRole.DECODE: sel.best_decode.candidate}
    return sorted({f"{w.candidate.name} {w.role.value}" for w in z.deployment.workers
                   if pick.get(w.role) != w.candidate})  # fmt: skip


def _deployed_line(sel: Selection) -> list[str]:
    """What ``-o`` deploys when a load was given: the sized fleet, whose engines can differ from the
    per-GPU-throughput picks above (the artifacts, npz and planner thresholds follow the fleet)."""
    z = sel.sizing
    if z is None:
        return []
    note = "; its engines, not the ones above, are what -o writes" if _other_engines(sel, z) else ""
    return [f"Deployed:       {z.describe()} (sized for {rate_text(z.request_rate)} requests/s{note})"]


def write_report(profile: Any, out_dir: str | Path, *, validation: Any = None) -> Path:
    path = Path(out_dir) / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report_dict(profile, validation=validation), indent=2, allow_nan=False) + "\n")
    return path


# ---- plain-text summary ---------------------------------------------------------------------------


def _gpus(c: Candidate) -> str:
    return f"{c.num_gpus} GPU{'s' if c.num_gpus != 1 else ''}"


def _band(value: float, low: float, high: float, fmt: str) -> str:
    if abs(high - low) <= 1e-9 * abs(value):
        return f"{value:{fmt}} ms"
    return f"{value:{fmt}} ms (band {low:{fmt}}-{high:{fmt}})"


def _prefill_line(c: PrefillChoice) -> str:
    p = c.point
    ttft = _band(p.ttft_ms, p.ttft_low_ms, p.ttft_high_ms, ".1f")
    miss = "" if c.meets_sla else "  [misses TTFT]"
    return f"{c.candidate.name} ({_gpus(c.candidate)}): TTFT {ttft}, {p.thpt_per_gpu:,.0f} tokens/s/GPU{miss}"


def _decode_line(c: DecodeChoice) -> str:
    itl = _band(c.itl_ms, c.itl_low_ms, c.itl_high_ms, ".2f")
    miss = "" if c.meets_sla else "  [misses ITL]"
    return (
        f"{c.candidate.name} ({_gpus(c.candidate)}): ITL {itl} at concurrency {c.concurrency} "
        f"(KV usage {c.kv_usage:.1%}), {c.thpt_per_gpu:,.0f} tokens/s/GPU{miss}"
    )


def summary_text(profile: Any, *, validation: Any = None) -> str:
    """What the CLI prints: recommendation, SLA verdict, planner bounds, sizing, alternatives, rejections."""
    spec, sel = profile.spec, profile.selection
    prov = profile.provenance
    version = prov.get("backend_version_resolved") or spec.backend_version or "current"
    stack = f"{spec.model} on {spec.system}, {spec.backend.value} {version} (source: {prov.get('source')})"
    sla = f"TTFT <= {spec.ttft_ms:g} ms, ITL <= {spec.itl_ms:g} ms"
    lines = [
        f"sla-estimate: {stack}",
        f"Workload: ISL {spec.isl}, OSL {spec.osl}.  SLA: {sla}",
        "",
        f"Prefill engine: {_prefill_line(sel.best_prefill)}",
        f"Decode engine:  {_decode_line(sel.best_decode)}",
        *_deployed_line(sel),
        "",
    ]
    if sel.sla_met:
        lines.append("SLA: met by both engines.")
    else:
        lines += [
            "!" * 78,
            "!!! WARNING: THE SLA IS NOT MET. The engines above are the closest, not a fit.",
            *(f"!!! {w}" for w in sel.warnings),
            "!" * 78,
        ]
    t = sel.bounds.load_thresholds(spec.isl)
    lines += [
        "",
        "Load-based planner thresholds of the deployed engines (--planner-optimization-target load):",
        f"  prefill_scale_up/down_queue_tokens = {t['prefill_scale_up_queue_tokens']}/"
        f"{t['prefill_scale_down_queue_tokens']} tokens per engine",
        f"  decode_scale_up/down_kv_rate = {t['decode_scale_up_kv_rate']:g}/"
        f"{t['decode_scale_down_kv_rate']:g} %",
    ]
    if sel.sizing is not None:
        lines += ["", _sizing_line(sel.sizing, sel)]
    if sel.sla_met and sel.warnings:  # the fleet's (e.g. out of the GPU budget): shown above otherwise
        lines += ["", *(f"!!! {w}" for w in sel.warnings)]
    n = spec.num_alternatives
    if n and (len(sel.prefill) > 1 or len(sel.decode) > 1):
        lines += [
            "",
            f"Alternatives (next {n} of each; within the SLA by tokens/s/GPU, then the rest by latency):",
        ]
        lines += [
            f"  prefill #{i}: {_prefill_line(c)}" for i, c in enumerate(sel.prefill[1 : n + 1], start=2)
        ]
        lines += [f"  decode  #{i}: {_decode_line(c)}" for i, c in enumerate(sel.decode[1 : n + 1], start=2)]
    lines += ["", *sla_probability_lines(profile)]
    if profile.rejections:
        lines += ["", "Rejected candidates:"]
        lines += [f"  {r.candidate.name} ({_gpus(r.candidate)}): {r.reason}" for r in profile.rejections]
    if validation is not None and hasattr(validation, "summary_text"):
        lines += ["", validation.summary_text()]
    return "\n".join(lines)


# ---- probability of meeting the SLA (from the source itself: the selection's p_meets) --------------


def _p_prefill(c: PrefillChoice, target_ms: float) -> float:
    """The choice's P(TTFT <= target) from its source (``PerfSource.prob_within``, set by ``select``); a
    selection made without a source: the point's band read as a lognormal (the default source's answer)."""
    from ..confidence import prob_within

    if c.p_meets is not None:
        return c.p_meets
    return float(prob_within(target_ms, c.point.ttft_low_ms, c.point.ttft_high_ms))


def _p_decode(c: DecodeChoice, target_ms: float) -> float:
    """As ``_p_prefill``, for P(ITL <= target)."""
    from ..confidence import prob_within

    return c.p_meets if c.p_meets is not None else float(prob_within(target_ms, c.itl_low_ms, c.itl_high_ms))


def sla_probability(profile: Any) -> dict[str, Any]:
    """P(meeting the target) of the pick and every alternative, per phase, and of both picks together."""
    spec, sel = profile.spec, profile.selection
    prefill = [{"rank": i + 1, "candidate": c.candidate.name, "p_meets_ttft": _p_prefill(c, spec.ttft_ms)}
               for i, c in enumerate(sel.prefill)]  # fmt: skip
    decode = [{"rank": i + 1, "candidate": c.candidate.name, "concurrency": c.concurrency,
               "p_meets_itl": _p_decode(c, spec.itl_ms)}
              for i, c in enumerate(sel.decode)]  # fmt: skip
    return {
        "rule": "point estimate" if spec.confidence is None else f"probability >= {spec.confidence:g}",
        "confidence": spec.confidence,
        "band_model": "each phase from the source's own predictive (a calibration: its Student-t; otherwise "
                      "a lognormal with the 90 % band as its 5 %/95 % points); both picks together from the "
                      "source's joint draws where it has them (a calibration), else independent",
        "pick": sel.p_meets_sla if sel.p_meets_sla is not None
        else prefill[0]["p_meets_ttft"] * decode[0]["p_meets_itl"],
        "prefill": prefill,
        "decode": decode,
    }


def percent_down(p: float) -> str:
    """``p`` in % rounded down to 0.1 %: rounding up printed 0.9979 as 100 % under a rule of 0.999, and
    could print P(both) above P(prefill)."""
    return f"{math.floor(p * 1000 + 1e-6) / 10:.1f}%"


def sla_probability_lines(profile: Any) -> list[str]:
    d = sla_probability(profile)
    n = profile.spec.num_alternatives
    pct = percent_down
    alt_p = ", ".join(f"{x['candidate']} {pct(x['p_meets_ttft'])}" for x in d["prefill"][1 : n + 1])
    alt_d = ", ".join(f"{x['candidate']} {pct(x['p_meets_itl'])}" for x in d["decode"][1 : n + 1])
    return [
        f"Probability of meeting the SLA (rule: {d['rule']}): both picks {pct(d['pick'])}; "
        f"prefill {d['prefill'][0]['candidate']} {pct(d['prefill'][0]['p_meets_ttft'])}"
        + (f" (alternatives: {alt_p})" if alt_p else "")
        + f"; decode {d['decode'][0]['candidate']} {pct(d['decode'][0]['p_meets_itl'])}"
        + (f" (alternatives: {alt_d})" if alt_d else ""),
    ]


__all__ = ["REPORT_FILE", "jsonable", "package_versions", "report_dict", "summary_text", "write_report"]
