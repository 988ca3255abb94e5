"""The calibration model: a correction of a performance source's terms, its parameters and posterior.

Every measured (or queried) latency is an ``Observation``: the base source's terms it is made of,

    y_ms = a_p(isl) * prefill_ms + a_d(batch, context) * decode_ms + step_ms * steps + overhead_ms * requests

with ``log a_p = alpha_prefill + delta_prefill[e] + beta_isl log(isl/1024)`` and
``log a_d = alpha_decode + delta_decode[e] + beta_batch log(batch/16) + beta_context log(context/2048)``:
and ``step_ms = exp(log_step_ms + delta_step[e])``: one log-ratio per phase shared by the engines of a
model/system/backend, per-engine offsets shrunk toward 0, and mild slopes. Aggregated-serving points mix three arrival regimes of the serving model
(staggered steady state, burst, synchronised), with weights that depend on OSL.

``Correction`` is the fitted posterior (``estimator.calibration_fit.fit``): named parameters
(``Parameters``), their Laplace covariance, the model-discrepancy noise per kind and the measurement
noise seen in the repetitions, and optionally a residual field over agg inputs. It predicts a point and
a band for any observation; an engine that was never measured uses the shared part only and gets the
engine offset's prior variance on top. ``Correction.sample`` draws several observations jointly from the
same posterior (a shared phase scale moves them together), for decisions that compare engines.
Files are JSON data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
from scipy.special import ndtr, stdtrit
from scipy.stats import norm
from scipy.stats import t as student_t

from .calibration_params import (
    ENGINE_NAMES,
    SHARED_NAMES,
    EngineOffsets,
    Parameters,
    SharedParameters,
    parameter_names,
)
from .errors import CalibrationError
from .phase_field import PhaseField
from .serving import ServingTerms
from .sources.residual_gp import ResidualField
from .study_file import unique_keys as study_unique_keys

FORMAT_VERSION = 3  # 3: log_attention (prefill attention scaled apart from the rest)
KINDS = ("ttft", "tpot")  # TTFT (prefill / agg TTFT) and per-token decode time (decode ITL / agg TPOT)
BAND_LEVEL = 0.9
_MAX_LOG_RATIO = 50.0  # a draw beyond e^50 x the point (Student-t tails with few dof) is clipped there
# what a calibration file may hold (``Correction.from_dict``): a log-scale parameter, offset, logit or log sd
# beyond 50 (a factor e^50), or a slope beyond 10, is no fit of any engine and overflows the predictions
MAX_LOG = 50.0
MAX_SLOPE = 10.0


@dataclass(frozen=True, slots=True)
class Parts:
    """A latency split into what each phase scale multiplies: prefill ms, decode ms and engine steps;
    ``attention_ms``: the part of ``prefill_ms`` that is attention (0 where the source does not split it)."""

    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    steps: float = 0.0
    attention_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class Observation:
    """One latency (measured, or to be predicted when ``measured_ms`` is None) over the base source's terms.

    ``noise_sd``: relative spread of one repetition of the measurement (log units; 0 when unknown).
    Agg observations carry the burst and synchronised regimes and the clients (``concurrency``).
    """

    engine: str
    kind: str
    steady: Parts
    requests: float  # request overheads inside the value: 1 for a TTFT, 0 for a per-token time
    isl: float
    batch: float
    context: float
    osl: float = 1.0
    burst: Parts | None = None
    sync: Parts | None = None
    concurrency: float = 0.0
    measured_ms: float | None = None
    noise_sd: float = 0.0

    @classmethod
    def prefill(
        cls, engine: str, prefill_ms: float, isl: float, attention_ms: float = 0.0, **kw: Any
    ) -> Observation:
        """TTFT of one request: one prefill (``attention_ms`` of it attention), one engine step, one request
        overhead."""
        return cls(engine, "ttft", Parts(prefill_ms, 0.0, 1.0, attention_ms), 1.0, isl, 1.0, isl, **kw)

    @classmethod
    def decode(cls, engine: str, decode_ms: float, batch: float, context: float, **kw: Any) -> Observation:
        """ITL: one decode step of ``batch`` requests at ``context`` tokens."""
        return cls(engine, "tpot", Parts(0.0, decode_ms, 1.0), 0.0, context, batch, context, **kw)

    @classmethod
    def agg(
        cls, engine: str, kind: str, regimes: Sequence[ServingTerms], isl: float, osl: float, concurrency: float,
        **kw: Any,
    ) -> Observation:  # fmt: skip
        """Agg TTFT or TPOT from the serving model's (steady, burst, synchronised) terms."""
        parts = [_parts(t, kind) for t in regimes]
        steady = regimes[0]
        return cls(engine, kind, parts[0], 1.0 if kind == "ttft" else 0.0, isl, steady.batch, steady.context_tokens,
                   osl, parts[1], parts[2], float(concurrency), **kw)  # fmt: skip

    @property
    def is_agg(self) -> bool:
        return self.burst is not None and self.sync is not None and self.concurrency >= 1

    def with_measured(self, measured_ms: float | None) -> Observation:
        return replace(self, measured_ms=measured_ms)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Observation:
        known = {f.name for f in fields(cls)}
        extra = set(d) - known
        if extra:
            raise CalibrationError(f"observation has unknown fields {sorted(extra)}")
        parts = {k: Parts(**d[k]) for k in ("steady", "burst", "sync") if d.get(k) is not None}
        return cls(**{**d, **parts})


