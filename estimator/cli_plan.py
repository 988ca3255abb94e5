"""``sla-estimate plan``: from a target load to a ranked fleet (one study, or a batch of scenarios).

One study: the study flags plus a load (``--request-rate`` | ``--concurrency`` | ``--gpu-budget``),
targets (``--ttft``/``--itl`` means, ``--ttft-p90`` ... percentiles), ``--workload FILE``,
``--prefix-hit-rate``, ``--gpu-price``, ``--size-for band`` or ``--confidence C``. ``--json`` prints the
plan document; ``-o DIR`` writes plan.json, plan.md, plan.csv and pareto.png.

``--scenarios FILE`` (CSV or YAML list; columns are the same field names, snake_case) plans every
row, sharing sources and engine tables between rows, and writes plan.csv, plan.md and pareto.png.

Every input (flags, the config, every scenario row) is checked and the output directory created before
the first fleet is sized, so a bad value or an unusable ``-o`` fails in seconds, not after the study.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

from .capacity_spec import PLAN_FIELDS, PLAN_NULLABLE, load_plan_spec
from .errors import SpecError
from .study_file import NULL_IS_NO_VALUE, as_bool, as_text, read_document, read_yaml, refuse_nulls

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


def _read_config(path: str | None) -> dict[str, Any]:
    """The ``--config`` study, read once. A study field that ``plan`` does not use is refused, not ignored."""
    if path is None:
        return {}
    from .spec import NULLABLE_FIELDS, Spec

    cfg = read_yaml(as_text("config", path))
    used = {*_STUDY_KEYS, "ttft_ms", "itl_ms", *PLAN_FIELDS, "output_dir", "plots"}
    spec_fields = {f.name for f in dataclass_fields(Spec)}
    for k in cfg:
        if k not in used and k in spec_fields:  # a name that is no study field: load_spec calls it unknown
            why = _NOT_FOR_PLAN.get(k, "plan does not use it")
            raise SpecError(k, f"does not apply to `plan` ({why}); remove it from {path}")
    refuse_nulls(cfg, NULLABLE_FIELDS | PLAN_NULLABLE)
    return cfg


def _plan_inputs(fields: dict[str, Any], cfg: dict[str, Any]) -> tuple[Any, Any]:
    """Flags (``fields``) over the config: the checked Spec and PlanSpec, before any fleet is sized."""
    from .spec import load_spec

    study_cfg = {k: v for k, v in cfg.items() if k not in PLAN_FIELDS}
    study_fields = {**study_cfg, **{k: fields[k] for k in _STUDY_KEYS if fields.get(k) is not None}}
    spec = load_spec(None, **study_fields)
    plan_raw = {k: fields[k] if fields.get(k) is not None else cfg.get(k) for k in PLAN_FIELDS}
    given = {m: any(study_fields.get(k) is not None for k in (m, f"{m}_ms")) for m in ("ttft", "itl")}
    ps = load_plan_spec(spec, plan_raw, mean_ttft_given=given["ttft"], mean_itl_given=given["itl"])
    return spec, ps


def _plan_one(spec: Any, ps: Any, shared: Any) -> Any:
    from .capacity_study import run_capacity

    return run_capacity(spec, ps.workload, ps.load, ps.sla, gpu_price_override=ps.gpu_price,
                        size_for=ps.size_for, confidence=spec.confidence, shared=shared)  # fmt: skip


def _output_dir(v: Any) -> Path:
    """Create the output directory now: a path that cannot be one (a file, under a file, not creatable or
    writable) fails in one line before the study, not with a traceback after it."""
    from .artifacts.atomic import prepare_dir
    from .spec_checks import output_dir_field

    return prepare_dir(output_dir_field(v))


@contextmanager
def _writing(out: Path) -> Iterator[None]:
    """A write that fails (disk full, directory removed meanwhile) is one line naming the directory."""
    try:
        yield
    except OSError as exc:
        raise SpecError("output_dir", f"writing {out} failed: {exc.strerror or exc}") from None


def _fleet_rows(name: str, study: Any) -> list[dict[str, Any]]:
    return [{"scenario": name, "mode": f.mode, "label": f.label(), "ttft_p90_ms": f.ttft.p90_ms,
             "usd_per_million_output_tokens": f.usd_per_million_output_tokens} for f in study.result.fleets]  # fmt: skip


def _write_table(rows: list[dict[str, Any]], out: Path, title: str) -> list[Path]:
    import pandas as pd

    df = pd.DataFrame(rows)
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
            flag = "--no-cache" if name == "cache" else f"--{name.replace('_', '-')}"
            raise SpecError(name, f"{flag} does not apply to `plan`: {why}")
    fields = {k: getattr(ns, k, None) for k in (*_STUDY_KEYS, *PLAN_FIELDS)}
    cfg = _read_config(ns.config)
    cfg_out = cfg.pop("output_dir", None)
    out_dir = ns.output_dir if ns.output_dir is not None else cfg_out  # the flag wins, as in `profile`
    plots = as_bool("plots", cfg.pop("plots", True)) and ns.plots is not False
    shared = SharedWork()
    if ns.scenarios is not None:
        return _run_scenarios(ns, fields, cfg, out_dir, plots, shared)
    spec, ps = _plan_inputs(fields, cfg)
    out = _output_dir(out_dir) if out_dir is not None else None
    study = _plan_one(spec, ps, shared)
    from .capacity_report import agg_cross_check, plan_dict, plan_text

    check = agg_cross_check(study, shared.source(study.spec))
    if out is not None:
        from .artifacts.pareto import write_pareto

        c = study.confidence
        sized = "" if c is None else f", sized for P(meeting every target) >= {c:g}"
        with _writing(out):
            _write_table([dict(rank=i + 1, **_flat(f)) for i, f in enumerate(study.result.fleets)], out,
                         f"Fleets for {study.spec.model} at {study.result.load.describe()}{sized}")  # fmt: skip
            (out / "plan.json").write_text(json.dumps(plan_dict(study, ps.top, check), indent=2) + "\n")
            if study.result.fleets and plots:
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


def _read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows by the header. A row longer or shorter than the header, or a header naming a column twice or
    not at all, is refused: csv.DictReader would fill in None, drop values or keep the last column."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError("scenarios", f"cannot read {path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")  # a spreadsheet's byte-order mark is not part of the first name
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        why = f"not UTF-8 text (byte 0x{data[exc.start]:02x})"
        raise SpecError("scenarios", f"{path} line {line}: {why}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = []
    try:
        names = [h.strip() for h in next(reader, [])]
        for j, name in enumerate(names):
            if not name:
                raise SpecError("scenarios", f"{path} line 1: column {j + 1} has no name")
            if name in names[:j]:
                raise SpecError("scenarios", f"{path} line 1: column {name[:80]!r} appears twice")
        for r in reader:
            if not r:
                continue  # a blank line
            if len(r) != len(names):
                why = f"{len(r)} values for the {len(names)} columns of the header"
                raise SpecError("scenarios", f"{path} line {reader.line_num}: {why}")
            rows.append({k: v.strip() or None for k, v in zip(names, r)})
    except csv.Error as exc:
        raise SpecError("scenarios", f"{path} line {reader.line_num}: malformed CSV ({exc})") from None
    return rows


def read_scenarios(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a CSV (header = field names) or a YAML list of mappings (or ``{scenarios: [...]}``)."""
    path = Path(as_text("scenarios", str(path)))
    if path.suffix == ".csv":
        rows = _read_csv(path)
    else:
        data = read_document(path, "scenarios", scale=16)  # duplicate keys, bad bytes, bombs: one line
        if isinstance(data, dict) and "scenarios" in data:
            extra = sorted(set(data) - {"scenarios"}, key=str)
            if extra:
                raise SpecError("scenarios", f"{path}: unknown field {extra[0]!r} beside the scenarios list")
            data = data["scenarios"]
        rows = [] if data is None else data
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise SpecError("scenarios", f"{path} must hold a list of mappings")
        for i, r in enumerate(rows, start=1):  # a null would take the flags' value (an empty CSV cell does)
            null = next((k for k, v in r.items() if v is None), None)
            if null is not None:
                raise SpecError("scenarios", f"{path} row {i}: {null}: {NULL_IS_NO_VALUE}")
    if not rows:
        raise SpecError("scenarios", f"{path} holds no scenarios")
    known = {*_STUDY_KEYS, *PLAN_FIELDS, "name"}
    for i, r in enumerate(rows, start=1):
        bad = sorted(set(r) - known, key=str)
        if bad:
            raise SpecError("scenarios", f"{path} row {i}: unknown field {bad[0]!r}")
    return rows


