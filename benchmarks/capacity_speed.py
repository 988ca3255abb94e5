"""Capacity-planning speed: distinct scenarios per minute, cold (fresh process state: AIC databases,
engines and tables built on the way) and warm (the same scenarios again, shared work cached).
Wall time and this process's CPU time are both reported: on a shared 2-core machine the wall time
mostly measures the other processes (the load average is printed).

Scenarios: 4 models x 2 systems x 2 backends x 8 loads x 8 SLAs = 1024 distinct plans (rates, plus
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
SLAS = ((200.0, 20.0), (300.0, 25.0), (1000.0, 40.0), (150.0, 15.0), (500.0, 30.0), (250.0, 12.0),
        (2000.0, 60.0), (100.0, 25.0))  # fmt: skip


def scenarios():
    yield from itertools.product(MODELS, SYSTEMS, BACKENDS, LOADS, SLAS)


def run(shared, rows) -> tuple[float, float, int, int]:
    from estimator.capacity_study import run_capacity
    from estimator.capacity_types import Load, Sla
    from estimator.errors import SlaEstimateError
    from estimator.spec import load_spec
    from estimator.workload import fixed

    t0, c0, found, failed = time.perf_counter(), time.process_time(), 0, 0
    for model, system, backend, (kind, value), (ttft, itl) in rows:
        spec = load_spec(
            None, model=model, system=system, backend=backend, isl=3000, osl=300, ttft=ttft, itl=itl
        )
        load = Load(request_rate=value) if kind == "rate" else Load(gpu_budget=int(value))
        try:
            st = run_capacity(spec, fixed(3000, 300), load, Sla.means(ttft, itl), shared=shared)
            found += st.result.best is not None
        except SlaEstimateError:
            failed += 1
    return time.perf_counter() - t0, time.process_time() - c0, found, failed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=0, help="first N scenarios only")
    args = ap.parse_args()
    from estimator.capacity_study import SharedWork

    rows = list(scenarios())[: args.limit or None]
    shared = SharedWork()
    cold_s, cold_cpu, found, failed = run(shared, rows)
    warm_s, warm_cpu, _, _ = run(shared, rows)
    n = len(rows)
    result = {
        "scenarios": n, "with_a_fleet": found, "errors": failed,
        "cold_s": cold_s, "warm_s": warm_s, "cold_cpu_s": cold_cpu, "warm_cpu_s": warm_cpu,
        "cold_per_min": n / cold_s * 60, "warm_per_min": n / warm_s * 60,
        "cold_per_cpu_min": n / cold_cpu * 60, "warm_per_cpu_min": n / warm_cpu * 60,
        "load_average_1min": os.getloadavg()[0],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }  # fmt: skip
    print(f"{'':>22} {'wall s':>8} {'per min':>8} {'CPU s':>8} {'per CPU-min':>12}")
    for k in ("cold", "warm"):
        print(
            f"{k + ' (' + str(n) + ' scenarios)':>22} {result[k + '_s']:>8.1f} {result[k + '_per_min']:>8.0f} "
            f"{result[k + '_cpu_s']:>8.1f} {result[k + '_per_cpu_min']:>12.0f}"
        )
    print(
        f"{found} scenarios have a fleet that meets the SLA, {failed} errors; load average {result['load_average_1min']:.1f}"
    )
    out = Path(__file__).parent / "results" / "capacity_speed.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
