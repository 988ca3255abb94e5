"""Calibration on AIC's silicon_sample.csv: raw AIC, per-group median ratio, and our calibration.

For every engine group (model, system, backend, quantisation, parallel mapping) with at least
``--min-rows`` distinct configurations, and every k in 1..4: pick k rows of each group of a
model/system/backend family (seeded random splits), calibrate on them, score the other rows.
Rows are deduplicated first (exact copies dropped, repeats of one configuration merged), so the
held-out score cannot leak. Rows AIC cannot estimate are counted with the reason.

    python benchmarks/silicon_calibration.py --out out/silicon_calibration [--splits 5]

Writes ``targets.json`` (cached AIC terms per row; delete it to recompute), ``results.csv`` (one
line per scored row × split × k) and the summary (``--summary``, default
benchmarks/results/silicon_calibration.json), and prints the table.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import logging
import math
import random
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from estimator.calibration import SHARED_NAMES, Observation, identity
from estimator.calibration_fit import Prior, fit, learn_prior, learn_tails, prior_from_fits, transferable
from estimator.errors import SlaEstimateError
from estimator.sources.aic import AicSource
from estimator.sources.base import Stack
from validate.calibrate import PRIOR_FORMAT_VERSION, observations_for
from validate.silicon import load_silicon

TARGETS_FORMAT = 3  # bump when Observation changes: a cache of another format is recomputed


def build_targets(cache: Path) -> tuple[list[dict], collections.Counter]:
    """One entry per deduplicated silicon configuration: identity, targets (or why AIC cannot estimate it)."""
    if cache.exists():
        doc = json.loads(cache.read_text())
        if doc.get("format") == TARGETS_FORMAT:
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
            ts = observations_for(src, m)
        except SlaEstimateError as exc:
            why[_reason(str(exc))] += 1
            continue
        rows.append({
            "family": f"{stack.model}|{stack.system}|{stack.backend}|{stack.gemm_quant}",
            "engine": p.candidate.name, "isl": p.isl, "osl": p.osl, "concurrency": p.concurrency,
            "version": p.stack.backend_version, "row_ids": m.extra.get("row_ids", []),
            "targets": [t.to_dict() for t in ts],
        })  # fmt: skip
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"format": TARGETS_FORMAT, "rows": rows, "unestimable": dict(why)}))
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


def raw_ms(t: Observation) -> float:
    """The uncalibrated estimate: serving model on raw AIC, regime weights at their prior, no overheads."""
    return _NEUTRAL.predict(t)


_NEUTRAL = identity()


def family_targets(rows: list[dict]) -> dict[str, list[Observation]]:
    out: dict[str, list[Observation]] = collections.defaultdict(list)
    for r in rows:
        out[r["family"]] += [Observation.from_dict(t) for t in r["targets"]]
    return out


def evaluate(
    rows: list[dict], ks: list[int], splits: int, min_rows: int, seed: int, pooled_prior: bool, cv_folds: int,
    tails: Mapping[str, Mapping[str, tuple[float, float]]] | None = None,
) -> list[dict]:
    """Held-out rows of every family, k and split. ``tails``: per family, the predictive's tail shape
    (``calibration_fit.learn_tails``, learned without that family); None: Gaussian bands."""
    fams: dict[str, dict[str, list[dict]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in rows:
        fams[r["family"]][r["engine"]].append(r)
    fam_thetas = _family_thetas(rows) if pooled_prior else {}
    out = []
    for fam, engines in sorted(fams.items()):
        engines = {e: v for e, v in engines.items() if len(v) >= min_rows}
        if not engines:
            continue
        learned = _prior_without(fam_thetas, fam) if pooled_prior else {}
        prior = replace(Prior(cv_folds=cv_folds).updated(learned), tails=dict((tails or {}).get(fam, {})))
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
                corr = fit([Observation.from_dict(t) for r in train for t in r["targets"]], prior)
                for r in test:
                    mine = [x for x in train if x["engine"] == r["engine"]]
                    for td in r["targets"]:
                        t = Observation.from_dict(td)
                        ratio = float(np.median([x["targets"][_idx(x, t.kind)]["measured_ms"]
                                                 / raw_ms(Observation.from_dict(x["targets"][_idx(x, t.kind)]))
                                                 for x in mine]))  # fmt: skip
                        (pred,) = corr.predictive([t])
                        b = pred.band()
                        mid, lo, hi = b.point_ms, b.low_ms, b.high_ms
                        out.append({"family": fam, "engine": r["engine"], "k": k, "split": split, "kind": t.kind,
                                    "isl": r["isl"], "osl": r["osl"], "concurrency": r["concurrency"],
                                    "measured_ms": t.measured_ms, "raw_ms": raw_ms(t),
                                    "baseline_ms": raw_ms(t) * ratio, "ours_ms": mid, "band_low_ms": lo,
                                    "band_high_ms": hi, "log_sd": pred.log_sd, "dof": pred.dof})  # fmt: skip
    return out


def standardised_errors(results: list[dict]) -> dict[str, dict[str, list[float]]]:
    """Per family and kind: log(measured / predicted) / predicted log sd of every held-out row."""
    out: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in results:
        if r["log_sd"] > 0:
            out[r["family"]][r["kind"]].append(math.log(r["measured_ms"] / r["ours_ms"]) / r["log_sd"])
    return out


def tails_without(z: Mapping[str, Mapping[str, list[float]]], fam: str) -> dict[str, tuple[float, float]]:
    """The tail shape learned from every family's standardised errors but ``fam``'s (leave-family-out)."""
    pooled: dict[str, list[float]] = collections.defaultdict(list)
    for f, by_kind in z.items():
        if f != fam:
            for kind, v in by_kind.items():
                pooled[kind] += v
    return learn_tails(pooled)


def _family_thetas(rows: list[dict], min_targets: int = 10) -> dict:
    """Shared parameters of each family fitted on all its rows (the raw material of the priors)."""
    return {fam: fit(ts, Prior(cv_folds=0), residual_field=False).mean.shared
            for fam, ts in family_targets(rows).items() if len(ts) >= min_targets}  # fmt: skip


def _prior_without(thetas: dict, fam: str) -> dict[str, tuple[float, float]]:
    """The prior of ``fam``'s backend learned from the other families (``fam`` itself left out)."""
    backend = fam.split("|")[2]
    return transferable(
        prior_from_fits([t for f, t in thetas.items() if f != fam and f.split("|")[2] == backend]), True
    )


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
            half = np.array([(r["band_high_ms"] - r["band_low_ms"]) / 2 / r["ours_ms"] * 100 for r in rs])
            line[f"{kind}_band_median_half_width_pct"] = float(np.median(half))
            line[f"{kind}_band_half_width_over_error"] = float(
                np.median(half) / line[f"{kind}_ours_median_pct"]
            )
        table.append(line)
    return table


