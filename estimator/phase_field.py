"""Phase discrepancy field: the correction's misfit on prefill/decode probes as a smooth function of the inputs.

Why: the correction's form (a phase scale, a slope, a fixed step cost) misses a measured prefill or decode
curve in a pattern that is smooth over log ISL (prefill) or log batch and log context (decode), not in
independent noise per point. Treated as independent noise, a fit on 2 points per phase must say that an
unmeasured point next to a measured one is as uncertain as one far away, and that the measured points
themselves are uncertain by the whole discrepancy: bands too wide where we interpolate. As a Gaussian
process per (engine, kind) with hyperparameters learned from *other* deployments (``learn_kernel``, many
points each), the fit is generalised least squares and a prediction is universal kriging: close to a
measured point the band shrinks to the measurement noise, far from every point it grows to the field's
amplitude plus the parameters' extrapolation.

The kernel is scikit-learn's (``ConstantKernel * RBF + WhiteKernel``); its hyperparameters maximise the
summed log marginal likelihood of the residuals of each other deployment's engine and kind (each fitted on
all its points). The kriging itself is written out because it shares the points with the correction's
parameters (universal kriging: scikit-learn's regressor has no such term); with no parameter shared it
equals scikit-learn's ``GaussianProcessRegressor`` to round-off (``tests/test_phase_prior.py``).
Saved as JSON data (points, residuals, Jacobian rows, hyperparameters).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from scipy.optimize import minimize
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

# Inputs of each kind's field (log units): prefill TTFT over ISL, decode ITL over batch and context.
N_FEATURES = {"ttft": 1, "tpot": 2}


@dataclass(frozen=True, slots=True)
class KernelHyper:
    """One kind's field: amplitude (log sd), length scales over its inputs (log units), white noise (log sd)."""

    amplitude: float
    length: tuple[float, ...]
    white: float

    def k(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = (a[:, None, :] - b[None, :, :]) / np.asarray(self.length)
        return self.amplitude**2 * np.exp(-0.5 * np.sum(d**2, axis=-1))


def features(kind: str, isl: float, batch: float, context: float) -> np.ndarray:
    if kind == "ttft":
        return np.log([max(isl, 1.0)])
    return np.log([max(batch, 1.0), max(context, 1.0)])


@dataclass(frozen=True, slots=True)
class FieldPoint:
    engine: str
    kind: str
    isl: float
    batch: float
    context: float
    log_residual: float  # log(measured / parametric prediction) at the MAP
    noise_sd: float  # measurement spread of the point (log units)


class PhaseField:
    """Kriging of the phase residuals of one fit: per (engine, kind) a GP with hyperparameters ``hyper``.

    ``jacobian``: d log prediction / d parameter of the fitted points at the MAP (rows: points), for the
    universal-kriging variance (the parameters and the field explain the same points)."""

    def __init__(self, points: Sequence[FieldPoint], jacobian: np.ndarray, hyper: Mapping[str, KernelHyper]):
        self.points, self.hyper = tuple(points), dict(hyper)
        self.jacobian = np.asarray(jacobian, float).reshape(len(self.points), -1)
        self._groups: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, Any, np.ndarray, np.ndarray]] = {}
        for key in sorted({(p.engine, p.kind) for p in self.points}):
            idx = np.array([i for i, p in enumerate(self.points) if (p.engine, p.kind) == key])
            x = self._x([self.points[i] for i in idx])
            cf = cho_factor(self.covariance([self.points[i] for i in idx]))
            r = np.array([self.points[i].log_residual for i in idx])
            self._groups[key] = (idx, x, cf, cho_solve(cf, r), cho_solve(cf, self.jacobian[idx]))

    def _x(self, pts: Sequence[FieldPoint]) -> np.ndarray:
        return np.array([features(p.kind, p.isl, p.batch, p.context) for p in pts])

    def covariance(self, pts: Sequence[FieldPoint]) -> np.ndarray:
        """Covariance of the residuals of points of one (engine, kind): field + white + measurement noise."""
        h = self.hyper[pts[0].kind]
        x = self._x(pts)
        return h.k(x, x) + np.diag(h.white**2 + np.array([p.noise_sd for p in pts]) ** 2)

    def applies(self, kind: str) -> bool:
        return kind in self.hyper

    def mean(self, engine: str, kind: str, isl: float, batch: float, context: float) -> float:
        """Posterior mean of the log residual at one input (0 for an engine and kind never measured)."""
        group = self._groups.get((engine, kind))
        if group is None:
            return 0.0
        _, x, _, alpha, _ = group
        return float(self.hyper[kind].k(features(kind, isl, batch, context)[None, :], x)[0] @ alpha)

    def predict(self, engine: str, kind: str, isl: float, batch: float, context: float,
                grad: np.ndarray) -> tuple[float, float, np.ndarray]:  # fmt: skip
        """(mean, variance, adjusted gradient) of the log residual at one input, white noise included; the
        parameter part of the variance is ``h @ cov @ h`` with the adjusted gradient ``h``."""
        h = self.hyper[kind]
        group = self._groups.get((engine, kind))
        if group is None:  # no point of this engine and kind: the field's prior
            return 0.0, h.amplitude**2 + h.white**2, grad
        _, x, cf, alpha, cj = group
        ks = h.k(features(kind, isl, batch, context)[None, :], x)[0]
        var = h.amplitude**2 - float(ks @ cho_solve(cf, ks)) + h.white**2
        return float(ks @ alpha), max(var, 0.0), grad - ks @ cj

    def to_dict(self) -> dict[str, Any]:
        return {"hyper": {k: asdict(v) for k, v in self.hyper.items()}, "points": [asdict(p) for p in self.points],
                "jacobian": self.jacobian.tolist()}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PhaseField:
        hyper = {k: KernelHyper(float(v["amplitude"]), tuple(float(x) for x in v["length"]), float(v["white"]))
                 for k, v in d["hyper"].items()}  # fmt: skip
        pts = [FieldPoint(**p) for p in d["points"]]
        return cls(pts, np.asarray(d["jacobian"], float), hyper)


