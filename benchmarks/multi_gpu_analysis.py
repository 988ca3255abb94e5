"""Do corrections learned on TP1 carry to the TP2/TP4 engines we never measure? (issue 13, analysis)

On the GPU-runner records in models/measurements/ (H100 Llama-3.1-8B TP1+TP2; H200 Llama-3.1-8B and
Qwen3-32B TP1), against AIC's vLLM estimate of the same system:

1. raw AIC error per engine (and each engine's ratio to the bandwidth floor, measured and AIC's);
2. calibrated from 4 TP1 points (2 prefill ISLs, 2 decode points): the error on the TP1 points held
   out, and on every other engine that has records (TP2 on the H100), then after adding one TP2
   point (each TP2 point in turn; the rest scored);
3. the 90 % band on the scored points: coverage, and sharpness = median band half-width / median
   absolute error (1 is ideal; issue 11 asks for at most 2);
4. would a sequential loop have asked for a TP2 point? Per decision point x and SLA T (T = f x TP1's
   measured value at x, f in SLA_FACTORS), the pick is the engine of highest tokens/s/GPU whose
   estimate meets T; the loop asks when TP2's band edges give different picks. Scored against the
   pick the measurements give. On the H200, where TP2/TP4 were not measured, only "would ask".

    python benchmarks/multi_gpu_analysis.py   # CPU, about a minute; writes benchmarks/results/multi_gpu_analysis.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from estimator.candidates import Candidate, Mapping
from estimator.measurements import Measurement, MeasurementStore, ProbeKind
from estimator.sources.aic import AicSource
from estimator.sources.base import PerfSource, Stack

MEAS = ROOT / "models/measurements"
LLAMA, QWEN = "meta-llama/Meta-Llama-3.1-8B", "Qwen/Qwen3-32B"
FAMILIES = {  # (label, system, model) -> {TP: records file}
    ("H100 Llama-3.1-8B", "h100_sxm", LLAMA): {1: "h100_llama31_8b_gpu_runner.jsonl", 2: "h100_llama31_8b_gpu_runner_tp2.jsonl"},
    ("H200 Llama-3.1-8B", "h200_sxm", LLAMA): {1: "h200_llama31_8b_gpu_runner_tp1.jsonl"},
    ("H200 Qwen3-32B", "h200_sxm", QWEN): {1: "h200_qwen3_32b_gpu_runner_tp1.jsonl"},
}  # fmt: skip
REPEATS = {("H200 Llama-3.1-8B", 1): "h200_llama31_8b_gpu_runner_tp1_repeat.jsonl",
           ("H200 Qwen3-32B", 1): "h200_qwen3_32b_gpu_runner_tp1_repeat.jsonl",
           ("H100 Llama-3.1-8B", 1): "h100_llama31_8b_gpu_runner_repeat.jsonl"}  # fmt: skip
PICK = {("prefill", 1, 512), ("prefill", 1, 8192), ("decode", 8, 1024), ("decode", 32, 4096)}
SLA_FACTORS = (0.6, 0.7, 0.8, 0.9, 1.1)
UNMEASURED_TP = (2, 4)


def fit(base: PerfSource, measurements: list[Measurement]) -> PerfSource:
    """The one place this study calls the calibration API (re-wired at merge when it moves)."""
    from validate.calibrate import calibrate

    return calibrate(base, measurements)


def point(m: Measurement) -> tuple[str, int, int]:
    p = m.probe
    return (p.kind.value, p.concurrency, p.context_tokens if p.kind is ProbeKind.DECODE else p.isl)


def measured_ms(m: Measurement) -> float:
    return m.ttft_ms if m.probe.kind is ProbeKind.PREFILL else m.itl_ms


def estimate(src: PerfSource, tp: int, pt: tuple[str, int, int]) -> tuple[float, float, float]:
    """(value, band low, band high) in ms through the PerfSource contract."""
    cand, (kind, batch, tokens) = Candidate(Mapping.TP, tp), pt
    if kind == "prefill":
        v, (lo, hi) = src.prefill_ttft_ms(cand, [tokens]), src.prefill_ttft_band(cand, [tokens])
    else:
        v, (lo, hi) = src.decode_itl_ms(cand, [batch], [tokens]), src.decode_itl_band(cand, [batch], [tokens])
    return float(np.asarray(v)[0]), float(np.asarray(lo)[0]), float(np.asarray(hi)[0])


def scores(src: PerfSource, ms: list[Measurement]) -> dict[str, dict[str, float]]:
    """Per phase: n, median and max |error| %, 90 % band coverage, median half-width %, sharpness."""
    out = {}
    for kind in ("prefill", "decode"):
        rows = []
        for m in (m for m in ms if m.probe.kind.value == kind):
            v, lo, hi = estimate(src, m.probe.candidate.num_gpus, point(m))
            y = measured_ms(m)
            rows.append((abs(v / y - 1) * 100, lo <= y <= hi, (hi - lo) / 2 / v * 100))
        if rows:
            err, cov, half = (np.array(c, dtype=float) for c in zip(*rows, strict=True))
            out[kind] = {"n": len(rows), "median_err": float(np.median(err)), "max_err": float(err.max()),
                         "coverage": float(cov.mean()), "half_width": float(np.median(half)),
                         "sharpness": float(np.median(half) / max(np.median(err), 1e-9))}  # fmt: skip
    return out


def raw_table(family: tuple, records: dict[int, list[Measurement]], aic: PerfSource) -> list[dict]:
    rows = []
    for tp, ms in records.items():
        for kind in ("prefill", "decode"):
            sel = [m for m in ms if m.probe.kind.value == kind]
            signed = np.array([estimate(aic, tp, point(m))[0] / measured_ms(m) - 1 for m in sel]) * 100
            floor = [m.extra["bw_floor_ms"] for m in sel]
            rows.append({"family": family[0], "tp": tp, "phase": kind, "n": len(sel),
                         "median_signed_err": float(np.median(signed)), "max_abs_err": float(np.abs(signed).max()),
                         "meas_over_floor": float(np.median([measured_ms(m) / f for m, f in zip(sel, floor, strict=True)])),
                         "aic_over_floor": float(np.median([estimate(aic, tp, point(m))[0] / f
                                                            for m, f in zip(sel, floor, strict=True)]))})  # fmt: skip
    return rows


def pick(values: dict[int, float], pt: tuple[str, int, int], target_ms: float) -> int | None:
    """TP size of highest tokens/s/GPU among engines meeting the target (None: none meets it)."""
    _, batch, tokens = pt
    work = tokens if pt[0] == "prefill" else batch
    ok = {tp: work / v / tp for tp, v in values.items() if v <= target_ms}
    return max(ok, key=ok.get) if ok else None


def loop_decisions(cal: PerfSource, records: dict[int, list[Measurement]], tps: tuple[int, ...],
                   band_pct: float | None = None) -> dict:  # fmt: skip
    """Would the loop ask for a point of an unmeasured engine, and was the no-ask pick right?

    ``band_pct``: replace the calibrated band by ± that many percent of the estimate (an empirical band).
    """
    tp1 = {point(m): measured_ms(m) for m in records[1]}
    truth = {tp: {point(m): measured_ms(m) for m in records[tp]} for tp in tps if tp in records}
    out = {"scenarios": 0, "asked": 0, "wrong_point_pick": 0, "wrong_and_not_asked": 0, "wrong_and_asked": 0,
           "scored": 0, "cases": []}  # fmt: skip
    for pt, y1 in sorted(tp1.items()):
        est = {tp: estimate(cal, tp, pt) for tp in (1, *tps)}
        if band_pct is not None:
            est = {
                tp: (v, v * (1 - band_pct / 100), v * (1 + band_pct / 100)) for tp, (v, _, _) in est.items()
            }
        for f in SLA_FACTORS:
            target = f * y1
            point_pick = pick({tp: e[0] for tp, e in est.items()}, pt, target)
            edges = {pick({**{t: e[0] for t, e in est.items()}, tp: est[tp][side]}, pt, target)
                     for tp in tps for side in (1, 2)}  # fmt: skip
            asked = len(edges | {point_pick}) > 1
            out["scenarios"] += 1
            out["asked"] += asked
            case = {"point": pt, "sla_factor": f, "target_ms": target, "pick": point_pick, "asked": asked}
            if all(pt in truth[tp] for tp in tps if tp in truth) and len(truth) == len(tps):
                real = pick({1: y1, **{tp: truth[tp][pt] for tp in tps}}, pt, target)
                wrong = real != point_pick
                out["scored"] += 1
                out["wrong_point_pick"] += wrong
                out["wrong_and_not_asked"] += wrong and not asked
                out["wrong_and_asked"] += wrong and asked
                case["true_pick"] = real
            out["cases"].append(case)
    return out


def run() -> dict:
    result: dict = {"pick": sorted(PICK), "sla_factors": SLA_FACTORS, "raw": [], "calibrated": [], "add_one": [],
                    "repeat_spread_pct": {}, "loop": {}, "unmeasured_bands": []}  # fmt: skip
    for family, files in FAMILIES.items():
        label, system, model = family
        aic = AicSource(Stack(model, system, "vllm"))
        records = {tp: MeasurementStore(MEAS / f).load() for tp, f in files.items()}
        result["raw"] += raw_table(family, records, aic)
        if (label, 1) in REPEATS:
            first = {point(m): measured_ms(m) for m in records[1]}
            again = MeasurementStore(MEAS / REPEATS[(label, 1)]).load()
            d = [100 * (measured_ms(m) / first[point(m)] - 1) for m in again if point(m) in first]
            result["repeat_spread_pct"][label] = {"n": len(d), "min": min(d), "max": max(d),
                                                  "median_abs": float(np.median(np.abs(d)))}  # fmt: skip
        train = [m for m in records[1] if point(m) in PICK]
        assert len(train) == len(PICK), f"{label}: calibration points missing"
        cal = fit(aic, train)
        held = {
            1: [m for m in records[1] if point(m) not in PICK],
            **{tp: ms for tp, ms in records.items() if tp > 1},
        }
        for tp, ms in held.items():
            for kind, s in scores(cal, ms).items():
                result["calibrated"].append({"family": label, "tp": tp, "set": "TP1 held out" if tp == 1 else
                                             f"TP{tp} (never measured in the fit)", "phase": kind, **s})  # fmt: skip
        for tp, ms in ((t, m) for t, m in records.items() if t > 1):
            per_choice = []
            for added in ms:
                cal2 = fit(aic, [*train, added])
                per_choice.append({"added": point(added), **scores(cal2, [m for m in ms if m is not added])})
            for kind in ("prefill", "decode"):
                med = [c[kind]["median_err"] for c in per_choice]
                cov = [c[kind]["coverage"] for c in per_choice]
                sharp = [c[kind]["sharpness"] for c in per_choice]
                result["add_one"].append({"family": label, "tp": tp, "phase": kind, "choices": len(per_choice),
                                          "median_err_median": float(np.median(med)), "median_err_worst": max(med),
                                          "coverage_median": float(np.median(cov)),
                                          "sharpness_median": float(np.median(sharp))})  # fmt: skip
        tps = tuple(t for t in UNMEASURED_TP if t in records) or UNMEASURED_TP
        # the empirical band: the 90th percentile of the calibrated TP1 held-out |error|, per phase pooled
        errs = [abs(estimate(cal, 1, point(m))[0] / measured_ms(m) - 1) * 100 for m in held[1]]
        for name, band in (("calibrated band", None), ("empirical band", float(np.quantile(errs, 0.9)))):
            loop = {k: v for k, v in loop_decisions(cal, records, tps, band).items() if k != "cases"}
            result["loop"][f"{label} / {name}"] = {
                **loop,
                "engines": [f"TP{t}" for t in tps],
                "band_pct": band,
            }
        for tp in UNMEASURED_TP:
            if tp in records:
                continue
            half = []
            for pt in sorted({point(m) for m in records[1]}):
                v, lo, hi = estimate(cal, tp, pt)
                half.append((pt[0], (hi - lo) / 2 / v * 100))
            for kind in ("prefill", "decode"):
                hw = [h for k, h in half if k == kind]
                result["unmeasured_bands"].append({"family": label, "tp": tp, "phase": kind, "n": len(hw),
                                                   "half_width_median": float(np.median(hw))})  # fmt: skip
    return result


def show(r: dict) -> None:
    print("## raw AIC vLLM estimate vs GPU runner (signed: + means AIC above the measurement)")
    print(
        "| engine | TP | phase | points | median error | max abs error | measured / bw floor | AIC / bw floor |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for x in r["raw"]:
        print(f"| {x['family']} | {x['tp']} | {x['phase']} | {x['n']} | {x['median_signed_err']:+.1f} % | "
              f"{x['max_abs_err']:.1f} % | {x['meas_over_floor']:.2f} | {x['aic_over_floor']:.2f} |")  # fmt: skip
    print("\n## calibrated on 4 TP1 points: scored points (90 % band)")
    print(
        "| engine | scored set | phase | points | median abs error | max abs error | band covers | median half-width | sharpness |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for x in r["calibrated"]:
        print(f"| {x['family']} | {x['set']} | {x['phase']} | {x['n']} | {x['median_err']:.1f} % | {x['max_err']:.1f} % | "
              f"{100 * x['coverage']:.0f} % | ±{x['half_width']:.1f} % | {x['sharpness']:.1f} |")  # fmt: skip
    print("\n## calibrated on the 4 TP1 points + one TP2 point (each in turn), rest of TP2 scored")
    print(
        "| engine | TP | phase | choices | median abs error (median over choices) | worst choice | band covers | sharpness |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for x in r["add_one"]:
        print(f"| {x['family']} | {x['tp']} | {x['phase']} | {x['choices']} | {x['median_err_median']:.1f} % | "
              f"{x['median_err_worst']:.1f} % | {100 * x['coverage_median']:.0f} % | {x['sharpness_median']:.1f} |")  # fmt: skip
    print("\n## band of the engines never measured (no records to score against)")
    print("| engine | TP | phase | points | median band half-width |")
    print("|---|---:|---|---:|---:|")
    for x in r["unmeasured_bands"]:
        print(f"| {x['family']} | {x['tp']} | {x['phase']} | {x['n']} | ±{x['half_width_median']:.1f} % |")
    print("\n## would the sequential loop ask for a point of the unmeasured engines?")
    print(
        "| engine / band | engines in question | scenarios | loop asks | scored against records | wrong point pick | wrong and not asked |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for label, x in r["loop"].items():
        band = f" (±{x['band_pct']:.1f} %)" if x["band_pct"] is not None else ""
        print(f"| {label}{band} | {', '.join(x['engines'])} | {x['scenarios']} | {x['asked']} | {x['scored']} | "
              f"{x['wrong_point_pick']} | {x['wrong_and_not_asked']} |")  # fmt: skip
    print("\n## run-to-run spread (second pass vs first, same points)")
    for label, s in r["repeat_spread_pct"].items():
        print(
            f"- {label}: {s['n']} points, {s['min']:+.2f} % to {s['max']:+.2f} %, median |diff| {s['median_abs']:.2f} %"
        )


def main() -> int:
    r = run()
    show(r)
    out = ROOT / "benchmarks/results/multi_gpu_analysis.json"
    out.write_text(json.dumps(r, indent=2, default=str) + "\n")
    print(f"\nraw results: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
