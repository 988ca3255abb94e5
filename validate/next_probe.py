"""Which point the until-confident loop measures next (``validate/sequential.py``).

*Candidates*: the points the runner can measure: a replay runner's records of this model/system/backend
and these engines; otherwise each engine at the workload ISL, the planner's short prompt (ISL/16, at
least 128) and 2×ISL, and at concurrency 1, half, all and twice its chosen one, less what the runner's
``can_measure`` refuses.

*Score* = w(engine) × band width at the point (log high/low) × exp(−log distance to the engine's
operating point in ISL, or concurrency and context), with w = p(1 − p), p = P(the engine is the best
of its phase) from the decision's draws (an engine sure to win or to lose gains nothing from a
measurement), raised to 1 − P(phase right) for the recommended engine.
"""

from __future__ import annotations

import math
from typing import Any

from estimator.measurements import Probe, ProbeKind
from estimator.select import best_decode_point
from estimator.sources.base import PerfSource

from .plan import short_prompt_isl


def candidate_probes(profile: Any, runner: Any) -> list[Probe]:
    """What can be measured: a replay runner's records of this stack and these engines, else a generated pool
    (less what the runner says it cannot measure, where it says so: ``can_measure`` of the runner contract)."""
    records = getattr(runner, "records", None)
    cands = set(profile.candidates)
    can_measure = getattr(runner, "can_measure", None)
    if records is None and can_measure is not None:
        return [p for p in generated_probes(profile) if can_measure(p) is None]
    if records is not None:
        from .runners.replay import stacks_match

        seen, out = set(), []
        for m in records:
            p = m.probe
            if p.kind in (ProbeKind.PREFILL, ProbeKind.DECODE) and p.candidate in cands and p.key not in seen \
                    and stacks_match(p.stack, profile.stack):  # fmt: skip
                seen.add(p.key)
                out.append(p)
        return out
    return generated_probes(profile)


def generated_probes(profile: Any) -> list[Probe]:
    """Every engine at the workload and at spread points (the one-shot plan's kinds of points, for all engines)."""
    spec, stack = profile.spec, profile.stack
    max_isl = spec.max_context_tokens - spec.osl if spec.max_context_tokens > spec.osl + 1 else 4 * spec.isl
    out = []
    for p in profile.prefill_points:
        for isl in sorted({spec.isl, short_prompt_isl(spec.isl), min(max_isl, 2 * spec.isl)}):
            out.append(Probe(ProbeKind.PREFILL, stack, p.candidate, isl=isl, osl=1, reason="candidate probe"))
    for s in profile.decode_sweeps:
        n = best_decode_point(s, spec.itl_ms).concurrency
        cap = max(1, s.kv_capacity_tokens // (spec.isl + spec.osl))
        for c in sorted({1, max(1, n // 2), n, min(cap, 2 * n)}):
            out.append(Probe(ProbeKind.DECODE, stack, s.candidate, isl=spec.isl, osl=spec.osl, concurrency=c,
                             reason="candidate probe"))  # fmt: skip
    return out


def probe_scores(source: PerfSource, decision: Any, pool: list[Probe], spec: Any) -> list[tuple[float, str]]:
    """(score, why) of each probe in ``pool`` (see the module docstring)."""
    sel = decision.selection
    op_conc = {c.candidate: c.concurrency for c in sel.decode}
    phase_right = {"prefill": decision.p_prefill, "decode": decision.p_decode}
    rec = {"prefill": sel.best_prefill.candidate.name, "decode": sel.best_decode.candidate.name}
    out = []
    for p in pool:
        phase = "prefill" if p.kind is ProbeKind.PREFILL else "decode"
        pb = decision.p_best[phase].get(p.candidate.name, 0.0)
        w = pb * (1 - pb)
        if p.candidate.name == rec[phase]:
            w = max(w, 1 - phase_right[phase])
        if phase == "prefill":
            lo, hi = source.prefill_ttft_band(p.candidate, [p.isl])
            dist = abs(math.log(p.isl / spec.isl))
        else:
            lo, hi = source.decode_itl_band(p.candidate, [p.concurrency], [p.context_tokens])
            n = op_conc.get(p.candidate, 1)
            dist = abs(math.log(p.concurrency / n)) + abs(
                math.log(p.context_tokens / spec.decode_context_tokens)
            )
        width = float(math.log(hi[0] / lo[0]))
        score = w * width * math.exp(-dist)
        why = (f"{phase} {p.candidate.name}: P(best) {pb:.2f}, band ±{100 * (math.exp(width / 2) - 1):.0f} % "
               f"here, log-distance {dist:.2f} from its operating point")  # fmt: skip
        out.append((score, why))
    return out


def nearest(pool: list[Probe], target: Probe) -> Probe | None:
    """The pool probe of the same kind and engine closest to ``target`` in log ISL, concurrency, context."""
    same = [p for p in pool if p.kind is target.kind and p.candidate == target.candidate]
    if not same:
        return None
    return min(same, key=lambda p: abs(math.log(p.isl / target.isl)) + abs(math.log(p.concurrency / target.concurrency))
               + abs(math.log(p.context_tokens / target.context_tokens)))  # fmt: skip


__all__ = ["candidate_probes", "generated_probes", "nearest", "probe_scores"]
