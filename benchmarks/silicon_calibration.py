"""Calibration on AIC's silicon_sample.csv: raw AIC, per-group median ratio, and our calibration.

For every engine group (model, system, backend, quantisation, parallel mapping) with at least
``--min-rows`` distinct configurations, and every k in 1..4: pick k rows of each group of a
model/system/backend family (seeded random splits), calibrate on them, score the other rows.
Rows are deduplicated first (exact copies dropped, repeats of one configuration merged), so the
held-out score cannot leak. Rows AIC cannot estimate are counted with the reason.

    python benchmarks/silicon_calibration.py --out out/silicon_calibration [--splits 5]

Writes ``targets.json`` (cached AIC terms per row; delete it to recompute), ``results.csv`` (one
line per scored row × split × k) and ``summary.json``, and prints the table.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import logging
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from estimator.errors import SlaEstimateError  # noqa: E402
from estimator.sources.aic import AicSource  # noqa: E402
from estimator.sources.base import Stack  # noqa: E402
from estimator.sources.calibrated import PRIOR, SHARED, Correction, Target  # noqa: E402
from validate.calibrate import fit_correction, targets_for  # noqa: E402
from validate.silicon import load_silicon  # noqa: E402


def build_targets(cache: Path) -> tuple[list[dict], collections.Counter]:
    """One entry per deduplicated silicon configuration: identity, targets (or why AIC cannot estimate it)."""
    if cache.exists():
        doc = json.loads(cache.read_text())
        return doc["rows"], collections.Counter(doc["unestimable"])
    measurements, skipped = load_silicon()
    why = collections.Counter(f"not representable: {s.reason.split('(')[0].strip()}" for s in skipped)
    sources: dict[Stack, AicSource] = {}
    rows = []
    for m in measurements:
        p = m.probe
        stack = Stack(p.stack.model, p.stack.system, p.stack.backend, None, p.stack.gemm_quant)
        src = sources.setdefault(stack, AicSource(stack))
        try:
            ts = targets_for(src, m)
        except SlaEstimateError as exc:
            why[_reason(str(exc))] += 1
            continue
        rows.append({
            "family": f"{stack.model}|{stack.system}|{stack.backend}|{stack.gemm_quant}",
            "engine": p.candidate.name, "isl": p.isl, "osl": p.osl, "concurrency": p.concurrency,
            "version": p.stack.backend_version, "row_ids": m.extra.get("row_ids", []),
            "targets": [asdict(t) for t in ts],
        })  # fmt: skip
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"rows": rows, "unestimable": dict(why)}))
    return rows, why


def _reason(msg: str) -> str:
    low = msg.lower()
    for key, text in (("download", "model not bundled with AIC (needs a download)"),
                      ("missing system flops", "AIC system spec lacks flops for this quantisation"),
                      ("not available", "AIC kernel data missing for this quantisation/op"),
                      ("perf database error", "AIC kernel data missing for this quantisation/op"),
                      ("invalid quantized moe", "AIC rejects this MoE quantisation/mapping"),
                      ("divisible", "mapping does not divide the model (AIC check)")):  # fmt: skip
        if key in low:
            return key and text
    return "other AIC error: " + msg[:80]


def raw_ms(t: Target) -> float:
    """The uncalibrated estimate: serving model on raw AIC, regime weights at their prior, no overheads."""
    return _NEUTRAL.predict(t)


def _neutral() -> Correction:
    theta = np.array([PRIOR[n][0] for n in SHARED])
    theta[SHARED.index("log_step_ms")] = theta[SHARED.index("log_overhead_ms")] = -30.0  # e^-30 ms: none
    return Correction((), theta, np.zeros((theta.size, theta.size)), {"ttft": 0.0, "tpot": 0.0}, 0, "")


_NEUTRAL = _neutral()


def evaluate(rows: list[dict], ks: list[int], splits: int, min_rows: int, seed: int) -> list[dict]:
    fams: dict[str, dict[str, list[dict]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in rows:
        fams[r["family"]][r["engine"]].append(r)
    out = []
    for fam, engines in sorted(fams.items()):
        engines = {e: v for e, v in engines.items() if len(v) >= min_rows}
        for k in ks:
            for split in range(splits):
                rng = random.Random(f"{seed}|{fam}|{k}|{split}")
                train, test = [], []
                for e, v in sorted(engines.items()):
                    idx = list(range(len(v)))
                    rng.shuffle(idx)
                    train += [v[i] for i in idx[:k]]
                    test += [v[i] for i in idx[k:]]
                if not train:
                    continue
                corr = fit_correction([Target(**t) for r in train for t in r["targets"]])
                for r in test:
                    mine = [x for x in train if x["engine"] == r["engine"]]
                    for td in r["targets"]:
                        t = Target(**td)
                        ratio = float(np.median([x["targets"][_idx(x, t.kind)]["measured_ms"]
                                                 / raw_ms(Target(**x["targets"][_idx(x, t.kind)])) for x in mine]))  # fmt: skip
                        mid, lo, hi = corr.band(t)
                        out.append({"family": fam, "engine": r["engine"], "k": k, "split": split, "kind": t.kind,
                                    "isl": r["isl"], "osl": r["osl"], "concurrency": r["concurrency"],
                                    "measured_ms": t.measured_ms, "raw_ms": raw_ms(t),
                                    "baseline_ms": raw_ms(t) * ratio, "ours_ms": mid, "band_low_ms": lo,
                                    "band_high_ms": hi})  # fmt: skip
    return out


def _idx(row: dict, kind: str) -> int:
    return [t["kind"] for t in row["targets"]].index(kind)


def summarise(results: list[dict]) -> list[dict]:
    table = []
    for k in sorted({r["k"] for r in results}):
        line: dict = {"k": k}
        for kind in ("ttft", "tpot"):
            rs = [r for r in results if r["k"] == k and r["kind"] == kind]
            meas = np.array([r["measured_ms"] for r in rs])
            line[f"{kind}_n"] = len(rs)
            for name in ("raw", "baseline", "ours"):
                err = np.abs(np.array([r[f"{name}_ms"] for r in rs]) / meas - 1) * 100
                line[f"{kind}_{name}_median_pct"] = float(np.median(err))
                line[f"{kind}_{name}_p90_pct"] = float(np.percentile(err, 90))
            line[f"{kind}_band90_coverage"] = float(np.mean([r["band_low_ms"] <= r["measured_ms"] <= r["band_high_ms"]
                                                             for r in rs]))  # fmt: skip
        table.append(line)
    return table


def print_table(table: list[dict]) -> None:
    print("| k | kind | n | raw med | raw p90 | median-ratio med | median-ratio p90 | ours med | ours p90 | 90% band coverage |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for line in table:
        for kind in ("ttft", "tpot"):
            g = lambda n: line[f"{kind}_{n}"]  # noqa: E731
            print(f"| {line['k']} | {kind.upper()} | {g('n')} | {g('raw_median_pct'):.1f} % | {g('raw_p90_pct'):.0f} % | "
                  f"{g('baseline_median_pct'):.1f} % | {g('baseline_p90_pct'):.0f} % | {g('ours_median_pct'):.1f} % | "
                  f"{g('ours_p90_pct'):.0f} % | {g('band90_coverage'):.2f} |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/silicon_calibration")
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--min-rows", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ks", default="1,2,3,4")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    t0 = time.time()
    rows, why = build_targets(out / "targets.json")
    t1 = time.time()
    results = evaluate(rows, [int(k) for k in args.ks.split(",")], args.splits, args.min_rows, args.seed)
    table = summarise(results)
    with (out / "results.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(results[0]))
        w.writeheader()
        w.writerows(results)
    n_groups = len({(r["family"], r["engine"]) for r in results})
    summary = {"configurations_estimated": len(rows), "unestimable": dict(why), "groups_scored": n_groups,
               "splits": args.splits, "min_rows": args.min_rows, "table": table,
               "seconds": {"aic_terms": round(t1 - t0, 1), "evaluation": round(time.time() - t1, 1)}}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{len(rows)} deduplicated configurations estimated; {n_groups} groups with >= {args.min_rows} rows scored")
    print("not estimable / not representable (configurations or rows):")
    for reason, n in why.most_common():
        print(f"  {n:5d}  {reason}")
    print_table(table)
    print(f"AIC terms {t1 - t0:.0f} s (cached in {out / 'targets.json'}), evaluation {time.time() - t1:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
