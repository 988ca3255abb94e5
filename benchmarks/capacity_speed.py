"""Capacity-planning speed: distinct scenarios per minute, cold (fresh process state: AIC databases,
engines and tables built on the way) and warm (the same scenarios again, shared work cached).

Scenarios: 4 models x 2 systems x 2 backends x 8 loads x 4 SLAs = 1024 distinct plans (rates, plus
GPU budgets for one load in eight), each an agg + disagg search over every engine of the model.

    PYTHONPATH=. python benchmarks/capacity_speed.py            # prints a table, saves benchmarks/results/
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from pathlib import Path

MODELS = ("meta-llama/Llama-3.1-8B", "Qwen/Qwen3-32B", "Qwen/Qwen3-30B-A3B", "Qwen/Qwen3-8B")
SYSTEMS = ("h100_sxm", "h200_sxm")
BACKENDS = ("vllm", "sglang")
LOADS = (("rate", 1.0), ("rate", 3.0), ("rate", 10.0), ("rate", 25.0), ("rate", 60.0), ("rate", 150.0),
         ("rate", 400.0), ("budget", 16))  # fmt: skip
SLAS = ((200.0, 20.0), (300.0, 25.0), (1000.0, 40.0), (150.0, 15.0))


def scenarios():
    for model, system, backend, load, sla in itertools.product(MODELS, SYSTEMS, BACKENDS, LOADS, SLAS):
        yield model, system, backend, load, sla


def run(shared, rows) -> tuple[float, int, int]:
    from estimator.capacity_study import run_capacity
    from estimator.capacity_types import Load, Sla
    from estimator.errors import SlaEstimateError
    from estimator.spec import load_spec
    from estimator.workload import fixed

    t0, found, failed = time.perf_counter(), 0, 0
    for model, system, backend, (kind, value), (ttft, itl) in rows:
        spec = load_spec(None, model=model, system=system, backend=backend, isl=3000, osl=300, ttft=ttft, itl=itl)
        load = Load(request_rate=value) if kind == "rate" else Load(gpu_budget=int(value))
        try:
            st = run_capacity(spec, fixed(3000, 300), load, Sla.means(ttft, itl), shared=shared)
            found += st.result.best is not None
        except SlaEstimateError:
            failed += 1
    return time.perf_counter() - t0, found, failed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=0, help="first N scenarios only")
    args = ap.parse_args()
    from estimator.capacity_study import SharedWork

    rows = list(scenarios())[: args.limit or None]
    shared = SharedWork()
    cold_s, found, failed = run(shared, rows)
    warm_s, _, _ = run(shared, rows)
    n = len(rows)
    result = {
        "scenarios": n, "with_a_fleet": found, "errors": failed,
        "cold_s": cold_s, "warm_s": warm_s,
        "cold_per_min": n / cold_s * 60, "warm_per_min": n / warm_s * 60,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }  # fmt: skip
    print(f"{'scenarios':>10} {'with fleet':>10} {'cold s':>8} {'cold /min':>10} {'warm s':>8} {'warm /min':>10}")
    print(f"{n:>10} {found:>10} {cold_s:>8.1f} {result['cold_per_min']:>10.0f} {warm_s:>8.1f} {result['warm_per_min']:>10.0f}")
    out = Path(__file__).parent / "results" / "capacity_speed.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