def _parts(t: ServingTerms, kind: str) -> Parts:
    if kind == "ttft":
        return Parts(t.ttft_prefill_ms, t.ttft_decode_ms, t.ttft_steps)
    return Parts(t.tpot_prefill_ms, t.tpot_decode_ms, t.tpot_steps)


def predict_ms(obs: Observation, p: Parameters) -> float:
    """The parametric prediction of ``obs`` under parameters ``p`` (no residual field)."""
    sh, off = p.shared, p.offsets(obs.engine)
    a_p = math.exp(sh.alpha_prefill + off.delta_prefill + sh.beta_isl * math.log(obs.isl / 1024.0))
    a_d = math.exp(sh.alpha_decode + off.delta_decode + sh.beta_batch * math.log(max(obs.batch, 1.0) / 16.0)
                   + sh.beta_context * math.log(obs.context / 2048.0))  # fmt: skip
    step, over = math.exp(sh.log_step_ms + off.delta_step), math.exp(sh.log_overhead_ms)
    attention = math.exp(sh.log_attention) - 1.0

    def lat(x: Parts) -> float:
        return a_p * (x.prefill_ms + attention * x.attention_ms) + a_d * x.decode_ms + step * x.steps

    if obs.burst is None or obs.sync is None:
        if obs.kind == "ttft":  # a prefill probe: its one step is a prefill step
            return (
                lat(obs.steady)
                + step * (math.exp(sh.log_prefill_step) - 1) * obs.steady.steps
                + over * obs.requests
            )
        return lat(obs.steady) + over * obs.requests
    lo = math.log(max(obs.osl, 1.0) / 1024.0)
    z = np.array([0.0, sh.logit_burst + sh.beta_burst_osl * lo, sh.logit_sync + sh.beta_sync_osl * lo])
    w = np.exp(z - z.max())
    w /= w.sum()
    mix = w[0] * lat(obs.steady) + w[1] * lat(obs.burst) + w[2] * lat(obs.sync)
    if obs.kind == "ttft":
        mix *= math.exp(sh.alpha_ttft + off.delta_ttft)
    return float(mix + over * obs.requests)


@dataclass(frozen=True, slots=True)
class Noise:
    """Per kind: model discrepancy (log sd, estimated by the fit), measurement spread of one repetition
    (median over the fitted points), the degrees of freedom of the predictive's Student-t, and a factor on
    its log sd (``tail_scale``, 1 where absent): with a tail shape learned from other deployments'
    held-out errors (``calibration_fit.learn_tails``), the t's scale is that factor times the estimated sd."""

    discrepancy: Mapping[str, float]
    measurement: Mapping[str, float]
    dof: Mapping[str, float]
    tail_scale: Mapping[str, float] = field(default_factory=dict)

    def sd(self, kind: str) -> float:
        return math.hypot(self.discrepancy.get(kind, 0.0), self.measurement.get(kind, 0.0))


@dataclass(frozen=True, slots=True)
class Band:
    """A prediction in ms with its central band (``level``: its probability)."""

    point_ms: float
    low_ms: float
    high_ms: float


