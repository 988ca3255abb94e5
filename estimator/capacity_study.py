"""A capacity study end to end: spec -> source -> candidates -> engine tables -> ranked fleets.

Work that several studies share is done once: sources (compiled engines) are kept per serving stack,
engine tables per (stack, candidate, workload, band). ``--size-for band`` plans on the pessimistic
edge of the source's band and reports the point-estimate plan beside it, so the cost of the
uncertainty is a number of GPUs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .candidates import Candidate, Rejection, enumerate_candidates
from .capacity import PlanResult, plan_fleets
from .capacity_engine import EngineTable, engine_table
from .capacity_types import Load, Sla
from .cost import gpu_price
from .errors import DataNotAvailable
from .model import load_model_info
from .sources import PerfSource, Stack, make_source
from .spec import Spec
from .workload import Workload

log = logging.getLogger(__name__)


@dataclass
class SharedWork:
    """Sources and engine tables reused across studies (a batch of scenarios shares one)."""

    sources: dict[tuple, PerfSource] = field(default_factory=dict)
    tables: dict[tuple, EngineTable | Rejection] = field(default_factory=dict)
    candidates: dict[tuple, tuple[list[Candidate], list[Rejection]]] = field(default_factory=dict)

    def source(self, spec: Spec) -> PerfSource:
        stack = Stack.from_spec(spec)
        key = (stack, spec.source)
        if key not in self.sources:
            self.sources[key] = make_source(spec.source, stack)
        return self.sources[key]

    def engine_candidates(self, spec: Spec) -> tuple[list[Candidate], list[Rejection]]:
        key = (spec.model, spec.gpu_counts)
        if key not in self.candidates:
            self.candidates[key] = enumerate_candidates(load_model_info(spec.model), spec.gpu_counts)
        kept, dropped = self.candidates[key]
        return list(kept), list(dropped)

    def table(self, spec: Spec, cand: Candidate, w: Workload, band: bool) -> EngineTable | Rejection:
        src = self.source(spec)
        key = (src.stack, spec.source, cand, _workload_key(w), band)
        if key not in self.tables:
            try:
                kv = src.kv_capacity_tokens(cand)
                need = w.mean_isl + w.mean_osl
                if kv < need:
                    self.tables[key] = Rejection(
                        cand, f"KV cache holds {kv} tokens, less than one request of {need:.0f}"
                    )
                else:
                    self.tables[key] = engine_table(src, cand, w, band=band)
            except DataNotAvailable as exc:
                self.tables[key] = Rejection(cand, str(exc))
        return self.tables[key]


def _workload_key(w: Workload) -> tuple:
    return (w.name, w.isl.tobytes(), w.osl.tobytes(), w.cached_tokens.tobytes())


@dataclass(frozen=True, slots=True)
class CapacityStudy:
    spec: Spec
    workload: Workload
    result: PlanResult
    price_per_gpu_hour: float
    size_for: str  # point | band
    point_result: PlanResult | None  # the point-estimate plan when sizing for the band
    rejections: tuple[Rejection, ...]
    provenance: dict

    @property
    def band_extra_gpus(self) -> int | None:
        """GPUs the band's pessimistic edge costs over the point estimate (None if not comparable)."""
        if self.point_result is None or self.result.best is None or self.point_result.best is None:
            return None
        return self.result.best.total_gpus - self.point_result.best.total_gpus


def run_capacity(
    spec: Spec,
    workload: Workload,
    load: Load,
    sla: Sla,
    *,
    gpu_price_override: float | None = None,
    size_for: str = "point",
    shared: SharedWork | None = None,
    modes: tuple[str, ...] = ("agg", "disagg"),
) -> CapacityStudy:
    shared = shared or SharedWork()
    cands, rejected = shared.engine_candidates(spec)
    price = gpu_price(spec.system, gpu_price_override)

    def tables(band: bool) -> list[EngineTable]:
        out = []
        for c in cands:
            t = shared.table(spec, c, workload, band)
            if isinstance(t, Rejection):
                if not band:
                    rejected.append(t)
            else:
                out.append(t)
        if not out:
            reasons = "; ".join(f"{r.candidate.name}: {r.reason}" for r in rejected) or "no candidates"
            raise DataNotAvailable(f"no candidate engine could be estimated ({reasons})")
        return out

    point = plan_fleets(tables(False), workload, load, sla, price_per_gpu_hour=price, modes=modes)
    result, point_result = point, None
    if size_for == "band":
        result = plan_fleets(tables(True), workload, load, sla, price_per_gpu_hour=price, modes=modes)
        point_result = point
    src = shared.source(spec)
    return CapacityStudy(
        spec, workload, result, price, size_for, point_result, tuple(rejected), src.provenance()
    )


__all__ = ["CapacityStudy", "SharedWork", "run_capacity"]
