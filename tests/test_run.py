"""The run loop: append as you go, resume after an interrupt, skip dead engines, keep going on failures."""

import pytest

from estimator.candidates import Candidate, Mapping
from estimator.errors import EndpointTimeout, EngineStartError
from estimator.sources.base import Stack
from estimator.sources.roofline import RooflineSource
from estimator.measurements import Measurement, MeasurementStore, Probe, ProbeKind
from validate.run import run_plan
from validate.runners.base import Runner

STACK = Stack("meta-llama/Meta-Llama-3.1-8B", "h100_sxm", "vllm")


class RooflineRunner(Runner):
    """Answers with the roofline floor; raises scripted errors for chosen probes."""

    name = "roofline-test"

    def __init__(self, fail=None, interrupt_after=None):
        self.src = RooflineSource(STACK)
        self.fail = fail or {}
        self.calls = 0
        self.interrupt_after = interrupt_after

    def measure(self, probe):
        self.calls += 1
        if self.interrupt_after is not None and self.calls > self.interrupt_after:
            raise KeyboardInterrupt
        for (name, isl), exc in self.fail.items():
            if probe.candidate.name == name and (isl is None or probe.isl == isl):
                raise exc
        ttft = float(self.src.prefill_ttft_ms(probe.candidate, [probe.isl])[0])
        return Measurement(probe=probe, runner=self.name, ttft_ms=ttft)


def probes():
    return [
        Probe(ProbeKind.PREFILL, STACK, Candidate(Mapping.TP, n), isl)
        for n in (1, 2, 4)
        for isl in (1000, 3000)
    ]


def test_resume_after_interrupt_loses_nothing(tmp_path):
    store = MeasurementStore(tmp_path / "m.jsonl")
    with pytest.raises(KeyboardInterrupt):
        run_plan(probes(), RooflineRunner(interrupt_after=3), store)
    assert len(store.load()) == 3
    runner = RooflineRunner()
    res = run_plan(probes(), runner, store)
    assert (res.reused, res.measured, runner.calls) == (3, 3, 3)
    assert len(store.load()) == 6 and len({m.probe.key for m in store.load()}) == 6


def test_dead_engine_skips_its_other_probes_and_failures_do_not_stop(tmp_path):
    fail = {
        ("TP2", None): EngineStartError("CUDA out of memory"),
        ("TP4", 1000): EndpointTimeout("no token in 30 s"),
    }
    runner = RooflineRunner(fail=fail)
    res = run_plan(probes(), runner, MeasurementStore(tmp_path / "m.jsonl"))
    assert res.measured == 3  # TP1 ×2, TP4 @3000
    assert len(res.failures) == 3
    assert runner.calls == 5  # TP2's second probe was never sent
    assert any(r.startswith("skipped: CUDA out of memory") for _, r in res.failures)


def test_a_probe_the_runner_cannot_measure_is_a_failure_never_a_record(tmp_path):
    from validate.runners.endpoint import EndpointRunner

    store = MeasurementStore(tmp_path / "m.jsonl")
    runner = EndpointRunner(
        "http://127.0.0.1:9", candidate="TP4"
    )  # nothing listens: refused before any request
    res = run_plan(probes()[:2], runner, store)  # TP1 probes
    assert store.load() == [] and res.measured == 0 and len(res.failures) == 2
    assert all("cannot measure prefill TP1" in why and "runs TP4" in why for _, why in res.failures)


def test_a_measured_kv_capacity_stays_with_the_engine_that_was_measured():
    """The endpoint measures one engine: its KV capacity must not become every candidate's (issue 11)."""
    from validate.calibrate import calibrate

    base, tp1, tp2 = RooflineSource(STACK), Candidate(Mapping.TP, 1), Candidate(Mapping.TP, 2)
    ms = [Measurement(Probe(ProbeKind.PREFILL, STACK, tp2, isl), "endpoint", kv_capacity_tokens=123456,
                      ttft_ms=1.3 * float(base.prefill_ttft_ms(tp2, [isl])[0])) for isl in (512, 4096)]  # fmt: skip
    for n, isl in ((8, 1000), (64, 4000)):
        p = Probe(ProbeKind.DECODE, STACK, tp2, isl, osl=100, concurrency=n)
        itl = 1.2 * float(base.decode_itl_ms(tp2, [n], [p.context_tokens])[0])
        ms.append(Measurement(p, "endpoint", itl_ms=itl, kv_capacity_tokens=123456))
    calibrated = calibrate(base, ms)
    assert calibrated.kv_capacity_tokens(tp2) == 123456
    assert calibrated.kv_capacity_tokens(tp1) == base.kv_capacity_tokens(tp1) != 123456
