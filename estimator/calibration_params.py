"""Named parameters of the calibration model (``estimator/calibration.py``): no positional vectors.

The shared part (one deployment: model/system/backend) and one set of offsets per measured engine. The
fit works on a vector internally, but always through ``parameter_names`` and ``Parameters.from_values``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields

from .errors import CalibrationError


@dataclass(frozen=True, slots=True)
class SharedParameters:
    """Parameters shared by the engines of one deployment (log scale; defaults: the generic prior mean)."""

    alpha_prefill: float = 0.0
    beta_isl: float = 0.0
    alpha_decode: float = 0.0
    beta_batch: float = 0.0
    beta_context: float = 0.0
    log_step_ms: float = math.log(0.5)  # scheduler/sampling cost per engine step
    log_overhead_ms: float = math.log(5.0)  # per request: HTTP, tokenisation
    logit_burst: float = -1.0  # agg: weight of the burst regime (all clients start together)
    logit_sync: float = -1.0  # agg: weight of the synchronised steady state
    beta_burst_osl: float = 0.0
    beta_sync_osl: float = 0.0
    alpha_ttft: float = 0.0  # agg TTFT beyond the phase scales (queueing the scheduler replay misses)
    # log ratio of a prefill probe's fixed step cost to a decode step's (decode runs CUDA graphs and a
    # sampler per step, prefill one eager pass: the base source's fixed costs differ by phase)
    log_prefill_step: float = 0.0
    # log ratio of the prefill attention kernels' scale to the rest of prefill's (GEMMs, norms): attention's
    # share of a prefill grows with ISL, and a runner's attention can miss AIC's by another factor
    log_attention: float = 0.0


@dataclass(frozen=True, slots=True)
class EngineOffsets:
    """One engine's log offsets from the shared part (0 for an engine never measured)."""

    delta_prefill: float = 0.0
    delta_decode: float = 0.0
    delta_ttft: float = 0.0
    delta_step: float = 0.0  # engine-specific fixed cost per step (collectives of TP, launch overheads)


SHARED_NAMES = tuple(f.name for f in fields(SharedParameters))
ENGINE_NAMES = tuple(f.name for f in fields(EngineOffsets))
_NO_OFFSETS = EngineOffsets()


def parameter_names(engines: Sequence[str]) -> tuple[str, ...]:
    """Flat names of every parameter: the shared ones, then ``delta_*[engine]`` per engine."""
    return SHARED_NAMES + tuple(f"{p}[{e}]" for e in engines for p in ENGINE_NAMES)


@dataclass(frozen=True)
class Parameters:
    """The correction's parameters by name: a shared part and one set of offsets per measured engine."""

    shared: SharedParameters = field(default_factory=SharedParameters)
    engines: Mapping[str, EngineOffsets] = field(default_factory=dict)

    def offsets(self, engine: str) -> EngineOffsets:
        return self.engines.get(engine, _NO_OFFSETS)

    @property
    def names(self) -> tuple[str, ...]:
        return parameter_names(tuple(self.engines))

    def values(self) -> dict[str, float]:
        out = asdict(self.shared)
        for e, off in self.engines.items():
            out.update({f"{p}[{e}]": getattr(off, p) for p in ENGINE_NAMES})
        return out

    @classmethod
    def from_values(cls, values: Mapping[str, float], engines: Sequence[str]) -> Parameters:
        """From a name -> value mapping (every name of ``parameter_names(engines)`` must be present)."""
        missing = set(parameter_names(engines)) - set(values)
        if missing:
            raise CalibrationError(f"parameters missing: {sorted(missing)}")
        shared = SharedParameters(**{n: float(values[n]) for n in SHARED_NAMES})
        offs = {e: EngineOffsets(**{p: float(values[f"{p}[{e}]"]) for p in ENGINE_NAMES}) for e in engines}
        return cls(shared, offs)
