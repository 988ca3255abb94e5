"""Residual field: a Gaussian process over what the phase correction leaves in aggregated-serving points.

Why: after the phase scales and arrival-regime mix are fitted, agg TTFT (and to a lesser degree TPOT)
still misses in a pattern that is smooth over the probe's inputs and shared by the engines of one
deployment (the benchmark client's arrival pattern, admission details the scheduler replay does not
know). scikit-learn's ``GaussianProcessRegressor`` on the log residuals of the measured agg points, over
(log concurrency, log ISL, log OSL), carries that pattern to unmeasured inputs: one component shared by
all engines plus one per engine (an RBF over one-hot engine coordinates that only matches an engine
with itself). Far from every measured point its mean returns to 0 and its variance to the prior, so it
only corrects where measurements say something.

The hyperparameters are fixed (log units), not fitted per calibration: with 1-4 points per engine a
per-fit marginal-likelihood optimum is noise. Chosen on the silicon benchmark (docs/silicon_calibration.md).
Saved as JSON data (points and hyperparameters); loading refits the same GP.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel

# Per kind: sd of the shared and of the per-engine component, and the noise sd (log units); TTFT leaves a
# larger pattern than TPOT. Length scales of (log c, log ISL, log OSL): OSL matters least.
HYPER = {"ttft": (0.4, 0.2, 0.05), "tpot": (0.15, 0.08, 0.03)}
LENGTH_SCALES = (0.7, 0.7, 2.0)
_IGNORE, _MATCH = 1e9, 1e-3  # length scales of the engine coordinates: ignored / only equal engines match


@dataclass(frozen=True, slots=True)
class ResidualPoint:
    engine: str
    kind: str  # "ttft" or "tpot"
    concurrency: float
    isl: float
    osl: float
    log_residual: float  # log(measured / corrected prediction)


class ResidualField:
    """Posterior of the log-residual field of each kind for one deployment, from its measured agg points."""

    def __init__(self, points: list[ResidualPoint]):
        self.points = tuple(points)
        self._gps: dict[str, tuple[GaussianProcessRegressor, tuple[str, ...]]] = {}
        for kind in sorted({p.kind for p in self.points}):
            ps = [p for p in self.points if p.kind == kind]
            engines = tuple(sorted({p.engine for p in ps}))
            shared, engine_sd, noise = HYPER[kind]
            n = len(engines)
            k = ConstantKernel(shared**2, "fixed") * RBF([1.0] * 3 + [_IGNORE] * n, "fixed") + ConstantKernel(
                engine_sd**2, "fixed"
            ) * RBF([1.0] * 3 + [_MATCH] * n, "fixed")
            gp = GaussianProcessRegressor(k, alpha=noise**2, optimizer=None, normalize_y=False)
            gp.fit(np.array([_x(p.engine, p.concurrency, p.isl, p.osl, engines) for p in ps]),
                   np.array([p.log_residual for p in ps]))  # fmt: skip
            self._gps[kind] = (gp, engines)

    def predict(
        self, engine: str, kind: str, concurrency: float, isl: float, osl: float
    ) -> tuple[float, float] | None:
        """(mean, variance) of the log residual at one agg input, noise included; None for a kind never measured."""
        if kind not in self._gps:
            return None
        gp, engines = self._gps[kind]
        mean, std = gp.predict(_x(engine, concurrency, isl, osl, engines)[None, :], return_std=True)
        return float(mean[0]), float(std[0]) ** 2 + HYPER[kind][2] ** 2

    def to_dict(self) -> dict[str, Any]:
        return {"hyper": {k: list(v) for k, v in HYPER.items()}, "length_scales": list(LENGTH_SCALES),
                "points": [asdict(p) for p in self.points]}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ResidualField:
        if {k: tuple(v) for k, v in d["hyper"].items()} != HYPER or tuple(
            d["length_scales"]
        ) != LENGTH_SCALES:
            raise ValueError("residual field was fitted with other hyperparameters")
        return cls([ResidualPoint(str(r["engine"]), str(r["kind"]), float(r["concurrency"]), float(r["isl"]),
                                  float(r["osl"]), float(r["log_residual"])) for r in d["points"]])  # fmt: skip


def _x(engine: str, concurrency: float, isl: float, osl: float, engines: tuple[str, ...]) -> np.ndarray:
    scaled = np.log([max(concurrency, 1.0), max(isl, 1.0), max(osl, 1.0)]) / np.asarray(LENGTH_SCALES)
    return np.concatenate([scaled, [1.0 if engine == e else 0.0 for e in engines]])
