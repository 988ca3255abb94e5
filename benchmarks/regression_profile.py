"""The AIC-distilled surrogate as a drop-in for AIC: same engines selected? how far apart? how fast?

For the default study and every support-matrix study (benchmarks/support_matrix.py: 5 models x
h100/h200 x vllm/sglang/trtllm at ISL 3000 / OSL 150, TTFT 200 / ITL 20 ms), runs the estimate with
``aic`` and with ``regression:aic-distilled`` and reports whether the selected prefill and decode
engines agree, and the largest difference of the surrogate from AIC on AIC's selected surfaces
(prefill TTFT over ISL, decode ITL over the (concurrency, context) grid, KV capacity). Then times a
cold CLI profile with the surrogate in a fresh process (``--no-cache``) and checks with
``python -X importtime`` that aiconfigurator is never imported. The same comparison at a second
and a third workload (ISL 1000 / OSL 500, ISL 8000 / OSL 1000), whose decision points are not table
nodes, says how much of the agreement comes from the nodes placed at the default workload.

    python benchmarks/regression_profile.py [--repeats 5]

Writes benchmarks/results/regression_profile.json and the generated block of docs/regression.md.
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from estimator.candidates import Candidate
from estimator.errors import SlaEstimateError
from estimator.pipeline import estimate
from estimator.sources import Stack, make_source
from estimator.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["meta-llama/Meta-Llama-3.1-8B", "meta-llama/Meta-Llama-3.1-70B", "Qwen/Qwen3-32B",
          "Qwen/Qwen3-30B-A3B", "deepseek-ai/DeepSeek-V3"]  # fmt: skip
STUDIES = [{}] + [{"model": m, "system": s, "backend": b} for m in MODELS for s in ("h100_sxm", "h200_sxm")
                  for b in ("vllm", "sglang", "trtllm")]  # fmt: skip
SOURCE = "regression:aic-distilled"
# workloads off the node tables' workload nodes (ISL 3000 / OSL 150): decisions read between nodes
OFF_NODE_WORKLOADS = ({"isl": 1000, "osl": 500}, {"isl": 8000, "osl": 1000})


CACHE = ROOT / "out/regression_cache/aic_profiles_v2.json"


def _summary(p) -> dict:
    """What the comparison needs of a profile: the selected engines and their surfaces."""
    sel, ps, ds = p.selection, p.prefill_surface, p.decode_surface
    return {
        "prefill": sel.best_prefill.candidate.name, "decode": sel.best_decode.candidate.name,
        "prefill_thpt": {c.point.candidate.name: c.point.thpt_per_gpu for c in sel.prefill if c.meets_sla},
        "decode_thpt": {c.candidate.name: c.thpt_per_gpu for c in sel.decode if c.meets_sla},
        "prefill_surface": {"candidate": ps.candidate.name, "isl": ps.isl.tolist(), "ttft_ms": ps.ttft_ms.tolist()},
        "decode_surface": {"candidate": ds.candidate.name, "concurrency": ds.concurrency.tolist(),
                           "context": ds.context_tokens.tolist(), "itl_ms": ds.itl_ms.tolist(),
                           "kv_capacity_tokens": int(ds.kv_capacity_tokens)},
    }  # fmt: skip


def _aic(study: dict, cache: dict) -> dict:
    """AIC's result for a study, kept in out/ so a rerun of this benchmark skips the AIC work."""
    key = json.dumps(study, sort_keys=True)
    if key not in cache:
        try:
            cache[key] = _summary(estimate(load_spec(**study, cache=False)))
        except SlaEstimateError as exc:
            cache[key] = {"error": str(exc)[:80]}
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        CACHE.write_text(json.dumps(cache))
    return cache[key]


