"""Point choice: budget respected, reasons present, the selected engines and real contenders included."""

from __future__ import annotations

import pytest

from estimator.measurements import ProbeKind
from estimator.pipeline import estimate
from estimator.sources.base import Stack
from estimator.sources.roofline import RooflineSource
from estimator.spec import load_spec
from validate.plan import CLOSE, plan_probes, short_prompt_isl


@pytest.fixture(scope="module")
def profile():
    spec = load_spec(model="meta-llama/Meta-Llama-3.1-8B", system="h100_sxm", backend="vllm", isl=3000, osl=150,
                     ttft_ms=300, itl_ms=15, gpu_counts=(1, 2, 4, 8), num_decode_concurrencies=6,
                     num_decode_contexts=3, num_prefill_points=4, plots=False)  # fmt: skip
    return estimate(spec, RooflineSource(Stack.from_spec(spec)))


def test_selected_engines_first_with_reasons(profile):
    probes = plan_probes(profile, budget=8, max_points_per_engine=4)
    assert 2 <= len(probes) <= 8
    assert all(p.reason for p in probes)
    sel = profile.selection
    first, second = probes[0], probes[1]
    assert (first.kind, first.candidate, first.isl) == (ProbeKind.PREFILL, sel.best_prefill.candidate, 3000)
    assert (second.kind, second.candidate, second.concurrency) == (
        ProbeKind.DECODE, sel.best_decode.candidate, sel.best_decode.concurrency)  # fmt: skip
    assert "selected" in first.reason and "selected" in second.reason
    assert len({p.key for p in probes}) == len(probes)


@pytest.mark.parametrize("budget, per_engine", [(1, 4), (3, 1), (5, 2), (20, 3)])
def test_budget_and_per_engine_cap(profile, budget, per_engine):
    probes = plan_probes(profile, budget=budget, max_points_per_engine=per_engine)
    assert len(probes) <= budget
    counts: dict = {}
    for p in probes:
        counts[(p.kind, p.candidate)] = counts.get((p.kind, p.candidate), 0) + 1
    assert max(counts.values()) <= per_engine
    assert probes[0].candidate == profile.selection.best_prefill.candidate


def test_spread_and_runners_up(profile):
    probes = plan_probes(profile, budget=50, max_points_per_engine=4)
    prefill_isls = {p.isl for p in probes if p.kind is ProbeKind.PREFILL
                    and p.candidate == profile.selection.best_prefill.candidate}  # fmt: skip
    assert min(prefill_isls) < 3000 < max(prefill_isls)  # spread around the workload ISL
    assert min(prefill_isls) == 187  # the short prompt: ISL / 16, where the fixed step cost shows
    dec = [
        p
        for p in probes
        if p.kind is ProbeKind.DECODE and p.candidate == profile.selection.best_decode.candidate
    ]
    assert min(p.concurrency for p in dec) == 1
    assert plan_probes(profile, budget=0) == []


def test_the_short_prompt_is_isl_over_16_at_least_128_and_never_above_the_workload():
    assert short_prompt_isl(3000) == 187
    assert short_prompt_isl(1000) == 128
    assert short_prompt_isl(100) == 100


def _choice(profile, probe):
    sel = profile.selection
    choices = sel.prefill if probe.kind is ProbeKind.PREFILL else sel.decode
    return next(ch for ch in choices if ch.candidate == probe.candidate)


def test_runners_up_are_real_contenders_and_their_reasons_state_the_numbers(profile):
    sel, spec = profile.selection, profile.spec
    runners = [p for p in plan_probes(profile, budget=50, max_points_per_engine=4) if "runner-up" in p.reason]
    assert {p.kind for p in runners} == {ProbeKind.PREFILL, ProbeKind.DECODE}
    for p in runners:
        ch = _choice(profile, p)
        if p.kind is ProbeKind.PREFILL:
            thpt, top, latency, target = (
                ch.point.thpt_per_gpu,
                sel.best_prefill.point.thpt_per_gpu,
                ch.point.ttft_ms,
                spec.ttft_ms,
            )
        else:
            thpt, top, latency, target = ch.thpt_per_gpu, sel.best_decode.thpt_per_gpu, ch.itl_ms, spec.itl_ms
            assert p.concurrency == ch.concurrency  # measured where it would run
        assert p.candidate not in (
            sel.best_prefill.candidate if p.kind is ProbeKind.PREFILL else sel.best_decode.candidate,
        )
        assert (ch.meets_sla and thpt >= (1 - CLOSE) * top) or abs(latency / target - 1) <= CLOSE
        assert f"{thpt / top * 100:.0f} % of the selected engine's tokens/s/GPU" in p.reason
        assert f"{latency:.2f} ms vs target {target:g} ms" in p.reason