def learn_kernel(residuals: Sequence[Sequence[FieldPoint]], kind: str) -> tuple[KernelHyper, int]:
    """Hyperparameters of ``kind``'s field maximising the summed log marginal likelihood of several groups
    of residuals (each one engine's curve of another deployment, fitted on all its points); and the number
    of points behind them. Raises ValueError when no group has 3 points of the kind."""
    groups = [[p for p in g if p.kind == kind] for g in residuals]
    groups = [g for g in groups if len(g) >= 3]
    if not groups:
        raise ValueError(f"no residuals of kind {kind!r} to learn a discrepancy field from")
    nf = N_FEATURES[kind]
    kernel = (ConstantKernel(0.03**2, (1e-6, 1.0)) * RBF([1.0] * nf, (0.1, 20.0))
              + WhiteKernel(0.01**2, (1e-6, 0.1)))  # fmt: skip
    gps = []
    for g in groups:
        x = np.array([features(kind, p.isl, p.batch, p.context) for p in g])
        y = np.array([p.log_residual for p in g])
        noise = np.array([p.noise_sd for p in g]) ** 2
        gps.append(GaussianProcessRegressor(kernel, alpha=noise + 1e-10, optimizer=None).fit(x, y))

    def neg(theta: np.ndarray) -> tuple[float, np.ndarray]:
        vals = [gp.log_marginal_likelihood(theta, eval_gradient=True) for gp in gps]
        return -sum(v[0] for v in vals), -sum(v[1] for v in vals)

    bounds = kernel.bounds
    best = None
    for start in (kernel.theta, np.array([math.log(0.05**2)] + [math.log(3.0)] * nf + [math.log(0.005**2)])):
        res = minimize(neg, start, jac=True, method="L-BFGS-B", bounds=bounds)
        if best is None or res.fun < best.fun:
            best = res
    k = kernel.clone_with_theta(best.x)
    amp = math.sqrt(k.k1.k1.constant_value)
    length = tuple(float(v) for v in np.atleast_1d(k.k1.k2.length_scale))
    return KernelHyper(amp, length, math.sqrt(k.k2.noise_level)), sum(len(g) for g in groups)