def compare(study: dict, cache: dict) -> dict:
    row: dict = {"study": study or "default"}
    a = _aic(study, cache)
    if "error" in a:
        return {**row, "aic": f"fails: {a['error']}"}
    r = estimate(load_spec(**study, source=SOURCE, cache=False))
    sr = r.selection
    row.update(
        aic=f"{a['prefill']} / {a['decode']}",
        regression=f"{sr.best_prefill.candidate.name} / {sr.best_decode.candidate.name}",
        same=a["prefill"] == sr.best_prefill.candidate.name and a["decode"] == sr.best_decode.candidate.name,
    )
    # where the choice differs: how much AIC's own tokens/s/GPU of the surrogate's engine falls short of AIC's best
    gaps = []
    for phase, mine in (
        ("prefill", sr.best_prefill.candidate.name),
        ("decode", sr.best_decode.candidate.name),
    ):
        thpt = a[f"{phase}_thpt"]
        if mine != a[phase] and a[phase] in thpt:
            gaps.append(100.0 * (1.0 - thpt.get(mine, 0.0) / thpt[a[phase]]))
    row["aic_regret_pct"] = max(gaps, default=0.0)
    # how close AIC's own call is: its best engine's tokens/s/GPU over the runner-up's, per phase
    for phase in ("prefill", "decode"):
        top = sorted(a[f"{phase}_thpt"].values(), reverse=True)
        row[f"aic_{phase}_margin_pct"] = 100.0 * (top[0] / top[1] - 1.0) if len(top) > 1 else None
    src = make_source(SOURCE, Stack.from_spec(r.spec))
    ps, ds = a["prefill_surface"], a["decode_surface"]
    pc, dc = Candidate.parse(ps["candidate"]), Candidate.parse(ds["candidate"])
    pre = src.prefill_ttft_ms(pc, ps["isl"]) / np.array(ps["ttft_ms"]) - 1.0
    dec = src.decode_itl_ms(dc, ds["concurrency"], ds["context"]) / np.array(ds["itl_ms"]) - 1.0
    kv = src.kv_capacity_tokens(dc) / ds["kv_capacity_tokens"] - 1.0
    row.update(prefill_max_pct=float(np.max(np.abs(pre)) * 100), prefill_median_pct=float(np.median(np.abs(pre)) * 100),
               decode_max_pct=float(np.max(np.abs(dec)) * 100), decode_median_pct=float(np.median(np.abs(dec)) * 100),
               kv_pct=float(kv * 100))  # fmt: skip
    return row


def cold_profile_s(repeats: int) -> tuple[list[float], list[float], bool]:
    """Wall and CPU (user + sys) seconds of fresh-process profiles; whether aiconfigurator got imported."""
    import resource

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "SLA_ESTIMATE_CACHE_DIR": tmp, "PYTHONPATH": str(ROOT)}
        cmd = [
            sys.executable,
            "-m",
            "estimator.cli",
            "--source",
            SOURCE,
            "--no-cache",
            "--no-plots",
            "-o",
            f"{tmp}/o",
        ]
        times, cpu = [], []
        for _ in range(repeats):
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - t0)
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
        imp = subprocess.run([sys.executable, "-X", "importtime", *cmd[1:]], env=env, cwd=ROOT,
                             capture_output=True, text=True, check=True)  # fmt: skip
    return times, cpu, "aiconfigurator" in imp.stderr


def off_node_summary(rows: list[dict]) -> dict:
    done = [r for r in rows if "same" in r]
    return {"compared": len(done), "same_engines": sum(r["same"] for r in done),
            "misses": [{"study": r["study"], "aic": r["aic"], "surrogate": r["regression"],
                        "aic_regret_pct": r["aic_regret_pct"]} for r in done if not r["same"]],
            "largest_prefill_pct": max(r["prefill_max_pct"] for r in done),
            "largest_decode_pct": max(r["decode_max_pct"] for r in done)}  # fmt: skip


def off_node_line(workload: str, o: dict) -> str:
    isl, osl = workload.split("/")
    misses = "".join(f"; {_name(m['study'])}: AIC {m['aic']}, surrogate {m['surrogate']} "
                     f"(AIC regret {m['aic_regret_pct']:.1f} %)" for m in o["misses"])  # fmt: skip
    return (
        f"- at ISL {isl} / OSL {osl} (decision points between the table's nodes): same engines in "
        f"{o['same_engines']} of {o['compared']}{misses}; largest surface difference prefill "
        f"{o['largest_prefill_pct']:.1f} %, decode {o['largest_decode_pct']:.1f} %"
    )


