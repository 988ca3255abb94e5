"""Runner: the one interface every way of measuring implements (replay, endpoint, local, k8s, gpu).

``measure(probe) -> Measurement``. ``close()`` (or leaving the ``with`` block) tears down whatever
the runner started: an engine process, a Kubernetes deployment, a model on the GPU. Planning and
calibration never know which runner they use. Failures raise ``MeasurementError`` subclasses.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from estimator.measurements import Measurement, Probe, ProbeKind


class Runner(ABC):
    """Measures probes on one kind of real (or recorded) engine."""

    name: ClassVar[str] = "base"
    kinds: ClassVar[frozenset[ProbeKind]] = frozenset(ProbeKind)  # probe kinds this runner can measure

    @abstractmethod
    def measure(self, probe: Probe) -> Measurement:
        """Measure one probe. Raises MeasurementError (or a subclass) on failure."""

    def close(self) -> None:
        """Release what the runner started. Idempotent."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
