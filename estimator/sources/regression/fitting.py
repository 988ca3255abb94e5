"""Fit a model file: grouped cross-validation (leave one model, or system, out), then fit on all rows.

The error a file reports is out-of-sample: each fold leaves a whole group out, so a model is never
scored on the engines it was fitted on. Errors are absolute relative errors in % (median, p90) per
row kind, and the p90 of |log(pred / measured)|, which sets the source's bands.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np

from ...hardware import HardwareSpec, hardware_spec
from .files import ModelFile, package_versions
from .regressor import PHASES, K, PerfRegressor, TrainingSet


def predict_rows(reg: PerfRegressor, data: TrainingSet) -> np.ndarray:
    """Predicted ms for every row: direct rows with the residual, serving rows by their linear design."""
    out = np.empty(len(data))
    for i, phase in enumerate(PHASES):
        m = data.kind == phase
        for b in np.unique(data.backend[m]):
            mb = m & (data.backend == b)
            out[mb] = reg.predict(phase, str(b), data.design[mb][:, i * K : (i + 1) * K], data.features[mb])
    agg = ~np.isin(data.kind, PHASES)
    for b in np.unique(data.backend[agg]):
        mb = agg & (data.backend == b)
        coef = np.asarray(reg.coef_.get(str(b), reg.coef_["*"]))
        out[mb] = np.maximum(data.design[mb] @ coef, 1e-6)
    return out


def error_summary(pred: np.ndarray, data: TrainingSet) -> dict[str, dict[str, float]]:
    out = {}
    for kind in np.unique(data.kind):
        m = data.kind == kind
        rel = np.abs(pred[m] / data.y_ms[m] - 1.0) * 100.0
        out[str(kind)] = {
            "rows": int(m.sum()),
            "median_abs_pct": round(float(np.median(rel)), 2),
            "p90_abs_pct": round(float(np.percentile(rel, 90)), 2),
            "log_abs_p90": round(float(np.percentile(np.abs(np.log(pred[m] / data.y_ms[m])), 90)), 4),
        }
    return out


def cross_validate(
    data: TrainingSet, params: dict[str, Any], group_by: str = "model"
) -> tuple[np.ndarray, int]:
    """Out-of-fold predictions with one fold per value of ``group_by`` (model or system)."""
    groups = getattr(data, group_by)
    pred = np.full(len(data), np.nan)
    keys = np.unique(groups)
    for g in keys:
        test = groups == g
        if test.all():
            continue
        reg = PerfRegressor(**params).fit(data.subset(~test))
        pred[test] = predict_rows(reg, data.subset(test))
    return pred, int(keys.size)


def fit_model_file(
    data: TrainingSet,
    name: str,
    *,
    params: dict[str, Any] | None = None,
    group_by: str = "model",
    notes: str = "",
    sources: list[str] | None = None,
) -> ModelFile:
    """Cross-validate, fit on everything, and wrap with provenance."""
    params = params or {}
    pred, folds = cross_validate(data, params, group_by)
    reg = PerfRegressor(**params).fit(data)
    return assemble(data, name, reg, pred, folds, group_by=group_by, notes=notes, sources=sources)


def assemble(data: TrainingSet, name: str, reg: PerfRegressor, cv_pred: np.ndarray, folds: int, *,
             group_by: str = "model", notes: str = "", sources: list[str] | None = None) -> ModelFile:  # fmt: skip
    """The model file of a fitted regressor and its out-of-fold predictions (folds may run in parallel)."""
    ok = np.isfinite(cv_pred)
    cv = error_summary(cv_pred[ok], data.subset(ok)) if ok.any() else {}
    hardware: dict[str, HardwareSpec] = {s: hardware_spec(s) for s in sorted(set(data.system.tolist()))}
    provenance = {
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "training_sha256": data.digest(),
        "training_summary": data.summary(),
        "training_sources": sources or [],
        "packages": package_versions(),
        "cv": cv,
        "cv_scheme": f"leave-one-{group_by}-out ({folds} folds)",
        "in_sample": error_summary(predict_rows(reg, data), data),
        "notes": notes,
    }
    return ModelFile(name, reg, hardware, provenance)