@dataclass(frozen=True, slots=True)
class Predictive:
    """log(value) ~ log(point_ms) + log_sd * T, T Student-t with ``dof`` (normal when dof is 0)."""

    point_ms: float
    log_sd: float
    dof: float

    def quantile(self, q: float) -> float:
        """The ``q`` quantile of the value in ms."""
        z = float(student_t.ppf(q, self.dof)) if self.dof > 0 else float(norm.ppf(q))
        # clipped as the draws are (``sample``): heavy tails with few dof reach beyond any float
        return self.point_ms * math.exp(min(max(z * self.log_sd, -_MAX_LOG_RATIO), _MAX_LOG_RATIO))

    def band(self, level: float = BAND_LEVEL) -> Band:
        return Band(self.point_ms, self.quantile(0.5 - level / 2), self.quantile(0.5 + level / 2))

    def cdf(self, target_ms: float) -> float:
        """P(value <= ``target_ms``): the draws' own marginal (clipped at e^+-50 as they are); log_sd 0 is
        the point rule. Why: a lognormal through the band's ends is thinner-tailed than a t of few dof."""
        x = math.log(target_ms / self.point_ms)
        if x >= _MAX_LOG_RATIO or self.log_sd <= 0:
            return float(self.point_ms <= target_ms * (1 + 1e-12))
        if x < -_MAX_LOG_RATIO:
            return 0.0
        z = x / self.log_sd
        return float(student_t.cdf(z, self.dof) if 0 < self.dof < math.inf else norm.cdf(z))


