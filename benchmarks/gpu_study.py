"""Measure prefill TTFT and decode ITL of a model shape on local GPUs (random weights), and compare with AIC.

Two steps, because the GPU machine has no aiconfigurator-core and this one has no GPU:

    # on the GPU machine (config.json of the model in DIR; random bf16 weights):
    python3 benchmarks/gpu_study.py measure --model meta-llama/Meta-Llama-3.1-8B --model-path DIR \
        --out $OUT/gpu_runner.jsonl
    # here, with AIC installed: AIC vLLM estimate beside every measured point
    python benchmarks/gpu_study.py report models/measurements/h100_llama31_8b_gpu_runner.jsonl \
        --csv models/measurements/h100_llama31_8b_gpu_runner_vs_aic.csv

``measure`` appends one Measurement per point to a MeasurementStore as it goes (a rerun skips points
already stored) and prints a table with each point's ratio to the memory-bandwidth floor. Decode
points that need more KV than the GPU holds are skipped. ``report`` prints measured vs AIC.

Records carry the model of the config they measure (``model_label``): ``--model`` if given (checked
against the bundled config of that id where aiconfigurator-core is installed), else the bundled id
whose config equals the one in ``--model-path``, else that directory. With ``--tp`` > 1 each point is
timed a second time with the all-reduces skipped, and ``extra.allreduce_share`` is the share of the
step they took.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a plain checkout (the GPU machine has no install)

from estimator.candidates import Candidate
from estimator.errors import MeasurementError
from estimator.measurements import Measurement, MeasurementStore, Probe, ProbeKind
from estimator.sources.base import Stack

ISLS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384)
DECODE_POINTS = tuple((b, c) for c in (1024, 4096, 8192) for b in (1, 8, 32, 64, 128, 256)) + (
    (1, 16384),
    (16, 16384),
)

log = logging.getLogger("gpu_study")


# fields that name a file's provenance, not the model's shape
_NOT_SHAPE = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures")
_SHAPE = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
          "head_dim", "intermediate_size", "moe_intermediate_size", "num_experts", "vocab_size")  # fmt: skip


def _bundled_configs() -> dict[str, dict] | None:
    """Bundled HF id -> config, or None where aiconfigurator-core is not installed (the GPU machine)."""
    try:
        from estimator.model import bundled_config_dir, bundled_models

        folder = bundled_config_dir()
        return {m: json.loads((folder / (m.replace("/", "--", 1) + "_config.json")).read_text())
                for m in bundled_models()}  # fmt: skip
    except (ImportError, OSError, ValueError) as exc:  # PackageNotFoundError is an ImportError
        log.info("no bundled configs to match (%s)", exc)
        return None


def _without(d: dict, keys: tuple[str, ...]) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


def model_label(model: str | None, model_path: str | None) -> str:
    """The model id the records carry: never a fixed id, always the model of the config measured.

    ``model`` wins, but where the bundled configs can be read it must name a bundled id of the same
    shape as ``model_path`` (or a directory). Without ``model``: the one bundled id whose config
    equals ``model_path``'s, else the directory itself (AIC reads a local config directory too).
    """
    if not model and not model_path:
        raise SystemExit(
            "give --model (a bundled Hugging Face id) or --model-path (a directory with config.json)"
        )
    if model_path and not (Path(model_path) / "config.json").is_file():
        raise SystemExit(f"--model-path {model_path!r} has no config.json")
    cfg = json.loads((Path(model_path) / "config.json").read_text()) if model_path else None
    bundled = _bundled_configs()
    if model:
        if cfg is not None and bundled is not None and model in bundled and not os.path.isdir(model):
            want = {k: bundled[model].get(k) for k in _SHAPE}
            got = {k: cfg.get(k) for k in _SHAPE}
            if want != got:
                diff = ", ".join(f"{k} {got[k]} vs {want[k]}" for k in _SHAPE if got[k] != want[k])
                raise SystemExit(f"--model {model} does not match the config in {model_path}: {diff}")
        return model
    same = sorted(
        m for m, c in (bundled or {}).items() if _without(c, _NOT_SHAPE) == _without(cfg, _NOT_SHAPE)
    )
    if len(same) > 1:
        raise SystemExit(f"the config in {model_path} matches {', '.join(same)}: pass --model")
    if same:
        return same[0]
    log.warning("labelling records with the directory %s%s: pass --model to name the model", model_path,
                " (no bundled configs to match here)" if bundled is None else "")  # fmt: skip
    return str(Path(model_path).resolve())


def system_of(gpu_name: str) -> str:
    """AIC system id of the GPU (SXM parts, as on the lent machines)."""
    for chip in ("h200", "h100", "b200", "a100"):
        if chip in gpu_name.lower():
            return f"{chip}_sxm"
    raise SystemExit(f"unknown GPU {gpu_name!r}: pass --system")


def plan(stack: Stack, cand: Candidate, isls: tuple[int, ...], points: tuple[tuple[int, int], ...],
         capacity: int) -> list[Probe]:  # fmt: skip
    probes = [Probe(ProbeKind.PREFILL, stack, cand, isl=i, repeats=10, reason="gpu study") for i in isls]
    for batch, ctx in points:
        if batch * (ctx + 1) > capacity:
            log.warning("skip decode batch %d context %d: needs %d KV tokens, capacity %d",
                        batch, ctx, batch * (ctx + 1), capacity)  # fmt: skip
            continue
        probes.append(Probe(ProbeKind.DECODE, stack, cand, isl=ctx, osl=1, concurrency=batch, repeats=20,
                            reason="gpu study"))  # fmt: skip
    return probes


def init_tp(args: argparse.Namespace) -> tuple[str, bool]:
    """Join the torchrun process group for TP > 1; returns (this rank's device, whether this rank reports)."""
    if args.tp == 1:
        return args.device, True
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "-1"))
    if local < 0:
        raise SystemExit(f"--tp {args.tp} runs one process per GPU: torchrun --nproc-per-node {args.tp} ...")
    if args.device.startswith("cuda"):
        torch.cuda.set_device(local)
    dist.init_process_group(
        "nccl" if args.device.startswith("cuda") else "gloo", timeout=timedelta(minutes=3)
    )
    return (f"cuda:{local}" if args.device.startswith("cuda") else args.device), dist.get_rank() == 0


