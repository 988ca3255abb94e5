"""Fleet sizing under uncertainty on replayed real records: raw AIC, a few-point calibration by point
estimate, and the same calibration at ``--confidence`` (``estimator/capacity_confidence.py``).

Data: the H100 GPU-runner records of models/measurements/ (Llama-3.1-8B shape, TP1 and TP2, 50 points the
calibration can use). "Truth" is the calibration on every record (the best this data can say: the
measured points themselves sit at a 0.8-3 % leave-one-out error from it). For each seed, a calibration
from 4 random records (per engine one prefill and one decode point) sizes the cheapest fleet (agg or
disagg, TP1/TP2 engines) for every SLA and request rate; the fleet is then checked on the truth's engine
tables: does it meet every target there, and how many GPUs more than the truth's own cheapest fleet?

    python benchmarks/fleet_confidence.py [--seeds 10] [--confidence 0.9]

Prints the table; writes benchmarks/results/fleet_confidence.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from estimator.candidates import enumerate_candidates
from estimator.capacity import _Search, plan_fleets
from estimator.capacity_confidence import plan_confident
from estimator.capacity_engine import engine_table
from estimator.capacity_types import Load, Sla
from estimator.model import load_model_info
from estimator.sources import Stack, make_source
from estimator.spec import load_spec
from estimator.workload import fixed
from validate.calibrate import calibrate
from validate.runners.replay import ReplayRunner

RECORDS = ROOT / "models" / "measurements"
FILES = [str(RECORDS / f"h100_llama31_8b_gpu_runner{tail}.jsonl") for tail in ("", "_tp2")]
STUDY = {"model": "meta-llama/Llama-3.1-8B", "system": "h100_sxm", "backend": "vllm", "gpus": "1,2"}
ISL, OSL = 3000, 150
SLAS = ((200, 20), (100, 15), (300, 30), (70, 12), (200, 12))  # (TTFT mean, ITL mean) ms
RATES = (5.0, 10.0, 20.0, 40.0)
PRICE = 3.0


def few_points(records: list, rng: np.random.Generator) -> list:
    """Per engine one prefill and one decode record, at random."""
    out = []
    for cand in sorted({r.probe.candidate.name for r in records}):
        for kind in ("prefill", "decode"):
            pool = [r for r in records if r.probe.candidate.name == cand and r.probe.kind.value == kind]
            out.append(pool[int(rng.integers(len(pool)))])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--confidence", type=float, default=0.9)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fleet_confidence.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    t0 = time.perf_counter()
    spec = load_spec(None, **STUDY, isl=ISL, osl=OSL)
    stack = Stack.from_spec(spec)
    base = make_source("aic", stack)
    records = ReplayRunner.from_paths(FILES).records
    truth = calibrate(base, records)
    cands = [c for c in enumerate_candidates(load_model_info(spec.model), spec.gpu_counts)[0]]
    w = fixed(ISL, OSL)

    def tables(src):
        return [engine_table(src, c, w) for c in cands]

    raw_t, truth_t = tables(base), tables(truth)
    truth_s = {sla: _Search(truth_t, w, Sla.means(*sla), w.arrival_cv2, PRICE) for sla in SLAS}
    rows = []
    for seed in range(args.seeds):
        few = calibrate(base, few_points(records, np.random.default_rng(seed)))
        few_t = tables(few)
        for sla in SLAS:
            s = Sla.means(*sla)
            for rate in RATES:
                load = Load(request_rate=rate)
                best = plan_fleets(truth_t, w, load, s, price_per_gpu_hour=PRICE).best
                if best is None:
                    continue
                point = plan_fleets(few_t, w, load, s, price_per_gpu_hour=PRICE)
                picks = {
                    "raw AIC": plan_fleets(raw_t, w, load, s, price_per_gpu_hour=PRICE).best,
                    "k=4 point": point.best,
                    f"k=4 P>={args.confidence:g}": plan_confident(
                        few, few_t, w, load, s, confidence=args.confidence, price_per_gpu_hour=PRICE,
                        point=point,
                    ).result.best,
                }  # fmt: skip
                for rule, f in picks.items():
                    if seed and rule == "raw AIC":
                        continue  # raw AIC does not depend on the seed
                    row = {"seed": seed, "ttft_ms": sla[0], "itl_ms": sla[1], "rate": rate, "rule": rule,
                           "truth_gpus": best.total_gpus, "fleet": f.label() if f else None,
                           "gpus": f.total_gpus if f else None, "p_meets_sla": f.p_meets_sla if f else None,
                           "meets_on_truth": bool(f and truth_s[sla].meets(f.deployment, rate))}  # fmt: skip
                    rows.append(row)
    print("| rule | decisions | miss the SLA on truth | no fleet found "
          "| extra GPUs over truth's best (mean) |")  # fmt: skip
    print("|---|---|---|---|---|")
    summary = {}
    for rule in dict.fromkeys(r["rule"] for r in rows):
        rs = [r for r in rows if r["rule"] == rule]
        found = [r for r in rs if r["gpus"] is not None]
        miss = sum(not r["meets_on_truth"] for r in found) / len(rs)
        none = sum(r["gpus"] is None for r in rs) / len(rs)
        extra = float(np.mean([r["gpus"] / r["truth_gpus"] - 1 for r in found])) if found else float("nan")
        summary[rule] = {"decisions": len(rs), "miss_rate": miss, "none_rate": none, "mean_extra_gpus": extra}
        print(f"| {rule} | {len(rs)} | {miss:.1%} | {none:.1%} | {extra:+.1%} |")
    conf = [r for r in rows if r["rule"].startswith("k=4 P") and r["p_meets_sla"] is not None]
    print(f"\nmean P(meets) of the confident picks: {np.mean([r['p_meets_sla'] for r in conf]):.3f}; "
          f"share that meet on truth: {np.mean([r['meets_on_truth'] for r in conf]):.3f}")
    print(f"({time.perf_counter() - t0:.0f} s)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    doc = {"command": "python benchmarks/fleet_confidence.py " + " ".join(argv or sys.argv[1:]),
           "records": [Path(f).name for f in FILES], "study": STUDY, "isl": ISL, "osl": OSL,
           "summary": summary, "rows": rows}  # fmt: skip
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
