"""One exception tree for sla-estimate.

    SlaEstimateError
    ├── SpecError (also ValueError)      bad user input; names the field
    ├── SourceError                      a performance source failed
    │   ├── DataNotAvailable             the source has no data for this engine/point
    │   └── NotFittedError               a learned source was asked before fit/load
    ├── MeasurementError                 a runner could not measure
    │   ├── ProbeNotSupported            the runner cannot measure this probe (other engine, kind, model)
    │   ├── ImplausibleMeasurement       the client's numbers disagree with the server's own, twice
    │   ├── EngineStartError             engine did not come up (OOM, crash, not ready in time)
    │   │   └── ExactKvMismatch          the GPU runner's exact-KV attention disagrees with the stock one
    │   ├── EndpointError                the serving endpoint misbehaved
    │   │   ├── EndpointTimeout          no progress within the timeout
    │   │   └── BadResponse              HTTP error status or malformed stream
    │   └── DeploymentError              a Kubernetes object failed (unschedulable, CrashLoopBackOff)
    └── CalibrationError                 too few or inconsistent points to fit a correction

The CLI catches SlaEstimateError only: one line, exit code 2. Anything else is a bug.
"""

from __future__ import annotations


class SlaEstimateError(Exception):
    """Base of every error this package raises on purpose."""


class SpecError(SlaEstimateError, ValueError):
    """Invalid study input. The message names the field, the value and what is allowed."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class SourceError(SlaEstimateError):
    """A performance source failed for a reason other than missing data."""


class DataNotAvailable(SourceError):
    """The source cannot estimate this engine or point (missing kernel data, unsupported model)."""


class NotFittedError(SourceError):
    """A learned source (the regression) was asked for a prediction before ``fit`` or loading a model."""


class MeasurementError(SlaEstimateError):
    """A runner could not produce a measurement. ``probe`` is the point being measured, if any."""

    def __init__(self, message: str, probe: object | None = None):
        self.probe = probe
        super().__init__(message)


class ProbeNotSupported(MeasurementError):
    """The runner cannot measure this probe: another engine, probe kind or model than the one it runs.

    Raised before anything is measured, so no record is ever labelled with an engine it did not run.
    """


class ImplausibleMeasurement(MeasurementError):
    """The client's timing disagrees with the server's own metrics beyond the stated tolerance, also when
    measured again. ``measurement`` is the flagged record (kept aside, never calibrated on)."""

    def __init__(self, message: str, probe: object | None = None, measurement: object | None = None):
        self.measurement = measurement
        super().__init__(message, probe)


class EngineStartError(MeasurementError):
    """The engine process or pod did not become ready (out of memory, crash, timeout)."""


class ExactKvMismatch(EngineStartError):
    """The GPU runner's exact-KV attention gives other logits than transformers' stock attention (fp32)."""


class EndpointError(MeasurementError):
    """The serving endpoint answered badly or not at all."""


class EndpointTimeout(EndpointError):
    """The endpoint made no progress within the allowed time."""


class BadResponse(EndpointError):
    """HTTP error status, broken stream or malformed payload."""


class DeploymentError(MeasurementError):
    """A Kubernetes workload failed (unschedulable, OOMKilled, CrashLoopBackOff)."""


class CalibrationError(SlaEstimateError):
    """Calibration cannot be fitted from the given measurements."""
