"""AIC's ``silicon_sample.csv`` (real aggregated-serving measurements) as ``Measurement`` records.

Each agg row is TTFT and TPOT of one deployment at concurrency ``batch_size`` with ISL/OSL. The file
holds exact copies of one measurement (same configuration, same numbers); those are dropped. Distinct
repeats of one configuration are merged into one record (mean, with the spread and the raw samples),
so a train/test split can never put the same configuration on both sides.

Rows whose parallel mapping is not a ``Candidate`` (TP n, TEP n, DEP n; e.g. TP4 × attention-DP 4)
are returned as ``Skipped`` with the reason, never dropped silently; so are rows of another mode
(disaggregated serving) when the caller asks (``report_other_modes``, as ``models fit`` does).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from estimator.candidates import Candidate, Mapping
from estimator.errors import MeasurementError, SpecError
from estimator.measurements import Measurement, Probe, ProbeKind
from estimator.model import resolve_model_name
from estimator.sources.base import Stack

CONFIG_COLUMNS = (
    "backend", "backend_version", "model_path", "system", "precision", "gemm_quant_mode", "moe_quant_mode",
    "isl", "osl", "batch_size", "tp_size", "pp_size", "attention_dp_size", "moe_tp_size", "moe_ep_size",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Skipped:
    row_id: str
    reason: str


def bundled_silicon_csv() -> Path:
    """Path of the silicon sample shipped inside aiconfigurator-core."""
    return Path(
        str(
            metadata.distribution("aiconfigurator-core").locate_file(
                "aiconfigurator_core/systems/silicon_sample.csv"
            )
        )
    )


def _num(v: str) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def candidate_of(row: dict[str, str]) -> Candidate | None:
    """TP n (dense or MoE-TP), TEP n or DEP n; None for other layouts (hybrid TP×DP, PP>1)."""
    tp, pp, dp = (int(_num(row[k]) or 0) for k in ("tp_size", "pp_size", "attention_dp_size"))
    mtp, mep = (int(_num(row[k]) or 0) for k in ("moe_tp_size", "moe_ep_size"))
    if pp not in (0, 1) or tp < 1:
        return None
    if dp <= 1 and mep <= 1 and mtp in (0, 1, tp):
        return Candidate(Mapping.TP, tp)
    if dp <= 1 and mtp <= 1 and mep == tp:
        return Candidate(Mapping.TEP, tp)
    if tp == 1 and dp > 1 and mtp <= 1 and mep == dp:
        return Candidate(Mapping.DEP, dp)
    return None


def stack_of(row: dict[str, str]) -> Stack:
    """The measured stack: its real backend version; quantisation as the row states it."""
    gemm = row.get("gemm_quant_mode") or None
    try:  # the id AIC bundles ("meta-llama/Llama-3.1-70B" -> "meta-llama/Meta-Llama-3.1-70B")
        model = resolve_model_name(row["model_path"])
    except SpecError:
        model = row["model_path"]
    return Stack(model=model, system=row["system"], backend=row["backend"],
                 backend_version=row["backend_version"] or None, gemm_quant=gemm)  # fmt: skip


REQUIRED_COLUMNS = ("id", "mode", "silicon_ttft_ms", "silicon_tpot_ms", *CONFIG_COLUMNS)
_INT_COLUMNS = ("isl", "osl", "batch_size")


def _rows(path: Path):
    """(line number, row) of the CSV; a missing column, bad bytes or a broken row names the file and line."""
    try:
        fh = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise MeasurementError(f"cannot read {path}: {exc.strerror}") from None
    with fh:
        reader = csv.DictReader(fh)
        try:
            header = reader.fieldnames or []
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise MeasurementError(
                    f"{path}: missing column {missing[0]!r} (needs {', '.join(REQUIRED_COLUMNS)})"
                )
            for row in reader:
                if None in row or any(v is None for v in row.values()):
                    raise MeasurementError(f"{path} line {reader.line_num}: {len(header)} columns expected")
                yield reader.line_num, row
        except UnicodeDecodeError as exc:
            raise MeasurementError(
                f"{path} line {reader.line_num + 1}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x})"
            ) from None
        except csv.Error as exc:
            raise MeasurementError(f"{path} line {reader.line_num}: {exc}") from None


def _row_problem(row: dict[str, str]) -> str | None:
    for c in _INT_COLUMNS:
        v = _num(row[c])
        if v is None or not math.isfinite(v) or v < 1 or v != int(v):
            return f"{c} {row[c]!r} is not a positive integer"
    for c in ("tp_size", "pp_size", "attention_dp_size", "moe_tp_size", "moe_ep_size"):
        v = _num(row[c]) if row[c] != "" else 0.0
        if v is None or not math.isfinite(v) or v < 0 or v != int(v):
            return f"{c} {row[c]!r} is not a non-negative integer"
    return None


def load_silicon(
    path: str | Path | None = None, mode: str = "agg", *, report_other_modes: bool = False
) -> tuple[list[Measurement], list[Skipped]]:
    """Agg rows as AGG measurements (deduplicated, repeats merged) and the rows we cannot represent.

    ``report_other_modes``: rows of another mode (disagg) are returned as skipped too, so a caller that
    trains on the whole file can say how many rows it did not use and why."""
    path = Path(path) if path else bundled_silicon_csv()
    groups: dict[tuple, list[dict[str, str]]] = {}
    skipped: list[Skipped] = []
    for line, row in _rows(path):
        rid = row["id"] or f"line {line}"
        if row["mode"] != mode:
            if report_other_modes:
                skipped.append(Skipped(rid, f"{row['mode'] or 'no'} mode: only {mode} rows are used"))
            continue
        ttft, tpot = _num(row["silicon_ttft_ms"]), _num(row["silicon_tpot_ms"])
        if (
            ttft is None
            or tpot is None
            or not (math.isfinite(ttft) and math.isfinite(tpot))
            or ttft <= 0
            or tpot <= 0
        ):
            skipped.append(
                Skipped(
                    rid,
                    f"no usable measured TTFT/TPOT ({row['silicon_ttft_ms']!r}, {row['silicon_tpot_ms']!r})",
                )
            )
            continue
        problem = _row_problem(row)
        if problem:
            skipped.append(Skipped(rid, problem))
            continue
        if candidate_of(row) is None:
            skipped.append(Skipped(rid, "parallel mapping is not TP/TEP/DEP "
                                   f"(tp {row['tp_size']}, pp {row['pp_size']}, adp {row['attention_dp_size']}, "
                                   f"moe_tp {row['moe_tp_size']}, moe_ep {row['moe_ep_size']})"))  # fmt: skip
            continue
        key = tuple(row.get(c, "") for c in CONFIG_COLUMNS)
        groups.setdefault(key, []).append(row)
    out = [_merge(rows, path) for rows in groups.values()]
    return out, skipped


def _merge(rows: list[dict[str, str]], path: Path) -> Measurement:
    """One record per configuration: exact copies collapse; distinct repeats are averaged."""
    distinct = {(float(r["silicon_ttft_ms"]), float(r["silicon_tpot_ms"])): r for r in rows}
    ttfts = [k[0] for k in distinct]
    tpots = [k[1] for k in distinct]
    r0 = rows[0]
    probe = Probe(ProbeKind.AGG, stack_of(r0), candidate_of(r0), isl=int(float(r0["isl"])),  # type: ignore[arg-type]
                  osl=int(float(r0["osl"])), concurrency=int(float(r0["batch_size"])), repeats=len(distinct))  # fmt: skip
    return Measurement(
        probe=probe,
        runner="replay",
        ttft_ms=sum(ttfts) / len(ttfts),
        ttft_std_ms=_std(ttfts),
        tpot_ms=sum(tpots) / len(tpots),
        itl_ms=sum(tpots) / len(tpots),
        itl_std_ms=_std(tpots),
        samples={"ttft_ms": ttfts, "tpot_ms": tpots},
        hardware=r0["system"],
        software={"backend": r0["backend"], "backend_version": r0["backend_version"]},
        measured_at="",
        extra={
            "source": str(path.name),
            "row_ids": sorted(r["id"] for r in distinct.values()),
            "copies_dropped": len(rows) - len(distinct),
            "precision": r0.get("precision", ""),
        },
    )


def _std(xs: list[float]) -> float | None:
    if len(xs) < 2:
        return None
    m = sum(xs) / len(xs)
    return (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5
