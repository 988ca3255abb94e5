"""The node tables of the bundled AIC-distilled surrogate: size, how monotone AIC is, what the nodes buy.

Prints (and writes between ``<!-- tables:start -->`` / ``<!-- tables:end -->`` of docs/regression.md):

- the file's size and number of tabled engines;
- how often AIC's own tabulated times fall (a node more than 3 % above a later node, along ISL for
  prefill, along batch or context for decode) and the largest such hump;
- the tables' error against AIC off the nodes (recorded by ``models distill`` in the provenance);
- whether the workload nodes are needed: the same engine comparison as
  ``benchmarks/regression_profile.py`` (AIC's results cached there) with tables rebuilt *without* the
  default workload's nodes (AIC queried again, ~30 s), the trees unchanged.

    python benchmarks/regression_tables.py [--skip-ablation]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from estimator.sources.regression import load_model_file
from estimator.sources.regression.files import ModelFile

ROOT = Path(__file__).resolve().parents[1]


def humps(mf: ModelFile, threshold: float = 0.03) -> tuple[int, int, tuple[float, str, str]]:
    """(curves with a node > threshold above a later node, curves, (largest ratio, engine, phase))."""
    bad, total, worst = 0, 0, (0.0, "", "")
    for key in mf.tables:
        t = mf.table(key)
        for phase, v in (("prefill", t.prefill_ms), ("decode", t.decode_ms)):
            if v is None:
                continue
            total += 1
            later_min = v
            for axis in range(v.ndim):  # smallest time at any node with larger coordinates
                later_min = np.flip(np.minimum.accumulate(np.flip(later_min, axis), axis=axis), axis)
            ratio = float(np.max(v / later_min))
            bad += ratio > 1.0 + threshold
            worst = max(worst, (ratio, key, phase))
    return bad, total, worst


def without_workload_nodes(mf: ModelFile) -> tuple[int, int, list]:
    """Same engines as AIC in how many studies, with tables lacking the default workload's nodes."""
    import regression_profile as rp
    from regression_accuracy import DISTILL_STACKS

    from estimator.sources.regression.data import aic_tables

    logging.getLogger("aiconfigurator_core").setLevel(logging.ERROR)
    plain = ModelFile(mf.name, mf.regressor, mf.hardware, dict(mf.provenance),
                      tables=aic_tables(DISTILL_STACKS, workloads=()))  # fmt: skip
    cache = json.loads(rp.CACHE.read_text()) if rp.CACHE.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        rp.SOURCE = f"regression:{plain.save(Path(tmp) / 'plain.json')}"
        rows = [rp.compare(st, cache) for st in rp.STUDIES]
    done = [r for r in rows if "same" in r]
    misses = [
        (rp._name(r["study"]), r["aic"], r["regression"], r["aic_regret_pct"]) for r in done if not r["same"]
    ]
    return sum(r["same"] for r in done), len(done), misses


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-ablation", action="store_true", help="skip the run without workload nodes")
    args = ap.parse_args()
    mf = load_model_file("aic-distilled")
    size = Path(mf.path).stat().st_size
    bad, total, (ratio, key, phase) = humps(mf)
    chk = mf.provenance.get("table_check", {})
    lines = ["`python benchmarks/regression_tables.py` on the 2-core CPU VM of this project.", "",
             f"- `models/aic-distilled.json`: {size / 1e6:.2f} MB, node tables for {len(mf.tables)} engines",
             (f"- AIC's times fall somewhere (a node > 3 % above a later one) in {bad} of {total} tabled curves; "
              f"the largest: {key} {phase}, a node {ratio:.2f}x the smallest later time")]  # fmt: skip
    for ph in ("prefill", "decode"):
        if ph in chk:
            e = chk[ph]
            lines.append(f"- off the nodes, {ph}: {e['rows']} random points, median {e['median_abs_pct']} %, "
                         f"p90 {e['p90_abs_pct']} %, max {e['max_abs_pct']} %")  # fmt: skip
    if not args.skip_ablation:
        same, n, misses = without_workload_nodes(mf)
        lines.append(f"- without the default workload's nodes (ISL 3000, context 3075, its sweep's concurrencies): "
                     f"same engines as AIC in {same} of {n} studies"
                     + "".join(f"; {s}: AIC {a}, surrogate {b} (AIC regret {g:.4f} %)" for s, a, b, g in misses))  # fmt: skip
    text = "\n".join(lines)
    print(text)
    from regression_accuracy import write_section

    write_section(ROOT / "docs/regression.md", "tables", text)


if __name__ == "__main__":
    main()
