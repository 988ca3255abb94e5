"""One GPU's peaks (compute per precision, memory bandwidth and size, interconnect) as a typed record.

Why a record of its own: the regression source learns efficiency relative to these peaks, and a
fitted model file carries the records of the systems it was trained on, so answering from it never
reads AIC's files (nor imports its SDK). Unknown systems are read from AIC's system YAML through the
adapter (``sources.aic.system_hardware``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import cache
from typing import Any

from .errors import SourceError


@dataclass(frozen=True, slots=True)
class HardwareSpec:
    """Peaks of one GPU of ``system``: FLOP/s by precision, bytes/s, bytes; GPUs per node."""

    system: str
    bf16_flops: float
    fp8_flops: float
    fp4_flops: float  # 0 where the GPU has no FP4 tensor cores (H100/H200)
    mem_bw: float  # bytes/s
    mem_capacity: float  # bytes
    intra_node_bw: float  # bytes/s per GPU, one direction (NVLink)
    inter_node_bw: float
    gpus_per_node: int
    collective_latency_s: float  # p2p latency of one collective step

    def gemm_flops(self, gemm_quant: str) -> float:
        """Peak GEMM FLOP/s for a quantisation; weight-only int4 and missing FP4 fall back to the next."""
        if gemm_quant in ("nvfp4", "fp4", "mxfp4") and self.fp4_flops > 0:
            return self.fp4_flops
        if gemm_quant in ("fp8", "fp8_block", "nvfp4", "fp4", "mxfp4", "int8") and self.fp8_flops > 0:
            return self.fp8_flops
        return self.bf16_flops

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HardwareSpec:
        names = {f.name for f in fields(cls)}
        missing = names - set(d)
        if missing:
            raise SourceError(f"hardware record lacks {sorted(missing)}")
        return cls(**{k: d[k] for k in names})


@cache
def hardware_spec(system: str) -> HardwareSpec:
    """Read the peaks of ``system`` from AIC's system file (no SDK import). Raises DataNotAvailable."""
    from .sources.aic import system_hardware

    return HardwareSpec(**system_hardware(system))
