"""File what a device call of the multi-GPU study returned under models/measurements/, with provenance.

Each ``--run SHAPE:TP:PASS:RECORDS.jsonl[:SUMMARY.json]`` is one gpu_study.py measure run. The
records are written to ``<prefix>_<shape>_gpu_runner_tp<TP>.jsonl`` (pass 1) or ``..._repeat.jsonl``
(later passes) with the model of SHAPE (``multi_gpu_study.SHAPES``) as their label, after checking that
the run measured that shape: the summary's KV bytes per token must equal the config's. A summary
JSON beside each file holds the machine, date, versions, the device command and every pass's facts.
This exists because gpu_study.py before issue 11's fix labelled every record Llama-3.1-8B.

    python benchmarks/multi_gpu_collect.py --prefix h200 --command-file CMD.sh \\
        --run llama31_8b:1:1:/work/.device/1/l_p1.jsonl:/work/.device/1/l_p1.json ...
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from multi_gpu_study import SHAPES

from estimator.measurements import Measurement, MeasurementStore
from estimator.model import load_model_info


def kv_bytes_per_token(config: dict, bytes_per_value: int = 2) -> int:
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    kv_heads = int(config.get("num_key_value_heads") or heads)
    return 2 * int(config["num_hidden_layers"]) * kv_heads * head_dim * bytes_per_value


def engine_of(config_dir: Path, tp: int) -> str:
    """The candidate the GPU runner measures at ``tp`` (``TorchGpuRunner.engine``): TEP1 for one-GPU MoE."""
    return "TEP1" if tp == 1 and load_model_info(str(config_dir)).is_moe else f"TP{tp}"


def relabel(ms: list[Measurement], model: str) -> list[Measurement]:
    """The same records with ``model`` as the probe's model (the key follows the probe)."""
    out = []
    for m in ms:
        stack = dataclasses.replace(m.probe.stack, model=model)
        out.append(dataclasses.replace(m, probe=dataclasses.replace(m.probe, stack=stack)))
    return out


def collect(runs: list[str], prefix: str, dest: Path, command: str, note: str) -> list[Path]:
    grouped: dict[tuple[str, int], list[tuple[int, Path, Path | None]]] = defaultdict(list)
    for spec in runs:
        parts = spec.split(":")
        if len(parts) not in (4, 5) or parts[0] not in SHAPES:
            raise SystemExit(
                f"--run {spec!r}: want SHAPE:TP:PASS:RECORDS[:SUMMARY], SHAPE one of {', '.join(SHAPES)}"
            )
        summary = Path(parts[4]) if len(parts) == 5 else None
        grouped[(parts[0], int(parts[1]))].append((int(parts[2]), Path(parts[3]), summary))
    written = []
    for (shape, tp), passes in sorted(grouped.items()):
        model, folder = SHAPES[shape]
        want_kv = kv_bytes_per_token(json.loads((ROOT / folder / "config.json").read_text()))
        stem = f"{prefix}_{shape}_gpu_runner_tp{tp}"
        facts = []
        for k, records, summary in sorted(passes):
            ms = MeasurementStore(records).load()
            if not ms:
                raise SystemExit(f"{records}: no records")
            s = json.loads(summary.read_text()) if summary else {}
            if s and s.get("kv_bytes_per_token") != want_kv:
                raise SystemExit(
                    f"{records}: KV bytes per token {s.get('kv_bytes_per_token')} is not {shape}'s {want_kv}"
                )
            engine = engine_of(ROOT / folder, tp)
            if any(m.probe.candidate.name != engine for m in ms):
                raise SystemExit(f"{records}: not all records are {engine}")
            out = dest / (f"{stem}.jsonl" if k == 1 else f"{stem}_repeat{'' if k == 2 else k - 1}.jsonl")
            out.unlink(missing_ok=True)
            MeasurementStore(out).extend(relabel(ms, model))
            written.append(out)
            labels = sorted({m.probe.stack.model for m in ms})
            facts.append({"pass": k, "file": out.name, "records": len(ms), "source_file": records.name,
                          "source_sha256": hashlib.sha256(records.read_bytes()).hexdigest()[:16],
                          "label_in_source": labels, "measured_from": min(m.measured_at for m in ms),
                          "measured_to": max(m.measured_at for m in ms), "hardware": ms[0].hardware,
                          "software": ms[0].software, "device_summary": s})  # fmt: skip
        prov = {"model": model, "config": f"{folder}/config.json", "tp": tp, "runner": "gpu (validate/runners/torch_gpu.py)",
                "weights": "random bf16", "command": command, "note": note, "passes": facts}  # fmt: skip
        path = dest / f"{stem}_summary.json"
        path.write_text(json.dumps(prov, indent=2) + "\n")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--run", action="append", required=True, help="SHAPE:TP:PASS:RECORDS.jsonl[:SUMMARY.json]"
    )
    ap.add_argument("--prefix", required=True, help="file prefix, e.g. h200")
    ap.add_argument("--dest", default=str(ROOT / "models/measurements"))
    ap.add_argument(
        "--command-file", required=True, help="the device command that was run (recorded verbatim)"
    )
    ap.add_argument("--note", default="", help="what else a reader must know about the run")
    args = ap.parse_args(argv)
    for p in collect(args.run, args.prefix, Path(args.dest), Path(args.command_file).read_text(), args.note):
        print(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
