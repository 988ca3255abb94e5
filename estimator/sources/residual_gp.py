"""Kriging of what the phase correction leaves in aggregated-serving points.

Why: after the phase scales and arrival-regime mix are fitted, agg TTFT (and to a lesser degree TPOT)
still misses in a pattern that is smooth over the probe's inputs and shared by the engines of one
deployment (the benchmark client's arrival pattern, admission details the scheduler replay does not
know). A Gaussian process on the log residuals of the measured agg points, over (log concurrency,
log ISL, log OSL), carries that pattern to unmeasured inputs: one component shared by all engines,
one per engine. Far from every measured point its mean returns to 0 and its variance to the prior,
so it only corrects where measurements say something.

The hyperparameters are fixed (log units), not fitted per calibration: with 1-4 points per engine a
per-fit marginal-likelihood optimum is noise. Chosen on the silicon benchmark (docs/silicon_calibration.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# Per kind: sd of the shared and of the per-engine component, and the noise sd (log units); TTFT leaves a
# larger pattern than TPOT. Length scales of (log c, log ISL, log OSL): OSL matters least.
HYPER = {"ttft": (0.4, 0.2, 0.05), "tpot": (0.15, 0.08, 0.03)}
LENGTH_SCALES = (0.7, 0.7, 2.0)


@dataclass(frozen=True, slots=True)
class ResidualPoint:
    engine: str
    kind: str  # "ttft" or "tpot"
    concurrency: float
    isl: float
    osl: float
    log_residual: float  # log(measured / corrected prediction)


def _x(concurrency: float, isl: float, osl: float) -> np.ndarray:
    return np.log([max(concurrency, 1.0), max(isl, 1.0), max(osl, 1.0)]) / np.asarray(LENGTH_SCALES)


class ResidualGP:
    """Posterior of the log-residual field of one kind per deployment, from its measured agg points."""

    def __init__(self, points: list[ResidualPoint]):
        self.points = list(points)
        self._fit: dict[str, tuple[np.ndarray, list[str], np.ndarray, np.ndarray]] = {}
        for kind in sorted({p.kind for p in self.points}):
            ps = [p for p in self.points if p.kind == kind]
            x = np.array([_x(p.concurrency, p.isl, p.osl) for p in ps])
            engines = [p.engine for p in ps]
            k = self._kernel(kind, x, engines, x, engines) + HYPER[kind][2] ** 2 * np.eye(len(ps))
            chol = np.linalg.cholesky(k)
            alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, np.array([p.log_residual for p in ps])))
            self._fit[kind] = (x, engines, chol, alpha)

    @staticmethod
    def _kernel(kind: str, xa: np.ndarray, ea: list[str], xb: np.ndarray, eb: list[str]) -> np.ndarray:
        shared, engine, _ = HYPER[kind]
        d2 = ((xa[:, None, :] - xb[None, :, :]) ** 2).sum(-1)
        same = np.asarray(ea, dtype=object)[:, None] == np.asarray(eb, dtype=object)[None, :]
        return (shared**2 + engine**2 * same) * np.exp(-0.5 * d2)

    def predict(self, engine: str, kind: str, concurrency: float, isl: float, osl: float) -> tuple[float, float] | None:
        """(mean, variance) of the log residual at one agg input, noise included; None for a kind never measured."""
        if kind not in self._fit:
            return None
        shared, eng_sd, noise = HYPER[kind]
        x, engines, chol, alpha = self._fit[kind]
        xs = _x(concurrency, isl, osl)[None, :]
        ks = self._kernel(kind, xs, [engine], x, engines)[0]
        v = np.linalg.solve(chol, ks)
        return float(ks @ alpha), max(shared**2 + eng_sd**2 - float(v @ v), 0.0) + noise**2

    def to_list(self) -> list[dict[str, Any]]:
        return [
            {"engine": p.engine, "kind": p.kind, "concurrency": p.concurrency, "isl": p.isl, "osl": p.osl,
             "log_residual": p.log_residual}
            for p in self.points
        ]  # fmt: skip

    @classmethod
    def from_list(cls, rows: list[dict[str, Any]]) -> ResidualGP:
        return cls([ResidualPoint(str(r["engine"]), str(r["kind"]), float(r["concurrency"]), float(r["isl"]),
                                  float(r["osl"]), float(r["log_residual"])) for r in rows])  # fmt: skip


def is_agg(concurrency: float, burst_terms: Any) -> bool:
    """Agg targets carry the concurrency and the burst terms; prefill/decode probes do not."""
    return burst_terms is not None and concurrency >= 1 and math.isfinite(concurrency)
