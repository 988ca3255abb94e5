"""The multi-GPU study of issue 13 in one call: TP1/TP2/TP4 engines of a dense 8B and a 32B shape.

For every shape, every TP size that fits the GPUs here (or ``--tp``) and every pass, one process (one
``torchrun`` group for TP > 1) runs ``benchmarks/gpu_study.py measure`` on 6 prefill ISLs and 7 decode
(batch, context) points, with random weights built from the config under ``models/configs/``. Every
record carries its ratio to the bandwidth floor, and at TP > 1 the all-reduce share of its step.
Pass 1 writes ``<shape>_tp<N>.jsonl``, pass k > 1 ``<shape>_tp<N>_pass<k>.jsonl``: the run-to-run
spread. Everything lands in ``--out`` as one ``study.tgz`` (records, per-run summaries and logs,
``provenance.json``) plus ``study.log``, because the device tool returns at most 8 files.

    # on the GPU machine (device tool); its 4 runs at TP1 (2 shapes x 2 passes) took 163 s on one H200:
    python3 benchmarks/multi_gpu_study.py --out $OUT --passes 2 --budget-s 480
    # CPU path (tests): a tiny config, no CUDA graphs
    python benchmarks/multi_gpu_study.py --out /tmp/s --device cpu --tp 1 --shape tiny=DIR --isl 16 --points 2:16

Runs that would start after ``--budget-s`` are skipped and listed in provenance.json, so the call ends
inside the device's time limit with what it measured.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {  # name -> (model id the records carry, config dir)
    "llama31_8b": ("meta-llama/Meta-Llama-3.1-8B", "models/configs/meta-llama--Meta-Llama-3.1-8B"),
    "qwen3_32b": ("Qwen/Qwen3-32B", "models/configs/Qwen--Qwen3-32B"),
    # more dense shapes for the calibration's leave-deployment-out evidence (configs: aiconfigurator-core
    # 0.12.0's bundled model_configs, copied unchanged)
    "qwen3_8b": ("Qwen/Qwen3-8B", "models/configs/Qwen--Qwen3-8B"),
    "qwen3_1_7b": ("Qwen/Qwen3-1.7B", "models/configs/Qwen--Qwen3-1.7B"),
    "qwen3_0_6b": ("Qwen/Qwen3-0.6B", "models/configs/Qwen--Qwen3-0.6B"),
    "qwen3_30b_a3b": ("Qwen/Qwen3-30B-A3B", "models/configs/Qwen--Qwen3-30B-A3B"),  # MoE: 128 experts, top 8
    # a seventh dense shape (Qwen3-4B's): the text decoder of Qwen3-VL-4B, whose AIC config is the only 4B one
    # AIC 0.12.0 estimates offline; built as Qwen3ForCausalLM from its text_config (for text-only input the
    # VL decoder's M-RoPE positions equal plain RoPE's and its deepstack image injection does nothing)
    "qwen3_vl_4b": ("Qwen/Qwen3-VL-4B-Instruct", "models/configs/Qwen--Qwen3-VL-4B-Instruct-text"),
}
DEFAULT_SHAPES = ("llama31_8b", "qwen3_32b")  # issue 13's study
ISLS = (256, 512, 1024, 2048, 4096, 8192)
# every point's KV (batch x context <= 128k tokens) fits the 32B shape on one H200 next to its 65 GB of weights
DECODE_POINTS = ("1:1024", "8:1024", "64:1024", "128:1024", "8:4096", "32:4096", "8:8192")
HASHED = ("benchmarks/gpu_study.py", "benchmarks/multi_gpu_study.py", "validate/runners/torch_gpu.py",
          "validate/runners/torch_kv.py", "validate/runners/torch_timing.py", "validate/runners/torch_tp.py")  # fmt: skip


def gpu_count() -> int:
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], check=False, capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def machine_facts() -> dict:
    def run(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            return f"unavailable: {exc}"

    facts = {"host": platform.node(), "python": platform.python_version(), "gpus": run(["nvidia-smi", "-L"]),
             "driver": run(["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"]),
             "topology": run(["nvidia-smi", "topo", "-m"])}  # fmt: skip
    for pkg in ("torch", "transformers"):
        try:
            facts[pkg] = __import__(pkg).__version__
        except ImportError:
            facts[pkg] = None
    facts["sha256"] = {f: hashlib.sha256((ROOT / f).read_bytes()).hexdigest()[:16] for f in HASHED}
    return facts


def parse_shape(text: str) -> tuple[str, str | None, str]:
    """NAME (a built-in shape) or NAME=DIR or NAME=MODEL_ID@DIR."""
    if "=" not in text:
        if text not in SHAPES:
            raise SystemExit(f"unknown shape {text!r}: one of {', '.join(SHAPES)} or NAME=[MODEL_ID@]DIR")
        return (text, *SHAPES[text])
    name, rest = text.split("=", 1)
    model, _, folder = rest.rpartition("@")
    return name, model or None, folder


def command(shape: tuple[str, str | None, str], tp: int, out: Path, args: argparse.Namespace) -> list[str]:
    _name, model, folder = shape
    script = [str(ROOT / "benchmarks/gpu_study.py"), "measure", "--model-path", str(ROOT / folder)
              if not os.path.isabs(folder) else folder, "--tp", str(tp), "--out", str(out.with_suffix(".jsonl")),
              "--summary", str(out.with_name(out.name + "_summary.json")), "--device", args.device,
              "--dtype", args.dtype, "--isl", *map(str, args.isl), "--points", *args.points]  # fmt: skip
    if model:
        script += ["--model", model]
    if args.system:
        script += ["--system", args.system]
    if args.no_cuda_graph:
        script.append("--no-cuda-graph")
    if tp == 1:
        return [sys.executable, *script]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(tp),
        *script,
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for study.tgz and study.log ($OUT)")
    ap.add_argument("--shape", nargs="*", default=list(DEFAULT_SHAPES),
                    help=f"NAME (one of {', '.join(SHAPES)}) or NAME=[MODEL_ID@]CONFIG_DIR")
    ap.add_argument(
        "--tp", type=int, nargs="*", help="TP sizes (default: 1, 2, 4 as far as the GPUs here go)"
    )
    ap.add_argument("--passes", type=int, default=2, help="independent passes per engine (run-to-run spread)")
    ap.add_argument(
        "--start-pass", type=int, default=1, help="first pass to run (finish an earlier call's repeats)"
    )
    ap.add_argument("--budget-s", type=float, default=480.0, help="start no run after this many seconds")
    ap.add_argument("--isl", type=int, nargs="*", default=list(ISLS))
    ap.add_argument("--points", nargs="*", default=list(DECODE_POINTS), help="decode BATCH:CONTEXT")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--system", help="AIC system id (default: from the GPU name)")
    ap.add_argument("--no-cuda-graph", action="store_true")
    args = ap.parse_args(argv)
    if not args.out:
        raise SystemExit("give --out (or set OUT)")
    shapes = [parse_shape(s) for s in args.shape]
    gpus = gpu_count()
    tps = args.tp or [t for t in (1, 2, 4) if t <= max(gpus, 1)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # outside --out: the device returns 8 files at most
    work = Path(tempfile.mkdtemp(prefix="multi_gpu_study_"))
    log = (out / "study.log").open("a")
    t0 = time.monotonic()
    prov = {"started_at": datetime.now(UTC).isoformat(timespec="seconds"), "argv": sys.argv, "gpus": gpus,
            "tp_sizes": tps, "machine": machine_facts(), "runs": [], "skipped": []}  # fmt: skip
    try:
        for k in range(args.start_pass, args.passes + 1):
            for shape in shapes:
                for tp in tps:
                    stem = f"{shape[0]}_tp{tp}" + ("" if k == 1 else f"_pass{k}")
                    left = args.budget_s - (time.monotonic() - t0)
                    if left < 20:
                        prov["skipped"].append(stem)
                        continue
                    cmd = command(shape, tp, work / stem, args)
                    print(f"== {stem}: {shlex.join(cmd)}", file=log, flush=True)
                    start = time.monotonic()
                    with (work / f"{stem}.log").open("w") as fh:
                        try:
                            rc = subprocess.run(cmd, check=False, stdout=fh, stderr=subprocess.STDOUT, timeout=left,
                                                cwd=ROOT).returncode  # fmt: skip
                        except subprocess.TimeoutExpired:
                            rc = "timeout"
                    run = {"run": stem, "shape": shape[0], "model": shape[1], "tp": tp, "pass": k, "rc": rc,
                           "wall_s": round(time.monotonic() - start, 1), "command": shlex.join(cmd)}  # fmt: skip
                    prov["runs"].append(run)
                    print(json.dumps(run), file=log, flush=True)
                    print(json.dumps(run), flush=True)
    finally:
        prov["wall_s"] = round(time.monotonic() - t0, 1)
        (work / "provenance.json").write_text(json.dumps(prov, indent=2))
        with tarfile.open(out / "study.tgz", "w:gz") as tar:
            tar.add(work, arcname="study")
        log.close()
    return 0 if all(r["rc"] == 0 for r in prov["runs"]) and not prov["skipped"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
