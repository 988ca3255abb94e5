"""Run a plan of probes with a runner: append each result as it lands, resume by skipping stored keys.

Resume reuses a stored point only when it was measured from the same source: every stored record carries
``extra["fingerprint"]`` (``runner_fingerprint``); a stored point of another source (another endpoint, file,
engine build) stays in the store but is measured again, and the run says so in one warning.

Policy: a failed probe is recorded and the plan goes on; an engine that cannot start
(EngineStartError, DeploymentError) skips the rest of that engine's probes. A probe the runner cannot
measure (ProbeNotSupported) is a failure that says so, never a record. A measurement the runner found
implausible (ImplausibleMeasurement: its client timing disagreed with the server's own, twice) is kept
aside in ``<store>.rejected.jsonl``, so nothing measured is lost and nothing flagged is calibrated on.
An interrupt stops the run, and every point measured before it is already on disk.
"""

from __future__ import annotations

import dataclasses
import json
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
    remeasured: int = 0  # probes stored from another source (fingerprint), measured again


def rejected_store(store: MeasurementStore) -> MeasurementStore:
    """Where implausible measurements of ``store`` are kept: ``<name>.rejected.jsonl`` beside it."""
    return MeasurementStore(store.path.with_name(store.path.stem + ".rejected.jsonl"))


# runner name -> the options that name what it measures (not how long it waits); secrets (env) left out
SOURCE_OPTIONS: dict[str, tuple[str, ...]] = {
    "endpoint": ("base_url", "model"),
    "local": ("model", "serves", "backend", "python", "command", "extra_args"),
    "k8s": ("image", "mode", "model", "namespace", "base_url", "extra_args"),
    "gpu": ("model", "model_path", "device", "dtype", "use_cuda_graph", "tp_size"),
}
FINGERPRINT = "fingerprint"  # the key in Measurement.extra


def runner_fingerprint(runner: Runner) -> str:
    """What a stored point was measured from, so a rerun against another source does not reuse it.

    The runner's own ``fingerprint`` (replay: a hash of its records) if it has one; else its name plus the
    ``SOURCE_OPTIONS`` it was built with (e.g. ``endpoint {"base_url": ...}``); else just its name."""
    own = getattr(runner, "fingerprint", None)
    if isinstance(own, str):
        return own
    opts = {a: v for a in SOURCE_OPTIONS.get(runner.name, ()) if (v := getattr(runner, a, None)) is not None}
    return f"{runner.name} {json.dumps(opts, sort_keys=True, default=str)}" if opts else runner.name


def same_source(m: Measurement, fingerprint: str, runner_name: str) -> bool:
    """Whether stored ``m`` was measured from this source. A record of an older store, without a fingerprint,
    matches when its runner name does (the best it can say; its source is unknown)."""
    stored = m.extra.get(FINGERPRINT)
    return stored == fingerprint if stored is not None else m.runner == runner_name


def _stamped(m: Measurement, fingerprint: str) -> Measurement:
    return dataclasses.replace(m, extra={**m.extra, FINGERPRINT: fingerprint})


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
    warn_remeasured: bool = True,
) -> RunResult:
    """Measure the ``probes`` not stored from this runner's source; with ``warn_remeasured`` False the
    caller says that stored points of another source are measured again (once, for a loop of runs)."""
    result = RunResult()
    fingerprint = runner_fingerprint(runner)
    stored: dict[str, Measurement] = {}
    other_source: set[str] = set()
    for m in store.load():
        if same_source(m, fingerprint, runner.name):
            stored[m.probe.key] = m
        else:
            other_source.add(m.probe.key)
    plan = order_for_engines(probes)
    result.remeasured = len({p.key for p in plan if p.key in other_source and p.key not in stored})
    if result.remeasured and warn_remeasured:
        log.warning("%s", remeasured_warning(result.remeasured, store, fingerprint))
    dead_engines: dict[str, str] = {}
    for probe in plan:
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
                rejected = _stamped(exc.measurement, fingerprint)
                rejected_store(store).append(rejected)
                result.rejected.append(rejected)
            result.failures.append((probe, str(exc)))
            continue
        except MeasurementError as exc:
            log.warning("probe %s %s failed: %s", probe.kind.value, probe.candidate.name, exc)
            result.failures.append((probe, str(exc)))
            continue
        m = _stamped(m, fingerprint)
        store.append(m)
        stored[probe.key] = m
        result.measurements.append(m)
        result.measured += 1
        if on_result:
            on_result(m)
    return result


def remeasured_warning(count: int, store: MeasurementStore, fingerprint: str) -> str:
    """The one line that says stored points are measured again (and that their old records stay)."""
    return (f"{count} stored point(s) in {store.path} were measured from another source than {fingerprint}: "
            "measuring them again (the old records stay in the store)")
