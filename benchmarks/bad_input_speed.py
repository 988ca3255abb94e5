"""How fast hostile study files are refused (issue 12: an alias bomb took 19 s and 1.5 GB before).

Prints a table and saves benchmarks/results/bad_input_speed.json. Each case runs the real CLI in a
fresh process (wall time includes Python start-up) and in-process (``load_spec`` only).
"""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bomb(field: str) -> str:
    levels = ["&l0 [" + ",".join(['"lol"'] * 9) + "]"]
    levels += [f"&l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return f"{field}: [{', '.join(levels)}]\n"


CASES = {
    "alias bomb in model (9**9 leaves)": bomb("model"),
    "alias bomb in planner_args": bomb("planner_args"),
    "4 MB planner_args list": "planner_args:\n" + "- a=b\n" * 700_000,
    "60 KB planner_args list": "planner_args:\n" + "- a=b\n" * 10_000,
    "nesting 5000 deep": "model: " + "[" * 5000 + "]" * 5000 + "\n",
    "60 KB flow list": "planner_args: [" + ",".join(["a=b"] * 15_000) + "]\n",
    "4000 planner_args (under the item bound)": "planner_args:\n" + "- a=b\n" * 4_000,
    "ordinary study": "model: Qwen/Qwen3-32B\nisl: 3000\nosl: 150\nttft: 200\nitl: 20\n",
}


def main() -> None:
    from estimator.errors import SpecError
    from estimator.spec import load_spec

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in CASES.items():
            path = Path(tmp) / "study.yaml"
            path.write_text(text)
            t0 = time.perf_counter()
            try:
                load_spec(path)
                msg = "accepted"
            except SpecError as exc:
                msg = str(exc)
            t_in = time.perf_counter() - t0
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "estimator.cli", "--config", str(path)], cwd=ROOT,
                                  capture_output=True, text=True, check=False)  # fmt: skip
            t_cli = time.perf_counter() - t0
            rows.append({"case": name, "bytes": len(text), "in_process_s": round(t_in, 4),
                         "cli_s": round(t_cli, 3), "exit": proc.returncode,
                         "stderr": proc.stderr.strip()[-160:], "message": msg[-120:]})  # fmt: skip
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'case':38s} {'bytes':>9s} {'load_spec s':>11s} {'CLI s':>7s} exit")
    for r in rows:
        print(f"{r['case']:38s} {r['bytes']:9d} {r['in_process_s']:11.4f} {r['cli_s']:7.3f} {r['exit']}")
    print(f"peak RSS of this process: {peak_mb:.0f} MB; machine: {platform.node()} {platform.machine()}")
    out = ROOT / "benchmarks" / "results" / "bad_input_speed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"machine": platform.platform(), "peak_rss_mb": round(peak_mb), "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
