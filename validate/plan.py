"""Choose the few points worth measuring: where a measurement can change the recommendation.

Order of priority (the budget cuts from the end):
1. the selected prefill engine at the workload ISL and the selected decode engine at its chosen
   concurrency (the SLA boundary: the highest throughput whose ITL meets the target);
2. runners-up that could overtake them: throughput per GPU within ``CLOSE`` of the selected one, or a
   latency within ``CLOSE`` of the SLA target (a correction can move them across it);
3. spread for the fit: short and long prompts (prefill), low and high concurrency (decode), so the
   calibration sees the dependence on ISL and batch and not one point only.
At most ``max_points_per_engine`` per engine and ``budget`` in all; every probe says why it was chosen.

Given the runner, planning keeps only probes it can measure (``Runner.can_measure``), before the
budget is spent, and adds the engines the runner is limited to (an endpoint's one deployment, a GPU
runner's TP size) when the ranking above does not reach them: a measurement there still calibrates the
shared correction. The result is a ``Plan``: the probes (a list, most decision-relevant first) and
``not_planned``, each point it wanted but left out, with why (the runner cannot measure it, or the
budget / per-engine cap was spent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from estimator.candidates import Candidate
from estimator.measurements import Probe, ProbeKind

CLOSE = 0.20  # relative distance in throughput or to the SLA target that makes a runner-up a contender
MAX_RUNNERS_UP = 2
# The short-prompt spread point sits at ISL / 16 (at least 128 tokens), where the fixed per-step cost is
# much of the TTFT: the fit then sees the floor, which differs most between deployments, and the slope over
# a factor 16 of ISL. At ISL / 4 the short end of the prefill surface was an extrapolation; held-out, it
# missed by up to 15 % (dense) and 64 % (MoE) (docs/calibration_heldout.md).
SHORT_PROMPT_DIVISOR = 16


@dataclass(frozen=True, slots=True)
class NotPlanned:
    """A point the planner wanted but left out: ``probe.reason`` says why it was wanted, ``why_not`` why not.

    ``measurable``: the runner could measure it (left out for the budget or the per-engine cap).
    """

    probe: Probe
    why_not: str
    measurable: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"probe": self.probe.to_dict(), "why_not": self.why_not, "measurable": self.measurable}


class Plan(list):
    """The planned probes (a plain list of ``Probe``, most decision-relevant first) and ``not_planned``."""

    def __init__(self, probes: Any = (), not_planned: Any = ()):
        super().__init__(probes)
        self.not_planned: list[NotPlanned] = list(not_planned)

    def unmeasurable(self) -> list[NotPlanned]:
        """The points left out because the runner cannot measure them (not for the budget)."""
        return [n for n in self.not_planned if not n.measurable]

    def to_dict(self) -> dict[str, Any]:
        return {
            "planned": [p.to_dict() for p in self],
            "not_planned": [n.to_dict() for n in self.not_planned],
        }

    def summary_lines(self, limit: int = 5) -> list[str]:
        """What was not planned because the runner cannot measure it, one line each (``limit`` at most)."""
        out = self.unmeasurable()
        lines = [f"  not planned: {n.probe.kind.value} {n.probe.candidate.name} isl {n.probe.isl} "
                 f"concurrency {n.probe.concurrency}: {n.why_not}" for n in out[:limit]]  # fmt: skip
        if len(out) > limit:
            lines.append(f"  ... and {len(out) - limit} more points the runner cannot measure")
        return lines


def plan_probes(profile: Any, *, budget: int = 8, max_points_per_engine: int = 4, runner: Any = None) -> Plan:
    """Probes for ``profile`` (an ``estimator.pipeline.Profile``), most decision-relevant first.

    ``runner`` (a ``validate.runners.Runner``): plan only what it can measure; None plans for a runner
    that can measure anything.
    """
    if budget < 1 or max_points_per_engine < 1:
        return Plan()
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

    caps = runner.capabilities() if runner is not None else None
    wanted = {(p.kind, p.candidate) for p in tiers[0] + tiers[1]}
    for c in sorted(caps.candidates if caps and caps.candidates else (), key=lambda c: c.name):
        why = f"the engine the runner measures ({caps.why}): its correction calibrates the others"
        if (ProbeKind.PREFILL, c) not in wanted:
            tiers[1].append(prefill(c, spec.isl, f"prefill at the workload ISL on {why}"))
        if (ProbeKind.DECODE, c) not in wanted:
            d_choice = next((ch for ch in sel.decode if ch.candidate == c), None)
            n, at = (d_choice.concurrency, "its chosen") if d_choice else (1, "single-request")
            tiers[1].append(decode(c, n, f"decode at {at} concurrency on {why}"))

    for p in tiers[0] + tiers[1]:  # spread on every engine we measure anyway
        if p.kind is ProbeKind.PREFILL:
            short = short_prompt_isl(spec.isl)
            tiers[2].append(
                prefill(p.candidate, short, "spread: short prompt (step cost, ISL slope of the fit)")
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
    left_out: list[NotPlanned] = []
    seen: set[str] = set()
    per_engine: dict[tuple[str, Candidate], int] = {}
    for p in (p for tier in tiers for p in tier):
        if p.key in seen:
            continue
        seen.add(p.key)
        engine = (p.kind.value, p.candidate)
        reason = runner.can_measure(p) if runner is not None else None
        if reason is not None:
            left_out.append(NotPlanned(p, f"the {runner.name} runner {reason}"))
        elif len(chosen) >= budget:
            left_out.append(NotPlanned(p, f"over the budget of {budget} points", measurable=True))
        elif per_engine.get(engine, 0) >= max_points_per_engine:
            left_out.append(
                NotPlanned(p, f"over the cap of {max_points_per_engine} points per engine", measurable=True)
            )
        else:
            per_engine[engine] = per_engine.get(engine, 0) + 1
            chosen.append(p)
    return Plan(chosen, left_out)


def short_prompt_isl(isl: int) -> int:
    """The ISL of the short-prompt spread point (``SHORT_PROMPT_DIVISOR``; never above the workload's)."""
    return min(isl, max(128, isl // SHORT_PROMPT_DIVISOR))


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
