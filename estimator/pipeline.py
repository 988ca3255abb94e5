"""The whole estimate, one line per stage: spec -> candidates -> source -> points -> selection -> surfaces."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

from .candidates import Candidate, Rejection, enumerate_candidates, no_engine_error
from .deployment import Deployment, WorkerRole
from .errors import DataNotAvailable
from .model import load_model_info
from .select import DecodeChoice, Selection, planner_bounds, select
from .sources import PerfSource, Stack, make_source
from .spec import Spec
from .surfaces import (
    DecodeSurface,
    DecodeSweep,
    PrefillPoint,
    PrefillSurface,
    decode_surface,
    decode_sweep,
    planner_decode_surface,
    planner_prefill_surface,
    prefill_point,
    prefill_surface,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Profile:
    """Everything one study produced: inputs, per-candidate numbers, the choice and its surfaces."""

    spec: Spec
    stack: Stack
    provenance: dict[str, Any]
    candidates: tuple[Candidate, ...]
    rejections: tuple[Rejection, ...]
    prefill_points: tuple[PrefillPoint, ...]
    decode_sweeps: tuple[DecodeSweep, ...]
    selection: Selection
    prefill_surface: PrefillSurface
    decode_surface: DecodeSurface
    timings_s: dict[str, float] = field(default_factory=dict)
    deployment: Deployment | None = None  # the fleet to deploy for spec.request_rate (capacity planning)
    # Dynamo 1.6's planner data (npz + profile ConfigMap): points near the workload its linear fits hold on.
    planner_prefill_surface: PrefillSurface | None = None
    planner_decode_surface: DecodeSurface | None = None


def screen(source: PerfSource, candidates: list[Candidate], request_tokens: int) -> tuple[list, list]:
    """Drop candidates the source cannot estimate or whose memory cannot hold one request."""
    kept, dropped = [], []
    for c in candidates:
        try:
            kv = source.kv_capacity_tokens(c)
        except DataNotAvailable as exc:
            dropped.append(Rejection(c, str(exc)))
            continue
        if kv <= 0:
            why = f"weights do not fit in the memory of {c.num_gpus} GPU(s)"
            dropped.append(Rejection(c, why, by_gpu_count=True))
        elif kv < request_tokens:
            why = f"KV cache holds {kv} tokens, less than one request of {request_tokens}"
            dropped.append(Rejection(c, why, by_gpu_count=True))
        else:
            kept.append(c)
    return kept, dropped


def fleet_modes(spec: Spec) -> tuple[str, ...]:
    """agg and disagg, unless the planner's ``mode`` (``--planner-mode``, DGDR ``features.planner.mode``)
    fixes one; Dynamo 0.7's layout deploys disaggregated workers only (``spec`` refuses agg with it)."""
    if spec.dynamo_version == "0.7":
        return ("disagg",)
    mode = str(dict(spec.planner_args).get("mode", "")).strip('"')  # DGDR values arrive JSON-encoded
    return (mode,) if mode in ("agg", "disagg") else ("agg", "disagg")


def surface_engines(selection: Selection, deployment: Deployment | None) -> tuple[Candidate, DecodeChoice]:
    """The engines the surfaces (and so Dynamo's profile data) describe: those of the fleet that is
    deployed when capacity planning sized one (an agg engine serves both phases), else the selection's."""
    if deployment is None:
        return selection.best_prefill.candidate, selection.best_decode
    groups = {w.role: w.candidate for w in deployment.workers}
    prefill = groups.get(WorkerRole.PREFILL) or groups[WorkerRole.AGG]
    decode = groups.get(WorkerRole.DECODE) or groups[WorkerRole.AGG]
    choice = next((d for d in selection.decode if d.candidate == decode), None)
    if choice is None:
        log.warning("decode engine %s of the fleet has no ranked operating point; surfaces use %s",
                    decode.name, selection.best_decode.candidate.name)  # fmt: skip
        choice = selection.best_decode
    return prefill, choice


def estimate(spec: Spec, source: PerfSource | None = None) -> Profile:
    """Run the study with ``source`` (default: the one the spec names)."""
    t0 = time.perf_counter()
    stack = Stack.from_spec(spec)
    source = source or make_source(spec.source, stack)
    model = load_model_info(spec.model)
    candidates, rejected = enumerate_candidates(model, spec.gpu_counts)
    usable, dropped = screen(source, candidates, spec.isl + spec.osl)
    rejected += dropped
    t1 = time.perf_counter()

    points: list[PrefillPoint] = []
    sweeps: list[DecodeSweep] = []
    for c in usable:
        try:
            points.append(prefill_point(source, c, spec.isl))
            sweep = decode_sweep(
                source, c, spec.isl, spec.osl, num_points=2 * spec.num_decode_concurrencies, cap=spec.max_concurrency
            )
        except DataNotAvailable as exc:
            rejected.append(Rejection(c, str(exc)))
            points = [p for p in points if p.candidate != c]
            continue
        if sweep is not None:
            sweeps.append(sweep)
    if not points or not sweeps:
        raise no_engine_error(rejected, spec.gpu_counts, all_rejected=not usable)
    t2 = time.perf_counter()

    selection = select(
        points,
        sweeps,
        ttft_target_ms=spec.ttft_ms,
        itl_target_ms=spec.itl_ms,
        isl=spec.isl,
        osl=spec.osl,
        request_rate=spec.request_rate,
        confidence=spec.confidence,
        modes=fleet_modes(spec),
        source=source,
        gpu_budget=spec.total_gpus,
    )
    deployment = selection.sizing.deployment if selection.sizing is not None else None
    prefill_engine, best_d = surface_engines(selection, deployment)
    deployed_prefill = next(c for c in selection.prefill if c.candidate == prefill_engine)
    bounds = planner_bounds(spec.ttft_ms, deployed_prefill, best_d, spec.isl, spec.osl)  # of what is deployed
    selection = replace(selection, bounds=bounds)
    p_surface = prefill_surface(
        source,
        prefill_engine,
        isl=spec.isl,
        max_isl=spec.max_context_tokens - 512 if spec.max_context_tokens > 1024 else spec.max_context_tokens,
        num_points=spec.num_prefill_points,
    )
    d_surface = decode_surface(
        source,
        best_d.candidate,
        isl=spec.isl,
        osl=spec.osl,
        max_context=spec.max_context_tokens,
        num_contexts=spec.num_decode_contexts,
        num_concurrencies=spec.num_decode_concurrencies,
        cap=spec.max_concurrency,
    )
    planner_p = planner_prefill_surface(source, prefill_engine, isl=spec.isl, max_isl=spec.max_context_tokens)
    planner_d = planner_decode_surface(
        source,
        best_d.candidate,
        isl=spec.isl,
        osl=spec.osl,
        best_concurrency=best_d.concurrency,
        max_context=spec.max_context_tokens,
        cap=spec.max_concurrency,
    )
    t3 = time.perf_counter()
    return Profile(
        spec=spec,
        stack=stack,
        provenance=source.provenance(),
        candidates=tuple(usable),
        rejections=tuple(rejected),
        prefill_points=tuple(points),
        decode_sweeps=tuple(sweeps),
        selection=selection,
        prefill_surface=p_surface,
        decode_surface=d_surface,
        timings_s={"screen": t1 - t0, "sweeps": t2 - t1, "surfaces": t3 - t2, "total": t3 - t0},
        deployment=deployment,
        planner_prefill_surface=planner_p,
        planner_decode_surface=planner_d,
    )
