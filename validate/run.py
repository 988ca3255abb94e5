"""Run a plan of probes with a runner: append each result as it lands, resume by skipping stored keys.

Policy: a failed probe is recorded and the plan goes on; an engine that cannot start
(EngineStartError, DeploymentError) skips the rest of that engine's probes. A probe the runner cannot
measure (ProbeNotSupported) is a failure that says so, never a record. A measurement the runner found
implausible (ImplausibleMeasurement: its client timing disagreed with the server's own, twice) is kept
aside in ``<store>.rejected.jsonl``, so nothing measured is lost and nothing flagged is calibrated on.
An interrupt stops the run, and every point measured before it is already on disk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from estimator.errors import DeploymentError, EngineStartError, ImplausibleMeasurement, MeasurementError
from estimator.measurements import Measurement, MeasurementStore, Probe

from .runners.base import Runner

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    measurements: list[Measurement] = field(default_factory=list)  # stored results for the plan's probes
    failures: list[tuple[Probe, str]] = field(default_factory=list)
    reused: int = 0  # probes answered from the store (resume)
    measured: int = 0  # probes measured in this run
    rejected: list[Measurement] = field(default_factory=list)  # implausible records, kept aside


def rejected_store(store: MeasurementStore) -> MeasurementStore:
    """Where implausible measurements of ``store`` are kept: ``<name>.rejected.jsonl`` beside it."""
    return MeasurementStore(store.path.with_name(store.path.stem + ".rejected.jsonl"))


def order_for_engines(probes: Iterable[Probe]) -> list[Probe]:
    """Group probes by engine (stable), so runners that start engines start each one once."""
    probes = list(probes)
    first_seen: dict[str, int] = {}
    for i, p in enumerate(probes):
        first_seen.setdefault(p.candidate.name, i)
    return sorted(probes, key=lambda p: first_seen[p.candidate.name])


def run_plan(
    probes: Iterable[Probe],
    runner: Runner,
    store: MeasurementStore,
    *,
    on_result: Callable[[Measurement], None] | None = None,
) -> RunResult:
    result = RunResult()
    stored = {m.probe.key: m for m in store.load()}
    dead_engines: dict[str, str] = {}
    for probe in order_for_engines(probes):
        if probe.key in stored:
            result.measurements.append(stored[probe.key])
            result.reused += 1
            continue
        if probe.candidate.name in dead_engines:
            result.failures.append((probe, f"skipped: {dead_engines[probe.candidate.name]}"))
            continue
        try:
            m = runner.measure(probe)
        except (EngineStartError, DeploymentError) as exc:
            log.warning("%s did not start: %s", probe.candidate.name, exc)
            dead_engines[probe.candidate.name] = str(exc)
            result.failures.append((probe, str(exc)))
            continue
        except ImplausibleMeasurement as exc:
            log.warning("probe %s %s rejected: %s", probe.kind.value, probe.candidate.name, exc)
            if exc.measurement is not None:
                rejected_store(store).append(exc.measurement)
                result.rejected.append(exc.measurement)
            result.failures.append((probe, str(exc)))
            continue
        except MeasurementError as exc:
            log.warning("probe %s %s failed: %s", probe.kind.value, probe.candidate.name, exc)
            result.failures.append((probe, str(exc)))
            continue
        store.append(m)
        stored[probe.key] = m
        result.measurements.append(m)
        result.measured += 1
        if on_result:
            on_result(m)
    return result
