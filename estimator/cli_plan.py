"""``sla-estimate plan``: from a target load to a ranked fleet (one study, or a batch of scenarios).

One study: the study flags plus a load (``--request-rate`` | ``--concurrency`` | ``--gpu-budget``),
targets (``--ttft``/``--itl`` means, ``--ttft-p90`` ... percentiles), ``--workload FILE``,
``--prefix-hit-rate``, ``--gpu-price``, ``--size-for band`` or ``--confidence C``. ``--json`` prints the
plan document; ``-o DIR`` writes plan.json, plan.md, plan.csv and pareto.png.

``--scenarios FILE`` (CSV or YAML list; columns are the same field names, snake_case) plans every
row, sharing sources and engine tables between rows, and writes plan.csv, plan.md and pareto.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

from .capacity_spec import PLAN_FIELDS, load_plan_spec
from .errors import SpecError

_STUDY_KEYS = (
    "model", "system", "backend", "backend_version", "isl", "osl", "ttft", "itl", "min_gpus", "max_gpus",
    "gpus", "gpus_per_node", "gemm_quant", "kvcache_quant", "max_context_tokens", "source", "confidence",
)  # fmt: skip


def add_plan_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("plan (capacity planning)")
    g.add_argument("--concurrency", help="concurrent clients (closed loop) to size for")
    g.add_argument("--gpu-budget", help="GPUs available: find the highest sustainable request rate")
    for m in ("ttft", "itl"):
        for q in ("p50", "p90", "p99"):
            g.add_argument(
                f"--{m}-{q}", help=f"{m.upper()} {q} target, ms (then --{m} applies only if given)"
            )
    g.add_argument(
        "--workload", help="mooncake JSONL trace, or YAML {isl: {mean, cv}, osl: ..., prefix_hit_rate}"
    )
    g.add_argument("--prefix-hit-rate", help="fraction of every prompt served from the prefix cache [0, 1)")
    g.add_argument("--gpu-price", help="$/GPU-hour (default: the table in estimator/cost.py)")
    g.add_argument(
        "--size-for", help="point (default) | band: size for the pessimistic edge of the source's band"
    )
    g.add_argument("--headroom", help="required margin to every target, e.g. 0.1 (default 0)")
    g.add_argument("--top", help="fleets to list (default 10)")
    g.add_argument("--scenarios", help="CSV or YAML file of scenarios (one plan per row)")


def _plan_one(fields: dict[str, Any], config: str | None, shared: Any) -> tuple[Any, Any]:
    from .capacity_study import run_capacity
    from .spec import load_spec

    raw_cfg: dict[str, Any] = {}
    if config:
        from .spec import read_yaml

        raw_cfg = read_yaml(config)
    study_cfg = {k: v for k, v in raw_cfg.items() if k not in PLAN_FIELDS}
    study_fields = {**study_cfg, **{k: fields[k] for k in _STUDY_KEYS if fields.get(k) is not None}}
    spec = load_spec(None, **study_fields)
    plan_raw = {k: fields[k] if fields.get(k) is not None else raw_cfg.get(k) for k in PLAN_FIELDS}
    given = {m: any(study_fields.get(k) is not None for k in (m, f"{m}_ms")) for m in ("ttft", "itl")}
    ps = load_plan_spec(spec, plan_raw, mean_ttft_given=given["ttft"], mean_itl_given=given["itl"])
    study = run_capacity(spec, ps.workload, ps.load, ps.sla, gpu_price_override=ps.gpu_price,
                         size_for=ps.size_for, confidence=spec.confidence, shared=shared)  # fmt: skip
    return study, ps


def _fleet_rows(name: str, study: Any) -> list[dict[str, Any]]:
    return [{"scenario": name, "mode": f.mode, "label": f.label(), "ttft_p90_ms": f.ttft.p90_ms,
             "usd_per_million_output_tokens": f.usd_per_million_output_tokens} for f in study.result.fleets]  # fmt: skip


def _write_table(rows: list[dict[str, Any]], out: Path, title: str) -> list[Path]:
    import pandas as pd

    df = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "plan.csv", index=False)
    cols = list(df.columns)
    md = [f"# {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        md.append("| " + " | ".join(_cell(r[c]) for c in cols) + " |")
    (out / "plan.md").write_text("\n".join(md) + "\n")
    return [out / "plan.csv", out / "plan.md"]


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return str(v).replace("|", "/")


# study flags that ``plan`` parses (they are shared with profile/validate) but does not use: refused, not
# ignored.
_NOT_FOR_PLAN = {
    "num_alternatives": "plan ranks fleets (--top)", "strict": "plan exits 1 when no fleet meets the SLA",
    "cache": "plan keeps no profile cache", "dgdr": "plan reads its study from flags or --config",
    "dynamo_version": "plan writes no Dynamo artifacts", "runtime_image": "plan writes no Dynamo artifacts",
}  # fmt: skip


def run_plan(ns: argparse.Namespace) -> int:
    from .capacity_study import SharedWork

    for name, why in _NOT_FOR_PLAN.items():
        if getattr(ns, name, None) is not None:
            raise SpecError(name, f"--{name.replace('_', '-')} does not apply to `plan`: {why}")
    fields = {k: getattr(ns, k, None) for k in (*_STUDY_KEYS, *PLAN_FIELDS)}
    shared = SharedWork()
    if ns.scenarios:
        return _run_scenarios(ns, fields, shared)
    study, ps = _plan_one(fields, ns.config, shared)
    from .capacity_report import agg_cross_check, plan_dict, plan_text

    check = agg_cross_check(study, shared.source(study.spec))
    if ns.output_dir:
        from .artifacts.pareto import write_pareto

        out = Path(ns.output_dir)
        c = study.confidence
        sized = "" if c is None else f", sized for P(meeting every target) >= {c:g}"
        _write_table([dict(rank=i + 1, **_flat(f)) for i, f in enumerate(study.result.fleets)], out,
                     f"Fleets for {study.spec.model} at {study.result.load.describe()}{sized}")  # fmt: skip
        (out / "plan.json").write_text(json.dumps(plan_dict(study, ps.top, check), indent=2) + "\n")
        if study.result.fleets and ns.plots is not False:
            write_pareto(_fleet_rows(study.spec.model, study), out)
    if ns.json:
        print(json.dumps(plan_dict(study, ps.top, check), indent=2))
    else:
        print(plan_text(study, ps.top, check))
    return 0 if study.result.fleets else 1


def _flat(f: Any) -> dict[str, Any]:
    d = f.to_dict()
    row = {"mode": d["mode"], "fleet": d["label"], "total_gpus": d["total_gpus"], "request_rate": d["request_rate"],
            "usd_per_hour": d["usd_per_hour"], "usd_per_million_output_tokens": d["usd_per_million_output_tokens"],
            **{f"ttft_{k}_ms": v for k, v in d["ttft_ms"].items()}, **{f"itl_{k}_ms": v for k, v in d["itl_ms"].items()},
            "min_margin": f.min_margin}  # fmt: skip
    return row if f.p_meets_sla is None else row | {"p_meets_sla": f.p_meets_sla}  # sized for a confidence


def read_scenarios(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a CSV (header = field names) or a YAML list of mappings (or ``{scenarios: [...]}``)."""
    path = Path(path)
    if path.suffix == ".csv":
        try:
            with path.open(newline="") as fh:
                rows = [
                    {k.strip(): (v.strip() or None) for k, v in r.items() if k} for r in csv.DictReader(fh)
                ]
        except OSError as exc:
            raise SpecError("scenarios", f"cannot read {path}: {exc.strerror}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise SpecError("scenarios", f"cannot read {path}: {exc.strerror}") from None
        except yaml.YAMLError:
            raise SpecError("scenarios", f"malformed YAML in {path}") from None
        rows = data.get("scenarios") if isinstance(data, dict) else data
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise SpecError("scenarios", f"{path} must hold a list of mappings")
    if not rows:
        raise SpecError("scenarios", f"{path} holds no scenarios")
    known = {*_STUDY_KEYS, *PLAN_FIELDS, "name"}
    for i, r in enumerate(rows, start=1):
        bad = sorted(set(r) - known)
        if bad:
            raise SpecError("scenarios", f"{path} row {i}: unknown field {bad[0]!r}")
    return rows


def _run_scenarios(ns: argparse.Namespace, fields: dict[str, Any], shared: Any) -> int:
    from tqdm import tqdm

    from .artifacts.pareto import write_pareto
    from .capacity_report import scenario_row

    rows = read_scenarios(ns.scenarios)
    out_rows, fleet_rows = [], []
    for i, row in enumerate(tqdm(rows, desc="scenarios", unit="scenario", file=sys.stderr,
                                 disable=len(rows) < 5), start=1):  # fmt: skip
        merged = {
            **{k: v for k, v in fields.items() if v is not None},
            **{k: v for k, v in row.items() if v is not None},
        }
        name = str(row.get("name") or f"#{i}")
        try:
            study, _ = _plan_one(merged, ns.config, shared)
        except SpecError as exc:
            raise SpecError("scenarios", f"row {i} ({name}): {exc}") from None
        out_rows.append(scenario_row(name, study))
        fleet_rows += _fleet_rows(name, study)
    out = Path(ns.output_dir or ".")
    paths = _write_table(out_rows, out, f"Capacity plan: {len(rows)} scenarios")
    if fleet_rows and ns.plots is not False:
        paths.append(write_pareto(fleet_rows, out))
    if ns.json:
        print(json.dumps(out_rows, indent=2, default=str))
    else:
        for r in out_rows:
            print(f"{r['scenario']}: {r['best']}" + (f" ({r['total_gpus']} GPUs, ${r['usd_per_hour']:.2f}/h)"
                                                   if "total_gpus" in r else "") + f"; {r['verdict']}")  # fmt: skip
        print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


__all__ = ["add_plan_flags", "read_scenarios", "run_plan"]
