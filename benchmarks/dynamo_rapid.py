"""Side-by-side wall time: Dynamo 1.6.1's rapid mode vs our full run (with plots, and --no-plots).

Both read the same DynamoGraphDeploymentRequest spec (one study: ``--model``, ``--system``; vLLM,
ISL 3000 / OSL 150, TTFT 200 / ITL 20 ms, 8 GPUs) and write their ``final_config.yaml``; runs are
interleaved (anchor, ours, ours --no-plots) so machine load hits all alike; medians are reported.
Our runs are cold (``--no-cache``): new process, AIC loaded, every candidate estimated, every file.

The anchor needs the Dynamo venv with the profiler's deps:

    DYNAMO_PROFILER=1 bash scripts/setup_dynamo_venv.sh      # ai-dynamo==1.6.1 --no-deps,
        # aiconfigurator==0.12.0 (+ -core) behind an aisimulate -> aiconfigurator import alias,
        # a stand-in for the repo-root `deploy` package the wheel imports
    python benchmarks/dynamo_rapid.py --repeats 5      # -> benchmarks/results/dynamo_rapid.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DYNAMO_PYTHON = Path(os.environ.get("SLA_ESTIMATE_DYNAMO_PYTHON", ROOT / ".venv-dynamo" / "bin" / "python"))


def dgdr_spec(model: str, system: str) -> dict:
    """What Dynamo's profiler needs to run offline: AIC's bundled model id (no download), an image
    (required by its validator; the default 1.6.1 planner image, which is also our default tag), and
    ``trustRemoteCode`` (it refuses to write the DGD for a remote model ref otherwise; we ignore it)."""
    return {
        "model": model,
        "backend": "vllm",
        "image": "nvcr.io/nvidia/ai-dynamo/dynamo-planner:1.6.1",
        "hardware": {"gpuSku": system, "totalGpus": 8, "numGpusPerNode": 8},
        "workload": {"isl": 3000, "osl": 150},
        "sla": {"ttft": 200.0, "itl": 20.0},
        "searchStrategy": "rapid",
        "overrides": {"trustRemoteCode": True},
    }


def timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall seconds and CPU seconds (user + system of the run and every process it waited for)."""
    r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False)
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="meta-llama/Meta-Llama-3.1-8B")  # AIC's bundled id
    ap.add_argument("--system", default="h100_sxm")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dynamo_rapid.json"))
    args = ap.parse_args()

    if not DYNAMO_PYTHON.exists():
        print(
            f"cannot run the anchor: no Dynamo venv at {DYNAMO_PYTHON} (DYNAMO_PROFILER=1 bash scripts/setup_dynamo_venv.sh)"
        )
        return 2
    probe = subprocess.run(
        [str(DYNAMO_PYTHON), "-c", "import dynamo.profiler.profile_sla"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        print(
            "cannot run the anchor: Dynamo's profiler does not import in the venv:\n" + probe.stderr[-2000:]
        )
        return 2

    work = Path(tempfile.mkdtemp(prefix="dynamo_rapid_"))
    spec_file = work / "dgdr.yaml"
    spec_file.write_text(yaml.safe_dump(dgdr_spec(args.model, args.system)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SLA_ESTIMATE_CACHE_DIR": str(work / "cache")}
    runs: dict[str, list[float]] = {"dynamo_rapid": [], "ours_with_plots": [], "ours_no_plots": []}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    commands = {
        "dynamo_rapid": lambda i: [str(DYNAMO_PYTHON), "-m", "dynamo.profiler", "--config", str(spec_file),
                                   "--output-dir", str(work / f"dyn{i}")],
        "ours_with_plots": lambda i: [sys.executable, "-m", "estimator.cli", "--dgdr", str(spec_file),
                                      "--no-cache", "-o", str(work / f"ours{i}")],
        "ours_no_plots": lambda i: [sys.executable, "-m", "estimator.cli", "--dgdr", str(spec_file),
                                    "--no-cache", "--no-plots", "-o", str(work / f"ours_np{i}")],
    }  # fmt: skip
    load_before = os.getloadavg()
    for i in range(args.repeats):
        for name, cmd in commands.items():
            wall, cpu_s, proc = timed(cmd(i), ROOT, env)
            if proc.returncode != 0:
                print(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
                return 1
            out_dir = Path(cmd(i)[-1])
            if not (out_dir / "final_config.yaml").is_file():
                print(f"{name} wrote no final_config.yaml in {out_dir}")
                return 1
            runs[name].append(wall)
            cpu[name].append(cpu_s)
            print(f"run {i + 1}/{args.repeats} {name}: {wall:.2f} s wall, {cpu_s:.2f} s CPU", flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    ratio = {k: med["dynamo_rapid"] / med[k] for k in ("ours_with_plots", "ours_no_plots")}
    ratio_cpu = {k: med_cpu["dynamo_rapid"] / med_cpu[k] for k in ("ours_with_plots", "ours_no_plots")}
    print(f"\n{'run':<18}{'median s':>10}{'min s':>8}{'×faster':>9}{'CPU s':>8}{'×less CPU':>11}")
    for k, v in runs.items():
        print(
            f"{k:<18}{med[k]:>10.2f}{min(v):>8.2f}{ratio.get(k, 1.0):>9.1f}"
            f"{med_cpu[k]:>8.2f}{ratio_cpu.get(k, 1.0):>11.1f}"
        )
    result = {
        "study": dgdr_spec(args.model, args.system),
        "runs_s": runs,
        "median_s": med,
        "speedup_vs_dynamo_rapid": ratio,
        "cpu_s": cpu,
        "median_cpu_s": med_cpu,
        "cpu_ratio_vs_dynamo_rapid": ratio_cpu,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_before": load_before,
                    "loadavg_after": os.getloadavg(), "python": platform.python_version()},
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