def _name(study: dict | str) -> str:
    return study if isinstance(study, str) else f"{study['model']} {study['system']} {study['backend']}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rows = []
    cache = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    for st in STUDIES:
        row = compare(st, cache)
        rows.append(row)
        print(json.dumps(row))
    off: dict[str, list] = {}
    for wl in OFF_NODE_WORKLOADS:
        for st in STUDIES[1:]:  # the default study is one of the support-matrix stacks
            row = compare({**st, **wl}, cache)
            off.setdefault(f"{wl['isl']}/{wl['osl']}", []).append(row)
            print(json.dumps(row))
    times, cpu, imported = cold_profile_s(args.repeats)
    meta = {"machine": f"{platform.node()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
            "load_average": os.getloadavg()}  # fmt: skip
    done = [r for r in rows if "same" in r]
    summary = {
        "studies": len(rows), "compared": len(done), "same_engines": sum(r["same"] for r in done),
        "largest_prefill_pct": max(r["prefill_max_pct"] for r in done),
        "largest_decode_pct": max(r["decode_max_pct"] for r in done),
        "largest_kv_pct": max(abs(r["kv_pct"]) for r in done),
        "largest_aic_regret_pct": max(r["aic_regret_pct"] for r in done),
        "off_node": {wl: off_node_summary(rs) for wl, rs in off.items()},
        "cold_profile_s_median": statistics.median(times), "cold_profile_s": times,
        "cold_profile_cpu_s_median": statistics.median(cpu), "cold_profile_cpu_s": cpu, "aiconfigurator_imported": imported,
    }  # fmt: skip
    (ROOT / "benchmarks/results/regression_profile.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "rows": rows, "off_node_rows": off}, indent=2) + "\n"
    )
    lines = ["", "",
             f"`python benchmarks/regression_profile.py` on {meta['machine']}, {meta['date']}.", "",
             (f"- same prefill and decode engines in {summary['same_engines']} of {summary['compared']} studies "
             f"({summary['studies'] - summary['compared']} fail with AIC as well)"),
             (f"- largest difference on AIC's selected surfaces: prefill TTFT {summary['largest_prefill_pct']:.1f} %, "
             f"decode ITL {summary['largest_decode_pct']:.1f} %, KV capacity {summary['largest_kv_pct']:.1f} %"),
             (f"- cold CLI profile (`--source {SOURCE} --no-cache --no-plots -o DIR`, fresh process): median "
             f"{summary['cold_profile_s_median']:.2f} s wall, {summary['cold_profile_cpu_s_median']:.2f} s CPU (user + sys) "
                f"over {len(times)} runs (load average {meta['load_average'][0]:.1f}); aiconfigurator imported: {imported}"),
             *[off_node_line(wl, o) for wl, o in summary["off_node"].items()], "",
             ("| study | AIC prefill / decode | AIC margin prefill / decode % | surrogate | same (AIC regret %) "
              "| prefill max / median % | decode max / median % | KV % |"),
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        name = _name(r["study"])
        if "same" not in r:
            lines.append(f"| {name} | {r['aic']} | — | — | — | — | — | — |")
            continue
        same = "yes" if r["same"] else "NO ({:.1f})".format(r["aic_regret_pct"])
        margins = " / ".join("—" if r[f"aic_{ph}_margin_pct"] is None else f"{r[f'aic_{ph}_margin_pct']:.4g}"
                             for ph in ("prefill", "decode"))  # fmt: skip
        lines.append(f"| {name} | {r['aic']} | {margins} | {r['regression']} | {same} | "
                     f"{r['prefill_max_pct']:.1f} / {r['prefill_median_pct']:.1f} | "
                     f"{r['decode_max_pct']:.1f} / {r['decode_median_pct']:.1f} | {r['kv_pct']:+.1f} |")  # fmt: skip
    from regression_accuracy import write_section

    write_section(ROOT / "docs/regression.md", "profile", "\n".join(lines[2:]))
    print("\n".join(lines[: 8 + len(OFF_NODE_WORKLOADS)]))


if __name__ == "__main__":
    main()
