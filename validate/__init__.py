"""Plan real measurements, run them with a runner, calibrate the estimated surfaces.

    from validate import run_validation
    profile, result = run_validation(spec)   # spec.validate names the runner and its options
"""

from .calibrate import calibrate
from .calibration_report import calibration_report
from estimator.measurements import Measurement, MeasurementStore, Probe, ProbeKind
from .plan import plan_probes
from .run import run_plan
from .runners import Runner, make_runner
from .workflow import run_validation

__all__ = [
    "Measurement",
    "MeasurementStore",
    "Probe",
    "ProbeKind",
    "Runner",
    "calibrate",
    "calibration_report",
    "make_runner",
    "plan_probes",
    "run_plan",
    "run_validation",
]
