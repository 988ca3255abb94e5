"""What to deploy: worker groups (role, engine, replicas) of one serving mode.

This is the hand-over between the decision (``select.py`` for one prefill + one decode engine,
``capacity.py`` for a sized fleet) and the artifacts that render it (``artifacts/``): the decision
never builds YAML, and the renderers never choose engines.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .candidates import Candidate


class ServingMode(str, enum.Enum):
    AGG = "agg"  # every worker prefills and decodes (in-flight batching)
    DISAGG = "disagg"  # prefill workers hand KV caches to decode workers


class WorkerRole(str, enum.Enum):
    PREFILL = "prefill"
    DECODE = "decode"
    AGG = "agg"


@dataclass(frozen=True, slots=True)
class WorkerGroup:
    """``replicas`` identical engines of one candidate in one role."""

    role: WorkerRole
    candidate: Candidate
    replicas: int = 1

    @property
    def num_gpus(self) -> int:
        return self.candidate.num_gpus * self.replicas


@dataclass(frozen=True, slots=True)
class Deployment:
    """One deployable fleet: agg (one AGG group) or disagg (one PREFILL and one DECODE group)."""

    mode: ServingMode
    workers: tuple[WorkerGroup, ...]

    def __post_init__(self) -> None:
        roles = sorted(w.role.value for w in self.workers)
        expected = ["agg"] if self.mode is ServingMode.AGG else ["decode", "prefill"]
        if roles != expected:
            raise ValueError(f"a {self.mode.value} deployment needs worker roles {expected}, got {roles}")
        if any(w.replicas < 1 for w in self.workers):
            raise ValueError("every worker group needs at least one replica")

    @property
    def total_gpus(self) -> int:
        return sum(w.num_gpus for w in self.workers)

    def group(self, role: WorkerRole) -> WorkerGroup | None:
        return next((w for w in self.workers if w.role is role), None)

    @classmethod
    def disagg(cls, prefill: Candidate, decode: Candidate, prefill_replicas: int = 1, decode_replicas: int = 1):
        return cls(
            ServingMode.DISAGG,
            (
                WorkerGroup(WorkerRole.PREFILL, prefill, prefill_replicas),
                WorkerGroup(WorkerRole.DECODE, decode, decode_replicas),
            ),
        )

    @classmethod
    def agg(cls, engine: Candidate, replicas: int = 1):
        return cls(ServingMode.AGG, (WorkerGroup(WorkerRole.AGG, engine, replicas),))


__all__ = ["Deployment", "ServingMode", "WorkerGroup", "WorkerRole"]
