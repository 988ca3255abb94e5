"""Calibrate a performance source from measurements: turn Measurements into the calibration model's
observations (``estimator/calibration.py``) and fit it (``estimator/calibration_fit.py``).

- prefill probe: TTFT = a_p P(isl) + one step + request overhead;
- decode probe: ITL = a_d D(batch, context) + one step;
- agg probe: TTFT/TPOT terms of the serving model (``estimator/serving.py``) in three arrival regimes.

Each observation carries the measurement's own spread over its repetitions (``*_std_ms`` or the raw
``samples``), which the fit uses as measurement noise.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import numpy as np

from estimator.calibration import KINDS, SHARED_NAMES, Observation
from estimator.calibration_fit import Prior, fit, transferable
from estimator.errors import CalibrationError, SlaEstimateError
from estimator.measurements import Measurement, ProbeKind
from estimator.model import load_model_info
from estimator.phase_prior import DeploymentEvidence, learned_prior, same_class
from estimator.serving import SchedulerConfig, serving_terms
from estimator.sources.base import PerfSource, Stack
from estimator.sources.calibrated import CalibratedSource

log = logging.getLogger(__name__)
PRIOR_FILE = Path(__file__).resolve().parents[1] / "models" / "calibration_prior.json"
PRIOR_FORMAT_VERSION = 1  # of the prior file (shared parameter names unchanged since)
PHASE_EVIDENCE_FILE = PRIOR_FILE.with_name("calibration_phase_evidence.json")
PHASE_EVIDENCE_FORMAT_VERSION = 3  # 2: each deployment says whether its model is MoE; 3: fits log_attention


def observations_for(
    source: PerfSource, m: Measurement, config: SchedulerConfig | None = None
) -> list[Observation]:
    """The measured values of ``m`` as observations over ``source``'s terms (raises SourceError subclasses)."""
    p, eng = m.probe, m.probe.candidate
    if p.kind is ProbeKind.PREFILL and m.ttft_ms:
        pf = float(source.prefill_ttft_ms(eng, [p.isl])[0])
        att = float(source.prefill_attention_ms(eng, [p.isl])[0])
        return [Observation.prefill(eng.name, pf, p.isl, att, measured_ms=m.ttft_ms,
                                    noise_sd=_spread(m, "ttft"))]  # fmt: skip
    if p.kind is ProbeKind.DECODE and m.itl_ms:
        d = float(source.decode_itl_ms(eng, [p.concurrency], [p.context_tokens])[0])
        return [Observation.decode(eng.name, d, p.concurrency, p.context_tokens, measured_ms=m.itl_ms,
                                   noise_sd=_spread(m, "itl"))]  # fmt: skip
    if p.kind is ProbeKind.AGG:
        regimes = agg_terms(source, m, config)
        out = []
        for kind, y, name in (("ttft", m.ttft_ms, "ttft"), ("tpot", m.tpot_ms or m.itl_ms, "tpot")):
            if y:
                out.append(Observation.agg(eng.name, kind, regimes, p.isl, p.osl, p.concurrency,
                                           measured_ms=float(y), noise_sd=_spread(m, name)))  # fmt: skip
        return out
    return []


def _spread(m: Measurement, what: str) -> float:
    """Relative standard error of the stored mean (log units): one repetition's spread (the runner's std,
    else the samples') over the square root of the repetitions behind the mean; 0 when unknown.

    Why the standard error: the fit and the bands are of mean latencies, and a re-measured point is a
    mean of as many repetitions (``Measurement``'s docstring)."""
    mean = getattr(m, f"{what}_ms", None) or (m.itl_ms if what == "tpot" else None)
    std = getattr(m, f"{what}_std_ms", None)
    samples = [float(x) for x in m.samples.get(f"{what}_ms", []) if x and math.isfinite(float(x))]
    if std is None and len(samples) >= 2:
        std = float(np.std(samples, ddof=1))
    if not mean or not std or not math.isfinite(std) or std < 0:
        return 0.0
    n = len(samples) if len(samples) >= 2 else max(1, int(m.probe.repeats))
    return float(std / mean / math.sqrt(n))


