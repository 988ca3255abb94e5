"""Fit corrections of a performance source from a few measured points, with an uncertainty band.

Every measured value is written as a linear combination of source terms (``Target``):

    y_ms = a_p(isl) * prefill_ms + a_d(batch, context) * decode_ms + step_ms * steps + overhead_ms * const

- prefill probe: TTFT = a_p P(isl) + one step + request overhead;
- decode probe: ITL = a_d D(batch, context) + one step;
- agg probe: TTFT/TPOT terms from the serving model (``estimator/serving.py``).

The phase scales are log-linear, ``log a_p = α_p + δ_p[e] + β_isl log(isl/1024)`` and
``log a_d = α_d + δ_d[e] + β_b log(batch/16) + β_c log(context/2048)``: one shared log-ratio per phase
for all engines of a model/system/backend, a per-engine offset δ shrunk toward 0, and slopes shrunk
toward 0. ``step_ms`` (scheduler/sampling cost per step) and ``overhead_ms`` (HTTP, tokenisation) are
positive, fitted in log space. The fit is the MAP of a Gaussian model on log residuals (robust soft-L1
loss); the band is the Laplace posterior plus the fitted noise, so it widens for engines or inputs
far from the measured points. Agg points add a burst weight w: the serving model's TTFT/TPOT is
``w × burst (all clients start together) + (1 − w) × steady state``, w shared by the family. What the
fit leaves in the agg points becomes a residual field over their inputs (``estimator/sources/residual_gp.py``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from estimator.errors import CalibrationError, SlaEstimateError
from estimator.sources.base import PerfSource, Stack
from estimator.sources.calibrated import (
    ENGINE_PARAMS,
    ENGINE_SD,
    FORMAT_VERSION,
    NOISE_DOF,
    NOISE_PRIOR,
    PRIOR,
    SHARED,
    CalibratedSource,
    Correction,
    Target,
)  # fmt: skip
from estimator.sources.residual_gp import ResidualGP, ResidualPoint, is_agg

from estimator.measurements import Measurement, ProbeKind
from estimator.serving import SchedulerConfig, ServingTerms, serving_terms

log = logging.getLogger(__name__)


def data_hash(targets: list[Target]) -> str:
    blob = json.dumps(
        [[t.engine, t.kind, round(t.measured_ms, 6), t.isl, t.batch, t.context] for t in targets]
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def fit_correction(
    targets: list[Target],
    *,
    prior: dict[str, tuple[float, float]] | None = None,
    meta: dict[str, Any] | None = None,
) -> Correction:
    """MAP fit of the correction to ``targets`` (at least one point). Raises CalibrationError.

    ``prior`` overrides the (mean, sd) of shared parameters, e.g. one learned per backend from other
    models and systems (``learn_prior``); unnamed parameters keep the generic prior.
    """
    from scipy.optimize import least_squares

    prior = {**PRIOR, **(prior or {})}
    good = [t for t in targets if t.measured_ms > 0 and math.isfinite(t.measured_ms)]
    if not good:
        raise CalibrationError("no usable measured points to calibrate on")
    engines = tuple(sorted({t.engine for t in good}))
    n_off = len(ENGINE_PARAMS) * len(engines)
    prior_mu = np.array([prior[n][0] for n in SHARED] + [0.0] * n_off)
    prior_sd = np.array([prior[n][1] for n in SHARED] + [ENGINE_SD] * n_off)
    corr = Correction(engines, prior_mu.copy(), np.diag(prior_sd**2), dict(NOISE_PRIOR), len(good), data_hash(good),
                      dict(meta or {}))  # fmt: skip
    y = np.log([t.measured_ms for t in good])
    kinds = [t.kind for t in good]

    def residuals(th: np.ndarray, noise: dict[str, float]) -> np.ndarray:
        pred = np.array([corr.predict(t, th) for t in good])
        r = (y - np.log(np.maximum(pred, 1e-9))) / np.array([noise[k] for k in kinds])
        return np.concatenate([r, (th - prior_mu) / prior_sd])

    noise = dict(NOISE_PRIOR)
    theta = prior_mu.copy()
    for _ in range(2):  # MAP at fixed noise, then re-estimate the noise from the residuals
        res = least_squares(
            residuals, theta, args=(noise,), loss="soft_l1", f_scale=2.0, max_nfev=200 * theta.size
        )
        theta = res.x
        jac = _jacobian(lambda th: residuals(th, noise), theta)
        cov = np.linalg.pinv(jac.T @ jac)
        # leverage of each point: the residual degrees of freedom the fit used up (few points -> honest noise)
        jd = jac[: len(good)]
        leverage = np.einsum("ij,jk,ik->i", jd, cov, jd)
        raw = y - np.log([corr.predict(t, theta) for t in good])
        for k in NOISE_PRIOR:
            idx = [i for i, kk in enumerate(kinds) if kk == k]
            dof = max(len(idx) - float(np.sum(leverage[idx])), 0.0)
            s0 = NOISE_PRIOR[k]
            noise[k] = math.sqrt((float(np.sum(raw[idx] ** 2)) + NOISE_DOF * s0**2) / (dof + NOISE_DOF))
    jac = _jacobian(lambda th: residuals(th, noise), theta)
    cov = np.linalg.pinv(jac.T @ jac)
    corr.theta, corr.cov, corr.noise = theta, cov, noise
    agg = [t for t in good if is_agg(t.concurrency, t.burst_prefill_ms)]
    if agg:
        corr.residual = ResidualGP([ResidualPoint(t.engine, t.kind, t.concurrency, t.isl, t.osl,
                                                  math.log(t.measured_ms / corr.predict(t, theta))) for t in agg])  # fmt: skip
    return corr


def learn_prior(families: dict[str, list[Target]], min_targets: int = 10) -> dict[str, tuple[float, float]]:
    """(mean, sd) of each shared parameter across families fitted on all their points.

    The mean is the median over families, the sd a robust spread (1.48 × MAD), kept between 0.1 and
    the generic prior's sd: a new family then starts from what similar deployments showed.
    """
    return prior_from_thetas([fit_correction(ts).theta[: len(SHARED)] for ts in families.values()
                              if len(ts) >= min_targets])  # fmt: skip


def prior_from_thetas(thetas: list[np.ndarray]) -> dict[str, tuple[float, float]]:
    """Median and robust spread of fitted shared parameters (empty below two families); see ``transferable``."""
    if len(thetas) < 2:
        return {}
    arr = np.array(thetas)
    med = np.median(arr, axis=0)
    mad = 1.4826 * np.median(np.abs(arr - med), axis=0)
    return {n: (float(med[i]), float(min(max(mad[i], 0.1), PRIOR[n][1]))) for i, n in enumerate(SHARED)}


# The prior is learned from agg rows. Levels and overheads belong to one deployment and never transfer;
# the phase slopes transfer only to agg calibrations (they absorb the serving model's bias there, while
# prefill/decode probes observe the slopes directly).
LEVEL_PARAMETERS = ("alpha_prefill", "alpha_decode", "log_step_ms", "log_overhead_ms")
SHAPE_PARAMETERS = ("beta_isl", "beta_batch", "beta_context")


def transferable(prior: dict[str, tuple[float, float]], agg: bool) -> dict[str, tuple[float, float]]:
    """The part of a learned prior that applies to a new family (``agg``: calibrating on agg points)."""
    drop = LEVEL_PARAMETERS + (() if agg else SHAPE_PARAMETERS)
    return {k: v for k, v in prior.items() if k in SHARED and k not in drop}


def uncalibrated() -> Correction:
    """The identity correction: source terms unscaled, no overheads, arrival regimes at their generic prior."""
    theta = np.array([PRIOR[n][0] for n in SHARED])
    theta[SHARED.index("log_step_ms")] = theta[SHARED.index("log_overhead_ms")] = -30.0  # e^-30 ms: none
    return Correction((), theta, np.zeros((theta.size, theta.size)), {"ttft": 0.0, "tpot": 0.0}, 0, "")


def _jacobian(f, x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    f0 = f(x)
    out = np.empty((f0.size, x.size))
    for j in range(x.size):
        xj = x.copy()
        xj[j] += eps
        out[:, j] = (f(xj) - f0) / eps
    return out


def targets_for(source: PerfSource, m: Measurement, config: SchedulerConfig | None = None) -> list[Target]:
    """The measured values of ``m`` as Targets over ``source``'s terms (raises SourceError subclasses)."""
    p, eng = m.probe, m.probe.candidate
    out: list[Target] = []
    if p.kind is ProbeKind.PREFILL and m.ttft_ms:
        pf = float(source.prefill_ttft_ms(eng, [p.isl])[0])
        out.append(Target(eng.name, "ttft", m.ttft_ms, pf, 0.0, 1.0, 1.0, p.isl, 1.0, p.isl))
    elif p.kind is ProbeKind.DECODE and m.itl_ms:
        d = float(source.decode_itl_ms(eng, [p.concurrency], [p.context_tokens])[0])
        out.append(
            Target(eng.name, "tpot", m.itl_ms, 0.0, d, 1.0, 0.0, p.isl, p.concurrency, p.context_tokens)
        )
    elif p.kind is ProbeKind.AGG:
        steady, burst, sync = agg_terms(source, m, config)
        for kind, y in (("ttft", m.ttft_ms), ("tpot", m.tpot_ms or m.itl_ms)):
            if not y:
                continue
            i = 0 if kind == "ttft" else 1
            out.append(Target(eng.name, kind, float(y), *_parts(steady, i), 1.0 if kind == "ttft" else 0.0, p.isl,
                              steady.batch, steady.context_tokens, p.osl, *_parts(burst, i), *_parts(sync, i),
                              concurrency=float(p.concurrency)))  # fmt: skip
    return out