def print_table(table: list[dict]) -> None:
    print(
        "| k | kind | n | raw med | raw p90 | median-ratio med | median-ratio p90 | ours med | ours p90 "
        "| 90% band coverage | median half-width | half-width / median error |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for line in table:
        for kind in ("ttft", "tpot"):
            g = {k[len(kind) + 1 :]: v for k, v in line.items() if k.startswith(kind + "_")}
            print(f"| {line['k']} | {kind.upper()} | {g['n']} | {g['raw_median_pct']:.1f} % | {g['raw_p90_pct']:.0f} % | "
                  f"{g['baseline_median_pct']:.1f} % | {g['baseline_p90_pct']:.0f} % | {g['ours_median_pct']:.1f} % | "
                  f"{g['ours_p90_pct']:.0f} % | {g['band90_coverage']:.2f} | ±{g['band_median_half_width_pct']:.1f} % | "
                  f"{g['band_half_width_over_error']:.2f} |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/silicon_calibration", help="caches, per-row results.csv")
    ap.add_argument("--summary", default=str(ROOT / "benchmarks" / "results" / "silicon_calibration.json"),
                    help="the summary (tables, counts), committed with the docs")  # fmt: skip
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--min-rows", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ks", default="1,2,3,4")
    ap.add_argument(
        "--cv-folds",
        type=int,
        default=Prior().cv_folds,
        help="folds of the cross-validated noise estimate (0: from the residuals only)",
    )
    ap.add_argument(
        "--write-prior", metavar="PATH", help="also fit the per-backend prior on all rows and write it"
    )
    ap.add_argument(
        "--no-pooled-prior", action="store_true", help="generic prior instead of the leave-family-out one"
    )
    ap.add_argument(
        "--gaussian", action="store_true", help="Gaussian bands only (no tail shape learned from the others)"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    t0 = time.time()
    rows, why = build_targets(out / "targets.json")
    t1 = time.time()
    ks = [int(k) for k in args.ks.split(",")]
    gaussian = evaluate(
        rows, ks, args.splits, args.min_rows, args.seed, not args.no_pooled_prior, args.cv_folds
    )
    z = standardised_errors(gaussian)
    results = gaussian
    if not args.gaussian:  # second pass: each family's bands with the tail shape of the others' errors
        tails = {fam: tails_without(z, fam) for fam in z}
        results = evaluate(
            rows, ks, args.splits, args.min_rows, args.seed, not args.no_pooled_prior, args.cv_folds, tails
        )
    table = summarise(results)
    with (out / "results.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(results[0]))
        w.writeheader()
        w.writerows(results)
    n_groups = len({(r["family"], r["engine"]) for r in results})
    summary = {"configurations_estimated": len(rows), "unestimable": dict(why), "groups_scored": n_groups,
               "splits": args.splits, "min_rows": args.min_rows, "cv_folds": args.cv_folds,
               "tails": "gaussian" if args.gaussian else "learned leave-family-out", "table": table,
               "table_gaussian": summarise(gaussian),
               "seconds": {"aic_terms": round(t1 - t0, 1), "evaluation": round(time.time() - t1, 1)}}  # fmt: skip
    Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python benchmarks/silicon_calibration.py", *(argv or sys.argv[1:])])
    Path(args.summary).write_text(json.dumps({**summary, "command": command}, indent=1))
    print(
        f"{len(rows)} deduplicated configurations estimated; {n_groups} groups with >= {args.min_rows} rows scored"
    )
    print("not estimable / not representable (configurations or rows):")
    for reason, n in why.most_common():
        print(f"  {n:5d}  {reason}")
    if not args.gaussian:
        print("Gaussian bands (first pass, whose standardised errors teach the tail shape):")
        print_table(summarise(gaussian))
        print("with the tail shape learned from the other families (leave-family-out):")
    print_table(table)
    print(
        f"AIC terms {t1 - t0:.0f} s (cached in {out / 'targets.json'}), evaluation {time.time() - t1:.0f} s"
    )
    if args.write_prior:
        write_prior(Path(args.write_prior), rows, z)
    return 0


def write_prior(path: Path, rows: list[dict], z: Mapping[str, Mapping[str, list[float]]]) -> None:
    """Per-backend prior over the correction's shared parameters, from every family, and the tail shape
    of the held-out errors ``z`` of every family, with provenance."""
    import hashlib
    from importlib import metadata

    from validate.silicon import bundled_silicon_csv

    csv_path = bundled_silicon_csv()
    fams = family_targets(rows)
    backends: dict[str, dict] = {}
    for backend in sorted({f.split("|")[2] for f in fams}):
        mine = {f: ts for f, ts in fams.items() if f.split("|")[2] == backend}
        backends[backend] = {"prior": {k: list(v) for k, v in learn_prior(mine).items()},
                             "families": sorted(f for f, ts in mine.items() if len(ts) >= 10)}  # fmt: skip
    doc = {
        "format_version": PRIOR_FORMAT_VERSION,
        "parameter_names": list(SHARED_NAMES),
        "what": "prior (mean, sd) of the calibration's shared parameters per backend: median and robust spread "
                "over model/system families of silicon_sample.csv, each fitted on all its agg rows",
        "generated_by": "python benchmarks/silicon_calibration.py --write-prior models/calibration_prior.json",
        "aiconfigurator_core": metadata.version("aiconfigurator-core"),
        "silicon_csv_sha256": hashlib.sha256(csv_path.read_bytes()).hexdigest(),
        "backends": backends,
        "tails": {k: list(v) for k, v in tails_without(z, "").items()},
        "tails_what": "per kind: (scale, dof) of the Student-t of held-out errors / predicted log sd, fitted "
                      "on every family's held-out rows of this run (calibration_fit.learn_tails)",
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, sort_keys=True))
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
