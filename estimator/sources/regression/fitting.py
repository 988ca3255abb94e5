"""Fit a model file: grouped cross-validation (leave one model, or system, out), then fit on all rows.

The error a file reports is out-of-sample: each fold leaves a whole group out, so a model is never
scored on the engines it was fitted on. Errors are absolute relative errors in % (median, p90) per
row kind, and the p90 of |log(pred / measured)|, which sets the source's bands. They are also kept per
coefficient group (``*_by_group``): a band is the error of the rows that trained the coefficients it
answers from, not of another group's (GPU-runner prefill points say nothing of vLLM's). Data with a
single group to leave out cannot be cross-validated: the file then says so (``warnings``, notes).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np

from ...hardware import HardwareSpec, hardware_spec
from .files import ModelFile, package_versions
from .nodes import EngineTable
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


def errors_by_group(pred: np.ndarray, data: TrainingSet) -> dict[str, dict[str, dict[str, float]]]:
    """``error_summary`` of each coefficient group's rows (the backend, or ``gpu-runner``)."""
    return {str(g): error_summary(pred[data.backend == g], data.subset(data.backend == g))
            for g in np.unique(data.backend)}  # fmt: skip


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
    tables: dict[str, Any] | None = None,
    table_checks: list[dict[str, Any]] | None = None,
    left_out: dict[str, Any] | None = None,
) -> ModelFile:
    """Cross-validate, fit on everything, and wrap with provenance (and the node tables, if any)."""
    params = params or {}
    pred, folds = cross_validate(data, params, group_by)
    reg = PerfRegressor(**params).fit(data)
    return assemble(data, name, reg, pred, folds, group_by=group_by, notes=notes, sources=sources,
                    tables=tables, table_checks=table_checks, left_out=left_out)  # fmt: skip


def assemble(data: TrainingSet, name: str, reg: PerfRegressor, cv_pred: np.ndarray, folds: int, *,
             group_by: str = "model", notes: str = "", sources: list[str] | None = None,
             tables: dict[str, Any] | None = None, table_checks: list[dict[str, Any]] | None = None,
             left_out: dict[str, Any] | None = None) -> ModelFile:  # fmt: skip
    """The model file of a fitted regressor and its out-of-fold predictions (folds may run in parallel).

    ``tables``: node tables by key (``data.aic_tables``); ``table_checks``: AIC at points off the
    nodes (``data.aic_check_points``), whose error against the tables' read-out the file records;
    ``left_out``: the rows the caller could not use, by reason."""
    ok = np.isfinite(cv_pred)
    cv = error_summary(cv_pred[ok], data.subset(ok)) if ok.any() else {}
    in_pred = predict_rows(reg, data)
    hardware: dict[str, HardwareSpec] = {s: hardware_spec(s) for s in sorted(set(data.system.tolist()))}
    warnings = []
    if not ok.any():  # one fold would leave every row out: cross_validate skips it
        only = ", ".join(sorted(set(getattr(data, group_by).tolist())))
        warnings.append(f"no cross-validation: leave-one-{group_by}-out needs two, the data holds one "
                        f"({only}); bands outside the training data fall back to the in-sample error, which "
                        "understates them")  # fmt: skip
        notes = "; ".join(n for n in (notes, *warnings) if n)
    provenance = {
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "training_sha256": data.digest(),
        "training_summary": data.summary(),
        "training_sources": sources or [],
        "packages": package_versions(),
        "cv": cv,
        "cv_scheme": f"leave-one-{group_by}-out ({folds} folds)" if ok.any() else f"none (one {group_by})",
        "in_sample": error_summary(in_pred, data),
        "cv_by_group": errors_by_group(cv_pred[ok], data.subset(ok)) if ok.any() else {},
        "in_sample_by_group": errors_by_group(in_pred, data),
        "notes": notes,
        "warnings": warnings,
    }
    if left_out is not None:
        provenance["left_out"] = left_out
    parsed = {k: EngineTable.from_dict(v) for k, v in (tables or {}).items()}  # checks every table
    mf = ModelFile(name, reg, hardware, provenance, tables=dict(tables or {}))
    if parsed:
        provenance["tables"] = {"engines": len(parsed), "with_prefill": sum(t.prefill_ms is not None for t in parsed.values()),
                                "with_decode": sum(t.decode_ms is not None for t in parsed.values()),
                                "refused_by_aic": sum(bool(t.errors) for t in parsed.values())}  # fmt: skip
        provenance["table_check"] = table_check(mf, table_checks or [])
    return mf


def table_check(mf: ModelFile, checks: list[dict[str, Any]]) -> dict[str, Any]:
    """Error of the tables' read-out against AIC at the off-node points, per phase (as error_summary,
    plus the largest |error| in %)."""
    from ...candidates import Candidate
    from ..base import Stack
    from .source import RegressionSource

    pred: dict[str, list[np.ndarray]] = {"prefill": [], "decode": []}
    truth: dict[str, list[np.ndarray]] = {"prefill": [], "decode": []}
    sources: dict[str, RegressionSource] = {}
    for chk in checks:
        head, backend, engine = chk["key"].rsplit("/", 2)
        model, system = head.rsplit("@", 1)
        src = sources.get(head + backend) or sources.setdefault(
            head + backend, RegressionSource.from_file(Stack(model, system, backend), mf)
        )
        c = Candidate.parse(engine)
        if chk["kind"] == "prefill":
            pred["prefill"].append(src.prefill_ttft_ms(c, chk["isl"]))
        else:
            pred["decode"].append(src.decode_itl_ms(c, chk["batch"], chk["context"]))
        truth[chk["kind"]].append(np.asarray(chk["aic_ms"], dtype=float))
    out: dict[str, Any] = {}
    for phase in ("prefill", "decode"):
        if pred[phase]:
            p, y = np.concatenate(pred[phase]), np.concatenate(truth[phase])
            rel = np.abs(p / y - 1.0) * 100.0
            out[phase] = {"rows": int(y.size), "median_abs_pct": round(float(np.median(rel)), 3),
                          "p90_abs_pct": round(float(np.percentile(rel, 90)), 3),
                          "max_abs_pct": round(float(np.max(rel)), 2),
                          "log_abs_p90": round(float(np.percentile(np.abs(np.log(p / y)), 90)), 5)}  # fmt: skip
    out["points"] = "log-uniform between the nodes of each tabled engine; decode within its KV cache"
    return out