def agg_terms(source: PerfSource, m: Measurement, config: SchedulerConfig | None = None):
    """(staggered steady state, burst, synchronised steady state) serving terms of an agg probe."""
    p = m.probe
    cfg = config or SchedulerConfig.for_backend(source.stack.backend)
    # Only a measured KV capacity limits the running requests: the estimated one is too uncertain (AIC's
    # memory model misses by 2x on silicon_sample rows and would invent queueing of whole requests).
    kv = int(m.kv_capacity_tokens or 0)
    return tuple(
        serving_terms(source, p.candidate, p.concurrency, p.isl, p.osl, _with(cfg, *regime), kv)
        for regime in ((3, 1, True), (1, 0, False), (3, 1, False))
    )


def _with(cfg: SchedulerConfig, waves: int, warmup: int, stagger: bool) -> SchedulerConfig:
    return dataclasses.replace(cfg, waves=waves, warmup_waves=warmup, stagger=stagger)


def _parts(t: ServingTerms, i: int) -> tuple[float, float, float]:
    return (
        (t.ttft_prefill_ms, t.ttft_decode_ms, t.ttft_steps)
        if i == 0
        else (t.tpot_prefill_ms, t.tpot_decode_ms, t.tpot_steps)
    )


def collect_targets(
    source: PerfSource, measurements: list[Measurement]
) -> tuple[list[Target], list[tuple[Measurement, str]]]:
    """Targets of every measurement the source can express; the others with the reason."""
    targets, skipped = [], []
    for m in measurements:
        try:
            ts = targets_for(source, m)
        except SlaEstimateError as exc:
            skipped.append((m, str(exc)))
            continue
        if not ts:
            skipped.append((m, f"{m.probe.kind.value} record has no measured latency"))
        targets.extend(ts)
    return targets, skipped


