"""Estimate, plan a few real points, measure them, calibrate, then recommend on the calibrated surfaces.

Everything measured is appended to ``<output_dir>/measurements.jsonl`` as it lands (a rerun resumes);
the fitted correction is saved as ``<output_dir>/calibration.json`` and can be reused later with
``sla-estimate --source <output_dir>/calibration.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from estimator.errors import CalibrationError
from estimator.measurements import Measurement, MeasurementStore, Probe, usable
from estimator.pipeline import Profile, estimate
from estimator.select import Selection
from estimator.sources import Stack, make_source

from .calibrate import calibrate, same_deployment
from .calibration_report import CalibrationReport, calibration_report
from .plan import Plan, plan_probes
from .run import RunResult, run_plan
from .runners import make_runner
from .sequential import SequentialResult, run_until_confident

log = logging.getLogger(__name__)
DEFAULT_OUTPUT_DIR = "profiling_results"


@dataclass
class ValidationResult:
    """What was measured, how well the raw estimate did, and what calibration changed."""

    runner: str
    measurements_path: str
    calibration_path: str
    probes: list[Probe]
    run: RunResult
    report: CalibrationReport
    raw_selection: Selection
    num_recorded: int = 0
    sequential: SequentialResult | None = None  # --until-confident: the steps and the final confidence

    def changes(self, calibrated: Selection) -> dict[str, Any]:
        raw_p, raw_d = self.raw_selection.best_prefill, self.raw_selection.best_decode
        new_p, new_d = calibrated.best_prefill, calibrated.best_decode
        return {
            "prefill": {"raw": raw_p.candidate.name, "calibrated": new_p.candidate.name,
                        "raw_ttft_ms": raw_p.point.ttft_ms, "calibrated_ttft_ms": new_p.point.ttft_ms},
            "decode": {"raw": raw_d.candidate.name, "calibrated": new_d.candidate.name,
                       "raw_itl_ms": raw_d.itl_ms, "calibrated_itl_ms": new_d.itl_ms,
                       "raw_concurrency": raw_d.concurrency, "calibrated_concurrency": new_d.concurrency},
            "sla_met": {"raw": self.raw_selection.sla_met, "calibrated": calibrated.sla_met},
        }  # fmt: skip

    def to_dict(self, calibrated: Selection | None = None) -> dict[str, Any]:
        return {
            "runner": self.runner,
            "measurements": self.measurements_path,
            "calibration": self.calibration_path,
            "planned": [p.to_dict() for p in self.probes],
            "not_planned": [n.to_dict() for n in getattr(self.probes, "not_planned", ())],
            "measured_now": self.run.measured,
            "reused_from_previous_run": self.run.reused,
            "recorded_points_used": self.num_recorded,
            "failures": [{"probe": p.to_dict(), "error": e} for p, e in self.run.failures],
            "report": self.report.to_dict(),
            **({"sequential": self.sequential.to_dict()} if self.sequential else {}),
            **({"recommendation_change": self.changes(calibrated)} if calibrated else {}),
        }

    def summary_text(self, calibrated: Selection | None = None) -> str:
        lines = [
            f"Validation ({self.runner} runner): {len(self.probes)} points planned, {self.run.measured} measured now, "
            f"{self.run.reused} reused, {len(self.run.failures)} failed -> {self.measurements_path}"
        ]
        if self.num_recorded:
            lines.append(f"  plus {self.num_recorded} recorded points of the same model/system/backend (replay)")
        for kind, s in self.report.summary.items():
            loo = s.get("loo_median_abs_error_pct")
            cov, half, sharp = (s.get(k) for k in ("band_coverage", "band_median_half_width_pct",
                                                   "band_half_width_over_error"))  # fmt: skip
            lines.append(
                f"  {kind.upper()}: raw estimate off by {s['raw_median_abs_error_pct']:.1f} % (median, {s['n']} points)"
                + (f"; leave-one-out after calibration {loo:.1f} %" if loo is not None else "")
                + (f"; band covers {100 * cov:.0f} %" if cov is not None else "")
                + (f", ±{half:.1f} % wide" if half is not None else "")
                + (f" ({sharp:.1f} × the error)" if sharp is not None else "")
            )
        lines += self.probes.summary_lines() if hasattr(self.probes, "summary_lines") else []
        for probe, err in self.run.failures[:5]:
            lines.append(f"  failed: {probe.kind.value} {probe.candidate.name} isl {probe.isl}: {err[:120]}")
        if calibrated is not None:
            ch = self.changes(calibrated)
            for phase in ("prefill", "decode"):
                c = ch[phase]
                moved = "unchanged" if c["raw"] == c["calibrated"] else f"changed from {c['raw']}"
                lines.append(f"  {phase} recommendation {c['calibrated']} ({moved})")
        if self.sequential is not None:
            lines += ["  " + line for line in self.sequential.summary_lines()]
        lines.append(f"  calibration saved: {self.calibration_path}")
        return "\n".join(lines)


class _BoundResult:
    """A ValidationResult tied to the calibrated selection, as the artifact writers expect (to_dict/summary_text)."""

    def __init__(self, result: ValidationResult, calibrated: Selection):
        self.result, self.calibrated = result, calibrated

    def to_dict(self) -> dict[str, Any]:
        return self.result.to_dict(self.calibrated)

    def summary_text(self) -> str:
        return self.result.summary_text(self.calibrated)


def as_recorded(m: Measurement) -> Measurement:
    """A replayed copy under the probe of the record it came from: the value was measured at the record's
    ISL and concurrency, not the planned ones (up to the replay tolerance away), so it calibrates there."""
    rf = m.extra.get("replayed_from")
    return replace(m, probe=Probe.from_dict(rf)) if isinstance(rf, dict) else m


def source_key(m: Measurement) -> str:
    """The key of the record ``m`` stands for (``as_recorded``'s probe)."""
    return as_recorded(m).probe.key


def once_per_record(measurements: list[Measurement]) -> list[Measurement]:
    """The first measurement per source record: two planned points replayed from one record count once."""
    seen: set[str] = set()
    out = []
    for m in measurements:
        if (key := source_key(m)) not in seen:
            seen.add(key)
            out.append(m)
    return out


def _recorded_for(runner: Any, stack: Stack, measured: list[Measurement]) -> list[Measurement]:
    """Replay only: every recorded point of the same deployment (``same_deployment``: model names compared
    case-insensitively) also calibrates (offline use), except the records ``measured`` already replayed."""
    from .runners.replay import ReplayRunner

    if not isinstance(runner, ReplayRunner):
        return []
    have = {source_key(m) for m in measured}
    same = [m for m in same_deployment(stack, runner.records) if m.probe.key not in have]
    log.info("replay: calibrating on %d more recorded points of %s", len(same), stack.model)
    return same


def run_validation(spec: Any) -> tuple[Profile, _BoundResult]:
    """The whole loop for one study; returns the calibrated profile and the validation result."""
    out_dir = Path(spec.output_dir or DEFAULT_OUTPUT_DIR)
    spec = replace(spec, output_dir=str(out_dir))
    base = make_source(spec.source, Stack.from_spec(spec))
    raw = estimate(spec, base)
    v = spec.validate
    store = MeasurementStore(out_dir / "measurements.jsonl")
    sequential = None
    with store.exclusive(), make_runner(spec) as runner:  # a second run into this directory fails at once
        if v.until_confident is not None:
            sequential = run_until_confident(raw, base, runner, store, level=v.until_confident, budget=v.budget,
                                             calibrate_fn=calibrate,
                                             tie_tolerance=v.tie_tolerance)  # fmt: skip
            probes = Plan(s.probe for s in sequential.steps)
            run, recorded = sequential.run, []  # only what the loop measured: stopping early is the point
        else:
            probes = plan_probes(
                raw, budget=v.budget, max_points_per_engine=v.max_points_per_engine, runner=runner
            )  # planned for this runner: only what it can measure
            run = run_plan(probes, runner, store, on_result=lambda m: log.info("measured %s", m.probe.reason))
            recorded = _recorded_for(runner, raw.stack, run.measurements)
    # each record once (NaN/inf/<= 0 never calibrate)
    # a store of replayed copies replayed again: its records, too, calibrate under their own probes
    measurements = usable(once_per_record([as_recorded(m) for m in run.measurements + recorded]),
                          "calibration")  # fmt: skip
    if not measurements:
        why = "; ".join(e for _, e in run.failures[:3]) or "; ".join(
            f"nothing planned: {n.why_not}" for n in probes.unmeasurable()[:1]) or "nothing planned"  # fmt: skip
        raise CalibrationError(f"no point could be measured ({why})")
    calibrated = calibrate(base, measurements)
    report = calibration_report(base, measurements)
    calibration_path = out_dir / "calibration.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    calibrated.save(calibration_path)
    profile = estimate(spec, calibrated)
    result = ValidationResult(
        runner=v.runner,
        measurements_path=str(store.path),
        calibration_path=str(calibration_path),
        probes=probes,
        run=run,
        report=report,
        raw_selection=raw.selection,
        num_recorded=len(recorded),
        sequential=sequential,
    )
    return profile, _BoundResult(result, profile.selection)