def min_over_ranks(value: int, tp: int) -> int:
    if tp == 1:
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.long, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def measure(args: argparse.Namespace) -> int:
    from validate.runners.torch_gpu import TorchGpuRunner

    label = model_label(args.model, args.model_path)
    device, reports = init_tp(args)
    runner = TorchGpuRunner(label, model_path=args.model_path, device=device, dtype=args.dtype, tp_size=args.tp,
                            use_cuda_graph=False if args.no_cuda_graph else None)  # fmt: skip
    facts = runner.device_facts()
    stack = Stack(label, args.system or system_of(facts["device"]), "vllm")
    store = MeasurementStore(args.out)
    done = store.keys()  # every rank must run the same probes (collectives), so all read the same file
    points = tuple(tuple(int(x) for x in p.split(":")) for p in args.points) if args.points else DECODE_POINTS
    capacity = min_over_ranks(runner.kv_capacity_tokens(), args.tp)
    probes = plan(stack, runner.engine, tuple(args.isl or ISLS), points, capacity)  # MoE on 1 GPU: TEP1
    summary = {"stack": stack.to_dict(), **facts, "tp": args.tp, "failed": []}
    runner.load()  # its fp32 exact-KV check (ExactKvMismatch above the tolerance) runs before any timing
    summary["exact_kv_rel_err"] = runner.exact_kv_rel_err_
    if reports:
        print(json.dumps(summary), flush=True)
    for p in probes:
        if p.key in done:
            continue
        try:
            m = runner.measure(p)
            if args.tp > 1:
                m = with_allreduce_share(runner, p, m)
        except MeasurementError as exc:
            print(f"FAILED {exc}", flush=True)
            summary["failed"].append(str(exc))
            continue
        if reports:
            store.append(m)
            print(row_text(m), flush=True)
    runner.close()
    if reports:
        if args.summary:
            Path(args.summary).write_text(json.dumps(summary, indent=2))
        print_table(store.load(), {})
    return 1 if summary["failed"] else 0


def with_allreduce_share(runner, probe: Probe, m: Measurement) -> Measurement:
    """Time ``probe`` again with every all-reduce skipped; the difference is the all-reduces' share of the
    step (their transfer plus the wait for the slowest rank). The skipped run's numbers are wrong, only
    its time is used. The logits' all-gather stays (once a step, small)."""
    import dataclasses

    import torch.distributed as dist

    real = dist.all_reduce
    dist.all_reduce = lambda *a, **k: None  # the TP hooks look it up at call time
    try:
        alone = runner.measure(probe)
    finally:
        dist.all_reduce = real
    step_ms, alone_ms = measured_ms(m), measured_ms(alone)
    extra = {**m.extra, "no_allreduce_ms": alone_ms, "allreduce_ms": step_ms - alone_ms,
             "allreduce_share": max(0.0, 1.0 - alone_ms / step_ms)}  # fmt: skip
    return dataclasses.replace(m, extra=extra)


def point_of(m: Measurement) -> tuple[str, int, int]:
    p = m.probe
    return (
        (p.kind.value, 1, p.isl)
        if p.kind is ProbeKind.PREFILL
        else (p.kind.value, p.concurrency, p.context_tokens)
    )


def _order(m: Measurement) -> tuple[int, int, int]:
    kind, batch, tokens = point_of(m)
    return (kind != "prefill", tokens, batch)


def measured_ms(m: Measurement) -> float:
    return m.ttft_ms if m.probe.kind is ProbeKind.PREFILL else m.itl_ms


