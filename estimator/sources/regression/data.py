"""Training rows for the regression: from measurements of every kind, and from AIC itself.

- prefill / decode measurements (our jsonl, the GPU runner, Dynamo profile dirs read by the replay
  runner): one direct row each, target TTFT or ITL;
- aggregated-serving measurements (``silicon_sample.csv``): two rows, TTFT and TPOT, whose design
  is the serving model's per-term sums. The serving model's step sequence does not depend on time,
  so its TTFT/TPOT are linear in the step-time coefficients: three replays per row (decode step time
  1, n, and the MoE expert-touch share g(n)) give every term's contribution exactly;
- AIC points (:func:`aic_rows`): prefill and decode grids of each engine, and its KV capacity.

Rows the regression cannot describe (unknown model config, unknown system) are returned as skips
with the reason, never dropped silently.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np

from ...candidates import Candidate
from ...errors import SlaEstimateError
from ...measurements import Measurement, ProbeKind
from ..base import PerfSource, Stack
from .engine import FEATURE_NAMES, EngineFeatures
from .regressor import K, TrainingSet, quant_id

log = logging.getLogger(__name__)
GPU_RUNNER = "gpu-runner"
DISTILL_ISL = np.unique(np.round(np.geomspace(64, 131072, 23)))
DISTILL_BATCH = np.unique(np.round(np.geomspace(1, 1024, 16)))
DISTILL_CONTEXT = np.unique(np.round(np.geomspace(128, 131072, 11)))


class _Rows:
    def __init__(self) -> None:
        self.cols: dict[str, list] = {k: [] for k in ("kind", "backend", "model", "system", "design", "features",
                                                      "y_ms", "origin", "quant")}  # fmt: skip
        self.kv_backend: list[str] = []
        self.kv_rows: list[np.ndarray] = []

    def add(
        self, kind: str, stack: Stack, design: np.ndarray, features: np.ndarray, y: np.ndarray, origin: str,
        backend: str | None = None,
    ) -> None:  # fmt: skip
        n = y.size
        for k, v in (("kind", kind), ("backend", backend or stack.backend), ("model", stack.model), ("system", stack.system),
                     ("origin", origin), ("quant", quant_id(stack.gemm_quant, stack.kvcache_quant))):  # fmt: skip
            self.cols[k].extend([v] * n)
        self.cols["design"].append(np.atleast_2d(design))
        self.cols["features"].append(np.atleast_2d(features))
        self.cols["y_ms"].append(np.atleast_1d(y))

    def add_kv(self, ef: EngineFeatures, tokens: float, backend: str | None = None) -> None:
        if tokens > 0:
            self.kv_backend.append(backend or ef.stack.backend)
            self.kv_rows.append(ef.kv_row(tokens))

    def build(self) -> TrainingSet:
        c = self.cols
        width = 2 * K
        return TrainingSet(
            kind=np.array(c["kind"], dtype=str), backend=np.array(c["backend"], dtype=str),
            model=np.array(c["model"], dtype=str), system=np.array(c["system"], dtype=str),
            design=np.vstack(c["design"]) if c["design"] else np.zeros((0, width)),
            features=np.vstack(c["features"]) if c["features"] else np.zeros((0, len(FEATURE_NAMES))),
            y_ms=np.concatenate(c["y_ms"]) if c["y_ms"] else np.zeros(0), origin=np.array(c["origin"], dtype=str),
            kv_backend=np.array(self.kv_backend, dtype=str),
            kv_rows=np.vstack(self.kv_rows) if self.kv_rows else np.zeros((0, 4)),
            quant=np.array(c["quant"], dtype=str),
        )  # fmt: skip


def _place(terms: np.ndarray, phase_index: int) -> np.ndarray:
    out = np.zeros((terms.shape[0], 2 * K))
    out[:, phase_index * K : (phase_index + 1) * K] = terms
    return out


def measurement_rows(
    records: Iterable[Measurement], origin: str = "measured"
) -> tuple[TrainingSet, list[str]]:
    """Rows from measurements of any kind; returns (rows, reasons for the records left out)."""
    rows, skipped = _Rows(), []
    engines: dict[tuple, EngineFeatures] = {}
    for m in records:
        p = m.probe
        try:
            key = (p.stack, p.candidate)
            ef = engines.get(key) or engines.setdefault(key, EngineFeatures.of(p.stack, p.candidate))
            group = coefficient_key(m)
            if p.kind is ProbeKind.PREFILL and m.ttft_ms:
                t, f = ef.prefill(np.array([float(p.isl)]))
                rows.add("prefill", p.stack, _place(t, 0), f, np.array([m.ttft_ms]), origin, group)
            elif p.kind is ProbeKind.DECODE and m.itl_ms:
                t, f = ef.decode(np.array([float(p.concurrency)]), np.array([float(p.context_tokens)]))
                rows.add("decode", p.stack, _place(t, 1), f, np.array([m.itl_ms]), origin, group)
            elif p.kind is ProbeKind.AGG and m.ttft_ms and (m.tpot_ms or m.itl_ms):
                ttft_row, tpot_row = agg_design(ef, p.concurrency, p.isl, p.osl)
                nan = np.full((1, len(FEATURE_NAMES)), np.nan)
                rows.add("ttft", p.stack, ttft_row, nan, np.array([m.ttft_ms]), origin, group)
                rows.add("tpot", p.stack, tpot_row, nan, np.array([m.tpot_ms or m.itl_ms]), origin, group)
            else:
                skipped.append(f"{p.kind.value} {p.candidate.name} of {p.stack.model}: no latency recorded")
                continue
            if m.kv_capacity_tokens:
                rows.add_kv(ef, float(m.kv_capacity_tokens), group)
        except SlaEstimateError as exc:
            skipped.append(f"{p.stack.model} on {p.stack.system}: {str(exc).splitlines()[0][:160]}")
    return rows.build(), skipped


def coefficient_key(m: Measurement) -> str:
    """Which coefficient set a record trains: its backend, except the transformers-based GPU runner.

    The ``gpu`` runner times a plain transformers model, not the serving engine its stack names, so
    its points form their own group (``gpu-runner``) instead of pulling that engine's coefficients.
    A replayed record keeps the runner that measured it in ``extra["measured_by"]``.
    """
    return GPU_RUNNER if m.measured_by == "gpu" else m.probe.stack.backend


class _Basis(PerfSource):
    """A stand-in source whose decode step time is one basis function of the per-rank batch."""

    name = "basis"

    def __init__(self, stack: Stack, fn: Any, dp: int):
        super().__init__(stack)
        self.fn, self.dp = fn, dp

    def prefill_ttft_ms(self, candidate: Candidate, isl: Any) -> np.ndarray:
        return np.asarray(isl, dtype=float)  # 1 ms per token: the replay returns token counts

    def decode_itl_ms(self, candidate: Candidate, batch: Any, context: Any) -> np.ndarray:
        return self.fn(np.asarray(batch, dtype=float) / self.dp)

    def kv_capacity_tokens(self, candidate: Candidate) -> int:
        return 0


def agg_design(ef: EngineFeatures, concurrency: int, isl: int, osl: int) -> tuple[np.ndarray, np.ndarray]:
    """Design rows (1, 2K) of mean TTFT and TPOT under aggregated serving, from the serving model."""
    from ...serving import serving_terms

    c, dp, shape = ef.candidate, ef.candidate.attention_dp_size, ef.shape
    share = (shape.experts_per_token / shape.num_experts) if shape.is_moe else 0.0
    basis = [lambda n: np.ones_like(n), lambda n: n, lambda n: 1.0 - (1.0 - share) ** (n * dp)]
    if not shape.is_moe:
        basis = basis[:2]
    sims = [serving_terms(_Basis(ef.stack, fn, dp), c, concurrency, isl, osl) for fn in basis]
    tokens_ttft, tokens_tpot = sims[0].ttft_prefill_ms, sims[0].tpot_prefill_ms
    # each decode term as alpha + beta n + gamma g(n) over the batches the replay can visit
    n = np.arange(1, max(2, int(np.ceil(concurrency / dp))) + 1, dtype=float)
    dterms, _ = ef.decode(n * dp, np.full_like(n, isl + osl / 2.0))
    a = np.column_stack([fn(n) for fn in basis])
    coef, *_ = np.linalg.lstsq(a, dterms, rcond=None)  # (len(basis), K)
    s_ttft = np.array([s.ttft_decode_ms for s in sims])
    s_tpot = np.array([s.tpot_decode_ms for s in sims])
    pterms = ef.prefill(np.array([float(isl)]))[0][0] / isl
    ttft = np.concatenate([tokens_ttft * pterms, s_ttft @ coef])
    tpot = np.concatenate([tokens_tpot * pterms, s_tpot @ coef])
    return ttft[None, :], tpot[None, :]


def aic_rows(
    stacks: Iterable[Stack], gpu_counts: tuple[int, ...] = (1, 2, 4, 8)
) -> tuple[TrainingSet, list[str]]:
    """Distillation rows: AIC's prefill/decode grids and KV capacity of every engine it can estimate."""
    from ...candidates import enumerate_candidates
    from ...model import load_model_info
    from ..aic import AicSource

    rows, skipped = _Rows(), []
    for stack in stacks:
        src = AicSource(stack)
        info = load_model_info(stack.model)
        cands, _ = enumerate_candidates(info, gpu_counts)
        for c in cands:
            try:
                kv = src.kv_capacity_tokens(c)
                if kv <= 0:
                    continue
                ef = EngineFeatures.of(stack, c)
                isl = DISTILL_ISL[DISTILL_ISL <= info.max_context_tokens]
                t, f = ef.prefill(isl)
                rows.add("prefill", stack, _place(t, 0), f, src.prefill_ttft_ms(c, isl), "aic")
                b, ctx = (x.ravel() for x in np.meshgrid(DISTILL_BATCH, DISTILL_CONTEXT))
                keep = (ctx <= info.max_context_tokens) & (b * ctx <= 1.5 * kv) & (b >= c.attention_dp_size)
                b, ctx = b[keep], ctx[keep]
                if b.size:
                    t, f = ef.decode(b, ctx)
                    rows.add("decode", stack, _place(t, 1), f, src.decode_itl_ms(c, b, ctx), "aic")
                rows.add_kv(ef, float(kv))
            except SlaEstimateError as exc:
                skipped.append(
                    f"{stack.model} {stack.system}/{stack.backend} {c.name}: {str(exc).splitlines()[0][:120]}"
                )
    return rows.build(), skipped


