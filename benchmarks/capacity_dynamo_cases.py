"""Dynamo's two rapid-mode cases (docs: /work/shared/README.md section 1) through ``sla-estimate plan``.

For each: the plan at Dynamo's predicted request rate (best agg, best disagg, GPUs against Dynamo's
pick) and the plan within Dynamo's 8-GPU budget (highest sustainable rate), with the terms that
decide agg vs disagg: the agg engine's prefill share of time u, its decode slow-down 1/(1-u), the
prefill queue's utilisation and the decode batch per engine.

    PYTHONPATH=. python benchmarks/capacity_dynamo_cases.py
"""

from __future__ import annotations

import json
from pathlib import Path

CASES = (
    ("meta-llama/Llama-3.1-8B", "h100_sxm", 62.7, "disagg 5 x TP1 prefill + 3 x TP1 decode", 8),
    ("Qwen/Qwen3-32B", "h200_sxm", 9.5, "agg 1 x TP8", 8),
)


def main() -> None:
    from estimator.capacity_model import agg_group
    from estimator.capacity_study import SharedWork, run_capacity
    from estimator.capacity_types import Load, Sla
    from estimator.spec import load_spec
    from estimator.workload import fixed

    shared, out = SharedWork(), []
    for model, system, rate, dynamo, dynamo_gpus in CASES:
        spec = load_spec(
            None, model=model, system=system, backend="vllm", isl=3000, osl=150, ttft=200, itl=20
        )
        w, sla = fixed(3000, 150), Sla.means(200, 20)
        at_rate = run_capacity(spec, w, Load(request_rate=rate), sla, shared=shared).result
        budget = run_capacity(spec, w, Load(gpu_budget=8), sla, shared=shared).result
        a, d = at_rate.best_of("agg"), at_rate.best_of("disagg")
        print(f"\n{model} on {system}, vLLM, ISL 3000 / OSL 150, TTFT 200 / ITL 20 ms (means)")
        print(f"  Dynamo rapid: {dynamo} = {dynamo_gpus} GPUs at {rate} req/s")
        print(f"  plan at {rate} req/s: best {at_rate.best.mode} {at_rate.best.label()} = {at_rate.best.total_gpus} GPUs;"
              f" {at_rate.verdict()}")  # fmt: skip
        for f in at_rate.fleets[:6]:
            print(f"    {f.mode:<6} {f.label():<38} {f.total_gpus:>3} GPUs  TTFT {f.ttft.mean_ms:6.1f}  ITL {f.itl.mean_ms:5.2f}"
                  f"  margins {', '.join(f'{k} {v:+.0%}' for k, v in f.margins.items())}")  # fmt: skip
        bb = budget.best
        print(
            f"  plan within 8 GPUs: {bb.mode} {bb.label()} sustains {bb.request_rate:.1f} req/s; {budget.verdict()}"
        )
        terms = {}
        if a is not None:
            g = a.deployment.workers[0]
            from estimator.capacity_engine import engine_table

            t = engine_table(shared.source(spec), g.candidate, w)
            per = rate / g.replicas
            p = agg_group(t, g.replicas, rate, w)
            u = per / g.candidate.attention_dp_size * float(t.prefill_time_ms(w.prefill_tokens)[0]) / 1000
            one_less = agg_group(t, g.replicas - 1, rate, w) if g.replicas > 1 else None
            terms = {"agg_engine": g.candidate.name, "agg_replicas": g.replicas, "rate_per_replica": per,
                     "prefill_ms_batch1": float(t.prefill_time_ms(w.prefill_tokens)[0]), "prefill_share_u": u,
                     "decode_slowdown": 1 / (1 - u), "mean_batch": p.mean_batch, "ttft_ms": p.ttft.mean_ms,
                     "itl_ms": p.itl.mean_ms,
                     "one_fewer_replica": None if one_less is None else {
                         "ttft_ms": one_less.ttft.mean_ms if one_less.ttft else None,
                         "itl_ms": one_less.itl.mean_ms if one_less.itl else None, "reason": one_less.reason}}  # fmt: skip
            print(f"  agg terms: {json.dumps(terms, default=float)}")
        out.append({"model": model, "system": system, "dynamo_rate": rate, "dynamo_pick": dynamo,
                    "dynamo_gpus": dynamo_gpus, "best": at_rate.best.to_dict(), "best_agg": a and a.to_dict(),
                    "best_disagg": d and d.to_dict(), "verdict": at_rate.verdict(),
                    "budget8_best": bb.to_dict(), "budget8_verdict": budget.verdict(), "agg_terms": terms})  # fmt: skip
    path = Path(__file__).parent / "results" / "capacity_dynamo_cases.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=float) + "\n")
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
