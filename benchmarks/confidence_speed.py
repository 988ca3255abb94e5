"""Cost of ``plan --confidence 0.9`` against the point-estimate plan, per kind of load.

On the calibration of docs/capacity.md (the committed H100 TP1 records, replayed through ``validate``),
Llama-3.1-8B on h100_sxm/vLLM, ISL 3000 / OSL 150, TTFT 200 / ITL 20 ms: a request rate (40 req/s), a GPU
budget (8) and a closed loop (64 and 512 clients). The engine tables are built once beforehand, so the
times are the plan's search alone (CPU seconds of this process and wall seconds).

    PYTHONPATH=. python benchmarks/confidence_speed.py     # prints a table, saves benchmarks/results/
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY = {"model": "meta-llama/Llama-3.1-8B", "system": "h100_sxm", "backend": "vllm", "isl": 3000, "osl": 150,
         "ttft": 200, "itl": 20}  # fmt: skip


def calibration(out: Path) -> str:
    from estimator.cli import main

    flags = [a for k, v in STUDY.items() for a in (f"--{k}", str(v))]
    recs = str(ROOT / "models" / "measurements" / "h100_llama31_8b_gpu_runner.jsonl")
    with contextlib.redirect_stdout(io.StringIO()):  # the validate report is not this benchmark's output
        rc = main(["validate", *flags, "--measurements", recs, "--no-plots", "-o", str(out)])
    if rc != 0:
        raise SystemExit("validate failed")
    return str(out / "calibration.json")


def main() -> int:
    from estimator.capacity_study import SharedWork, run_capacity
    from estimator.capacity_types import Load, Sla
    from estimator.spec import load_spec
    from estimator.workload import fixed

    with tempfile.TemporaryDirectory() as tmp:
        spec = load_spec(None, **STUDY, source=calibration(Path(tmp)))
        w, sla, shared = fixed(3000, 150), Sla.means(200, 20), SharedWork()
        run_capacity(spec, w, Load(request_rate=5), sla, shared=shared)  # builds the engine tables
        rows = []
        loads = (("40 req/s", Load(request_rate=40)), ("budget 8 GPUs", Load(gpu_budget=8)),
                 ("64 clients", Load(concurrency=64)), ("512 clients", Load(concurrency=512)))  # fmt: skip
        for name, load in loads:
            row = {"load": name}
            for rule, conf in (("point", None), ("confidence 0.9", 0.9)):
                wall, cpu = time.perf_counter(), time.process_time()
                st = run_capacity(spec, w, load, sla, shared=shared, confidence=conf)
                row[rule] = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
                             "evaluations": st.result.considered, "best": st.result.best.label()}  # fmt: skip
            rows.append(row)
    print("| load | point plan: CPU s (evaluations) | --confidence 0.9: CPU s (evaluations) | wall s |")
    print("|---|---|---|---|")
    for r in rows:
        p, c = r["point"], r["confidence 0.9"]
        print(f"| {r['load']} | {p['cpu_s']:.2f} ({p['evaluations']}) | {c['cpu_s']:.2f} ({c['evaluations']}) "
              f"| {c['wall_s']:.2f} |")
    out = ROOT / "benchmarks" / "results" / "confidence_speed.json"
    doc = {"rows": rows, "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                     "load_average": os.getloadavg()}}  # fmt: skip
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