# Node tables (``nodes.py``): AIC's answers at denser nodes than the training rows, kept in the file.
TABLE_ISL = np.unique(np.round(np.geomspace(64, 131072, 89)))  # 8 per octave (AIC is bumpy in ISL)
TABLE_BATCH = np.unique(np.round(np.geomspace(1, 2048, 45)))  # 4 per octave
TABLE_CONTEXT = np.unique(np.round(np.geomspace(128, 131072, 21)))  # 2 per octave


def workload_nodes(kv_tokens: int, dp: int, workloads: Iterable[tuple[int, int]]) -> tuple[set, set, set]:
    """(ISLs, decode contexts, batches) at which a profile of these (ISL, OSL) workloads decides.

    Prefill is compared at the workload ISL, decode along the sweep ``surfaces.decode_sweep`` visits:
    the concurrency levels up to what the KV cache holds, at context ISL + OSL / 2.
    """
    from ...spec import Spec
    from ...surfaces import concurrency_levels, max_concurrency_for

    defaults = {f.name: f.default for f in Spec.__dataclass_fields__.values()}
    points = 2 * int(defaults["num_decode_concurrencies"])
    isl, ctx, batch = set(), set(), set()
    for i, o in workloads:
        isl.add(float(i))
        ctx.add(float(i + o // 2))
        n_max = max_concurrency_for(kv_tokens, i + o, int(defaults["max_concurrency"]))
        if n_max >= dp:
            batch |= {float(b) for b in concurrency_levels(n_max, points, dp)}
    return isl, ctx, batch


def aic_tables(
    stacks: Iterable[Stack],
    gpu_counts: tuple[int, ...] = (1, 2, 4, 8),
    workloads: tuple[tuple[int, int], ...] = ((3000, 150),),
) -> dict[str, Any]:
    """AIC's TTFT, ITL and KV capacity of every engine of ``stacks`` at the table nodes, keyed by
    ``nodes.table_key`` (the rectangle of batch x context in full, so read-outs never extrapolate
    inside the KV limit); what AIC refuses is recorded with its reason."""
    from ...candidates import enumerate_candidates
    from ...model import load_model_info
    from ..aic import AicSource
    from .nodes import EngineTable, table_key

    out: dict[str, Any] = {}
    for stack in stacks:
        src = AicSource(stack)
        info = load_model_info(stack.model)
        cands, _ = enumerate_candidates(info, gpu_counts)
        for c in cands:
            key = table_key(stack, c.name)
            if key is None:
                continue
            got: dict[str, Any] = {"errors": {}}
            try:
                got["kv"] = int(src.kv_capacity_tokens(c))
            except SlaEstimateError as exc:
                got["errors"]["kv"] = _why(exc)
            isl_w, ctx_w, batch_w = workload_nodes(got.get("kv", 0), c.attention_dp_size, workloads)
            limit = info.max_context_tokens
            isl = np.union1d(TABLE_ISL, sorted(isl_w))
            isl = isl[isl <= limit]
            try:
                got["prefill"] = (isl, np.asarray(src.prefill_ttft_ms(c, isl), dtype=float))
            except SlaEstimateError as exc:
                got["errors"]["prefill"] = _why(exc)
            dp = c.attention_dp_size
            batch = np.union1d(np.union1d(TABLE_BATCH, [float(dp)]), sorted(batch_w))
            batch = batch[batch >= dp]
            ctx = np.union1d(TABLE_CONTEXT, sorted(ctx_w))
            ctx = ctx[ctx <= limit]
            try:
                b, x = np.meshgrid(batch, ctx, indexing="ij")
                itl = np.asarray(src.decode_itl_ms(c, b.ravel(), x.ravel()), dtype=float).reshape(b.shape)
                got["decode"] = (batch, ctx, itl)
            except SlaEstimateError as exc:
                got["errors"]["decode"] = _why(exc)
            for q in ("prefill", "decode"):
                if q in got and not (np.all(np.isfinite(got[q][-1])) and np.all(got[q][-1] > 0)):
                    got["errors"][q] = "AIC returned a non-positive or non-finite time"
                    del got[q]
            p, d = got.get("prefill"), got.get("decode")
            out[key] = EngineTable(
                p[0] if p else None, p[1] if p else None, d[0] if d else None, d[1] if d else None,
                d[2] if d else None, got.get("kv"), got["errors"],
            ).to_dict()  # fmt: skip
    return out


def _why(exc: Exception) -> str:
    return str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__


def aic_check_points(
    stacks: Iterable[Stack], tables: dict[str, Any], per_engine: tuple[int, int] = (12, 48), seed: int = 0
) -> list[dict[str, Any]]:
    """AIC at random points between the table nodes (log-uniform; decode within the KV cache), to
    measure how far the tables' read-out strays from AIC off the nodes."""
    from ...candidates import Candidate
    from ..aic import AicSource
    from .nodes import table_key

    rng = np.random.default_rng(seed)
    out: list[dict[str, Any]] = []
    for stack in stacks:
        src = None
        for key, t in tables.items():
            if not key.startswith(table_key(stack, "") or "\0"):
                continue
            c = Candidate.parse(key.rsplit("/", 1)[1])
            src = src or AicSource(stack)
            if "isl" in t:
                isl = np.round(np.exp(rng.uniform(np.log(t["isl"][0]), np.log(t["isl"][-1]), per_engine[0])))
                out.append({"key": key, "kind": "prefill", "isl": isl.tolist(),
                            "aic_ms": src.prefill_ttft_ms(c, isl).tolist()})  # fmt: skip
            kv = t.get("kv_capacity_tokens") or 0
            if "batch" in t and kv > 0:
                ctx = np.round(
                    np.exp(rng.uniform(np.log(t["context"][0]), np.log(t["context"][-1]), per_engine[1]))
                )
                top = np.minimum(t["batch"][-1], kv / ctx)
                ok = top > t["batch"][0]
                ctx, top = ctx[ok], top[ok]
                b = np.round(
                    np.exp(rng.uniform(np.log(t["batch"][0]), np.log(np.maximum(top, t["batch"][0]))))
                )
                if b.size:
                    out.append({"key": key, "kind": "decode", "batch": b.tolist(), "context": ctx.tolist(),
                                "aic_ms": src.decode_itl_ms(c, b, ctx).tolist()})  # fmt: skip
    return out
