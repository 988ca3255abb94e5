"""Point choice: budget respected, reasons present, the selected engines and real contenders included."""

from __future__ import annotations

import pytest

from estimator.pipeline import estimate
from estimator.sources.base import Stack
from estimator.sources.roofline import RooflineSource
from estimator.spec import load_spec
from estimator.measurements import ProbeKind
from validate.plan import plan_probes


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
    dec = [
        p
        for p in probes
        if p.kind is ProbeKind.DECODE and p.candidate == profile.selection.best_decode.candidate
    ]
    assert min(p.concurrency for p in dec) == 1
    runners = [p for p in probes if "runner-up" in p.reason]
    for p in runners:  # every runner-up is a real contender: close in throughput or near the SLA
        assert "could overtake" in p.reason
    assert plan_probes(profile, budget=0) == []
