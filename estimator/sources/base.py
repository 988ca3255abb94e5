"""The performance-source contract every estimator of engine speed implements.

A source answers three questions for one serving stack (model, system, backend, quantisation)
and one candidate engine (parallel mapping on n GPUs), vectorised over numpy arrays:

- ``prefill_ttft_ms(candidate, isl)``: time to first token of one request at batch 1, ms;
- ``decode_itl_ms(candidate, batch, context)``: one decode step with ``batch`` requests in the
  engine (all attention-DP ranks together) at mean context ``context`` tokens, ms;
- ``kv_capacity_tokens(candidate)``: KV-cache tokens the whole engine holds (0 if weights do not fit).

and, for the same inputs, a 90 % band ``(low, high)`` of arrays of the same shape:

- ``prefill_ttft_band(candidate, isl)`` and ``decode_itl_band(candidate, batch, context)``.

and joint draws of several latencies at once, ``latency_draws(queries, n, rng)`` (``LatencyQuery``: a TTFT or
an ITL of one engine), for decisions that compare engines or combine targets. The default knows nothing
beyond the bands: each engine and phase gets one lognormal quantile from its band, shared by its points,
independent of every other engine and phase (``draws_are_joint`` False). A source that knows how its errors
move together (a calibration: one scale per phase shared by the engines) overrides it and says so.

and the marginal probability of meeting a target, ``prob_within(queries, targets_ms)``, which the
``--confidence`` rule and the report use. The default reads each band as a lognormal through its ends
(``estimator/confidence.py``); a source whose predictive has another shape (a calibration: Student-t
tails) answers with its exact CDF, so a decision certified at level L has P >= L under the source's own
model, the one its joint draws sample.

Every source answers the bands through this one interface (surfaces, selection and capacity planning
never ask which source they hold): a raw model (AIC, roofline) has zero width, a regression its
prediction interval, a calibration its posterior. Unsupported engines raise ``DataNotAvailable``, never NaN.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from ..candidates import Candidate
from ..errors import DataNotAvailable, SourceError


@dataclass(frozen=True, slots=True)
class Stack:
    """What is served: a model on a system with a backend and its version and quantisation."""

    model: str
    system: str
    backend: str
    backend_version: str | None = None
    gemm_quant: str | None = None
    kvcache_quant: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_spec(cls, spec: Any) -> Stack:
        return cls(
            model=spec.model,
            system=spec.system,
            backend=spec.backend.value if hasattr(spec.backend, "value") else str(spec.backend),
            backend_version=spec.backend_version,
            gemm_quant=spec.gemm_quant,
            kvcache_quant=spec.kvcache_quant,
        )


@dataclass(frozen=True, slots=True)
class LatencyQuery:
    """One latency to draw: the TTFT of ``candidate`` at ``isl`` (``kind`` "ttft", batch 1), or one decode
    step of ``batch`` requests at ``context`` tokens (``kind`` "itl")."""

    kind: Literal["ttft", "itl"]
    candidate: Candidate
    isl: float = 1.0
    batch: float = 1.0
    context: float = 1.0

    @classmethod
    def ttft(cls, candidate: Candidate, isl: float) -> LatencyQuery:
        return cls("ttft", candidate, isl=float(isl))

    @classmethod
    def itl(cls, candidate: Candidate, batch: float, context: float) -> LatencyQuery:
        return cls("itl", candidate, batch=float(batch), context=float(context))


def group_queries(queries: Sequence[LatencyQuery]) -> dict[tuple[Candidate, str], list[int]]:
    """Indices of ``queries`` per (engine, kind), so each group is one vectorised source call; an unknown
    kind raises ``SourceError``."""
    groups: dict[tuple[Candidate, str], list[int]] = {}
    for i, q in enumerate(queries):
        if q.kind not in ("ttft", "itl"):
            raise SourceError(f"unknown latency kind {q.kind!r} (ttft or itl)")
        groups.setdefault((q.candidate, q.kind), []).append(i)
    return groups


def as_positive_array(name: str, values: Any) -> np.ndarray:
    """1-D float array of finite values ≥ 1 (tokens, batch sizes)."""
    arr = np.atleast_1d(np.asarray(values, dtype=float))
    if arr.ndim != 1:
        raise SourceError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and (not np.all(np.isfinite(arr)) or arr.min() < 1):
        raise SourceError(f"{name} must hold finite values >= 1")
    return arr


class PerfSource(ABC):
    """Base of AIC, roofline, regression and calibrated sources. Constructors only store arguments."""

    name: ClassVar[str] = "base"
    supports_moe: ClassVar[bool] = True

    def __init__(self, stack: Stack):
        self.stack = stack

    # ---- the contract -------------------------------------------------------------------------
    @abstractmethod
    def prefill_ttft_ms(self, candidate: Candidate, isl: Any) -> np.ndarray:
        """TTFT in ms of one request per ISL (array of shape (n,)), batch 1, no prefix reuse."""

    @abstractmethod
    def decode_itl_ms(self, candidate: Candidate, batch: Any, context: Any) -> np.ndarray:
        """ITL in ms for each (batch, context) pair (arrays of shape (n,), broadcast)."""

    @abstractmethod
    def kv_capacity_tokens(self, candidate: Candidate) -> int:
        """KV-cache capacity of the whole engine in tokens; 0 when the weights do not fit."""

    def prefill_attention_ms(self, candidate: Candidate, isl: Any) -> np.ndarray:
        """The attention kernels' part of ``prefill_ttft_ms`` per ISL, ms. Why: a calibration scales it
        apart from the rest (its share grows with ISL). Default: a source that does not split it, 0."""
        return np.zeros(as_positive_array("isl", isl).shape)

    # ---- bands (part of the contract; this default is a raw model's zero width) ----------------
    def prefill_ttft_band(self, candidate: Candidate, isl: Any) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) 90 % TTFT band in ms per ISL. A source that knows its uncertainty overrides this."""
        v = self.prefill_ttft_ms(candidate, isl)
        return v, v

    def decode_itl_band(
        self, candidate: Candidate, batch: Any, context: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) 90 % ITL band in ms per (batch, context). A source that knows its uncertainty overrides this."""
        v = self.decode_itl_ms(candidate, batch, context)
        return v, v

    # ---- joint draws (part of the contract; this default: independent engines, see the module doc) ----
    draws_are_joint: ClassVar[bool] = False  # True: latency_draws carries the dependence between queries

    def latency_draws(self, queries: Sequence[LatencyQuery], n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` joint draws (rows) of every query's latency in ms (columns), shape (n, len(queries)).

        Default: each query's band read as a lognormal (``estimator/confidence.py``); one standard-normal
        quantile per (engine, kind), shared by that engine's queries of that kind, independent otherwise.
        Zero-width bands give the point value in every draw.
        """
        from ..confidence import band_draws

        lows, highs = self.query_bands(queries)
        groups = [(q.candidate.name, q.kind) for q in queries]
        return band_draws(lows, highs, groups, n, rng)

    def prob_within(self, queries: Sequence[LatencyQuery], targets_ms: Any) -> np.ndarray:
        """P(latency <= target) of each query on its own (one target per query, or one for all), shape
        (len(queries),). Default: the query's band read as a lognormal through its 5 %/95 % ends; a
        zero-width band gives the point rule (1 within the target, else 0)."""
        from ..confidence import prob_within

        targets = np.broadcast_to(np.asarray(targets_ms, dtype=float), (len(queries),))
        lows, highs = self.query_bands(queries)
        return prob_within(targets, lows, highs)

    def query_bands(self, queries: Sequence[LatencyQuery]) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) 90 % band of each query, asked per (engine, kind) in one vectorised call."""
        lows, highs = np.empty(len(queries)), np.empty(len(queries))
        for (cand, kind), idx in group_queries(queries).items():
            qs = [queries[i] for i in idx]
            if kind == "ttft":
                lo, hi = self.prefill_ttft_band(cand, [q.isl for q in qs])
            else:
                lo, hi = self.decode_itl_band(cand, [q.batch for q in qs], [q.context for q in qs])
            lows[idx], highs[idx] = lo, hi
        return lows, highs

    def provenance(self) -> dict[str, Any]:
        """Where the numbers come from (source name, versions, data)."""
        return {"source": self.name, "stack": self.stack.to_dict()}

    def source_spec(self) -> str:
        """What ``make_source`` rebuilds this source from (a calibration file records it)."""
        return self.name

    def check_supported(self, candidate: Candidate) -> None:
        if candidate.mapping.value != "TP" and not self.supports_moe:
            raise DataNotAvailable(f"{self.name} source does not model MoE mapping {candidate.name}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.stack})"
