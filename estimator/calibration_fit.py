"""Fitting the calibration model (``estimator/calibration.py``): MAP, Laplace posterior, data-driven noise.

The fit is the MAP of a Gaussian model on log residuals (robust soft-L1 loss) with a Gaussian prior on
every named parameter. The variance of each point is its measurement spread (the runner's repetitions)
plus a model discrepancy per kind (TTFT, per-token time), in one of two forms:
- independent noise per point, estimated from the points themselves: cross-validated (each fold
  predicted from the others) or, with ``cv_folds=0``, the residuals over their degrees of freedom with
  the prior's guess worth ``discrepancy_weight`` points; Student-t tails for those degrees of freedom;
- with ``Prior.phase_kernel`` (learned from other deployments, ``estimator/phase_prior.py``) and only
  prefill/decode points: a smooth discrepancy field per engine and kind (``estimator/phase_field.py``),
  fitted by generalised least squares; the band is then universal kriging, narrow next to a measured
  point and wide where the fit extrapolates.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy.optimize import least_squares
from scipy.stats import t as student_t

from .calibration import (
    ENGINE_NAMES,
    KINDS,
    SHARED_NAMES,
    Correction,
    Noise,
    Observation,
    Parameters,
    SharedParameters,
    parameter_names,
    predict_ms,
)
from .calibration_vector import VectorModel
from .errors import CalibrationError
from .phase_field import FieldPoint, KernelHyper, PhaseField
from .sources.residual_gp import ResidualField, ResidualPoint

# Generic prior (mean, sd) of each shared parameter: raw estimates within a factor e, mild slopes, small overheads.
GENERIC_SHARED = {
    "alpha_prefill": (0.0, 1.0),
    "beta_isl": (0.0, 0.25),
    "alpha_decode": (0.0, 1.0),
    "beta_batch": (0.0, 0.15),
    "beta_context": (0.0, 0.15),
    "log_step_ms": (math.log(0.5), 1.5),
    "log_overhead_ms": (math.log(5.0), 1.5),
    "logit_burst": (-1.0, 1.5),
    "logit_sync": (-1.0, 1.5),
    "beta_burst_osl": (0.0, 1.0),
    "beta_sync_osl": (0.0, 1.0),
    "alpha_ttft": (0.0, 0.3),
    "log_prefill_step": (0.0, 1.5),
    "log_attention": (0.0, 0.3),
}
assert tuple(GENERIC_SHARED) == SHARED_NAMES


@dataclass(frozen=True)
class Prior:
    """What is believed before the points: (mean, sd) per shared parameter, the sd of an engine's offset,
    and a guess of the model discrepancy per kind worth ``discrepancy_weight`` points."""

    shared: Mapping[str, tuple[float, float]] = field(default_factory=lambda: dict(GENERIC_SHARED))
    engine_sd: float = 0.15
    engine_step_sd: float = 0.5
    discrepancy: Mapping[str, float] = field(default_factory=lambda: {"ttft": 0.20, "tpot": 0.06})
    discrepancy_weight: float = 1.0
    ard: tuple[str, ...] = ("beta_isl", "beta_batch", "beta_context")  # prior sd re-estimated (ARD)
    ard_iterations: int = 3
    cv_folds: int = 8  # folds of the cross-validated noise estimate (0: evidence only, from the residuals)
    # per kind: a discrepancy field learned from other deployments (``phase_prior.learned_prior``) and the
    # points behind it (the dof of the bands); replaces independent noise when every point is a
    # prefill/decode probe
    phase_kernel: Mapping[str, tuple[KernelHyper, float]] = field(default_factory=dict)
    # per kind: (scale factor, dof) of the predictive's Student-t, learned from other deployments' held-out
    # errors (``learn_tails``); applies where the noise is estimated from the points (not the phase field)
    tails: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def engine_prior_sd(self) -> dict[str, float]:
        return {n: self.engine_step_sd if n == "delta_step" else self.engine_sd for n in ENGINE_NAMES}

    def updated(self, shared: Mapping[str, tuple[float, float]]) -> Prior:
        """This prior with some shared parameters' (mean, sd) replaced (unknown names refused)."""
        unknown = set(shared) - set(SHARED_NAMES)
        if unknown:
            raise CalibrationError(f"prior names unknown parameters {sorted(unknown)}")
        return replace(self, shared={**self.shared, **shared})


