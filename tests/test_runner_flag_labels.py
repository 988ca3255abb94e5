"""A record the server cross-check kept aside carries the runner that measured it, not the inner endpoint.

The local and k8s runners measure through an ``EndpointRunner`` and relabel its records; a flagged record
travels inside ``ImplausibleMeasurement`` and goes to ``*.rejected.jsonl``, so it must be relabelled too
(it came out as ``endpoint`` before; the conformance suite only saw it when the CPU server was starved).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from estimator.candidates import Candidate, Mapping
from estimator.errors import ImplausibleMeasurement
from estimator.measurements import Measurement, Probe, ProbeKind
from estimator.sources.base import Stack
from validate.runners.k8s import KubernetesRunner
from validate.runners.k8s_engine import Engine, EngineKey
from validate.runners.local import LocalEngineRunner

TP1 = Candidate(Mapping.TP, 1)
PROBE = Probe(ProbeKind.DECODE, Stack("m", "h100_sxm", "vllm"), TP1, isl=64, osl=32, concurrency=2)


class FlaggingEndpoint:
    """Stands for the inner EndpointRunner: its one measurement disagreed with the server twice."""

    name = "endpoint"

    def measure(self, probe: Probe) -> Measurement:
        flagged = Measurement(probe, "endpoint", itl_ms=0.02, extra={"server_check": {"ok": False}})
        raise ImplausibleMeasurement("client 0.02 ms vs server 1.5 ms", probe, measurement=flagged)


def _raised(fn) -> ImplausibleMeasurement:
    with pytest.raises(ImplausibleMeasurement) as info:
        fn()
    return info.value


def test_local_runner_labels_the_flagged_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    runner = LocalEngineRunner("m", "vllm", work_dir=tmp_path, gpus=0)
    runner.candidate_, runner._endpoint = TP1, FlaggingEndpoint()
    runner.command_, runner.log_path_ = ["vllm", "serve", "m"], tmp_path / "engine.log"
    monkeypatch.setattr(runner, "is_running", lambda: True)
    exc = _raised(lambda: runner.measure(PROBE))
    assert exc.measurement.runner == "local"
    assert exc.measurement.extra["engine_log"] == str(tmp_path / "engine.log")


def test_k8s_runner_labels_the_flagged_record():
    runner = KubernetesRunner(mode="plain")
    engine = Engine(EngineKey.of(PROBE), "sla-tp1", False, "default", endpoint=FlaggingEndpoint())
    exc = _raised(lambda: runner._measure_on(engine, PROBE))
    assert exc.measurement.runner == "k8s"
    assert exc.measurement.extra["k8s"]["name"] == "sla-tp1"
