"""Plan settings (load, percentile targets, workload, price, band sizing), checked once into ``PlanSpec``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .capacity_types import Load, Sla, Target
from .errors import SpecError
from .spec import MAX_CONCURRENCY, MAX_REQUEST_RATE, Spec, latency_target, request_rate_field
from .spec import _as_choice, _as_float, _as_int, _as_text
from .workload import Workload, fixed, load_workload

MAX_GPU_PRICE = 10_000.0  # $/GPU-hour (the table's dearest is $8): beyond it costs overflow to inf
PCT_FIELDS = tuple(f"{m}_{p}" for m in ("ttft", "itl") for p in ("p50", "p90", "p99"))
PLAN_FIELDS = ("request_rate", "concurrency", "gpu_budget", *PCT_FIELDS, "workload", "prefix_hit_rate",
               "gpu_price", "size_for", "headroom", "top")  # fmt: skip
# plan fields whose default is None (no load of that kind, no percentile target, no trace, the price table):
# a YAML null says that none; the others have a default, and a null for them is refused
PLAN_NULLABLE = frozenset(PLAN_FIELDS) - {"prefix_hit_rate", "size_for", "headroom", "top"}


@dataclass(frozen=True, slots=True)
class PlanSpec:
    load: Load
    sla: Sla
    workload: Workload  # fixed ISL/OSL of the study unless a workload file is given
    workload_file: str | None = None
    prefix_hit_rate: float = 0.0
    gpu_price: float | None = None  # $/GPU-hour; None: the default table
    size_for: str = "point"  # point | band
    top: int = 10


def _workload(spec: Spec, path: str | None, hit_rate: float) -> Workload:
    w = load_workload(path, max_tokens=spec.max_context_tokens) if path else fixed(spec.isl, spec.osl)
    return w.with_prefix_hit_rate(hit_rate) if hit_rate else w


def _given(raw: dict[str, Any], name: str, default: Any) -> Any:
    """The value, or ``default`` when not given (None): an empty or zero value is checked, never defaulted."""
    v = raw.get(name)
    return default if v is None else v


def load_plan_spec(
    spec: Spec, raw: dict[str, Any], *, mean_ttft_given: bool, mean_itl_given: bool
) -> PlanSpec:
    """``raw``: plan fields (None: not given). Means apply when given or when no percentile of that metric is."""
    rate = (
        request_rate_field("request_rate", raw["request_rate"])
        if raw.get("request_rate") is not None
        else None
    )
    conc = (
        _as_int("concurrency", raw["concurrency"], 1, MAX_CONCURRENCY)
        if raw.get("concurrency") is not None
        else None
    )
    budget = (
        _as_int("gpu_budget", raw["gpu_budget"], 1, 100_000) if raw.get("gpu_budget") is not None else None
    )
    hit = _as_float("prefix_hit_rate", _given(raw, "prefix_hit_rate", 0.0), positive=False)
    if not 0.0 <= hit < 1.0:
        raise SpecError("prefix_hit_rate", f"must be in [0, 1), got {hit!r}")
    path = _as_text("workload", raw["workload"]) if raw.get("workload") is not None else None
    workload = _workload(spec, path, hit)
    if rate is None and conc is None and budget is None:
        rate = spec.request_rate or workload.rate_rps  # a trace's own arrival rate
        if rate is not None and rate > MAX_REQUEST_RATE:
            why = f"{path}: its arrival rate {rate:g} requests/s is beyond the bound of {MAX_REQUEST_RATE:g}"
            raise SpecError("workload", why + "; give --request-rate")
    if rate is None and conc is None and budget is None:
        raise SpecError("request_rate", "give one of --request-rate, --concurrency or --gpu-budget")
    targets = []
    for metric, mean, given in (
        ("ttft", spec.ttft_ms, mean_ttft_given),
        ("itl", spec.itl_ms, mean_itl_given),
    ):
        pcts = [Target(metric, p, latency_target(f"{metric}_{p}", raw[f"{metric}_{p}"]))
                for p in ("p50", "p90", "p99") if raw.get(f"{metric}_{p}") is not None]  # fmt: skip
        _check_percentile_order(pcts)
        if given or not pcts:
            targets.append(Target(metric, "mean", mean))
        targets += pcts
    headroom = _as_float("headroom", _given(raw, "headroom", 0.0), positive=False)
    if not 0.0 <= headroom < 1.0:
        raise SpecError("headroom", f"must be in [0, 1), got {headroom!r}")
    return PlanSpec(
        load=Load(rate, conc, budget),
        sla=Sla(tuple(targets), headroom),
        workload=workload,
        workload_file=path,
        prefix_hit_rate=hit,
        gpu_price=(
            _as_float("gpu_price", raw["gpu_price"], hi=MAX_GPU_PRICE)
            if raw.get("gpu_price") is not None
            else None
        ),
        size_for=_as_choice("size_for", _given(raw, "size_for", "point"), ("point", "band")),
        top=_as_int("top", _given(raw, "top", 10), 1, 1000),
    )


def _check_percentile_order(pcts: list[Target]) -> None:
    """A higher percentile's target below a lower one's makes the lower one moot: almost surely swapped."""
    for i, lo in enumerate(pcts):
        for hi in pcts[i + 1 :]:
            if hi.ms < lo.ms:
                why = f"{hi.ms:g} ms is below {lo.metric}_{lo.stat} {lo.ms:g} ms"
                why += "; a higher percentile cannot have the tighter target (swapped?)"
                raise SpecError(f"{hi.metric}_{hi.stat}", why)


__all__ = ["PLAN_FIELDS", "PLAN_NULLABLE", "PlanSpec", "load_plan_spec"]