def data_hash(observations: Sequence[Observation]) -> str:
    blob = json.dumps([[o.engine, o.kind, round(o.measured_ms or 0.0, 6), o.isl, o.batch, o.context]
                       for o in observations])  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def fit(observations: Sequence[Observation], prior: Prior | None = None, meta: Mapping[str, Any] | None = None,
        residual_field: bool = True) -> Correction:  # fmt: skip
    """Posterior of the correction given measured ``observations`` (at least one). Raises CalibrationError."""
    prior = prior or Prior()
    good = [
        o
        for o in observations
        if o.measured_ms is not None and o.measured_ms > 0 and math.isfinite(o.measured_ms)
    ]
    if not good:
        raise CalibrationError("no usable measured points to calibrate on")
    pb = _Problem(good, prior)
    if (
        prior.phase_kernel
        and not any(o.is_agg for o in good)
        and all(o.kind in prior.phase_kernel for o in good)
    ):
        return _fit_field(pb, prior, meta)
    kinds = [o.kind for o in good]
    idx = {k: np.array([i for i, kk in enumerate(kinds) if kk == k], int) for k in KINDS}
    present = [k for k in KINDS if idx[k].size]
    disc = {k: float(prior.discrepancy[k]) for k in KINDS}
    everything = np.ones(len(good), bool)
    theta, dof = pb.mu0.copy(), {}
    for _ in range(2):  # MAP at fixed noise, then the noise from the residuals (empirical Bayes)
        theta, cov = pb.map(everything, pb.sd(disc), theta)
        leverage = pb.leverage(theta, cov, disc)
        raw = pb.y - pb.log_pred(theta)
        for k in present:
            i = idx[k]
            dof[k] = max(i.size - float(np.sum(leverage[i])), 0.0)
            w = prior.discrepancy_weight
            total = (float(np.sum(raw[i] ** 2)) + w * prior.discrepancy[k] ** 2) / max(dof[k] + w, 1e-9)
            disc[k] = math.sqrt(max(total - float(np.mean(pb.meas_sd[i] ** 2)), MIN_DISCREPANCY**2))
        dof = {k: dof[k] + prior.discrepancy_weight for k in present}
    for _ in range(prior.ard_iterations):  # ARD: the evidence decides whether the data need the slopes
        pb.relevance(theta, cov, prior)
        theta, cov = pb.map(everything, pb.sd(disc), theta)
    folds = _folds(good, prior.cv_folds)
    if folds is not None:  # what the points say about predicting a point left out: the noise from that
        for _ in range(2):
            sq = pb.cross_validated_excess(folds, disc, theta)
            disc = {k: math.sqrt(max(float(np.mean(sq[idx[k]])), MIN_DISCREPANCY**2)) if idx[k].size else disc[k]
                    for k in KINDS}  # fmt: skip
        dof = {k: float(idx[k].size) for k in present}
    theta, cov = pb.map(everything, pb.sd(disc), theta)
    mean = pb.unpack(theta)
    noise = Noise(
        discrepancy={k: disc[k] for k in present},
        measurement={k: float(np.median(pb.meas_sd[idx[k]])) for k in present},
        dof={k: float(prior.tails[k][1]) if k in prior.tails else dof[k] for k in present},
        tail_scale={k: float(prior.tails[k][0]) for k in present if k in prior.tails},
    )
    field_ = None
    agg = [o for o in good if o.is_agg]
    if agg and residual_field:
        field_ = ResidualField([ResidualPoint(o.engine, o.kind, o.concurrency, o.isl, o.osl,
                                              math.log(o.measured_ms / predict_ms(o, mean))) for o in agg])  # fmt: skip
    return Correction(
        mean, cov, noise, prior.engine_prior_sd(), len(good), data_hash(good), dict(meta or {}), field_
    )


MIN_DISCREPANCY = 0.005  # log sd: below the spread of repeated runs on one GPU


def _field_points(pb: _Problem, theta: np.ndarray) -> list[FieldPoint]:
    r = pb.y - pb.log_pred(theta)
    return [FieldPoint(o.engine, o.kind, o.isl, o.batch, o.context, float(ri), float(sd))
            for o, ri, sd in zip(pb.obs, r, pb.meas_sd, strict=True)]  # fmt: skip


def _fit_field(pb: _Problem, prior: Prior, meta: Mapping[str, Any] | None) -> Correction:
    """Generalised least squares with the discrepancy field's covariance per (engine, kind), then kriging."""
    hyper = {k: h for k, (h, _) in prior.phase_kernel.items()}
    theta = pb.mu0.copy()
    pts = _field_points(pb, theta)
    whiten = np.zeros((len(pts), len(pts)))
    probe = PhaseField(pts, np.zeros((len(pts), 1)), hyper)
    for key in sorted({(p.engine, p.kind) for p in pts}):
        idx = np.array([i for i, p in enumerate(pts) if (p.engine, p.kind) == key])
        whiten[np.ix_(idx, idx)] = np.linalg.inv(np.linalg.cholesky(probe.covariance([pts[i] for i in idx])))
    theta, cov = pb.map_whitened(whiten, theta)
    for _ in range(prior.ard_iterations):
        pb.relevance(theta, cov, prior)
        theta, cov = pb.map_whitened(whiten, theta)
    kinds = sorted({o.kind for o in pb.obs})
    noise = Noise(
        discrepancy={k: math.hypot(hyper[k].amplitude, hyper[k].white) for k in kinds},
        measurement={k: float(np.median([o.noise_sd for o in pb.obs if o.kind == k])) for k in kinds},
        dof={k: float(prior.phase_kernel[k][1]) for k in kinds},
    )
    phase = PhaseField(_field_points(pb, theta), pb.log_jac(theta), hyper)
    good = pb.obs
    return Correction(pb.unpack(theta), cov, noise, prior.engine_prior_sd(), len(good), data_hash(good),
                      dict(meta or {}), None, phase)  # fmt: skip