def agg_terms(source: PerfSource, m: Measurement, config: SchedulerConfig | None = None):
    """(staggered steady state, burst, synchronised steady state) serving terms of an agg probe."""
    p = m.probe
    cfg = config or SchedulerConfig.for_backend(source.stack.backend)
    # Only a measured KV capacity limits the running requests: the estimated one is too uncertain (AIC's
    # memory model misses by 2x on silicon_sample rows and would invent queueing of whole requests).
    kv = int(m.kv_capacity_tokens or 0)
    return tuple(
        serving_terms(source, p.candidate, p.concurrency, p.isl, p.osl,
                      dataclasses.replace(cfg, waves=w, warmup_waves=u, stagger=s), kv)
        for w, u, s in ((3, 1, True), (1, 0, False), (3, 1, False))
    )  # fmt: skip


def collect_observations(
    source: PerfSource, measurements: list[Measurement]
) -> tuple[list[Observation], list[tuple[Measurement, str]]]:
    """Observations of every measurement the source can express; the others with the reason."""
    obs, skipped = [], []
    for m in measurements:
        try:
            os_ = observations_for(source, m)
        except SlaEstimateError as exc:
            skipped.append((m, str(exc)))
            continue
        if not os_:
            skipped.append((m, f"{m.probe.kind.value} record has no measured latency"))
        obs.extend(os_)
    return obs, skipped


def _from_prior_file(path: Path, what: str, read) -> dict[str, tuple[float, float]]:
    """``read(doc)`` of the bundled prior file (``benchmarks/silicon_calibration.py --write-prior``), or {}
    with a warning naming ``what`` when the file is missing a part, malformed or of another format."""
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
        if doc.get("format_version") != PRIOR_FORMAT_VERSION:
            raise ValueError(f"format {doc.get('format_version')!r}")
        return read(doc)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        log.warning("ignoring calibration %s in %s: %s", what, path, exc)
        return {}


def bundled_prior(backend: str, path: Path = PRIOR_FILE) -> dict[str, tuple[float, float]]:
    """The per-backend prior learned from silicon_sample.csv, or {}."""

    def read(doc: dict) -> dict[str, tuple[float, float]]:
        entry = doc["backends"].get(backend, {}).get("prior", {})
        return {k: (float(v[0]), float(v[1])) for k, v in entry.items() if k in SHARED_NAMES}

    return _from_prior_file(path, "prior", read)


def bundled_tails(path: Path = PRIOR_FILE) -> dict[str, tuple[float, float]]:
    """Per kind, the (scale, dof) tail shape of agg errors learned from silicon_sample.csv, or {}."""

    def read(doc: dict) -> dict[str, tuple[float, float]]:
        out = {k: (float(v[0]), float(v[1])) for k, v in doc.get("tails", {}).items() if k in KINDS}
        if not all(math.isfinite(a) and a > 0 and math.isfinite(b) and b > 0 for a, b in out.values()):
            raise ValueError(f"tails must be positive (scale, dof) pairs, got {out}")
        return out

    return _from_prior_file(path, "tails", read)


# Runners that time the engine's forward passes alone (no HTTP, tokenisation or detokenisation): their
# records carry no per-request overhead, so its prior is a few microseconds instead of a few ms.
ENGINE_ONLY_RUNNERS = ("gpu",)
NO_OVERHEAD_PRIOR = {"log_overhead_ms": (math.log(0.05), 1.0)}


