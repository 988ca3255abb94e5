"""What capacity planning takes and gives: SLA targets, the load, a priced fleet with its margins."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .capacity_model import STATS, Latency
from .deployment import Deployment
from .errors import SpecError


@dataclass(frozen=True, slots=True)
class Target:
    """``metric`` (ttft | itl) at ``stat`` (mean | p50 | p90 | p99) must stay <= ``ms``."""

    metric: str
    stat: str
    ms: float

    def __post_init__(self) -> None:
        if self.metric not in ("ttft", "itl") or self.stat not in STATS:
            raise SpecError("sla", f"unknown target {self.metric}-{self.stat}")
        if not (self.ms > 0 and math.isfinite(self.ms)):
            raise SpecError(f"{self.metric}_{self.stat}", f"must be a positive number, got {self.ms!r}")

    @property
    def name(self) -> str:
        return f"{self.metric}_{self.stat}"


@dataclass(frozen=True, slots=True)
class Sla:
    """Targets every fleet must meet with ``headroom`` to spare (0.1: predicted <= 90 % of each target)."""

    targets: tuple[Target, ...]
    headroom: float = 0.0

    @classmethod
    def means(cls, ttft_ms: float, itl_ms: float, headroom: float = 0.0) -> Sla:
        return cls((Target("ttft", "mean", ttft_ms), Target("itl", "mean", itl_ms)), headroom)

    def of(self, metric: str) -> tuple[Target, ...]:
        return tuple(t for t in self.targets if t.metric == metric)

    def needs_percentiles(self, metric: str) -> bool:
        return any(t.stat != "mean" for t in self.of(metric))

    def margins(self, ttft: Latency | None, itl: Latency | None) -> dict[str, float]:
        """1 - predicted / target per target (> 0: room to spare)."""
        out = {}
        for t in self.targets:
            lat = ttft if t.metric == "ttft" else itl
            v = lat.at(t.stat) if lat is not None else math.inf
            out[t.name] = 1.0 - v / t.ms if math.isfinite(v) else -math.inf
        return out

    def met(self, metric: str, lat: Latency | None) -> bool:
        if lat is None:
            return False
        return all(lat.at(t.stat) <= t.ms * (1.0 - self.headroom) for t in self.of(metric))


@dataclass(frozen=True, slots=True)
class Load:
    """Exactly one of: a request rate (req/s), a number of concurrent clients, a GPU budget."""

    request_rate: float | None = None
    concurrency: int | None = None
    gpu_budget: int | None = None

    def __post_init__(self) -> None:
        given = [v for v in (self.request_rate, self.concurrency, self.gpu_budget) if v is not None]
        if len(given) != 1:
            raise SpecError("load", "give exactly one of --request-rate, --concurrency, --gpu-budget")
        if not (given[0] > 0 and math.isfinite(given[0])):
            raise SpecError("load", f"must be a positive number, got {given[0]!r}")

    @property
    def kind(self) -> str:
        if self.request_rate is not None:
            return "request_rate"
        return "concurrency" if self.concurrency is not None else "gpu_budget"

    def describe(self) -> str:
        if self.request_rate is not None:
            return f"{self.request_rate:g} requests/s"
        if self.concurrency is not None:
            return f"{self.concurrency} concurrent clients"
        return f"a budget of {self.gpu_budget} GPUs"


@dataclass(frozen=True, slots=True)
class GroupLoad:
    """One worker group at the fleet's load: mean decode batch per engine, busy fraction."""

    role: str
    candidate: str
    replicas: int
    gpus_per_engine: int
    mean_batch: float
    utilisation: float


@dataclass(frozen=True, slots=True)
class Fleet:
    deployment: Deployment
    request_rate: float  # requests/s it serves (for a GPU budget: the most it sustains)
    ttft: Latency
    itl: Latency
    margins: dict[str, float]
    meets_sla: bool
    usd_per_hour: float
    usd_per_million_output_tokens: float
    groups: tuple[GroupLoad, ...]
    p_meets_sla: float | None = None  # P(every target met) over the source's draws (plan --confidence)

    @property
    def mode(self) -> str:
        return self.deployment.mode.value

    @property
    def total_gpus(self) -> int:
        return self.deployment.total_gpus

    @property
    def min_margin(self) -> float:
        return min(self.margins.values()) if self.margins else 0.0

    def label(self) -> str:
        return " + ".join(f"{g.replicas} x {g.candidate}" + ("" if g.role == "agg" else f" {g.role}")
                          for g in self.groups)  # fmt: skip

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "label": self.label(),
            "engines": [
                {
                    "role": g.role,
                    "candidate": g.candidate,
                    "replicas": g.replicas,
                    "gpus_each": g.gpus_per_engine,
                    "mean_batch": g.mean_batch,
                    "utilisation": g.utilisation,
                }
                for g in self.groups
            ],
            "total_gpus": self.total_gpus,
            "request_rate": self.request_rate,
            "usd_per_hour": self.usd_per_hour,
            "usd_per_million_output_tokens": self.usd_per_million_output_tokens,
            "meets_sla": self.meets_sla,
            "ttft_ms": self.ttft.to_dict(),
            "itl_ms": self.itl.to_dict(),
            "margins": dict(self.margins),
            "p_meets_sla": self.p_meets_sla,
        }


__all__ = ["Fleet", "GroupLoad", "Load", "Sla", "Target"]