def _folds(obs: Sequence[Observation], max_folds: int) -> np.ndarray | None:
    """Fold of each observation (the TTFT and TPOT of one agg measurement share one); None below 2 groups."""
    groups: dict[tuple, int] = {}
    gid = [groups.setdefault((o.engine, o.isl, o.osl, o.concurrency, o.batch if not o.is_agg else 0.0,
                              o.context if not o.is_agg else 0.0), len(groups)) for o in obs]  # fmt: skip
    if max_folds < 2 or len(groups) < 2:
        return None
    return np.array(gid) % min(max_folds, len(groups))


class _Problem:
    """The observations, the prior as vectors over the parameter names, and the MAP fit on a subset."""

    def __init__(self, obs: list[Observation], prior: Prior):
        self.obs, self.engines = obs, tuple(sorted({o.engine for o in obs}))
        self.names = parameter_names(self.engines)
        extra = self.names[len(SHARED_NAMES) :]
        self.mu0 = np.array([prior.shared[n][0] for n in SHARED_NAMES] + [0.0] * len(extra))
        self.sd0 = np.array([prior.shared[n][1] for n in SHARED_NAMES]
                            + [prior.engine_step_sd if n.startswith("delta_step[") else prior.engine_sd for n in extra])  # fmt: skip
        self.model = VectorModel(obs, self.names)
        self.y = np.log([o.measured_ms for o in obs])
        self.meas_sd = np.array([o.noise_sd for o in obs])
        self.kinds = [o.kind for o in obs]

    def unpack(self, th: np.ndarray) -> Parameters:
        return Parameters.from_values(dict(zip(self.names, th, strict=True)), self.engines)

    def log_pred(self, th: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        lp = self.model.log_pred(th)[0]
        return lp if rows is None else lp[rows]

    def log_jac(self, th: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        j = self.model.log_jacobian(th)
        return j if rows is None else j[rows]

    def sd(self, disc: Mapping[str, float]) -> np.ndarray:
        return np.sqrt(self.meas_sd**2 + np.array([disc[k] for k in self.kinds]) ** 2)

    def _residuals(self, th: np.ndarray, rows: np.ndarray, sd: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [(self.y[rows] - self.log_pred(th, rows)) / sd[rows], (th - self.mu0) / self.sd0]
        )

    def _residual_jac(self, th: np.ndarray, rows: np.ndarray, sd: np.ndarray) -> np.ndarray:
        return np.vstack([-self.log_jac(th, rows) / sd[rows][:, None], np.diag(1.0 / self.sd0)])

    def map(self, rows: np.ndarray, sd: np.ndarray, theta0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """MAP on the observations in ``rows`` (robust soft-L1 loss) and its Laplace covariance."""
        res = least_squares(self._residuals, theta0, jac=self._residual_jac, args=(rows, sd), loss="soft_l1", f_scale=2.0,
                            max_nfev=200 * theta0.size)  # fmt: skip
        jac = self._residual_jac(res.x, rows, sd)
        return res.x, np.linalg.pinv(jac.T @ jac)

    def map_whitened(self, whiten: np.ndarray, theta0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """MAP with correlated residuals (``whiten``: the inverse Cholesky factor of their covariance)."""

        def res(th: np.ndarray) -> np.ndarray:
            return np.concatenate([whiten @ (self.y - self.log_pred(th)), (th - self.mu0) / self.sd0])

        def jac(th: np.ndarray) -> np.ndarray:
            return np.vstack([-whiten @ self.log_jac(th), np.diag(1.0 / self.sd0)])

        out = least_squares(res, theta0, jac=jac, loss="soft_l1", f_scale=2.0, max_nfev=200 * theta0.size)
        j = jac(out.x)
        return out.x, np.linalg.pinv(j.T @ j)

    def relevance(self, th: np.ndarray, cov: np.ndarray, prior: Prior) -> None:
        """MacKay's ARD update of the prior sd of the ``prior.ard`` parameters (between 0.01 and their prior sd)."""
        for n in prior.ard:
            j = self.names.index(n)
            gamma = max(1.0 - cov[j, j] / self.sd0[j] ** 2, 1e-6)
            sd = math.sqrt((th[j] - self.mu0[j]) ** 2 / gamma)
            self.sd0[j] = min(max(sd, 0.01), prior.shared[n][1])

    def leverage(self, th: np.ndarray, cov: np.ndarray, disc: Mapping[str, float]) -> np.ndarray:
        jd = self.log_jac(th) / self.sd(disc)[:, None]
        return np.einsum("ij,jk,ik->i", jd, cov, jd)

    def cross_validated_excess(
        self, folds: np.ndarray, disc: Mapping[str, float], theta: np.ndarray
    ) -> np.ndarray:
        """Per observation: squared error when its fold is left out, minus the parameter and measurement
        variance the left-out fit already predicts (what the discrepancy must explain)."""
        sd, out = self.sd(disc), np.zeros(len(self.obs))
        for f in np.unique(folds):
            rest, left = folds != f, folds == f
            th, cov = self.map(rest, sd, theta)
            g = self.log_jac(th, left)
            var = np.einsum("ij,jk,ik->i", g, cov, g) + self.meas_sd[left] ** 2
            out[left] = (self.y[left] - self.log_pred(th, left)) ** 2 - var
        return out


def prior_from_fits(
    shared: Sequence[SharedParameters], generic: Prior | None = None, min_sd: float = 0.1
) -> dict[str, tuple[float, float]]:
    """Median and robust spread (1.48 x MAD, kept between ``min_sd`` and the generic sd) of the shared
    parameters of several fitted deployments; empty below two."""
    generic = generic or Prior()
    if len(shared) < 2:
        return {}
    out = {}
    for n in SHARED_NAMES:
        v = np.array([getattr(s, n) for s in shared])
        med = float(np.median(v))
        mad = 1.4826 * float(np.median(np.abs(v - med)))
        out[n] = (med, float(min(max(mad, min_sd), generic.shared[n][1])))
    return out


MIN_TAIL_POINTS = 50  # standardised errors per kind below which no tail shape is learned


def learn_tails(standardised: Mapping[str, Sequence[float]]) -> dict[str, tuple[float, float]]:
    """Per kind, the (scale, dof) of a Student-t fitted by maximum likelihood (scipy) to held-out errors
    of other deployments, each divided by the log sd its calibration predicted.

    Why: agg errors are heavy-tailed (many rows within a few %, some off by a factor 2), so a Gaussian
    with the estimated sd is too wide in the middle and too narrow in the tails; a probability such as
    P(TTFT <= target) then comes out too low for a point well inside the target. The fitted t keeps the
    held-out errors' own shape; kinds with fewer than ``MIN_TAIL_POINTS`` errors get none."""
    out = {}
    for kind, values in standardised.items():
        z = np.asarray([v for v in values if math.isfinite(v)], float)
        if z.size < MIN_TAIL_POINTS:
            continue
        dof, _, scale = student_t.fit(z, floc=0.0)
        out[kind] = (float(scale), float(dof))
    return out


def learn_prior(
    families: Mapping[str, Sequence[Observation]], min_points: int = 10
) -> dict[str, tuple[float, float]]:
    """The shared part of a prior learned from other deployments, each fitted on all its points."""
    evidence_only = Prior(cv_folds=0)  # many points each: the residuals alone tell the noise
    return prior_from_fits([fit(obs, evidence_only, residual_field=False).mean.shared for obs in families.values()
                            if len(obs) >= min_points])  # fmt: skip


# Levels and overheads belong to one deployment and never transfer; the phase slopes transfer only to agg
# calibrations (they absorb the serving model's bias there, while prefill/decode probes observe them).
LEVEL_PARAMETERS = ("alpha_prefill", "alpha_decode", "log_step_ms", "log_overhead_ms")
SHAPE_PARAMETERS = ("beta_isl", "beta_batch", "beta_context")


# Agg rows never see a prefill probe's step nor an attention part (their terms do not split it): what
# silicon families "learn" of them is their prior echoed back.
UNOBSERVED_BY_AGG = ("log_prefill_step", "log_attention")


def transferable(learned: Mapping[str, tuple[float, float]], agg: bool) -> dict[str, tuple[float, float]]:
    """The part of a learned prior that applies to a new deployment (``agg``: calibrating on agg points)."""
    drop = LEVEL_PARAMETERS + UNOBSERVED_BY_AGG + (() if agg else SHAPE_PARAMETERS)
    return {k: v for k, v in learned.items() if k in SHARED_NAMES and k not in drop}
