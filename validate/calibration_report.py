"""Before/after report of a calibration: raw error at each measured point, leave-one-out error, band.

Kept apart from the fit (``calibrate.py``) because it refits many times (one fit per held-out
measurement, or 10 folds) and only the validate workflow and the CLI's report need it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from estimator.errors import CalibrationError, SlaEstimateError
from estimator.sources.base import PerfSource
from estimator.sources.calibrated import Correction

from .calibrate import bundled_prior, fit_correction, has_agg, targets_for, transferable, uncalibrated
from estimator.measurements import Measurement


@dataclass
class PointReport:
    engine: str
    kind: str
    isl: float
    batch: float
    measured_ms: float
    raw_ms: float
    raw_error_pct: float
    loo_ms: float | None
    loo_error_pct: float | None
    band_low_ms: float | None
    band_high_ms: float | None


@dataclass
class CalibrationReport:
    """Error of the raw estimate at each measured point, leave-one-out error after calibration, band."""

    points: list[PointReport]
    skipped: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "points": [vars(p) for p in self.points], "skipped": self.skipped}


def calibration_report(
    source: PerfSource,
    measurements: list[Measurement],
    prior: dict[str, tuple[float, float]] | None = None,
    max_loo_points: int = 40,
) -> CalibrationReport:
    """Raw vs measured per point; each measurement predicted by a fit on all the others, with its band.

    Leave-one-measurement-out (TTFT and TPOT of one agg point leave together); above
    ``max_loo_points`` measurements, 10-fold cross-validation keeps it fast.
    """
    groups, skipped = [], []
    for m in measurements:
        try:
            ts = targets_for(source, m)
        except SlaEstimateError as exc:
            skipped.append(f"{m.probe.candidate.name} {m.probe.kind.value}: {exc}")
            continue
        if ts:
            groups.append(ts)
    if not groups:
        raise CalibrationError("no measured points the source can estimate")
    if prior is None:
        prior = transferable(bundled_prior(source.stack.backend), agg=has_agg(measurements))
    neutral = uncalibrated()
    fold_of = (
        list(range(len(groups))) if len(groups) <= max_loo_points else [i % 10 for i in range(len(groups))]
    )
    fits: dict[int, Correction | None] = {}
    for f in sorted(set(fold_of)):
        rest = [t for g, fg in zip(groups, fold_of, strict=True) if fg != f for t in g]
        fits[f] = fit_correction(rest, prior=prior) if rest else None
    points = []
    for g, f in zip(groups, fold_of, strict=True):
        for t in g:
            raw = neutral.predict(t)
            loo, lo, hi = fits[f].band(t) if fits[f] is not None else (None, None, None)
            points.append(PointReport(t.engine, t.kind, t.isl, t.batch, t.measured_ms, raw,
                                      100 * (raw / t.measured_ms - 1), loo,
                                      None if loo is None else 100 * (loo / t.measured_ms - 1), lo, hi))  # fmt: skip
    summary = {}
    for kind in ("ttft", "tpot"):
        ps = [p for p in points if p.kind == kind]
        if not ps:
            continue
        summary[kind] = {
            "n": len(ps),
            "raw_median_abs_error_pct": float(np.median([abs(p.raw_error_pct) for p in ps])),
            "loo_median_abs_error_pct": _median(
                [abs(p.loo_error_pct) for p in ps if p.loo_error_pct is not None]
            ),
            "band_coverage": _mean(
                [p.band_low_ms <= p.measured_ms <= p.band_high_ms for p in ps if p.loo_ms]
            ),
        }
    return CalibrationReport(points, skipped, summary)


def _median(xs: list[float]) -> float | None:
    return float(np.median(xs)) if xs else None


def _mean(xs: list[bool]) -> float | None:
    return float(np.mean(xs)) if xs else None
