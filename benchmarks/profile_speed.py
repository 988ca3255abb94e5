"""Time a whole `sla-estimate` profile in a new process against its floor, and a cached rerun.

Floor: a bare script that only imports AI Configurator's SDK and compiles the same candidate engines
the profile compiles (that work cannot be avoided on a cold run). Targets (issue 2): cold profile
<= 1.3x floor; repeated study <= 0.5 s. Prints a table and writes raw timings to
benchmarks/results/profile_speed.json.

    python benchmarks/profile_speed.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDIES = [
    {"model": "meta-llama/Meta-Llama-3.1-8B", "system": "h100_sxm", "backend": "vllm"},
    {"model": "Qwen/Qwen3-32B", "system": "h200_sxm", "backend": "vllm"},
]
COMMON = ["--isl", "3000", "--osl", "150", "--ttft", "200", "--itl", "20"]

FLOOR = """
import logging, sys
logging.getLogger("aiconfigurator_core").setLevel(logging.ERROR)
from aiconfigurator_core.sdk import EngineHandle
model, system, backend = sys.argv[1:4]
for tp in (1, 2, 4, 8):
    EngineHandle.compile(model, system, backend, backend_version="current", tp_size=tp).predict_prefill_latency(1, 128, 0)
"""


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "SLA_ESTIMATE_CACHE_DIR": str(Path(tmp) / "cache")}
        for study in STUDIES:
            flags = [f"--{k}={v}" for k, v in study.items()] + COMMON
            cli = [sys.executable, "-m", "estimator.cli", *flags, "--no-plots", "-o", str(Path(tmp) / "out")]
            floor = [timed([sys.executable, "-c", FLOOR, study["model"], study["system"], study["backend"]], env)
                     for _ in range(args.repeats)]  # fmt: skip
            cold = [timed([*cli, "--no-cache"], env) for _ in range(args.repeats)]
            timed(cli, env)  # fill the cache
            warm = [timed(cli, env) for _ in range(args.repeats)]
            row = {
                "study": study["model"],
                "floor_s": statistics.median(floor),
                "profile_s": statistics.median(cold),
                "cached_s": statistics.median(warm),
                "raw": {"floor": floor, "profile": cold, "cached": warm},
            }
            row["ratio"] = row["profile_s"] / row["floor_s"]
            rows.append(row)
    print(f"{'study':32} {'floor s':>8} {'profile s':>10} {'ratio':>6} {'cached s':>9}   targets: ratio <= 1.3, cached <= 0.5")
    for r in rows:
        print(f"{r['study']:32} {r['floor_s']:8.2f} {r['profile_s']:10.2f} {r['ratio']:6.2f} {r['cached_s']:9.2f}")
    out = ROOT / "benchmarks" / "results" / "profile_speed.json"
    meta = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"raw results: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