def _run_scenarios(ns: argparse.Namespace, fields: dict[str, Any], cfg: dict[str, Any], out_dir: Any,
                   plots: bool, shared: Any) -> int:  # fmt: skip
    from tqdm import tqdm

    from .artifacts.pareto import write_pareto
    from .capacity_report import scenario_row

    rows = read_scenarios(ns.scenarios)
    inputs = []
    for i, row in enumerate(rows, start=1):  # every row is checked before the first is planned
        merged = {
            **{k: v for k, v in fields.items() if v is not None},
            **{k: v for k, v in row.items() if v is not None},
        }
        name = str(row.get("name") or f"#{i}")
        try:
            inputs.append((name, *_plan_inputs(merged, cfg)))
        except SpecError as exc:
            raise SpecError("scenarios", f"row {i} ({name}): {exc}") from None
    out = None if out_dir is None else _output_dir(out_dir)  # no -o: print only (as a single plan does)
    out_rows, fleet_rows = [], []
    for i, (name, spec, ps) in enumerate(tqdm(inputs, desc="scenarios", unit="scenario", file=sys.stderr,
                                              disable=len(rows) < 5), start=1):  # fmt: skip
        try:
            study = _plan_one(spec, ps, shared)
        except SpecError as exc:
            raise SpecError("scenarios", f"row {i} ({name}): {exc}") from None
        out_rows.append(scenario_row(name, study))
        fleet_rows += _fleet_rows(name, study)
    paths = []
    if out is not None:
        with _writing(out):
            paths = _write_table(out_rows, out, f"Capacity plan: {len(rows)} scenarios")
            if fleet_rows and plots:
                paths.append(write_pareto(fleet_rows, out))
    if ns.json:
        print(json.dumps(out_rows, indent=2, default=str))
    else:
        for r in out_rows:
            print(f"{r['scenario']}: {r['best']}" + (f" ({r['total_gpus']} GPUs, ${r['usd_per_hour']:.2f}/h)"
                                                   if "total_gpus" in r else "") + f"; {r['verdict']}")  # fmt: skip
        print(f"wrote {', '.join(str(p) for p in paths)}" if paths else
              "(-o DIR writes plan.csv, plan.md and pareto.png)")  # fmt: skip
    return 0


__all__ = ["add_plan_flags", "read_scenarios", "run_plan"]