def default_prior(
    source: PerfSource, measurements: list[Measurement], evidence: list[DeploymentEvidence] | None = None
) -> Prior:
    """The generic prior, updated with the transferable part of the bundled per-backend one (and no
    request overhead when every record comes from a runner that times the engine alone). Prefill/decode
    records of such a runner also get the prior learned from the *other* deployments in ``evidence``
    (default: the bundled ``models/calibration_phase_evidence.json``; ``phase_prior.learned_prior``)."""
    agg = has_agg(measurements)
    prior = Prior().updated(transferable(bundled_prior(source.stack.backend), agg=agg))
    if agg:  # agg errors are heavy-tailed: the bands take the shape the silicon rows' held-out errors have
        prior = dataclasses.replace(prior, tails=bundled_tails())
    if measurements and all(m.measured_by in ENGINE_ONLY_RUNNERS for m in measurements):
        prior = prior.updated(NO_OVERHEAD_PRIOR)
        if not agg:
            evidence = bundled_phase_evidence() if evidence is None else evidence
            others = same_class(evidence, deployment_name(source.stack), is_moe(source.stack))
            if others:
                prior = learned_prior(others, prior)
    return prior


def is_moe(stack: Stack) -> bool:
    """Whether the stack's model is a mixture of experts (its config's expert count)."""
    return load_model_info(stack.model).is_moe


def deployment_name(stack: Stack) -> str:
    """The key of a deployment in the phase evidence: model|system|backend (model lower-cased)."""
    return f"{stack.model.lower()}|{stack.system}|{stack.backend}"


def bundled_phase_evidence(path: Path = PHASE_EVIDENCE_FILE) -> list[DeploymentEvidence]:
    """The GPU-runner deployments' fits (``benchmarks/calibration_heldout.py --write-evidence``), or []."""
    if not path.exists():
        return []
    try:
        doc = json.loads(path.read_text())
        if doc.get("format_version") != PHASE_EVIDENCE_FORMAT_VERSION:
            raise ValueError(f"format {doc.get('format_version')!r}")
        return [DeploymentEvidence.from_dict(d) for d in doc["deployments"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring calibration phase evidence %s: %s", path, exc)
        return []


def calibrate(
    source: PerfSource, measurements: list[Measurement], prior: Prior | None = None
) -> CalibratedSource:
    """Fit a correction of ``source`` from ``measurements`` of its stack (others are ignored).

    ``prior`` defaults to ``default_prior`` (the bundled per-backend prior, ``models/calibration_prior.json``).
    """
    mine = same_deployment(source.stack, measurements)
    if not mine:
        raise CalibrationError(
            f"no measurements of {source.stack.model} on {source.stack.system}/{source.stack.backend}"
        )
    obs, skipped = collect_observations(source, mine)
    for m, why in skipped:
        log.warning("not calibrating on %s %s: %s", m.probe.kind.value, m.probe.candidate.name, why)
    learned = prior is None
    prior = default_prior(source, mine) if prior is None else prior
    corr = fit(obs, prior, meta={"base_source": source.name, "prior": "bundled" if learned else "given"})
    kv = {m.probe.candidate.name: int(m.kv_capacity_tokens) for m in mine if m.kv_capacity_tokens}
    return CalibratedSource(source, corr, kv)


def same_deployment(stack: Stack, measurements: list[Measurement]) -> list[Measurement]:
    """Measurements of the same model/system/backend, quantisation equal where both state it (versions may
    differ: that is one reason raw estimates miss, and what calibration absorbs)."""

    def same(a: Stack) -> bool:
        if (a.model.lower(), a.system, a.backend) != (stack.model.lower(), stack.system, stack.backend):
            return False
        return all(x is None or y is None or x == y for x, y in
                   ((a.gemm_quant, stack.gemm_quant), (a.kvcache_quant, stack.kvcache_quant)))  # fmt: skip

    return [m for m in measurements if same(m.probe.stack)]


def has_agg(measurements: list[Measurement]) -> bool:
    """Whether any record is an aggregated-serving point (they decide which prior parts transfer)."""
    return any(m.probe.kind is ProbeKind.AGG for m in measurements)
