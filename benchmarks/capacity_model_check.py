"""How well the capacity model's closed forms follow discrete-event simulations.

1. Prefill queue (disagg): G/G/c formulas vs a FCFS c-server event simulation, Poisson arrivals,
   deterministic or lognormal service, p50/p90/p99 and mean response time.
2. Agg engine: ``capacity_model.agg_group`` vs the serving model's open-loop step replay
   (``serving_open.replay_open``) of one engine (prefill 90 ms for 3000 tokens, decode 8 + 0.05 n ms,
   OSL 150, token budget 8192), Poisson arrivals at rising rates.

    PYTHONPATH=. python benchmarks/capacity_model_check.py
"""

from __future__ import annotations

import heapq
import json
import math
from pathlib import Path

import numpy as np


def fcfs(arrivals, service, servers):
    free = [0.0] * servers
    out = np.empty(len(arrivals))
    for i, (a, s) in enumerate(zip(arrivals, service, strict=True)):
        start = max(a, heapq.heappop(free))
        heapq.heappush(free, start + s)
        out[i] = start + s - a
    return out


def _per_token(rep, q: float) -> float:
    """The ``q`` quantile of the gap between tokens: step times weighted by the tokens each emitted."""
    keep = slice(len(rep.step_ms) // 10, None)
    st, tk = rep.step_ms[keep], rep.step_tokens[keep]
    o = np.argsort(st)
    return float(st[o][min(np.searchsorted(np.cumsum(tk[o]) / tk.sum(), q), len(o) - 1)])


def main() -> None:
    from estimator.candidates import Candidate, Mapping
    from estimator.capacity_engine import EngineTable
    from estimator.capacity_model import agg_group
    from estimator.queueing import mean_response_ms, response_percentiles
    from estimator.serving import SchedulerConfig
    from estimator.serving_open import replay_open
    from estimator.workload import fixed

    res = {"prefill": [], "agg": []}
    print("prefill queue: model / DES - 1 (200k requests)")
    print(f"{'servers':>7} {'rho':>5} {'cv':>4} {'mean':>7} {'p50':>7} {'p90':>7} {'p99':>7}")
    for servers, rho, cv in [
        (1, 0.5, 0.0),
        (1, 0.8, 0.0),
        (1, 0.7, 0.5),
        (2, 0.85, 0.5),
        (4, 0.7, 0.3),
        (8, 0.6, 0.0),
    ]:
        rng = np.random.default_rng(7)
        n, m = 200_000, 50.0
        if cv:
            sig = math.sqrt(math.log1p(cv * cv))
            s = rng.lognormal(math.log(m) - sig**2 / 2, sig, n)
        else:
            s = np.full(n, m)
        lam = rho * servers / m
        des = fcfs(np.cumsum(rng.exponential(1 / lam, n)), s, servers)[n // 10 :]
        err = [mean_response_ms(lam, s[:4000], servers) / des.mean() - 1,
               *(response_percentiles(lam, s[:4000], servers) / np.percentile(des, [50, 90, 99]) - 1)]  # fmt: skip
        res["prefill"].append({"servers": servers, "rho": rho, "cv": cv, "rel_err_mean_p50_p90_p99": err})
        print(f"{servers:>7} {rho:>5} {cv:>4} " + " ".join(f"{e:>+7.1%}" for e in err))
    b = np.arange(1, 513, dtype=float)
    t = EngineTable(Candidate(Mapping.TP, 1), 5_000_000, 3075.0, np.array([3000.0]), np.array([90.0]), b,
                    8.0 + 0.05 * b, 8192, 1024)  # fmt: skip
    w = fixed(3000, 150)
    print("\nagg engine: model / step replay - 1 (20000 requests, first 10 % dropped)")
    print(f"{'req/s':>6} {'util':>5} {'TTFT mean':>10} {'TTFT p90':>9} {'TPOT mean':>10} {'ITL p90':>8} "
          f"{'ITL p99':>8}")  # fmt: skip
    for rate in (2.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0):
        rng = np.random.default_rng(3)
        n = 20000
        arr = np.cumsum(rng.exponential(1000.0 / rate, n))
        rep = replay_open(lambda k: float(t.step_ms(k)) if k else 0.0, lambda tok: 0.03 * tok, arr,
                          np.full(n, 3000.0), np.full(n, 150.0), SchedulerConfig(8192, 1024))  # fmt: skip
        g = agg_group(t, 1, rate, w)
        tt, tp = rep.ttft_ms[n // 10 :], rep.tpot_ms[n // 10 :]
        err = [
            g.ttft.mean_ms / tt.mean() - 1,
            g.ttft.p90_ms / np.percentile(tt, 90) - 1,
            g.itl.mean_ms / np.nanmean(tp) - 1,
            g.itl.p90_ms / _per_token(rep, 0.90) - 1,
            g.itl.p99_ms / _per_token(rep, 0.99) - 1,
        ]
        res["agg"].append({"rate": rate, "utilisation": g.utilisation,
                           "rel_err_ttft_mean_p90_tpot_itl_p90_p99": err})  # fmt: skip
        print(f"{rate:>6} {g.utilisation:>5.2f} " + " ".join(f"{e:>+10.1%}" for e in err))
    path = Path(__file__).parent / "results" / "capacity_model_check.json"
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