PRIOR_FILE = Path(__file__).resolve().parents[1] / "models" / "calibration_prior.json"


def bundled_prior(backend: str, path: Path = PRIOR_FILE) -> dict[str, tuple[float, float]]:
    """The per-backend prior learned from silicon_sample.csv (``benchmarks/silicon_calibration.py``), or {}."""
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
        if doc.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format {doc.get('format_version')!r}")
        entry = doc["backends"].get(backend, {}).get("prior", {})
        return {k: (float(v[0]), float(v[1])) for k, v in entry.items() if k in SHARED}
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        log.warning("ignoring calibration prior %s: %s", path, exc)
        return {}


def calibrate(
    source: PerfSource, measurements: list[Measurement], prior: dict[str, tuple[float, float]] | None = None
) -> CalibratedSource:
    """Fit a correction of ``source`` from ``measurements`` (one model/system/backend).

    ``prior`` defaults to the bundled per-backend prior (``models/calibration_prior.json``).
    """
    mine = [m for m in measurements if _same_deployment(m.probe.stack, source.stack)]
    if not mine:
        raise CalibrationError(
            f"no measurements of {source.stack.model} on {source.stack.system}/{source.stack.backend}"
        )
    targets, skipped = collect_targets(source, mine)
    for m, why in skipped:
        log.warning("not calibrating on %s %s: %s", m.probe.kind.value, m.probe.candidate.name, why)
    if prior is None:
        prior = transferable(bundled_prior(source.stack.backend), agg=has_agg(mine))
    corr = fit_correction(
        targets, prior=prior, meta={"base_source": source.name, "prior": "learned" if prior else "generic"}
    )
    kv = {m.probe.candidate.name: int(m.kv_capacity_tokens) for m in mine if m.kv_capacity_tokens}
    return CalibratedSource(source, corr, kv)


def _same_deployment(a: Stack, b: Stack) -> bool:
    """Same model/system/backend; quantisation equal where both state it (versions may differ: that is
    one reason raw estimates miss, and what calibration absorbs)."""
    if (a.model.lower(), a.system, a.backend) != (b.model.lower(), b.system, b.backend):
        return False
    return all(
        x is None or y is None or x == y
        for x, y in ((a.gemm_quant, b.gemm_quant), (a.kvcache_quant, b.kvcache_quant))
    )


def has_agg(measurements: list[Measurement]) -> bool:
    """Whether any record is an aggregated-serving point (they decide which prior parts transfer)."""
    return any(m.probe.kind is ProbeKind.AGG for m in measurements)
