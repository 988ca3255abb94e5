"""Held-out accuracy and band quality of a calibration from <= 4 measured points per engine.

Reads every ``*gpu_runner*.jsonl`` under models/measurements/ (recursively), groups the records by stack
(model, system, backend), and for each stack calibrates its base source (AIC) on at most 4 points of
every engine (2 prefill, 2 decode) and scores every other point of the stack: |error| of the calibrated
prediction, whether the 90 % band covers it, and the band's half-width relative to the actual error
(sharpness). Records of files matching ``--test-only`` (default: the far points, ``*_far_*``) are only
scored: no split measures them and they are no phase evidence (a test set of extrapolations). Splits:

- planner: what ``validate.plan.plan_probes`` plans for the documented workload (ISL 3000, OSL 150) with
  2 points per phase and engine on a runner limited to the recorded engines, each planned probe snapped
  to the nearest record (the records are a grid, not the planner's exact points);
- hand-picked: the two prefill ISLs closest to 512 and 8192, the two decode points closest to (batch 8,
  context 1024) and (batch 64, context 4096);
- ``--random-splits N``: N seeded random picks of 2 prefill + 2 decode points per engine (robustness).

The calibration is ``validate.calibrate.calibrate`` with ``default_prior``, as ``sla-estimate validate``
runs it, given the phase evidence of every stack computed here from the records: ``default_prior`` drops
the calibrated stack's own evidence (leave-stack-out). ``--noise cv`` gives no evidence (the previous
model: cross-validated independent noise, ARD slopes). A point measured in several files (repeat runs)
is kept once, from the first file.

    python benchmarks/calibration_heldout.py [--random-splits 20]
        [--write-evidence models/calibration_phase_evidence.json]

Prints the table (per stack, and all stacks pooled) and writes benchmarks/results/calibration_heldout.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import platform
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from estimator.candidates import Candidate
from estimator.measurements import Measurement, MeasurementStore, ProbeKind
from estimator import phase_prior
from estimator.phase_prior import deployment_evidence
from estimator.pipeline import estimate
from estimator.sources.aic import AicSource
from estimator.sources.base import Stack
from estimator.spec import load_spec
from validate.calibrate import (
    PHASE_EVIDENCE_FORMAT_VERSION,
    calibrate,
    collect_observations,
    default_prior,
    deployment_name,
    is_moe,
    observations_for,
)
from validate.plan import plan_probes
from validate.runners.base import Capabilities

ROOT = Path(__file__).resolve().parents[1]
PREFILL_PICKS = (512, 8192)
DECODE_PICKS = ((8, 1024), (64, 4096))
# Far points (prefill ISL 16k-32k, decode 256@1k, 16@16k, 1@32k), a test set: scored, never trained on
TEST_ONLY = "*_far_*"
TARGETS = {"median_pct": 5.0, "max_pct": 15.0, "coverage": (0.80, 0.97), "sharpness": 2.0}


def load_records(root: Path, test_only: str = "") -> tuple[dict[Stack, list[Measurement]], int, set[str]]:
    """Records per stack, one per probe key (first file wins); the number of duplicates dropped; the keys
    of the records in files matching ``test_only`` (a glob: scored, never measured nor evidence)."""
    seen, dropped, tests = set(), 0, set()
    out: dict[Stack, list[Measurement]] = collections.defaultdict(list)
    for path in sorted(root.rglob("*gpu_runner*.jsonl")):
        for m in MeasurementStore(path).load():
            if m.probe.key in seen:
                dropped += 1
                continue
            seen.add(m.probe.key)
            if test_only and path.match(test_only):
                tests.add(m.probe.key)
            s = m.probe.stack
            out[Stack(s.model, s.system, s.backend, s.backend_version, s.gemm_quant, s.kvcache_quant)].append(
                m
            )
    return dict(out), dropped, tests


def _dist(m: Measurement, target: tuple[float, float]) -> float:
    return math.hypot(math.log(m.probe.concurrency / target[0]), math.log(m.probe.context_tokens / target[1]))


def hand_pick(ms: list[Measurement]) -> list[Measurement]:
    """Per engine: prefill closest to each PREFILL_PICKS ISL, decode closest to each DECODE_PICKS point."""
    picks = []
    for eng in sorted({m.probe.candidate.name for m in ms}):
        mine = [m for m in ms if m.probe.candidate.name == eng]
        pf = [m for m in mine if m.probe.kind is ProbeKind.PREFILL]
        dc = [m for m in mine if m.probe.kind is ProbeKind.DECODE]
        for isl in PREFILL_PICKS if pf else ():
            picks.append(min(pf, key=lambda m: abs(math.log(m.probe.isl / isl))))
        for t in DECODE_PICKS if dc else ():
            picks.append(min(dc, key=lambda m: _dist(m, t)))
    return list({m.probe.key: m for m in picks}.values())


# The documented example workload (README, examples/dgdr_qwen3_32b.yaml): what the planner plans for.
WORKLOAD = {"isl": 3000, "osl": 150, "ttft_ms": 200, "itl_ms": 20}


class RecordsRunner:
    """What a runner limited to the recorded engines can measure (prefill and decode probes only)."""

    name = "records"

    def __init__(self, engines: frozenset[Candidate]):
        self.caps = Capabilities(
            frozenset({ProbeKind.PREFILL, ProbeKind.DECODE}), engines, why="the recorded engines"
        )

    def capabilities(self) -> Capabilities:
        return self.caps

    def can_measure(self, probe) -> str | None:
        return self.caps.refusal(probe)


def planner_pick(
    stack: Stack, base: AicSource, ms: list[Measurement], per_engine: int = 2
) -> list[Measurement]:
    """What ``validate.plan.plan_probes`` plans for WORKLOAD with ``per_engine`` points per phase and engine
    (4 per engine), each snapped to the nearest record of its engine and phase (log ISL; log batch and
    log context)."""
    spec = load_spec(model=stack.model, system=stack.system, backend=stack.backend, plots=False, **WORKLOAD)
    engines = frozenset(m.probe.candidate for m in ms)
    plan = plan_probes(estimate(spec, base), budget=2 * per_engine * len(engines), max_points_per_engine=per_engine,
                       runner=RecordsRunner(engines))  # fmt: skip
    picks = []
    for p in plan:
        mine = [m for m in ms if m.probe.candidate == p.candidate and m.probe.kind is p.kind]
        if p.kind is ProbeKind.PREFILL:
            picks.append(min(mine, key=lambda m: abs(math.log(m.probe.isl / p.isl))))
        else:
            picks.append(min(mine, key=lambda m: _dist(m, (p.concurrency, p.context_tokens))))
    return list({m.probe.key: m for m in picks}.values())


def random_pick(ms: list[Measurement], rng: random.Random) -> list[Measurement]:
    picks = []
    for eng in sorted({m.probe.candidate.name for m in ms}):
        for kind in (ProbeKind.PREFILL, ProbeKind.DECODE):
            mine = [m for m in ms if m.probe.candidate.name == eng and m.probe.kind is kind]
            picks += rng.sample(mine, min(2, len(mine)))
    return picks


def score(
    base: AicSource, records: list[Measurement], train: list[Measurement], evidence: list, tests: set[str]
) -> list[dict]:
    """Calibrate on ``train`` with the default prior (phase evidence: ``evidence``), score the other records
    (those whose key is in ``tests`` marked ``far``)."""
    cal = calibrate(base, train, default_prior(base, train, evidence))
    keys = {m.probe.key for m in train}
    rows = []
    for m in records:
        if m.probe.key in keys:
            continue
        (obs,) = observations_for(base, m)
        b = cal.correction.band(obs)
        err = b.point_ms / obs.measured_ms - 1
        rows.append({"engine": obs.engine, "phase": m.probe.kind.value, "isl": m.probe.isl,
                     "batch": m.probe.concurrency, "context": m.probe.context_tokens, "measured_ms": obs.measured_ms,
                     "aic_ms": obs.steady.prefill_ms + obs.steady.decode_ms, "calibrated_ms": b.point_ms,
                     "band": [b.low_ms, b.high_ms], "err_pct": 100 * err,
                     "half_width_pct": 100 * (b.high_ms - b.low_ms) / 2 / b.point_ms,
                     "covered": b.low_ms <= obs.measured_ms <= b.high_ms,
                     "far": m.probe.key in tests})  # fmt: skip
    return rows


def summarise(rows: list[dict]) -> dict:
    err = np.abs([r["err_pct"] for r in rows])
    aic = np.abs([100 * (r["aic_ms"] / r["measured_ms"] - 1) for r in rows])
    half = np.array([r["half_width_pct"] for r in rows])
    med_err = float(np.median(err))
    return {"n": len(rows), "aic_median_pct": float(np.median(aic)), "median_pct": med_err,
            "max_pct": float(err.max()), "coverage": float(np.mean([r["covered"] for r in rows])),
            "median_half_width_pct": float(np.median(half)),
            "sharpness": float(np.median(half) / med_err) if med_err > 0 else math.inf}  # fmt: skip


def verdict(s: dict) -> str:
    lo, hi = TARGETS["coverage"]
    misses = []
    if s["median_pct"] > TARGETS["median_pct"]:
        misses.append("median")
    if s["max_pct"] > TARGETS["max_pct"]:
        misses.append("max")
    if not lo <= s["coverage"] <= hi:
        misses.append("coverage")
    if s["sharpness"] > TARGETS["sharpness"]:
        misses.append("sharpness")
    return "met" if not misses else "missed: " + ", ".join(misses)


def _rounded(x):
    """Floats to 5 significant digits: raw results stay readable and small."""
    if isinstance(x, float):
        return float(f"{x:.5g}")
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measurements", default=str(ROOT / "models" / "measurements"))
    ap.add_argument("--random-splits", type=int, default=0)
    ap.add_argument(
        "--noise",
        choices=("learned", "cv"),
        default="learned",
        help="learned: the prior and discrepancy field learned from the other stacks (leave-stack-out, "
        "what validate does); cv: the previous model (no evidence: cross-validated noise, ARD)",
    )
    ap.add_argument(
        "--write-evidence",
        metavar="PATH",
        help="also write every stack's fit as phase evidence (models/calibration_phase_evidence.json)",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "calibration_heldout.json"))
    ap.add_argument("--test-only", default=TEST_ONLY, metavar="GLOB",
                    help=f"records of files matching GLOB are only scored: never measured by a split nor in "
                         f"the evidence (default {TEST_ONLY!r}: the far points; '' for none)")  # fmt: skip
    ap.add_argument("--min-sd", type=float, default=phase_prior.MIN_SD,
                    help="sensitivity study: floor of the learned spread of the shape parameters (log units)")
    ap.add_argument("--level-min-sd", type=float, default=phase_prior.LEVEL_MIN_SD,
                    help="sensitivity study: floor of the learned spread of the levels (log units)")
    args = ap.parse_args(argv)
    phase_prior.MIN_SD, phase_prior.LEVEL_MIN_SD = args.min_sd, args.level_min_sd  # read at each prior
    stacks, dropped, tests = load_records(Path(args.measurements), args.test_only)
    if not stacks:
        print(f"error: no *gpu_runner*.jsonl records under {args.measurements}", file=sys.stderr)
        return 2
    result: dict = {"duplicates_dropped": dropped, "stacks": []}
    print(
        "| stack | split | phase | n | AIC median | held-out median | max | 90% band coverage | median half-width | half-width / median error | targets |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    bases = {stack: AicSource(stack) for stack in stacks}
    grid = {st: [m for m in rs if m.probe.key not in tests] for st, rs in stacks.items()}  # what may train
    evidence = [deployment_evidence(deployment_name(st), collect_observations(bases[st], rs)[0],
                                    default_prior(bases[st], rs, []), is_moe(st))
                for st, rs in sorted(grid.items(), key=lambda kv: str(kv[0]))]  # fmt: skip
    for stack, records in sorted(stacks.items(), key=lambda kv: str(kv[0])):
        base = bases[stack]
        # leave-stack-out: default_prior drops the evidence of the stack it calibrates
        learned = evidence if args.noise == "learned" else []
        train = planner_pick(stack, base, grid[stack])
        hand = hand_pick(grid[stack])
        splits = {
            "planner": score(base, records, train, learned, tests),
            "hand-picked": score(base, records, hand, learned, tests),
        }
        for i in range(args.random_splits):
            rng = random.Random(f"{stack}|{i}")
            pick = random_pick(grid[stack], rng)
            splits.setdefault("random", []).extend(score(base, records, pick, learned, tests))
        label = f"{stack.model.split('/')[-1]} {stack.system} {stack.backend} ({', '.join(sorted({m.probe.candidate.name for m in records}))})"
        entry = {"stack": stack.to_dict(), "moe": is_moe(stack), "train": [m.probe.to_dict() for m in train],
                 "splits": {}}  # fmt: skip
        for name, rows in splits.items():
            entry["splits"][name] = {"summary": {}, "rows": rows}
            for phase in ("prefill", "decode"):
                rs = [r for r in rows if r["phase"] == phase]
                if not rs:
                    continue
                s = summarise(rs)
                entry["splits"][name]["summary"][phase] = {**s, "verdict": verdict(s)}
                split = name if name != "random" else f"{args.random_splits} random"
                print(f"| {label} | {split} | {phase} | {s['n']} | {s['aic_median_pct']:.1f} % | {s['median_pct']:.1f} % | "
                      f"{s['max_pct']:.1f} % | {100 * s['coverage']:.0f} % | ±{s['median_half_width_pct']:.1f} % | "
                      f"{s['sharpness']:.2f} | {verdict(s)} |")  # fmt: skip
        result["stacks"].append(entry)
    result["pooled"] = {}
    # every stack's held-out points together; and the dense ones alone (MoE evidence never teaches them)
    # and each split into the study-grid points and the far (test-only) points
    pools = {"all stacks": ("", None), "dense stacks": ("dense/", None)}
    if tests:
        pools |= {"all stacks, grid points": ("grid/", False),
                  "dense stacks, grid points": ("dense/grid/", False),
                  "all stacks, far points": ("far/", True), "dense stacks, far points": ("dense/far/", True)}
    for pool, (prefix, far) in pools.items():
        for name in ("planner", "hand-picked", "random"):
            for phase in ("prefill", "decode"):
                rs = [
                    r
                    for e in result["stacks"]
                    if not (prefix.startswith("dense") and e["moe"])
                    for r in e["splits"].get(name, {}).get("rows", [])
                    if r["phase"] == phase and (far is None or r["far"] == far)
                ]
                if not rs:
                    continue
                s = summarise(rs)
                result["pooled"][f"{prefix}{name}/{phase}"] = {**s, "verdict": verdict(s)}
                split = name if name != "random" else f"{args.random_splits} random"
                print(f"| **{pool}** | {split} | {phase} | {s['n']} | {s['aic_median_pct']:.1f} % | {s['median_pct']:.1f} % | "
                      f"{s['max_pct']:.1f} % | {100 * s['coverage']:.0f} % | ±{s['median_half_width_pct']:.1f} % | "
                      f"{s['sharpness']:.2f} | {verdict(s)} |")  # fmt: skip
    if args.write_evidence:
        doc = {"format_version": PHASE_EVIDENCE_FORMAT_VERSION,
               "what": "each GPU-runner deployment of models/measurements fitted on all its prefill/decode "
                       "points but the test-only far points: "
                       "shared parameters and log residuals (the prior validate.calibrate learns for another one)",
               "generated_by": "python benchmarks/calibration_heldout.py --write-evidence models/calibration_phase_evidence.json",
               "deployments": [_rounded(e.to_dict()) for e in evidence]}  # fmt: skip
        Path(args.write_evidence).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.write_evidence}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result["machine"] = f"{platform.node()} ({os.cpu_count()} CPUs), {platform.platform()}"
    Path(args.out).write_text(json.dumps(_rounded(result), separators=(",", ":"), default=str) + "\n")
    print(f"raw results: {args.out}; {dropped} repeated points dropped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
