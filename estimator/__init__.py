"""Estimate prefill/decode surfaces, select engines under an SLA, write Dynamo-ready artifacts.

    from estimator import load_spec, estimate, write_artifacts
    profile = estimate(load_spec(model="Qwen/Qwen3-32B", system="h200_sxm", backend="vllm"))
    print(profile.selection.best_prefill, profile.selection.best_decode)
    write_artifacts(profile, "profiling_results")
"""

from .artifacts import write_artifacts
from .candidates import Candidate, Mapping
from .errors import DataNotAvailable, SlaEstimateError, SpecError
from .pipeline import Profile, estimate
from .select import Selection, select
from .sources import PerfSource, Stack, make_source
from .spec import Spec, load_spec

__all__ = [
    "Candidate",
    "DataNotAvailable",
    "Mapping",
    "PerfSource",
    "Profile",
    "Selection",
    "SlaEstimateError",
    "Spec",
    "SpecError",
    "Stack",
    "estimate",
    "load_spec",
    "make_source",
    "select",
    "write_artifacts",
]
