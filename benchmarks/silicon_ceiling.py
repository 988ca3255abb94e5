"""How far can calibration on silicon_sample.csv go? Two ceilings for agg TTFT/TPOT, all rows known.

1. **model**: the phase correction (no residual field) fitted on *all* rows of each family, scored on
   the same rows: what the serving model's structure can express at best.
2. **neighbours**: each row predicted from the other engines of its family measured at the same
   (ISL, OSL, concurrency), shifted by the median log difference of the two engines on the inputs both
   measured (leave-one-out; rows without such a neighbour are not scored).

Reads the ``targets.json`` that ``benchmarks/silicon_calibration.py`` writes; prints a table, writes
``ceiling.json`` beside it.

    python benchmarks/silicon_ceiling.py --out out/silicon_calibration
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from estimator.calibration import Observation
from estimator.calibration_fit import Prior, fit


def model_ceiling(fams: dict[str, list[dict]]) -> dict[str, list[float]]:
    err: dict[str, list[float]] = collections.defaultdict(list)
    for rows in fams.values():
        ts = [Observation.from_dict(t) for r in rows for t in r["targets"]]
        corr = fit(ts, Prior(cv_folds=0), residual_field=False)
        for t in ts:
            err[t.kind].append(abs(corr.predict(t) / t.measured_ms - 1) * 100)
    return err


def neighbour_ceiling(fams: dict[str, list[dict]]) -> dict[str, list[float]]:
    err: dict[str, list[float]] = collections.defaultdict(list)
    for rows in fams.values():
        for kind_i, kind in enumerate(("ttft", "tpot")):
            table: dict[str, dict[tuple, float]] = collections.defaultdict(dict)
            for r in rows:
                table[r["engine"]][(r["isl"], r["osl"], r["concurrency"])] = r["targets"][kind_i][
                    "measured_ms"
                ]
            for eng, mine in table.items():
                for x, y in mine.items():
                    preds = []
                    for other, theirs in table.items():
                        common = [c for c in mine if c in theirs and c != x]
                        if other == eng or x not in theirs or not common:
                            continue
                        shift = np.median([np.log(mine[c] / theirs[c]) for c in common])
                        preds.append(np.log(theirs[x]) + shift)
                    if preds:
                        err[kind].append(abs(np.exp(np.median(preds)) / y - 1) * 100)
    return err


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/silicon_calibration")
    args = ap.parse_args(argv)
    path = Path(args.out) / "targets.json"
    if not path.exists():
        print(
            f"error: {path} missing; run benchmarks/silicon_calibration.py --out {args.out} first",
            file=sys.stderr,
        )
        return 2
    rows = json.loads(path.read_text())["rows"]
    groups = collections.Counter((r["family"], r["engine"]) for r in rows)
    fams: dict[str, list[dict]] = collections.defaultdict(list)
    for r in rows:
        if groups[(r["family"], r["engine"])] >= 5:
            fams[r["family"]].append(r)
    out = {}
    print("| ceiling | kind | n | median abs % error | p90 |")
    print("|---|---|---|---|---|")
    for name, fn in (
        ("model (all rows, in-sample)", model_ceiling),
        ("neighbours (leave-one-out)", neighbour_ceiling),
    ):
        for kind, e in fn(fams).items():
            out[f"{name}|{kind}"] = {
                "n": len(e),
                "median_pct": float(np.median(e)),
                "p90_pct": float(np.percentile(e, 90)),
            }
            print(
                f"| {name} | {kind.upper()} | {len(e)} | {np.median(e):.1f} % | {np.percentile(e, 90):.0f} % |"
            )
    (Path(args.out) / "ceiling.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
