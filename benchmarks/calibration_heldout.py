"""Held-out accuracy and band quality of a calibration from <= 4 measured points per engine.

Reads every ``*gpu_runner*.jsonl`` under models/measurements/ (recursively), groups the records by stack
(model, system, backend), and for each stack calibrates its base source (AIC) on at most 4 points of
every engine: the two prefill ISLs closest (in log) to 512 and 8192, and the two decode points closest
to (batch 8, context 1024) and (batch 64, context 4096), the picks of a user with a small budget. Every
other point of the stack is held out and scored: |error| of the calibrated prediction, whether the
90 % band covers it, and the band's half-width relative to the actual error (sharpness).

With ``--random-splits N`` it also repeats the scoring over N seeded random picks of 2 prefill + 2 decode
points per engine. A point measured in several files (repeat runs) is kept once, from the first file.

    python benchmarks/calibration_heldout.py [--random-splits 20]

Prints the table and writes benchmarks/results/calibration_heldout.json.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import os
import platform
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from estimator.measurements import Measurement, MeasurementStore, ProbeKind
from estimator.sources.aic import AicSource
from estimator.sources.base import Stack
from estimator.calibration_fit import learn_discrepancy, learn_phase_kernel, learn_phase_prior
from validate.calibrate import calibrate, collect_observations, default_prior, observations_for

ROOT = Path(__file__).resolve().parents[1]
PREFILL_PICKS = (512, 8192)
DECODE_PICKS = ((8, 1024), (64, 4096))
TARGETS = {"median_pct": 5.0, "max_pct": 15.0, "coverage": (0.80, 0.97), "sharpness": 2.0}


def load_records(root: Path) -> tuple[dict[Stack, list[Measurement]], int]:
    """Records per stack, one per probe key (first file wins); the number of duplicates dropped."""
    seen, dropped = set(), 0
    out: dict[Stack, list[Measurement]] = collections.defaultdict(list)
    for path in sorted(root.rglob("*gpu_runner*.jsonl")):
        for m in MeasurementStore(path).load():
            if m.probe.key in seen:
                dropped += 1
                continue
            seen.add(m.probe.key)
            s = m.probe.stack
            out[Stack(s.model, s.system, s.backend, s.backend_version, s.gemm_quant, s.kvcache_quant)].append(
                m
            )
    return dict(out), dropped


def _dist(m: Measurement, target: tuple[float, float]) -> float:
    return math.hypot(math.log(m.probe.concurrency / target[0]), math.log(m.probe.context_tokens / target[1]))


def fixed_pick(ms: list[Measurement]) -> list[Measurement]:
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


def random_pick(ms: list[Measurement], rng: random.Random) -> list[Measurement]:
    picks = []
    for eng in sorted({m.probe.candidate.name for m in ms}):
        for kind in (ProbeKind.PREFILL, ProbeKind.DECODE):
            mine = [m for m in ms if m.probe.candidate.name == eng and m.probe.kind is kind]
            picks += rng.sample(mine, min(2, len(mine)))
    return picks


def score(base: AicSource, records: list[Measurement], train: list[Measurement], learned) -> list[dict]:
    prior = default_prior(base, train)
    cal = calibrate(base, train, learned(prior) if learned else prior)
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
                     "covered": b.low_ms <= obs.measured_ms <= b.high_ms})  # fmt: skip
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
    ap.add_argument("--noise", choices=("field", "learned", "cv"), default="field",
                    help="discrepancy: learned from the other stacks (leave-stack-out) or cross-validated")
    ap.add_argument("--max-dof", type=float, default=math.inf)
    ap.add_argument("--transfer", default="log_prefill_step",
                    help="shared parameters whose prior is learned from the other stacks (comma-separated; '' none)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "calibration_heldout.json"))
    args = ap.parse_args(argv)
    stacks, dropped = load_records(Path(args.measurements))
    if not stacks:
        print(f"error: no *gpu_runner*.jsonl records under {args.measurements}", file=sys.stderr)
        return 2
    result: dict = {"duplicates_dropped": dropped, "stacks": []}
    print(
        "| stack | split | phase | n | AIC median | held-out median | max | 90% band coverage | median half-width | half-width / median error | targets |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    bases = {stack: AicSource(stack) for stack in stacks}
    families = {stack: (collect_observations(bases[stack], rs)[0], default_prior(bases[stack], rs))
                for stack, rs in stacks.items()}  # fmt: skip
    for stack, records in sorted(stacks.items(), key=lambda kv: str(kv[0])):
        base = bases[stack]
        learned = None
        others = {str(s): f for s, f in families.items() if s != stack}
        if args.noise == "learned":
            disc = learn_discrepancy(others, args.max_dof)
            print(f"<!-- {stack.model} {stack.system}: discrepancy learned from the other stacks {disc} -->")
            learned = lambda p, d=disc: p.with_discrepancy(d)  # noqa: E731
        elif args.noise == "field":
            kern = learn_phase_kernel(others)
            print(f"<!-- {stack.model} {stack.system}: discrepancy field learned from the other stacks {kern} -->")
            ard = int(os.environ.get("ARD", "3"))
            learned = lambda p, k=kern: dataclasses.replace(p, phase_kernel=k, ard_iterations=ard)  # noqa: E731
        names = [n for n in args.transfer.split(",") if n]
        if names:
            shape = learn_phase_prior(others, names, float(os.environ.get("MINSD", "0.1")))
            print(f"<!-- prior learned from the other stacks {shape} -->")
            noise_only = learned
            learned = lambda p, f=noise_only, sh=shape: (f(p) if f else p).updated(sh)  # noqa: E731
        train = fixed_pick(records)
        splits = {"fixed": score(base, records, train, learned)}
        for i in range(args.random_splits):
            rng = random.Random(f"{stack}|{i}")
            splits.setdefault("random", []).extend(score(base, records, random_pick(records, rng), learned))
        label = f"{stack.model.split('/')[-1]} {stack.system} {stack.backend} ({', '.join(sorted({m.probe.candidate.name for m in records}))})"
        entry = {"stack": stack.to_dict(), "train": [m.probe.to_dict() for m in train], "splits": {}}
        for name, rows in splits.items():
            entry["splits"][name] = {"summary": {}, "rows": rows}
            for phase in ("prefill", "decode"):
                rs = [r for r in rows if r["phase"] == phase]
                if not rs:
                    continue
                s = summarise(rs)
                entry["splits"][name]["summary"][phase] = {**s, "verdict": verdict(s)}
                split = name if name == "fixed" else f"{args.random_splits} random"
                print(f"| {label} | {split} | {phase} | {s['n']} | {s['aic_median_pct']:.1f} % | {s['median_pct']:.1f} % | "
                      f"{s['max_pct']:.1f} % | {100 * s['coverage']:.0f} % | ±{s['median_half_width_pct']:.1f} % | "
                      f"{s['sharpness']:.2f} | {verdict(s)} |")  # fmt: skip
        result["stacks"].append(entry)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result["machine"] = f"{platform.node()} ({os.cpu_count()} CPUs), {platform.platform()}"
    Path(args.out).write_text(json.dumps(_rounded(result), separators=(",", ":"), default=str) + "\n")
    print(f"raw results: {args.out}; {dropped} repeated points dropped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