# ---- planning for a runner: only what it can measure -----------------------------------------------------
def test_an_endpoint_runner_gets_probes_for_its_own_engine_only(profile):
    from validate.runners.endpoint import EndpointRunner

    runner = EndpointRunner("http://127.0.0.1:9", candidate="TP2")  # nothing listens: the option decides
    plan = plan_probes(profile, budget=8, max_points_per_engine=4, runner=runner)
    assert plan and {p.candidate.name for p in plan} == {"TP2"}
    assert {p.kind for p in plan} == {ProbeKind.PREFILL, ProbeKind.DECODE}
    left = plan.unmeasurable()
    best = profile.selection.best_prefill
    assert any(n.probe.candidate == best.candidate and n.probe.isl == 3000 for n in left)  # said, not dropped
    assert all("endpoint runner runs TP2" in n.why_not for n in left)
    assert any("not planned: prefill TP1 isl 3000" in line for line in plan.summary_lines())


def test_the_runners_engine_is_planned_even_when_the_ranking_does_not_reach_it(profile):
    from validate.runners.endpoint import EndpointRunner

    sel = profile.selection
    ranked = {p.candidate for p in plan_probes(profile, budget=50) if p.kind is ProbeKind.DECODE}
    outsider = next(ch for ch in sel.decode if ch.candidate not in ranked)  # no decode probe without a runner
    plan = plan_probes(
        profile, budget=8, runner=EndpointRunner("http://127.0.0.1:9", candidate=outsider.candidate)
    )
    dec = [p for p in plan if p.kind is ProbeKind.DECODE]
    assert outsider.concurrency in {p.concurrency for p in dec}
    assert all(p.candidate == outsider.candidate for p in plan)
    assert any("the engine the runner measures" in p.reason for p in dec)


def test_an_endpoint_that_does_not_know_its_engine_plans_nothing_and_says_why(profile):
    from validate.runners.endpoint import EndpointRunner

    plan = plan_probes(profile, budget=8, runner=EndpointRunner("http://127.0.0.1:9"))
    assert list(plan) == [] and plan.not_planned
    assert all("candidate=TP2" in n.why_not for n in plan.not_planned)


def test_a_replay_runner_gets_only_points_it_holds(profile):
    from estimator.measurements import Measurement
    from validate.runners.replay import ReplayRunner

    full = plan_probes(profile, budget=100, max_points_per_engine=100)  # every point it wants
    held = [p for p in full if p.kind is ProbeKind.PREFILL][:2]
    runner = ReplayRunner([Measurement(p, "recorded", ttft_ms=10.0) for p in held])
    plan = plan_probes(profile, budget=8, runner=runner)
    assert [p.key for p in plan] == [p.key for p in held]
    assert {p.key for p in full} - {p.key for p in held} <= {n.probe.key for n in plan.unmeasurable()}
    reasons = (
        "holds no recorded prefill point",
        "measures prefill probes, not decode",
        "(the recorded measurements), not TP",
    )
    assert all(any(r in n.why_not for r in reasons) for n in plan.unmeasurable())


def test_budget_cuts_are_reported_apart_from_what_cannot_be_measured(profile):
    plan = plan_probes(profile, budget=3, max_points_per_engine=4)
    assert len(plan) == 3 and plan.unmeasurable() == []
    assert plan.not_planned and all(
        n.measurable and n.why_not.startswith("over the ") for n in plan.not_planned
    )