def row_text(m: Measurement, aic_ms: float | None = None) -> str:
    kind, batch, tokens = point_of(m)
    std = m.ttft_std_ms if kind == "prefill" else m.itl_std_ms
    eager = m.extra.get("eager_ttft_ms") or m.extra.get("eager_itl_ms")
    aic = f"{aic_ms:9.2f} {measured_ms(m) / aic_ms:6.2f}" if aic_ms else f"{'-':>9} {'-':>6}"
    return (f"{kind:8} {batch:5d} {tokens:7d} {measured_ms(m):9.2f} {std:6.2f} {aic} "
            f"{m.extra['bw_floor_ms']:8.2f} {m.extra['ratio_to_bw_floor']:6.2f} "
            f"{m.extra['ratio_to_compute_floor']:6.2f} {eager or 0:8.2f} {m.thpt_per_gpu:10.0f}")  # fmt: skip


HEADER = (f"{'kind':8} {'batch':>5} {'tokens':>7} {'meas_ms':>9} {'std':>6} {'aic_ms':>9} {'m/aic':>6} "
          f"{'bw_floor':>8} {'/bw':>6} {'/flop':>6} {'eager_ms':>8} {'tok/s/gpu':>10}")  # fmt: skip


def print_table(ms: list[Measurement], aic: dict[str, float]) -> None:
    print(HEADER)
    for m in sorted(ms, key=_order):
        print(row_text(m, aic.get(m.probe.key)))


def aic_estimates(ms: list[Measurement]) -> dict[str, float]:
    """AIC vLLM estimate (ms) for each measured point, keyed by probe key."""
    from estimator.sources.aic import AicSource

    sources: dict[Stack, AicSource] = {}
    out: dict[str, float] = {}
    for m in ms:
        p = m.probe
        src = sources.setdefault(p.stack, AicSource(p.stack))
        if p.kind is ProbeKind.PREFILL:
            out[p.key] = float(src.prefill_ttft_ms(p.candidate, [p.isl])[0])
        else:
            out[p.key] = float(src.decode_itl_ms(p.candidate, [p.concurrency], [p.context_tokens])[0])
    return out


def report(args: argparse.Namespace) -> int:
    ms = MeasurementStore(args.file).load()
    if not ms:
        raise SystemExit(f"{args.file}: no measurements")
    aic = aic_estimates(ms)
    first = ms[0]
    print(f"# {first.hardware}; {json.dumps(first.software)}; {first.measured_at}")
    print_table(ms, aic)
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(
                [
                    "key",
                    "kind",
                    "batch",
                    "tokens",
                    "measured_ms",
                    "std_ms",
                    "aic_vllm_ms",
                    "measured_over_aic",
                    "bw_floor_ms",
                    "ratio_to_bw_floor",
                    "ratio_to_compute_floor",
                    "eager_ms",
                    "thpt_per_gpu",
                ]
            )
            for m in sorted(ms, key=_order):
                kind, batch, tokens = point_of(m)
                std = m.ttft_std_ms if kind == "prefill" else m.itl_std_ms
                eager = m.extra.get("eager_ttft_ms") or m.extra.get("eager_itl_ms")
                a = aic[m.probe.key]
                w.writerow([m.probe.key, kind, batch, tokens, f"{measured_ms(m):.4f}", f"{std:.4f}", f"{a:.4f}",
                            f"{measured_ms(m) / a:.4f}", f"{m.extra['bw_floor_ms']:.4f}",
                            f"{m.extra['ratio_to_bw_floor']:.4f}", f"{m.extra['ratio_to_compute_floor']:.4f}",
                            f"{eager:.4f}" if eager else "", f"{m.thpt_per_gpu:.1f}"])  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure", help="measure on the local GPU (append to --out)")
    m.add_argument(
        "--model",
        help="model id the records carry (default: the bundled id whose config matches --model-path)",
    )
    m.add_argument(
        "--model-path",
        help="directory with the model's config.json (default: AIC's bundled config of --model)",
    )
    m.add_argument("--out", required=True, help="MeasurementStore jsonl to append to")
    m.add_argument("--summary", help="write device facts and failures as JSON here")
    m.add_argument("--system", help="AIC system id (default: from the GPU name)")
    m.add_argument("--device", default="cuda")
    m.add_argument("--dtype", default="bfloat16")
    m.add_argument("--no-cuda-graph", action="store_true")
    m.add_argument("--tp", type=int, default=1, help="tensor parallel size (one process per GPU: torchrun)")
    m.add_argument("--isl", type=int, nargs="*", help=f"prefill ISLs (default {ISLS})")
    m.add_argument("--points", nargs="*", help="decode points as BATCH:CONTEXT (default: the study grid)")
    r = sub.add_parser("report", help="measured vs AIC vLLM estimate (needs aiconfigurator-core)")
    r.add_argument("file")
    r.add_argument("--csv", help="write the table as CSV here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return measure(args) if args.cmd == "measure" else report(args)


if __name__ == "__main__":
    raise SystemExit(main())
