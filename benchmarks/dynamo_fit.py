"""How well Dynamo 1.6.1's planner regressions reproduce our surfaces, with our planner data and without.

For each study: our TTFT at the workload ISL vs Dynamo's ``PrefillRegressionModel`` fitted on the profile
data we hand over; our decode engine's best request rate vs Dynamo's ``DecodeRegressionModel``
(``find_best_engine_decode_rps``). "full range" feeds Dynamo the full surfaces (what 0.7-style data
gave it); "planner data" the points near the workload we now write. Needs the Dynamo venv
(scripts/setup_dynamo_venv.sh); runs tests/dynamo_check.py in it.

    python benchmarks/dynamo_fit.py          # -> benchmarks/results/dynamo_fit.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from estimator.artifacts import write_artifacts
from estimator.pipeline import estimate
from estimator.spec import load_spec

DYNAMO_PYTHON = Path(os.environ.get("SLA_ESTIMATE_DYNAMO_PYTHON", ROOT / ".venv-dynamo" / "bin" / "python"))
STUDIES = {
    "Llama-3.1-8B h100 vLLM ISL 3000": {"model": "meta-llama/Llama-3.1-8B", "system": "h100_sxm", "backend": "vllm",
                                            "isl": 3000, "osl": 150, "ttft": 200, "itl": 20},
    "Qwen3-32B h200 vLLM ISL 3000 (DGDR example)": {"dgdr": str(ROOT / "examples" / "dgdr_qwen3_32b.yaml")},
    "Qwen3-30B-A3B h200 SGLang ISL 4000": {"model": "Qwen/Qwen3-30B-A3B", "system": "h200_sxm", "backend": "sglang",
                                               "isl": 4000, "osl": 150, "ttft": 200, "itl": 20},
}  # fmt: skip


def dynamo(out: Path, spec) -> dict:
    cmd = [str(DYNAMO_PYTHON), str(ROOT / "tests" / "dynamo_check.py"), str(out), "--isl", str(spec.isl),
           "--osl", str(spec.osl), "--ttft", str(spec.ttft_ms), "--itl", str(spec.itl_ms)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def main() -> int:
    rows = []
    for name, kw in STUDIES.items():
        spec = load_spec(None, **kw)
        profile = estimate(spec)
        best_p, best_d = profile.selection.best_prefill.point, profile.selection.best_decode
        ours_rps = best_d.concurrency / (best_d.itl_ms / 1000.0) / spec.osl
        row = {"study": name, "ours_ttft_ms": best_p.ttft_ms, "ours_decode_rps": ours_rps}
        full = dataclasses.replace(profile, planner_prefill_surface=None, planner_decode_surface=None)
        for label, prof in (("full_range", full), ("planner_data", profile)):
            with tempfile.TemporaryDirectory() as d:
                write_artifacts(prof, d, plots=False)
                res = dynamo(Path(d), spec)
            row[label] = {k: res[k] for k in ("prefill_ttft_ms", "decode_rps", "prefill_points", "decode_points",
                                              "prefill_kept", "decode_kept")}  # fmt: skip
        rows.append(row)

    print(
        f"{'study':<46}{'data':<14}{'TTFT ours':>10}{'Dynamo':>9}{'err':>7}{'rps ours':>10}{'Dynamo':>9}{'err':>7}"
    )
    for r in rows:
        for label in ("full_range", "planner_data"):
            d = r[label]
            e_t = d["prefill_ttft_ms"] / r["ours_ttft_ms"] - 1
            e_r = d["decode_rps"] / r["ours_decode_rps"] - 1
            print(f"{r['study']:<46}{label:<14}{r['ours_ttft_ms']:>10.1f}{d['prefill_ttft_ms']:>9.1f}{e_t:>+7.1%}"
                  f"{r['ours_decode_rps']:>10.1f}{d['decode_rps']:>9.1f}{e_r:>+7.1%}")  # fmt: skip
    out = ROOT / "benchmarks" / "results" / "dynamo_fit.json"
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
