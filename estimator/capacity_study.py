"""A capacity study end to end: spec -> source -> candidates -> engine tables -> ranked fleets.

Work that several studies share is done once: sources (compiled engines) are kept per serving stack,
engine tables per (stack, candidate, workload, band). ``--size-for band`` plans on the pessimistic
edge of the source's band and ``confidence`` sizes every fleet for its probability of meeting the SLA
(``capacity_confidence``); both report the point-estimate plan beside it, so the cost of the uncertainty
is a number of GPUs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .candidates import Candidate, Rejection, enumerate_candidates, no_engine_error
from .capacity import PlanResult, plan_fleets
from .capacity_confidence import plan_confident
from .capacity_engine import EngineTable, engine_table
from .capacity_types import Load, Sla
from .cost import gpu_price
from .errors import DataNotAvailable, SpecError
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
    size_for: str  # point | band | confidence
    point_result: PlanResult | None  # the point-estimate plan when sizing for the band or a confidence
    rejections: tuple[Rejection, ...]
    provenance: dict
    confidence: float | None = None  # sized for P(meeting every target) >= this
    point_best_p: float | None = None  # with a confidence: P of the point-estimate plan's best fleet

    @property
    def sized_for(self) -> str:
        """What the fleets were sized on, in words."""
        if self.confidence is not None:
            return f"P(meeting every target) >= {self.confidence:g}"
        return "the band's pessimistic edge" if self.size_for == "band" else "the point estimate"

    @property
    def band_extra_gpus(self) -> int | None:
        """GPUs the band's edge or the confidence costs over the point estimate (None if not comparable)."""
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
    confidence: float | None = None,
    shared: SharedWork | None = None,
    modes: tuple[str, ...] = ("agg", "disagg"),
) -> CapacityStudy:
    if confidence is not None and size_for != "point":
        raise SpecError("confidence", "give either --confidence or --size-for band, not both")
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
        if not out:  # names gpus when every candidate fell for its GPU count, as the profile does
            raise no_engine_error(rejected, spec.gpu_counts)
        return out

    point_tables = tables(False)
    point = plan_fleets(point_tables, workload, load, sla, price_per_gpu_hour=price, modes=modes)
    result, point_result, point_best_p = point, None, None
    src = shared.source(spec)
    if size_for == "band":
        result = plan_fleets(tables(True), workload, load, sla, price_per_gpu_hour=price, modes=modes)
        point_result = point
    elif confidence is not None:
        plan = plan_confident(src, point_tables, workload, load, sla, confidence=confidence,
                              price_per_gpu_hour=price, modes=modes, point=point)  # fmt: skip
        result, point_result, point_best_p = plan.result, point, plan.point_best_p
    sized = "confidence" if confidence is not None else size_for
    return CapacityStudy(spec, workload, result, price, sized, point_result, tuple(rejected),
                         src.provenance(), confidence, point_best_p)  # fmt: skip


__all__ = ["CapacityStudy", "SharedWork", "run_capacity"]
