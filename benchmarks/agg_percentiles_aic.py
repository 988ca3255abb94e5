"""Agg ITL/TTFT percentiles on AIC engines: the capacity model (``agg_group``) against the open-loop step
replay (``serving_open.replay_open``, set up as ``predict_agg_rate`` does: 20000 Poisson arrivals, two
seeds, first 10 % dropped; ITL percentiles weight each step by the tokens it emitted).

    python benchmarks/agg_percentiles_aic.py     # prints the table, writes benchmarks/results/
"""
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from estimator.spec import load_spec
from estimator.capacity_study import SharedWork
from estimator.capacity_engine import engine_table
from estimator.capacity_model import agg_group
from estimator.serving import SchedulerConfig
from estimator.serving_open import replay_open
from estimator.workload import fixed

def run(model, system, backend, cand_name, rate, isl, osl, n=20000, seeds=2):
    spec = load_spec(None, model=model, system=system, backend=backend, isl=isl, osl=osl)
    sh = SharedWork(); src = sh.source(spec); cand = next(c for c in sh.engine_candidates(spec)[0] if c.name == cand_name)
    cfg = SchedulerConfig.for_backend(backend); dp = cand.attention_dp_size; context = isl + osl / 2
    cap = max(1, min(cfg.max_num_seqs, int(src.kv_capacity_tokens(cand) / dp / context)))
    b = np.arange(1, cap + 1, dtype=float)
    table = np.concatenate([[0.0], src.decode_itl_ms(cand, b * dp, np.full_like(b, context))])
    ttft1 = float(src.prefill_ttft_ms(cand, [isl])[0])
    reps = []
    for seed in range(seeds):
        arr = np.cumsum(np.random.default_rng(seed).exponential(1000.0 * dp / rate, n))
        r = replay_open(lambda k: table[min(k, cap)], lambda t: ttft1 * t / isl, arr, np.full(n, float(isl)), np.full(n, float(osl)),
                        dataclasses.replace(cfg, max_num_seqs=cap))
        keep = slice(len(r.step_ms) // 10, None); st, tk = r.step_ms[keep], r.step_tokens[keep]
        o = np.argsort(st); c = np.cumsum(tk[o]) / tk.sum()
        itl = [np.average(st, weights=tk)] + [st[o][min(np.searchsorted(c, p), len(o) - 1)] for p in (0.5, 0.9, 0.99)]
        tt = r.ttft_ms[n // 10:]
        reps.append(itl + [tt.mean(), *np.percentile(tt, [50, 90, 99])])
    rep = np.mean(reps, axis=0)
    w = fixed(isl, osl)
    t = engine_table(src, cand, w)
    g = agg_group(t, 1, rate, w)
    mod = [g.itl.mean_ms, g.itl.p50_ms, g.itl.p90_ms, g.itl.p99_ms, g.ttft.mean_ms, g.ttft.p50_ms, g.ttft.p90_ms, g.ttft.p99_ms] if g.stable else [np.inf]*8
    print(f"{model.split('/')[-1]} {cand_name} rate {rate} isl {isl} osl {osl}")
    print("  ITL  mean/p50/p90/p99  replay " + " ".join(f"{v:6.1f}" for v in rep[:4]) + "   model " + " ".join(f"{v:6.1f}" for v in mod[:4]))
    print("  TTFT mean/p50/p90/p99  replay " + " ".join(f"{v:6.1f}" for v in rep[4:]) + "   model " + " ".join(f"{v:6.1f}" for v in mod[4:]))
    return rep, mod

if __name__ == "__main__":
    cases = [("meta-llama/Llama-3.1-8B", "h100_sxm", "vllm", "TP1", 6, 3000, 150),
             ("meta-llama/Llama-3.1-8B", "h100_sxm", "vllm", "TP1", 3, 3000, 150),
             ("meta-llama/Llama-3.1-8B", "h100_sxm", "vllm", "TP2", 12, 3000, 150),
             ("meta-llama/Llama-3.1-8B", "h100_sxm", "vllm", "TP1", 2, 1000, 500),
             ("Qwen/Qwen3-32B", "h200_sxm", "vllm", "TP2", 3, 3000, 150),
             # prompts the token budget cuts (fewer than 2 per step, or longer than one step)
             ("meta-llama/Llama-3.1-8B", "h100_sxm", "vllm", "TP1", 2.5, 6000, 150),
             ("meta-llama/Llama-3.1-8B", "h100_sxm", "vllm", "TP1", 4, 6000, 150),
             ("meta-llama/Llama-3.1-8B", "h100_sxm", "vllm", "TP1", 1, 12000, 200),
             ("Qwen/Qwen3-32B", "h200_sxm", "vllm", "TP2", 1.5, 6000, 150),
             ("Qwen/Qwen3-32B", "h200_sxm", "vllm", "TP2", 4, 3000, 150)]
    rows = []
    for c in cases:
        rep, mod = run(*c)
        rows.append({"case": list(c), "replay_itl_mean_p50_p90_p99_ttft_mean_p50_p90_p99": [float(v) for v in rep],
                     "model": [float(v) for v in mod]})
    out = Path(__file__).parent / "results" / "agg_percentiles_aic.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {out}")
