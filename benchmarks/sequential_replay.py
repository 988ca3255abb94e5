"""The until-confident loop on replayed real records, against the one-shot plan and all the data.

Data: the H100 GPU-runner records of models/measurements/ (Llama-3.1-8B shape, TP1 and TP2, 63 points).
For each SLA and level: run ``validate --until-confident LEVEL`` with the replay runner (it can measure
only recorded points), and compare its recommendation and point count with (a) the one-shot plan of
``--budget`` points (``validate/plan.py``), each mapped to the nearest recorded point of its engine as the
loop maps its first points, calibrated on those points only, and (b) the recommendation calibrated on
every record ("all the data"). (``validate --runner replay`` without the loop plans only exact recorded
points, none here, and calibrates on every record: that would be "all the data" again.)

    python benchmarks/sequential_replay.py [--budget 8] [--max-budget 16] [--tie-tolerance 0.02]

Prints one table of runs, the step-by-step confidence and the first 90 % run's report; writes
benchmarks/results/sequential_replay.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from estimator.pipeline import estimate
from estimator.sources import Stack, make_source
from estimator.spec import load_spec
from validate.calibrate import calibrate
from validate.next_probe import candidate_probes, nearest
from validate.plan import plan_probes
from validate.runners.replay import ReplayRunner
from validate.workflow import run_validation

RECORDS = ROOT / "models" / "measurements"
FILES = [
    str(RECORDS / "h100_llama31_8b_gpu_runner.jsonl"),
    str(RECORDS / "h100_llama31_8b_gpu_runner_tp2.jsonl"),
]
STUDY = {"model": "meta-llama/Llama-3.1-8B", "system": "h100_sxm", "gpus": "1,2", "isl": 3000, "osl": 150}
# the last two: raw AIC picks other engines than all the data (TP1 prefill misses 70 ms on silicon; at 30 ms
# TP1 decodes more tokens/s/GPU than TP2 on silicon), so the loop must measure its way to another answer
SLAS = ({"ttft": 200, "itl": 12}, {"ttft": 200, "itl": 20}, {"ttft": 100, "itl": 15}, {"ttft": 70, "itl": 12},
        {"ttft": 200, "itl": 30})  # fmt: skip
LEVELS = (0.8, 0.9, 0.95)


def engines(sel) -> tuple[str, str]:
    return sel.best_prefill.candidate.name, sel.best_decode.candidate.name


def raw_aic(spec) -> tuple[str, str]:
    return engines(estimate(spec, make_source("aic", Stack.from_spec(spec))).selection)


def all_data(spec) -> tuple[str, str]:
    base = make_source("aic", Stack.from_spec(spec))
    return engines(estimate(spec, calibrate(base, ReplayRunner.from_paths(FILES).records)).selection)


def one_shot(spec, budget: int) -> dict:
    """The one-shot plan of ``budget`` points on the nearest recorded points, calibrated on those alone."""
    base = make_source("aic", Stack.from_spec(spec))
    raw = estimate(spec, base)
    runner = ReplayRunner.from_paths(FILES)
    pool = candidate_probes(raw, runner)
    chosen: list = []
    for p in plan_probes(raw, budget=budget):
        q = nearest([x for x in pool if x.key not in {c.key for c in chosen}], p)
        if q is not None:
            chosen.append(q)
    measured = [runner.measure(q) for q in chosen]
    sel = estimate(spec, calibrate(base, measured)).selection
    return {"recommendation": engines(sel), "points": len(measured)}


def one_run(sla: dict, validate: dict, out: Path) -> dict:
    spec = load_spec(**STUDY, **sla, plots=False, cache=False, output_dir=str(out),
                     validate={"runner": "replay", "measurements": FILES, **validate})  # fmt: skip
    t0 = time.perf_counter()
    profile, result = run_validation(spec)
    seq = result.result.sequential
    measured = result.result.run.measurements
    return {
        "recommendation": engines(profile.selection),
        "points": len(measured),
        "confidence": seq.decision.confidence if seq and seq.decision else None,
        "stopped_because": seq.stopped_because if seq else "one-shot plan",
        "tie_tolerance": seq.tie_tolerance if seq else None,
        "steps": [(s.points_measured, s.confidence_after, f"{s.prefill}/{s.decode}") for s in seq.steps]
        if seq else [],
        "p_prefill": seq.decision.p_prefill if seq and seq.decision else None,
        "p_decode": seq.decision.p_decode if seq and seq.decision else None,
        "seconds": round(time.perf_counter() - t0, 1),
        "report": seq.summary_lines() if seq else [],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=8, help="the one-shot plan's budget")
    ap.add_argument(
        "--max-budget", type=int, default=16, help="the loop's budget (it stops earlier when confident)"
    )
    ap.add_argument("--tie-tolerance", type=float, default=None,
                    help="the loop's tie tolerance (default: validate's default)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sequential_replay.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, sla in enumerate(SLAS):
            spec = load_spec(**STUDY, **sla)
            want, raw = all_data(spec), raw_aic(spec)
            oneshot = one_shot(spec, args.budget)
            for level in LEVELS:
                loop = {"budget": args.max_budget, "until_confident": level}
                if args.tie_tolerance is not None:
                    loop["tie_tolerance"] = args.tie_tolerance
                r = one_run(sla, loop, Path(tmp) / f"seq{i}_{level}")
                rows.append(
                    {"sla": sla, "level": level, "raw_aic": raw, "all_data": want, "one_shot": oneshot,
                     "sequential": r}  # fmt: skip
                )
    print(f"| TTFT / ITL (ms) | level | raw AIC | all data | one-shot ({rows[0]['one_shot']['points']} pts) "
          f"| until confident | points | confidence (prefill, decode) | stopped |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s, o = r["sequential"], r["one_shot"]
        conf = "-" if s["confidence"] is None else f"{s['confidence']:.0%} ({s['p_prefill']:.0%}, {s['p_decode']:.0%})"
        print(f"| {r['sla']['ttft']} / {r['sla']['itl']} | {r['level']:.0%} | {'/'.join(r['raw_aic'])} "
              f"| {'/'.join(r['all_data'])} | "
              f"{'/'.join(o['recommendation'])} | {'/'.join(s['recommendation'])} | {s['points']} | {conf} "
              f"| {s['stopped_because']} |")  # fmt: skip
    print("\nconfidence after each point (points measured: confidence, recommendation):")
    for r in rows:
        steps = ", ".join(f"{n}: {'-' if c is None else f'{c:.0%}'} {e}" for n, c, e in r["sequential"]["steps"])
        print(f"  TTFT {r['sla']['ttft']} / ITL {r['sla']['itl']}, level {r['level']:.0%}: {steps}")
    first = next(r for r in rows if r["level"] == 0.9)
    print(f"\nTTFT {first['sla']['ttft']} / ITL {first['sla']['itl']} at 90 %, as the report prints it:")
    print("\n".join(first["sequential"]["report"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    doc = {"command": "python benchmarks/sequential_replay.py " + " ".join(argv or sys.argv[1:]),
           "records": [Path(f).name for f in FILES], "study": STUDY, "runs": rows}  # fmt: skip
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
