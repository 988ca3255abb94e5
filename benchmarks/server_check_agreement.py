"""How far the endpoint runner's client timings sit from the server's own histograms (vLLM CPU server).

The tolerance of ``validate/runners/server_check.py`` (a factor ``SERVER_RATIO_TOLERANCE``) rests on
this table. Starts the tiny random Llama on the vLLM CPU server (``scripts/make_tiny_model.py``, the
engine venv), measures prefill, decode and agg probes ``--rounds`` times, and prints client vs server
TTFT / ITL and their ratio. Raw rows go to ``benchmarks/results/server_check_agreement.json``.

    SLA_ESTIMATE_ENGINE_PYTHON=.venv-engine/bin/python python benchmarks/server_check_agreement.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from engine_server import ENGINE_ENV, SERVER_ARGS, engine_python

from estimator.candidates import Candidate, Mapping
from estimator.errors import ImplausibleMeasurement
from estimator.measurements import Probe, ProbeKind
from estimator.sources.base import Stack
from validate.runners.endpoint import EndpointRunner
from validate.runners.local import LocalEngineRunner

TP1 = Candidate(Mapping.TP, 1)
POINTS = [(ProbeKind.PREFILL, 500, 1, 1), (ProbeKind.PREFILL, 100, 1, 1), (ProbeKind.DECODE, 300, 48, 4),
          (ProbeKind.DECODE, 100, 32, 1), (ProbeKind.AGG, 200, 16, 3)]  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "server_check_agreement.json"))
    args = ap.parse_args()
    py = str(engine_python())
    model_dir = tempfile.mkdtemp(prefix="tiny-model-")
    subprocess.run(
        [py, str(ROOT / "scripts" / "make_tiny_model.py"), model_dir], check=True, capture_output=True
    )
    engine = LocalEngineRunner(model_dir, "vllm", python=py, extra_args=SERVER_ARGS, env=ENGINE_ENV,
                               start_timeout_s=900, gpus=0)  # fmt: skip
    rows = []
    try:
        runner = EndpointRunner(engine.start(TP1), timeout_s=120)
        stack = Stack("tiny-llama", "cpu", "vllm")
        for _ in range(args.rounds):
            for kind, isl, osl, n in POINTS:
                probe = Probe(kind, stack, TP1, isl, osl, n, repeats=3)
                try:
                    check = runner.measure(probe).extra["server_check"]
                except ImplausibleMeasurement as exc:
                    check = exc.measurement.extra["server_check"]
                for field in ("ttft_ms", "itl_ms"):
                    if field in check:
                        c = check[field]
                        rows.append({"kind": kind.value, "isl": isl, "osl": osl, "concurrency": n, "field": field,
                                     "client_ms": c["client"], "server_ms": c["server"], "ok": c["ok"]})  # fmt: skip
    finally:
        engine.close()
    print(f"{'kind':8} {'isl':>5} {'osl':>4} {'conc':>4} {'field':8} {'client ms':>10} {'server ms':>10} "
          f"{'client/server':>13}  ok")  # fmt: skip
    for r in rows:
        print(f"{r['kind']:8} {r['isl']:5d} {r['osl']:4d} {r['concurrency']:4d} {r['field']:8} {r['client_ms']:10.3f} "
              f"{r['server_ms']:10.3f} {r['client_ms'] / r['server_ms']:13.2f}  {r['ok']}")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": f"{platform.node()} {platform.machine()} ({os.cpu_count()} cores)", "rows": rows}
    Path(args.out).write_text(json.dumps(meta, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
