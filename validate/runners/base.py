"""Runner: the one interface every way of measuring implements (replay, endpoint, local, k8s, gpu).

``measure(probe) -> Measurement``. ``close()`` (or leaving the ``with`` block) tears down whatever
the runner started: an engine process, a Kubernetes deployment, a model on the GPU. Failures raise
``MeasurementError`` subclasses.

The capability contract: every runner says what it can measure (``capabilities()``: probe kinds,
candidate engines, models) and ``can_measure(probe)`` gives the reason it cannot, or None. Planning
asks before it plans a point; ``measure`` refuses a probe it cannot measure with ``ProbeNotSupported``
before measuring anything, so a record is never labelled with an engine the runner did not run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from estimator.candidates import Candidate
from estimator.errors import ProbeNotSupported
from estimator.measurements import Measurement, Probe, ProbeKind
from estimator.model import model_key


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What one runner can measure. ``None`` means any (the runner starts whatever is asked).

    ``candidates``: the engines it can run (an endpoint: the one it points at; a GPU runner: the TP
    size it has GPUs for); ``max_gpus``: the most GPUs one engine may take (a local machine's GPUs, a
    node for a plain Kubernetes Deployment); ``models``: the models it runs, compared by
    ``estimator.model.model_key`` (an alias, a path or a cache snapshot of the same id match); ``why``:
    where the candidate limits come from, for messages (e.g. "runner option candidate=TP2");
    ``models_why``: where the model limit comes from, and how to correct it; ``gemm_quants`` /
    ``kv_quants``: the weight and KV-cache quantisations it runs (``Stack.gemm_quant`` /
    ``kvcache_quant`` values, None for the model's default), ``quants_why`` why, for messages.
    """

    kinds: frozenset[ProbeKind]
    candidates: frozenset[Candidate] | None = None
    models: frozenset[str] | None = None
    why: str = ""
    max_gpus: int | None = None
    models_why: str = ""
    gemm_quants: frozenset[str | None] | None = None
    kv_quants: frozenset[str | None] | None = None
    quants_why: str = ""

    def refusal(self, probe: Probe) -> str | None:
        """Why ``probe`` is outside these capabilities, or None."""
        if probe.kind not in self.kinds:
            kinds = ", ".join(sorted(k.value for k in self.kinds)) or "no"
            return f"measures {kinds} probes, not {probe.kind.value}"
        if self.candidates is not None and not self.candidates:
            return f"knows of no engine it can measure ({self.why})"
        if self.candidates is not None and probe.candidate not in self.candidates:
            have = ", ".join(sorted(c.name for c in self.candidates)) or "no engine"
            why = f" ({self.why})" if self.why else ""
            return f"runs {have}{why}, not {probe.candidate.name}"
        if self.max_gpus is not None and probe.candidate.num_gpus > self.max_gpus:
            why = f" ({self.why})" if self.why else ""
            gpus = f"{self.max_gpus} GPU" + ("s" if self.max_gpus != 1 else "")
            return f"gives one engine at most {gpus}{why}; {probe.candidate.name} needs more"
        known = {model_key(m) for m in self.models} if self.models is not None else None
        if known is not None and model_key(probe.stack.model) not in known:
            why = f" ({self.models_why})" if self.models_why else ""
            return f"runs {', '.join(sorted(self.models))}{why}, not {probe.stack.model}"
        for name, value, runs in (("gemm_quant", probe.stack.gemm_quant, self.gemm_quants),
                                  ("kvcache_quant", probe.stack.kvcache_quant, self.kv_quants)):  # fmt: skip
            if runs is not None and value not in runs:
                why = f" ({self.quants_why})" if self.quants_why else ""
                have = " or ".join(sorted(q or "the model's default" for q in runs))
                return f"runs {name} {have}{why}, not {value or 'the default'}"
        return None


class Runner(ABC):
    """Measures probes on one kind of real (or recorded) engine."""

    name: ClassVar[str] = "base"
    kinds: ClassVar[frozenset[ProbeKind]] = frozenset(ProbeKind)  # probe kinds this runner can measure

    def capabilities(self) -> Capabilities:
        """What this runner can measure; the default: every kind in ``kinds``, any candidate and model."""
        return Capabilities(frozenset(self.kinds))

    def can_measure(self, probe: Probe) -> str | None:
        """The reason this runner cannot measure ``probe``, or None if it can. Measures nothing."""
        return self.capabilities().refusal(probe)

    def require(self, probe: Probe) -> None:
        """Raise ``ProbeNotSupported`` unless this runner can measure ``probe``; every ``measure`` starts here."""
        reason = self.can_measure(probe)
        if reason is not None:
            raise ProbeNotSupported(
                f"the {self.name} runner cannot measure {probe.kind.value} {probe.candidate.name} "
                f"(isl {probe.isl}, concurrency {probe.concurrency}): it {reason}",
                probe,
            )

    @abstractmethod
    def measure(self, probe: Probe) -> Measurement:
        """Measure one probe (after ``require``). Raises MeasurementError (or a subclass) on failure."""

    def close(self) -> None:
        """Release what the runner started. Idempotent."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
