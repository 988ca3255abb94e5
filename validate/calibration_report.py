"""Before/after report of a calibration: raw error at each measured point, leave-one-out error and band.

Kept apart from the fit (``calibrate.py``) because it refits many times (one fit per held-out
measurement, or 10 folds) and only the validate workflow and the CLI's report need it. The summary
gives, per kind, the band's coverage of the left-out points AND its sharpness: the median band
half-width relative to the median actual error (a band that covers everything by being wide says little).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from estimator.calibration import KINDS, Correction, Observation, identity
from estimator.calibration_fit import Prior, fit
from estimator.errors import CalibrationError, SlaEstimateError
from estimator.measurements import Measurement
from estimator.sources.base import PerfSource

from .calibrate import default_prior, observations_for


@dataclass(frozen=True, slots=True)
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

    @property
    def covered(self) -> bool | None:
        if self.band_low_ms is None or self.band_high_ms is None:
            return None
        return self.band_low_ms <= self.measured_ms <= self.band_high_ms

    @property
    def half_width_pct(self) -> float | None:
        if self.loo_ms is None or self.band_low_ms is None or self.band_high_ms is None:
            return None
        return 100 * (self.band_high_ms - self.band_low_ms) / 2 / self.loo_ms


@dataclass
class CalibrationReport:
    """Error of the raw estimate at each measured point, leave-one-out error after calibration, band."""

    points: list[PointReport]
    skipped: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "points": [asdict(p) for p in self.points], "skipped": self.skipped}


def calibration_report(
    source: PerfSource, measurements: list[Measurement], prior: Prior | None = None, max_loo_points: int = 40
) -> CalibrationReport:
    """Raw vs measured per point; each measurement predicted by a fit on all the others, with its band.

    Leave-one-measurement-out (TTFT and TPOT of one agg point leave together); above
    ``max_loo_points`` measurements, 10-fold cross-validation keeps it fast.
    """
    groups: list[list[Observation]] = []
    skipped = []
    for m in measurements:
        try:
            obs = observations_for(source, m)
        except SlaEstimateError as exc:
            skipped.append(f"{m.probe.candidate.name} {m.probe.kind.value}: {exc}")
            continue
        if obs:
            groups.append(obs)
    if not groups:
        raise CalibrationError("no measured points the source can estimate")
    prior = default_prior(source, measurements) if prior is None else prior
    neutral = identity()
    n = len(groups)
    fold_of = list(range(n)) if n <= max_loo_points else [i % 10 for i in range(n)]
    fits: dict[int, Correction | None] = {}
    for f in sorted(set(fold_of)):
        rest = [o for g, fg in zip(groups, fold_of, strict=True) if fg != f for o in g]
        fits[f] = fit(rest, prior) if rest else None
    points = []
    for g, f in zip(groups, fold_of, strict=True):
        bands = fits[f].bands(g) if fits[f] is not None else [None] * len(g)
        for o, b in zip(g, bands, strict=True):
            raw, y = neutral.predict(o), float(o.measured_ms)
            points.append(PointReport(o.engine, o.kind, o.isl, o.batch, y, raw, 100 * (raw / y - 1),
                                      b and b.point_ms, b and 100 * (b.point_ms / y - 1), b and b.low_ms,
                                      b and b.high_ms))  # fmt: skip
    return CalibrationReport(points, skipped, {k: _summary([p for p in points if p.kind == k]) for k in KINDS
                                               if any(p.kind == k for p in points)})  # fmt: skip


def _summary(ps: list[PointReport]) -> dict[str, Any]:
    loo = [abs(p.loo_error_pct) for p in ps if p.loo_error_pct is not None]
    half = [p.half_width_pct for p in ps if p.half_width_pct is not None]
    covered = [p.covered for p in ps if p.covered is not None]
    med_loo = float(np.median(loo)) if loo else None
    med_half = float(np.median(half)) if half else None
    return {
        "n": len(ps),
        "raw_median_abs_error_pct": float(np.median([abs(p.raw_error_pct) for p in ps])),
        "loo_median_abs_error_pct": med_loo,
        "band_coverage": float(np.mean(covered)) if covered else None,
        "band_median_half_width_pct": med_half,
        # sharpness: how wide the band is against the error it has to cover (about 2.4 for an exact
        # Gaussian 90 % band; much larger means the band is wider than the errors need)
        "band_half_width_over_error": med_half / med_loo if med_half is not None and med_loo else None,
    }
