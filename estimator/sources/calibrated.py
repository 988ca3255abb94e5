"""A performance source corrected by measurements: base source × fitted phase scales, with a band.

The correction (fitted in ``validate/calibrate.py``) writes every latency as

    y_ms = a_p(isl) * prefill_ms + a_d(batch, context) * decode_ms + step_ms * steps + overhead_ms * const

with ``log a_p = α_p + δ_p[engine] + β_isl log(isl/1024)`` and
``log a_d = α_d + δ_d[engine] + β_b log(batch/16) + β_c log(context/2048)``. Engines that were never
measured use the shared part only (δ = 0) and get a wider band. ``CalibratedSource`` implements the
full ``PerfSource`` contract, so selection, plots and artifacts run on it unchanged; measured KV
capacities replace the base source's estimate. Aggregated-serving predictions add a residual field
kriged from the measured agg points (``residual_gp.py``); the prefill/decode surfaces do not.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..candidates import Candidate
from ..errors import CalibrationError
from .base import PerfSource, as_positive_array
from .residual_gp import ResidualGP, is_agg

FORMAT_VERSION = 1
SHARED = (
    "alpha_prefill", "beta_isl", "alpha_decode", "beta_batch", "beta_context", "log_step_ms", "log_overhead_ms",
    "logit_burst", "logit_sync", "beta_burst_osl", "beta_sync_osl", "alpha_ttft",
)  # fmt: skip
ENGINE_PARAMS = ("delta_prefill", "delta_decode", "delta_ttft")  # per-engine offsets (log scale)
# Prior (mean, sd) of each shared parameter: raw estimates within a factor e, mild slopes, small overheads.
PRIOR = {
    "alpha_prefill": (0.0, 1.0),
    "beta_isl": (0.0, 0.25),
    "alpha_decode": (0.0, 1.0),
    "beta_batch": (0.0, 0.15),
    "beta_context": (0.0, 0.15),
    "log_step_ms": (math.log(0.5), 1.5),
    "log_overhead_ms": (math.log(5.0), 1.5),
    "logit_burst": (-1.0, 1.5),
    "logit_sync": (-1.0, 1.5),
    "alpha_ttft": (0.0, 0.3),  # agg TTFT beyond the phase scales (queueing the scheduler replay misses)
    "beta_burst_osl": (0.0, 1.0),
    "beta_sync_osl": (0.0, 1.0),
}
ENGINE_SD = 0.15  # prior sd of an engine's offset from the shared log-ratio
NOISE_PRIOR = {"ttft": 0.20, "tpot": 0.06}  # log-residual sd before data; pooled with the fit's residuals
NOISE_DOF = 4.0
BAND_Z = 1.6449  # 90 % two-sided band


@dataclass(frozen=True, slots=True)
class Target:
    """One measured value and the source terms it is made of (see the module docstring)."""

    engine: str
    kind: str  # "ttft" (prefill/agg TTFT) or "tpot" (decode ITL, agg TPOT)
    measured_ms: float
    prefill_ms: float
    decode_ms: float
    steps: float
    const: float
    isl: float
    batch: float
    context: float
    # agg only: the terms above are the staggered steady state; these the burst (all clients start
    # together, first wave counted) and the synchronised steady state (waves stay in step)
    osl: float = 1.0
    burst_prefill_ms: float | None = None
    burst_decode_ms: float | None = None
    burst_steps: float | None = None
    sync_prefill_ms: float | None = None
    sync_decode_ms: float | None = None
    sync_steps: float | None = None
    concurrency: float = 0.0  # agg only: clients of the probe (where the residual field is evaluated)

    def features(self) -> tuple[float, float, float]:
        return (
            math.log(self.isl / 1024.0),
            math.log(max(self.batch, 1.0) / 16.0),
            math.log(self.context / 2048.0),
        )


@dataclass
class Correction:
    """A fitted correction: parameters, their Laplace covariance and the noise per kind."""

    engines: tuple[str, ...]
    theta: np.ndarray
    cov: np.ndarray
    noise: dict[str, float]
    n_points: int
    data_hash: str
    meta: dict[str, Any] = field(default_factory=dict)
    residual: ResidualGP | None = None  # agg points only: kriging of what the parametric part leaves

    @property
    def names(self) -> list[str]:
        return list(SHARED) + [f"{p}[{e}]" for e in self.engines for p in ENGINE_PARAMS]

    # ---- evaluation -------------------------------------------------------------------------
    def scales(self, engine: str, isl: Any, batch: Any, context: Any, theta: np.ndarray | None = None):
        """(a_p, a_d, step_ms, overhead_ms) arrays for the inputs."""
        th = self.theta if theta is None else theta
        dp, dd, _ = self._offsets(engine, th)
        lp = th[0] + dp + th[1] * np.log(np.asarray(isl, float) / 1024.0)
        ld = (
            th[2]
            + dd
            + th[3] * np.log(np.maximum(np.asarray(batch, float), 1.0) / 16.0)
            + th[4] * np.log(np.asarray(context, float) / 2048.0)
        )
        return np.exp(lp), np.exp(ld), math.exp(th[5]), math.exp(th[6])

    def _offsets(self, engine: str, th: np.ndarray) -> tuple[float, ...]:
        if engine in self.engines:
            i = len(SHARED) + len(ENGINE_PARAMS) * self.engines.index(engine)
            return tuple(float(x) for x in th[i : i + len(ENGINE_PARAMS)])
        return (0.0,) * len(ENGINE_PARAMS)

    def predict(self, t: Target, theta: np.ndarray | None = None) -> float:
        """Prediction in ms; with ``theta`` given, the parametric part only (what the fit optimises)."""
        field_ = self._residual(t) if theta is None else None
        if field_ is not None:
            return self.predict(t, self.theta) * math.exp(field_[0])
        th = self.theta if theta is None else theta
        a_p, a_d, step, over = self.scales(t.engine, t.isl, t.batch, t.context, th)
        steady = a_p * t.prefill_ms + a_d * t.decode_ms + step * t.steps
        if t.burst_prefill_ms is None or t.sync_prefill_ms is None:
            return float(steady + over * t.const)
        lo = math.log(max(t.osl, 1.0) / 1024.0)
        z = np.array([0.0, th[7] + th[9] * lo, th[8] + th[10] * lo])
        w = np.exp(z - z.max())
        w /= w.sum()
        burst = a_p * t.burst_prefill_ms + a_d * t.burst_decode_ms + step * t.burst_steps
        sync = a_p * t.sync_prefill_ms + a_d * t.sync_decode_ms + step * t.sync_steps
        mix = w[0] * steady + w[1] * burst + w[2] * sync
        if t.kind == "ttft":
            mix *= math.exp(th[SHARED.index("alpha_ttft")] + self._offsets(t.engine, th)[2])
        return float(mix + over * t.const)

    def _residual(self, t: Target) -> tuple[float, float] | None:
        if self.residual is None or not is_agg(t.concurrency, t.burst_prefill_ms):
            return None
        return self.residual.predict(t.engine, t.kind, t.concurrency, t.isl, t.osl)

    def band(self, t: Target, z: float = BAND_Z) -> tuple[float, float, float]:
        """(point, low, high) in ms: Laplace posterior of the parameters plus noise of the kind."""
        mid = self.predict(t)
        grad = self._log_grad(t)
        field_ = self._residual(t)
        # where the residual field applies, its posterior variance replaces the parametric noise
        var = float(grad @ self.cov @ grad) + (field_[1] if field_ is not None else self.noise[t.kind] ** 2)
        if t.engine not in self.engines:  # unmeasured engine: its offset is only known through the prior
            var += ENGINE_SD**2
        half = z * math.sqrt(max(var, 0.0))
        return mid, mid * math.exp(-half), mid * math.exp(half)

    def _log_grad(self, t: Target, eps: float = 1e-4) -> np.ndarray:
        base = math.log(self.predict(t, self.theta))
        g = np.zeros_like(self.theta)
        for j in range(self.theta.size):
            th = self.theta.copy()
            th[j] += eps
            g[j] = (math.log(self.predict(t, th)) - base) / eps
        return g

    # ---- persistence ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "feature_names": ["log(isl/1024)", "log(batch/16)", "log(context/2048)"],
            "parameter_names": self.names,
            "engines": list(self.engines),
            "theta": self.theta.tolist(),
            "cov": self.cov.tolist(),
            "noise": self.noise,
            "n_points": self.n_points,
            "training_data_hash": self.data_hash,
            "meta": self.meta,
            "residual_points": self.residual.to_list() if self.residual is not None else [],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Correction:
        if d.get("format_version") != FORMAT_VERSION:
            raise CalibrationError(f"calibration format {d.get('format_version')!r} is not {FORMAT_VERSION}")
        c = cls(tuple(d["engines"]), np.asarray(d["theta"], float), np.asarray(d["cov"], float),
                {k: float(v) for k, v in d["noise"].items()}, int(d["n_points"]), d["training_data_hash"],
                dict(d.get("meta", {})), ResidualGP.from_list(d["residual_points"]) if d.get("residual_points") else None)  # fmt: skip
        if len(c.names) != c.theta.size or c.cov.shape != (c.theta.size, c.theta.size):
            raise CalibrationError("calibration file is inconsistent: parameter count does not match engines")
        return c


class CalibratedSource(PerfSource):
    """``base`` corrected by ``correction``; ``kv_tokens`` maps engine names to measured KV capacity."""

    name = "calibrated"

    def __init__(self, base: PerfSource, correction: Correction, kv_tokens: dict[str, int] | None = None):
        super().__init__(base.stack)
        self.base = base
        self.correction = correction
        self.kv_tokens = dict(kv_tokens or {})

    def _prefill_targets(self, candidate: Candidate, isl: np.ndarray) -> list[Target]:
        base = self.base.prefill_ttft_ms(candidate, isl)
        return [Target(candidate.name, "ttft", 0.0, float(p), 0.0, 1.0, 1.0, float(x), 1.0, float(x))
                for p, x in zip(base, isl, strict=True)]  # fmt: skip

    def _decode_targets(self, candidate: Candidate, batch: Any, context: Any) -> list[Target]:
        b, ctx = np.broadcast_arrays(as_positive_array("batch", batch), as_positive_array("context", context))
        base = self.base.decode_itl_ms(candidate, b, ctx)
        return [Target(candidate.name, "tpot", 0.0, 0.0, float(d), 1.0, 0.0, float(c), float(n), float(c))
                for d, n, c in zip(base, b, ctx, strict=True)]  # fmt: skip

    def prefill_ttft_ms(self, candidate: Candidate, isl: Any) -> np.ndarray:
        isl = as_positive_array("isl", isl)
        return np.array([self.correction.predict(t) for t in self._prefill_targets(candidate, isl)])

    def decode_itl_ms(self, candidate: Candidate, batch: Any, context: Any) -> np.ndarray:
        return np.array([self.correction.predict(t) for t in self._decode_targets(candidate, batch, context)])

    def prefill_ttft_band(self, candidate: Candidate, isl: Any) -> tuple[np.ndarray, np.ndarray]:
        bands = [
            self.correction.band(t) for t in self._prefill_targets(candidate, as_positive_array("isl", isl))
        ]
        return np.array([b[1] for b in bands]), np.array([b[2] for b in bands])

    def decode_itl_band(
        self, candidate: Candidate, batch: Any, context: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        bands = [self.correction.band(t) for t in self._decode_targets(candidate, batch, context)]
        return np.array([b[1] for b in bands]), np.array([b[2] for b in bands])

    def kv_capacity_tokens(self, candidate: Candidate) -> int:
        if candidate.name in self.kv_tokens:
            return int(self.kv_tokens[candidate.name])
        return self.base.kv_capacity_tokens(candidate)

    def provenance(self) -> dict[str, Any]:
        return {
            **super().provenance(),
            "base": self.base.provenance(),
            "calibration": {"n_points": self.correction.n_points, "engines": list(self.correction.engines),
                            "training_data_hash": self.correction.data_hash, **self.correction.meta},
            "measured_kv_tokens": self.kv_tokens,
        }  # fmt: skip

    # ---- persistence ------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the fitted correction (format version, feature names, data hash) as JSON."""
        doc = {**self.correction.to_dict(), "stack": self.stack.to_dict(), "base_source": self.base.name,
               "measured_kv_tokens": self.kv_tokens}  # fmt: skip
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(doc, indent=1, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path, base: PerfSource) -> CalibratedSource:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CalibrationError(f"cannot read calibration {path}: {exc}") from exc
        if doc.get("stack", {}).get("model") not in (None, base.stack.model):
            raise CalibrationError(
                f"calibration {path} is for {doc['stack']['model']}, not {base.stack.model}"
            )
        return cls(
            base, Correction.from_dict(doc), {k: int(v) for k, v in doc.get("measured_kv_tokens", {}).items()}
        )
