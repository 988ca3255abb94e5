"""Choose the few points worth measuring: where a measurement can change the recommendation.

Order of priority (the budget cuts from the end):
1. the selected prefill engine at the workload ISL and the selected decode engine at its chosen
   concurrency (the SLA boundary: the highest throughput whose ITL meets the target);
2. runners-up that could overtake them: throughput per GPU within ``CLOSE`` of the selected one, or a
   latency within ``CLOSE`` of the SLA target (a correction can move them across it);
3. spread for the fit: short and long prompts (prefill), low and high concurrency (decode), so the
   calibration sees the dependence on ISL and batch and not one point only.
At most ``max_points_per_engine`` per engine and ``budget`` in all; every probe says why it was chosen.
"""

from __future__ import annotations

from typing import Any

from estimator.candidates import Candidate

from estimator.measurements import Probe, ProbeKind

CLOSE = 0.20  # relative distance in throughput or to the SLA target that makes a runner-up a contender
MAX_RUNNERS_UP = 2


def plan_probes(profile: Any, *, budget: int = 8, max_points_per_engine: int = 4) -> list[Probe]:
    """Probes for ``profile`` (an ``estimator.pipeline.Profile``), most decision-relevant first."""
    if budget < 1 or max_points_per_engine < 1:
        return []
    spec, stack, sel = profile.spec, profile.stack, profile.selection
    max_isl = spec.max_context_tokens - spec.osl if spec.max_context_tokens > spec.osl + 1 else 4 * spec.isl
    tiers: list[list[Probe]] = [[], [], []]

    def prefill(c: Candidate, isl: int, why: str) -> Probe:
        return Probe(ProbeKind.PREFILL, stack, c, isl=max(1, int(isl)), osl=1, reason=why)

    def decode(c: Candidate, n: int, why: str) -> Probe:
        return Probe(
            ProbeKind.DECODE, stack, c, isl=spec.isl, osl=spec.osl, concurrency=max(1, int(n)), reason=why
        )

    best_p = sel.best_prefill
    tiers[0].append(prefill(best_p.candidate, spec.isl, f"selected prefill engine at the workload ISL "
                            f"(estimated TTFT {best_p.point.ttft_ms:.1f} ms vs target {spec.ttft_ms:g} ms)"))  # fmt: skip
    best_d = sel.best_decode
    tiers[0].append(decode(best_d.candidate, best_d.concurrency, f"selected decode engine at its chosen concurrency "
                           f"(estimated ITL {best_d.itl_ms:.2f} ms vs target {spec.itl_ms:g} ms: SLA boundary)"))  # fmt: skip

    for ch in _contenders(
        sel.prefill, lambda c: c.point.thpt_per_gpu, lambda c: c.point.ttft_ms, spec.ttft_ms
    ):
        why = _why(ch.point.thpt_per_gpu, best_p.point.thpt_per_gpu, ch.point.ttft_ms, spec.ttft_ms, "TTFT")
        tiers[1].append(prefill(ch.candidate, spec.isl, f"prefill runner-up {why}"))
    for ch in _contenders(sel.decode, lambda c: c.thpt_per_gpu, lambda c: c.itl_ms, spec.itl_ms):
        why = _why(ch.thpt_per_gpu, best_d.thpt_per_gpu, ch.itl_ms, spec.itl_ms, "ITL")
        tiers[1].append(decode(ch.candidate, ch.concurrency, f"decode runner-up {why}"))

    for p in tiers[0] + tiers[1]:  # spread on every engine we measure anyway
        if p.kind is ProbeKind.PREFILL:
            tiers[2].append(
                prefill(p.candidate, max(128, spec.isl // 4), "spread: short prompt (ISL slope of the fit)")
            )
            tiers[2].append(
                prefill(p.candidate, min(max_isl, 2 * spec.isl), "spread: long prompt (ISL slope of the fit)")
            )
        else:
            cap = _max_concurrency(profile, p.candidate, spec.isl + spec.osl)
            tiers[2].append(decode(p.candidate, 1, "spread: single request (batch slope of the fit)"))
            if cap > p.concurrency:
                tiers[2].append(decode(p.candidate, min(cap, 2 * p.concurrency),
                                       "spread: high concurrency (batch slope of the fit, KV pressure)"))  # fmt: skip

    chosen: list[Probe] = []
    seen: set[str] = set()
    per_engine: dict[tuple[str, Candidate], int] = {}
    for p in (p for tier in tiers for p in tier):
        engine = (p.kind.value, p.candidate)
        if p.key in seen or per_engine.get(engine, 0) >= max_points_per_engine:
            continue
        seen.add(p.key)
        per_engine[engine] = per_engine.get(engine, 0) + 1
        chosen.append(p)
        if len(chosen) == budget:
            break
    return chosen


def _contenders(choices, thpt, latency, target: float) -> list:
    """Runners-up close to the winner in throughput per GPU, or close to the SLA target."""
    if not choices:
        return []
    top = thpt(choices[0])
    out = []
    for ch in choices[1:]:
        close_thpt = ch.meets_sla and thpt(ch) >= (1 - CLOSE) * top
        close_sla = abs(latency(ch) / target - 1) <= CLOSE
        if close_thpt or close_sla or not choices[0].meets_sla:
            out.append(ch)
        if len(out) == MAX_RUNNERS_UP:
            break
    return out


def _why(thpt: float, best: float, latency: float, target: float, what: str) -> str:
    return (f"{thpt / best * 100:.0f} % of the selected engine's tokens/s/GPU, estimated {what} "
            f"{latency:.2f} ms vs target {target:g} ms: could overtake")  # fmt: skip


def _max_concurrency(profile: Any, c: Candidate, request_tokens: int) -> int:
    for s in profile.decode_sweeps:
        if s.candidate == c:
            return max(1, s.kv_capacity_tokens // max(request_tokens, 1))
    return 1