@dataclass(frozen=True)
class Correction:
    """A fitted correction: the posterior mean, its covariance over ``mean.names``, the noise, an optional
    residual field over agg inputs and an optional discrepancy field over prefill/decode inputs (``phase``:
    then the noise of those kinds is that field's, by kriging). Immutable: a refit returns a new one."""

    mean: Parameters
    cov: np.ndarray
    noise: Noise
    engine_prior_sd: Mapping[str, float]  # per ``EngineOffsets`` field: what an unmeasured engine may be off
    n_points: int = 0
    data_hash: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)
    residual: ResidualField | None = None
    phase: PhaseField | None = None

    @property
    def engines(self) -> tuple[str, ...]:
        return tuple(self.mean.engines)

    def predict(self, obs: Observation) -> float:
        """Point prediction in ms (the residual field included where it applies)."""
        mid = predict_ms(obs, self.mean)
        field_ = self._field(obs)
        if field_ is None and self._phased(obs):
            field_ = (self.phase.mean(obs.engine, obs.kind, obs.isl, obs.batch, obs.context), 0.0)
        return mid * math.exp(field_[0]) if field_ is not None else mid

    def predictive(self, observations: Sequence[Observation]) -> list[Predictive]:
        """Predictive distribution of each observation: log(measured) ~ log(point) + log_sd * t(dof).

        log_sd: Laplace posterior of the parameters (the prior of the offsets for an unmeasured engine)
        plus the noise of the kind, or the residual field's posterior where it applies. For sampling
        (decisions under uncertainty) and for bands.
        """
        if not observations:
            return []
        return self._predictives(observations, *self._linearised(observations))

    def _linearised(self, observations: Sequence[Observation]) -> tuple[np.ndarray, np.ndarray]:
        """Per observation: d log(prediction) / d parameter (kriged where the phase field applies: the field
        and the parameters share the points) and the variance of the non-parametric part (the residual
        field's, the phase field's, or the noise of the kind). Shared by bands and joint draws."""
        grads = self._log_grads(observations)
        noise_var = np.empty(len(observations))
        for i, obs in enumerate(observations):
            field_ = self._field(obs)
            if field_ is None and self._phased(obs):
                _, f_var, grads[i] = self.phase.predict(obs.engine, obs.kind, obs.isl, obs.batch, obs.context,
                                                        grads[i])  # fmt: skip
                field_ = (0.0, f_var + self.noise.measurement.get(obs.kind, 0.0) ** 2)
            noise_var[i] = field_[1] if field_ is not None else self.noise.sd(obs.kind) ** 2
        return grads, noise_var

    def _predictives(
        self, observations: Sequence[Observation], grads: np.ndarray, noise_var: np.ndarray
    ) -> list[Predictive]:
        out = []
        for obs, g, nv in zip(observations, grads, noise_var, strict=True):
            var = float(g @ self.cov @ g)
            var += float(nv)
            if obs.engine not in self.mean.engines:  # only the prior knows an unmeasured engine's offsets
                var += self._unmeasured_var(obs)
            scale = self.noise.tail_scale.get(obs.kind, 1.0)
            out.append(Predictive(self.predict(obs), scale * math.sqrt(max(var, 0.0)),
                                  self.noise.dof.get(obs.kind, 0.0)))  # fmt: skip
        return out

    def bands(self, observations: Sequence[Observation], level: float = BAND_LEVEL) -> list[Band]:
        """Central band of probability ``level`` of each observation (see ``predictive``)."""
        return [p.band(level) for p in self.predictive(observations)]

    def band(self, obs: Observation, level: float = BAND_LEVEL) -> Band:
        return self.bands([obs], level)[0]

    def _field(self, obs: Observation) -> tuple[float, float] | None:
        if self.residual is None or not obs.is_agg:
            return None
        return self.residual.predict(obs.engine, obs.kind, obs.concurrency, obs.isl, obs.osl)

    def _phased(self, obs: Observation) -> bool:
        return self.phase is not None and not obs.is_agg and self.phase.applies(obs.kind)

    def _unmeasured_var(self, obs: Observation) -> float:
        """Variance the offsets' prior adds for an engine that has no fitted offsets."""
        sds = (self.engine_prior_sd.get(n, 0.0) for n in ENGINE_NAMES)
        return sum(float(g * sd) ** 2 for g, sd in zip(self._offset_grad(obs), sds, strict=True))

    def _log_grads(self, observations: Sequence[Observation], eps: float = 1e-4) -> np.ndarray:
        """d log(prediction) / d parameter for each observation (rows) and parameter (``mean.names``)."""
        values, names = self.mean.values(), self.mean.names
        base = np.log([predict_ms(o, self.mean) for o in observations])
        out = np.empty((len(observations), len(names)))
        for j, n in enumerate(names):
            p = Parameters.from_values({**values, n: values[n] + eps}, self.engines)
            out[:, j] = (np.log([predict_ms(o, p) for o in observations]) - base) / eps
        return out

    # ---- joint draws (decisions that compare engines or combine targets) ---------------------------
    def sample(self, observations: Sequence[Observation], n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` joint draws (rows) of each observation's value in ms (columns), from the posterior.

        Every column's distribution is exactly that observation's ``Predictive`` (its band's ends are the
        draws' 5 %/95 % points); the dependence between columns comes from a Gaussian sum of
        - a parameter vector from the Laplace posterior N(mean, cov), through the linearisation the bands
          use (d log prediction / d parameter): the shared phase scales move every engine, and the TTFT
          and TPOT of one deployment, together;
        - an engine never measured: its offsets from their prior, one draw per engine;
        - the discrepancy noise of the kind (the residual field's sd on agg inputs, the phase field's
          kriging variance and gradient on prefill/decode inputs where it applies): one standard
          normal per (engine, kind), shared by that engine's observations of that kind (the model's
          misfit moves one engine's curve), independent between engines and kinds;
        standardised and taken to each observation's Student-t (a Gaussian copula).
        """
        if not observations:
            return np.empty((n, 0))
        grads, noise_var = self._linearised(observations)
        pred = self._predictives(observations, grads, noise_var)
        noise_sd = np.sqrt(np.maximum(noise_var, 0.0))
        x = _gaussian(rng, self.cov, n) @ grads.T
        var = np.einsum("ij,jk,ik->i", grads, self.cov, grads)
        unmeasured: dict[str, list[int]] = {}
        discrepancy: dict[tuple[str, str], list[int]] = {}
        for i, obs in enumerate(observations):
            if obs.engine not in self.mean.engines:
                unmeasured.setdefault(obs.engine, []).append(i)
            discrepancy.setdefault((obs.engine, obs.kind), []).append(i)
        prior_sd = np.array([self.engine_prior_sd.get(name, 0.0) for name in ENGINE_NAMES])
        for idx in unmeasured.values():
            g_off = np.array([self._offset_grad(observations[i]) for i in idx]) * prior_sd[None, :]
            x[:, idx] += rng.standard_normal((n, len(ENGINE_NAMES))) @ g_off.T
            var[idx] += np.sum(g_off**2, axis=1)
        for idx in discrepancy.values():
            sd = noise_sd[idx]
            x[:, idx] += rng.standard_normal((n, 1)) * sd[None, :]
            var[idx] += sd**2
        log_sd = np.array([p.log_sd for p in pred])
        dof = np.array([p.dof for p in pred])
        z = x / np.sqrt(np.where(var > 0, var, 1.0))[None, :]
        q = np.clip(ndtr(z), 1e-15, 1 - 1e-15)
        t = np.where(dof[None, :] > 0, stdtrit(np.where(dof > 0, dof, 1.0)[None, :], q), z)
        log_ratio = np.clip(log_sd[None, :] * t, -_MAX_LOG_RATIO, _MAX_LOG_RATIO)  # dof 1-2: heavy tails
        return np.array([p.point_ms for p in pred])[None, :] * np.exp(log_ratio)

    def _offset_grad(self, obs: Observation, eps: float = 1e-4) -> np.ndarray:
        """d log(prediction) / d offset (``ENGINE_NAMES``) of an engine that has no fitted offsets."""
        base = math.log(predict_ms(obs, self.mean))
        out = np.empty(len(ENGINE_NAMES))
        for j, name in enumerate(ENGINE_NAMES):
            p = Parameters(self.mean.shared, {**self.mean.engines, obs.engine: EngineOffsets(**{name: eps})})
            out[j] = (math.log(predict_ms(obs, p)) - base) / eps
        return out

    # ---- persistence (JSON data) ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "feature_names": ["log(isl/1024)", "log(batch/16)", "log(context/2048)"],
            "engines": list(self.engines),
            "parameters": self.mean.values(),
            "covariance": {"names": list(self.mean.names), "matrix": self.cov.tolist()},
            "noise": {"discrepancy": dict(self.noise.discrepancy), "measurement": dict(self.noise.measurement),
                      "dof": dict(self.noise.dof), "tail_scale": dict(self.noise.tail_scale)},
            "engine_prior_sd": dict(self.engine_prior_sd),
            "n_points": self.n_points,
            "training_data_hash": self.data_hash,
            "meta": dict(self.meta),
            "residual_field": self.residual.to_dict() if self.residual is not None else None,
            "phase_field": self.phase.to_dict() if self.phase is not None else None,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Correction:
        """From a calibration file's JSON. Every number is checked (finite, in its range; the covariance PSD):
        a file edited by hand or corrupted is a ``CalibrationError`` naming the field, not a NaN band, an
        overflow or a LinAlgError later."""
        if d.get("format_version") != FORMAT_VERSION:
            raise CalibrationError(f"calibration format {d.get('format_version')!r} is not {FORMAT_VERSION}: "
                                   "written by another version of sla-estimate; calibrate again")  # fmt: skip
        try:
            engines = d["engines"]
            if not isinstance(engines, list) or not all(isinstance(e, str) for e in engines):
                raise CalibrationError(f"calibration engines must be a list of names, got {engines!r:.80}")
            engines = tuple(engines)
            names = parameter_names(engines)
            values = {k: _number(f"parameters.{k}", v, *_bounds(k))
                      for k, v in _mapping("parameters", d["parameters"], names).items()}  # fmt: skip
            mean = Parameters.from_values(values, engines)
            cov = np.asarray(d["covariance"]["matrix"], float)
            if tuple(d["covariance"]["names"]) != mean.names or cov.shape != (len(mean.names),) * 2:
                raise CalibrationError("calibration covariance does not match its parameters")
            _check_covariance(cov)
            n = d["noise"]
            # files written before tail shapes existed have none: a factor of 1, what they meant
            scales = _numbers("noise.tail_scale", n.get("tail_scale", {}), KINDS, 0.0, MAX_LOG, True)
            noise = Noise(_numbers("noise.discrepancy", n["discrepancy"], KINDS, 0.0, MAX_LOG),
                          _numbers("noise.measurement", n["measurement"], KINDS, 0.0, MAX_LOG),
                          _numbers("noise.dof", n["dof"], KINDS, 0.0, math.inf, True), scales)  # fmt: skip
            prior_sd = _numbers("engine_prior_sd", d["engine_prior_sd"], ENGINE_NAMES, 0.0, MAX_LOG)
            n_points = d["n_points"]
            if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 0:
                raise CalibrationError(f"calibration n_points must be an integer >= 0, got {n_points!r}")
            field_ = ResidualField.from_dict(d["residual_field"]) if d.get("residual_field") else None
            phase = PhaseField.from_dict(d["phase_field"]) if d.get("phase_field") else None
            return cls(mean, cov, noise, prior_sd, n_points, str(d["training_data_hash"]),
                       dict(d.get("meta", {})), field_, phase)  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"calibration file is malformed: {type(exc).__name__}: {exc}") from exc


def _bounds(name: str) -> tuple[float, float]:
    bound = MAX_SLOPE if name.startswith("beta_") else MAX_LOG
    return -bound, bound


def _number(where: str, v: Any, lo: float, hi: float, open_low: bool = False) -> float:
    """``v`` as a finite number in [lo, hi] (``(lo, hi]`` with ``open_low``); otherwise an error naming it."""
    finite = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if not finite or not lo <= v <= hi or (open_low and v == lo):
        interval = f"{'(' if open_low else '['}{lo:g}, {hi:g}{')' if math.isinf(hi) else ']'}"
        raise CalibrationError(f"calibration {where} must be a finite number in {interval}, got {v!r}")
    return float(v)


def _mapping(where: str, d: Any, names: Sequence[str]) -> Mapping[str, Any]:
    """``d``, a mapping whose keys are among ``names`` (a name the model lacks is refused, not ignored)."""
    if not isinstance(d, Mapping):
        raise CalibrationError(f"calibration {where} must be a mapping, got {type(d).__name__}")
    unknown = sorted(str(k) for k in d if k not in names)
    if unknown:
        raise CalibrationError(f"calibration {where} has unknown names {unknown[:5]}")
    return d


def _numbers(where: str, d: Any, names: Sequence[str], lo: float, hi: float, open_low: bool = False) -> dict:
    """A mapping of ``names`` to numbers in the range (see ``_number``)."""
    return {k: _number(f"{where}.{k}", v, lo, hi, open_low) for k, v in _mapping(where, d, names).items()}


def _check_covariance(cov: np.ndarray) -> None:
    """Finite, symmetric, variances in [0, MAX_LOG²] and positive semi-definite, each up to rounding."""
    if not np.all(np.isfinite(cov)):
        raise CalibrationError("calibration covariance holds a value that is not finite")
    if cov.size == 0:
        return
    scale = float(np.max(np.abs(cov)))
    tol = 1e-12 + 1e-6 * scale
    diag = np.diag(cov)
    if diag.min() < -tol or diag.max() > MAX_LOG**2:
        raise CalibrationError(f"calibration covariance has a variance outside [0, {MAX_LOG**2:g}] "
                               f"({diag.min():g} .. {diag.max():g})")  # fmt: skip
    if float(np.max(np.abs(cov - cov.T))) > tol:
        raise CalibrationError("calibration covariance is not symmetric")
    if float(np.linalg.eigvalsh(0.5 * (cov + cov.T)).min()) < -tol:
        raise CalibrationError("calibration covariance is not positive semi-definite")


def _gaussian(rng: np.random.Generator, cov: np.ndarray, n: int) -> np.ndarray:
    """``n`` draws (rows) of N(0, cov); a singular or slightly indefinite cov (rounding) is clipped to PSD.

    Through the symmetric square root V sqrt(W) V', which is unique and continuous in ``cov``: the
    eigenvectors alone are not (their signs, and their directions where eigenvalues nearly tie, flip under
    round-off), so a factor V sqrt(W) made every draw, and a plan's P, differ from one BLAS to another."""
    w, v = np.linalg.eigh(0.5 * (cov + cov.T))
    root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    return rng.standard_normal((n, len(w))) @ root


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``study_file.unique_keys`` for a calibration file: a key given twice is a ``CalibrationError``."""
    return study_unique_keys(pairs, CalibrationError)


def identity() -> Correction:
    """The uncalibrated correction: source terms unscaled, no overheads, arrival regimes at their prior."""
    shared = SharedParameters(log_step_ms=-30.0, log_overhead_ms=-30.0)  # e^-30 ms: none
    zeros = {k: 0.0 for k in KINDS}
    no_offsets = {n: 0.0 for n in ENGINE_NAMES}
    # no dof: a normal predictive (a file's dof must be > 0; with no spread the shape does not matter)
    cov = np.zeros((len(SHARED_NAMES),) * 2)
    return Correction(Parameters(shared), cov, Noise(zeros, zeros, {}), no_offsets)


__all__ = [
    "BAND_LEVEL", "ENGINE_NAMES", "FORMAT_VERSION", "KINDS", "SHARED_NAMES", "Band", "Correction", "EngineOffsets",
    "Noise", "Observation", "Parameters", "Parts", "Predictive", "SharedParameters", "identity",
    "parameter_names", "predict_ms", "unique_keys",
]  # fmt: skip
