"""Calibrate AIC's vLLM surfaces for Llama-3.1-8B from <= 4 points measured on an H100; score the rest.

Uses the GPU-runner measurements committed under models/measurements/ (see docs/h100_study.md).
The 4 calibration points are chosen the way a user with a small budget would: two prefill ISLs
(short, long) and two decode points (small batch/short context, large batch/long context). Every
other point is held out. Also scores the TP2 points with the TP1-only calibration (transfer across
engines of the same model/system/backend). Prints a table; writes benchmarks/results/h100_calibration.json.

    python benchmarks/h100_calibration.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from estimator.measurements import MeasurementStore, ProbeKind
from estimator.sources.aic import AicSource
from estimator.sources.base import Stack
from validate.calibrate import calibrate

ROOT = Path(__file__).resolve().parents[1]
TP1 = ROOT / "models/measurements/h100_llama31_8b_gpu_runner.jsonl"
TP2 = ROOT / "models/measurements/h100_llama31_8b_gpu_runner_tp2.jsonl"
PICK = {
    (ProbeKind.PREFILL, 512, 1),
    (ProbeKind.PREFILL, 8192, 1),
    (ProbeKind.DECODE, 1024, 8),
    (ProbeKind.DECODE, 4096, 64),
}


def point(m) -> tuple:
    ctx = m.probe.context_tokens if m.probe.kind is ProbeKind.DECODE else m.probe.isl
    return m.probe.kind, ctx, m.probe.concurrency


def measured_ms(m) -> float:
    return m.ttft_ms if m.probe.kind is ProbeKind.PREFILL else m.itl_ms


def predict(src, m) -> tuple[float, float, float]:
    c = m.probe.candidate
    if m.probe.kind is ProbeKind.PREFILL:
        v = src.prefill_ttft_ms(c, [m.probe.isl])
        lo, hi = src.prefill_ttft_band(c, [m.probe.isl])
    else:
        args = ([m.probe.concurrency], [m.probe.context_tokens])
        v = src.decode_itl_ms(c, *args)
        lo, hi = src.decode_itl_band(c, *args)
    return float(v[0]), float(lo[0]), float(hi[0])


def main() -> None:
    tp1, tp2 = MeasurementStore(TP1).load(), MeasurementStore(TP2).load()
    stack = Stack("meta-llama/Meta-Llama-3.1-8B", "h100_sxm", "vllm")
    aic = AicSource(stack)
    train = [m for m in tp1 if point(m) in PICK]
    assert len(train) == len(PICK), f"calibration points missing: {PICK - {point(m) for m in train}}"
    cal = calibrate(aic, train)
    rows = []
    for label, ms in (("TP1 held out", [m for m in tp1 if point(m) not in PICK]), ("TP2 (transfer)", tp2)):
        for m in ms:
            meas = measured_ms(m)
            raw = predict(aic, m)[0]
            cv, lo, hi = predict(cal, m)
            rows.append({"set": label, "kind": m.probe.kind.value, "batch": m.probe.concurrency,
                         "context": point(m)[1], "measured_ms": meas, "aic_ms": raw, "calibrated_ms": cv,
                         "band": [lo, hi], "raw_err_pct": 100 * (raw / meas - 1),
                         "cal_err_pct": 100 * (cv / meas - 1), "covered": lo <= meas <= hi,
                         "half_width_pct": 100 * (hi - lo) / 2 / cv})  # fmt: skip
    print(
        f"calibrated on {len(train)} TP1 points: "
        + ", ".join(f"{k.value} ctx {c} batch {b}" for k, c, b in sorted(PICK, key=str))
    )
    print(
        f"{'set':16} {'phase':8} {'n':>3} {'AIC median |err|':>17} {'calibrated':>11} {'p90 AIC':>8} {'p90 cal':>8} {'band covers':>12} {'half-width':>11}"
    )
    summary = []
    for label in ("TP1 held out", "TP2 (transfer)"):
        for kind in ("prefill", "decode"):
            rs = [r for r in rows if r["set"] == label and r["kind"] == kind]
            raw = np.abs([r["raw_err_pct"] for r in rs])
            cal_e = np.abs([r["cal_err_pct"] for r in rs])
            cov = float(np.mean([r["covered"] for r in rs]))
            half = float(np.median([r["half_width_pct"] for r in rs]))
            summary.append({"set": label, "phase": kind, "n": len(rs), "aic_median": float(np.median(raw)),
                            "cal_median": float(np.median(cal_e)), "aic_p90": float(np.quantile(raw, 0.9)),
                            "cal_p90": float(np.quantile(cal_e, 0.9)), "coverage": cov,
                            "median_half_width_pct": half})  # fmt: skip
            s = summary[-1]
            print(f"{label:16} {kind:8} {s['n']:>3} {s['aic_median']:>16.1f}% {s['cal_median']:>10.1f}% "
                  f"{s['aic_p90']:>7.1f}% {s['cal_p90']:>7.1f}% {100 * cov:>11.0f}% {half:>10.1f}%")  # fmt: skip
    out = ROOT / "benchmarks/results/h100_calibration.json"
    out.write_text(json.dumps({"train": [point(m)[1:] + (point(m)[0].value,) for m in train], "summary": summary,
                               "rows": rows}, indent=2, default=str))  # fmt: skip
    print(f"raw results: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
