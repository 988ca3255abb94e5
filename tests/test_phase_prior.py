"""Prefill/decode calibrations with a prior and a discrepancy field learned from other deployments."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from estimator.calibration import Correction
from estimator.calibration_fit import GENERIC_SHARED, Prior, fit
from estimator.calibration_params import SharedParameters
from estimator.measurements import Measurement, Probe, ProbeKind
from estimator.phase_field import FieldPoint, KernelHyper, learn_kernel
from estimator.phase_prior import LEVEL_MIN_SD, LEVELS, TRANSFERRED, DeploymentEvidence, learned_prior
from estimator.sources.roofline import RooflineSource
from tests.test_calibrate import STACK, TP1, TP2, Distorted
from validate.calibrate import (
    bundled_phase_evidence,
    calibrate,
    collect_observations,
    default_prior,
    deployment_name,
)

KERNEL = {
    "ttft": (KernelHyper(0.05, (0.7,), 0.002), 30.0),
    "tpot": (KernelHyper(0.03, (0.7, 0.9), 0.002), 30.0),
}


def _records(truth):
    ms = [
        Measurement(
            Probe(ProbeKind.PREFILL, STACK, c, isl=isl),
            "gpu",
            ttft_ms=float(truth.prefill_ttft_ms(c, [isl])[0]),
        )
        for c in (TP1, TP2)
        for isl in (512, 4096)
    ]
    ms += [
        Measurement(
            Probe(ProbeKind.DECODE, STACK, c, isl=2000, osl=200, concurrency=n),
            "gpu",
            itl_ms=float(truth.decode_itl_ms(c, [n], [2100])[0]),
        )
        for c in (TP1, TP2)
        for n in (2, 64)
    ]
    return ms  # fmt: skip


@pytest.fixture(scope="module")
def fielded():
    base = RooflineSource(STACK)
    truth = Distorted(base, {"TP1": 1.05, "TP2": 0.95})
    ms = _records(truth)
    prior = dataclasses.replace(Prior(), phase_kernel=KERNEL, ard_iterations=0)
    return base, truth, calibrate(base, ms, prior)


def _half_width(cal, isl):
    lo, hi = cal.prefill_ttft_band(TP1, [isl])
    return math.log(hi[0] / lo[0]) / 2


def test_band_is_narrow_at_a_measured_point_and_wide_far_from_every_point(fielded):
    """Kriging: at a measured ISL the band is about the measurement noise, far away the field's amplitude."""
    _, _, cal = fielded
    assert cal.correction.phase is not None
    assert _half_width(cal, 512) < 0.2 * _half_width(cal, 60000)


def test_prediction_goes_through_a_measured_point(fielded):
    _, truth, cal = fielded
    measured = float(truth.prefill_ttft_ms(TP1, [4096])[0])
    assert abs(float(cal.prefill_ttft_ms(TP1, [4096])[0]) / measured - 1) < 0.01


def test_field_survives_the_json_round_trip(fielded):
    _, _, cal = fielded
    again = Correction.from_dict(cal.correction.to_dict())
    obs = cal._prefill(TP1, [1000, 9000]) + cal._decode(TP2, [8, 128], [2100, 2100])
    assert [b.high_ms for b in again.bands(obs)] == pytest.approx(
        [b.high_ms for b in cal.correction.bands(obs)]
    )
    assert [again.predict(o) for o in obs] == pytest.approx([cal.correction.predict(o) for o in obs])


def test_agg_points_keep_independent_noise():
    """The field models prefill/decode probes only; an agg calibration with such a prior has none."""
    base = RooflineSource(STACK)
    obs = collect_observations(base, _records(Distorted(base)))[0]
    agg_like = [dataclasses.replace(o, burst=o.steady, sync=o.steady, concurrency=4.0) for o in obs]
    corr = fit(agg_like, dataclasses.replace(Prior(), phase_kernel=KERNEL), residual_field=False)
    assert corr.phase is None


def test_learn_kernel_recovers_a_known_field():
    rng = np.random.default_rng(1)
    true = KernelHyper(0.04, (0.7,), 0.005)
    groups = []
    for g in range(40):
        isl = np.geomspace(128, 16384, 8)
        x = np.log(isl)[:, None]
        cov = true.k(x, x) + np.eye(len(isl)) * true.white**2
        r = rng.multivariate_normal(np.zeros(len(isl)), cov)
        groups.append(
            [FieldPoint(f"E{g}", "ttft", float(i), 1.0, float(i), float(v), 0.0) for i, v in zip(isl, r)]
        )
    got, n = learn_kernel(groups, "ttft")
    assert n == 320
    assert got.amplitude == pytest.approx(0.04, rel=0.3)
    assert got.length[0] == pytest.approx(0.7, rel=0.4)


def _evidence(name: str, beta_isl: float, rng, moe: bool = False) -> DeploymentEvidence:
    pts = tuple(FieldPoint("TP1", "ttft", float(i), 1.0, float(i), float(rng.normal(0, 0.03)), 0.0)
                for i in (128, 512, 2048, 8192)) + tuple(
        FieldPoint("TP1", "tpot", 1.0, float(b), 2048.0, float(rng.normal(0, 0.02)), 0.0) for b in (1, 8, 64, 256))  # fmt: skip
    return DeploymentEvidence(name, SharedParameters(beta_isl=beta_isl), pts, moe)


def test_default_prior_learns_from_the_other_deployments_only():
    rng = np.random.default_rng(0)
    own = _evidence(deployment_name(STACK), 0.9, rng)
    others = [_evidence("a|h200_sxm|vllm", 0.10, rng), _evidence("b|h200_sxm|vllm", 0.12, rng)]
    base = RooflineSource(STACK)
    ms = _records(Distorted(base))
    assert not default_prior(base, ms, [own]).phase_kernel  # its own fit is no evidence about itself
    prior = default_prior(base, ms, [own, *others])
    assert set(prior.phase_kernel) == {"ttft", "tpot"}
    assert prior.shared["beta_isl"][0] == pytest.approx(0.11)
    assert prior.ard_iterations == 0
    assert set(TRANSFERRED) <= set(prior.shared)


def test_levels_get_the_median_of_the_other_deployments_with_a_wide_floor():
    rng = np.random.default_rng(1)
    fits = [(0.2, 0.9), (0.3, 1.0), (0.4, 1.1)]  # (alpha_decode, log_step_ms) of three deployments
    evidence = [dataclasses.replace(_evidence(f"m{i}|h200_sxm|vllm", 0.1, rng),
                                    shared=SharedParameters(alpha_decode=a, log_step_ms=s))
                for i, (a, s) in enumerate(fits)]  # fmt: skip
    prior = learned_prior(evidence, Prior())
    assert prior.shared["alpha_decode"] == pytest.approx((0.3, LEVEL_MIN_SD))  # spread 0.148: below the floor
    assert prior.shared["log_step_ms"] == pytest.approx((1.0, LEVEL_MIN_SD))
    assert set(LEVELS) <= set(prior.shared) and not set(LEVELS) & set(TRANSFERRED)
    spread = [
        dataclasses.replace(e, shared=SharedParameters(alpha_decode=a))
        for e, a in zip(evidence, (-0.2, 0.3, 0.8), strict=True)
    ]
    assert learned_prior(spread, Prior()).shared["alpha_decode"][1] == pytest.approx(1.4826 * 0.5)
    assert Prior().shared["alpha_decode"] == GENERIC_SHARED["alpha_decode"]  # the generic prior is untouched


def test_evidence_transfers_only_within_an_architecture_class():
    """A dense calibration learns nothing from MoE deployments (their misfit has another shape)."""
    rng = np.random.default_rng(0)
    base = RooflineSource(STACK)  # Llama-3.1-8B: dense
    ms = _records(Distorted(base))
    moe = [
        _evidence("a|h200_sxm|vllm", 0.10, rng, moe=True),
        _evidence("b|h200_sxm|vllm", 0.12, rng, moe=True),
    ]
    assert not default_prior(base, ms, moe).phase_kernel
    dense = [_evidence("c|h200_sxm|vllm", 0.30, rng), _evidence("d|h200_sxm|vllm", 0.32, rng)]
    prior = default_prior(base, ms, [*moe, *dense])
    assert prior.shared["beta_isl"][0] == pytest.approx(0.31)


def test_evidence_without_its_class_is_refused():
    doc = _evidence("a|h200_sxm|vllm", 0.1, np.random.default_rng(0)).to_dict()
    assert DeploymentEvidence.from_dict(doc).moe is False
    with pytest.raises(KeyError):
        DeploymentEvidence.from_dict({k: v for k, v in doc.items() if k != "moe"})
    with pytest.raises(ValueError, match="moe"):
        DeploymentEvidence.from_dict({**doc, "moe": "no"})


def test_other_runners_keep_the_previous_prior():
    """Phase evidence comes from the GPU runner: records of another runner do not use it."""
    base = RooflineSource(STACK)
    ms = [dataclasses.replace(m, runner="synthetic") for m in _records(Distorted(base))]
    rng = np.random.default_rng(0)
    assert not default_prior(
        base, ms, [_evidence("a|x|vllm", 0.1, rng), _evidence("b|y|vllm", 0.1, rng)]
    ).phase_kernel


def test_replayed_gpu_runner_records_keep_the_gpu_runners_prior():
    """`validate --runner replay` on GPU-runner files: a replayed record says runner "replay" and keeps
    the runner that measured it in extra["measured_by"]; the prior follows the latter."""
    base = RooflineSource(STACK)
    gpu = [dataclasses.replace(m, runner="gpu") for m in _records(Distorted(base))]
    replayed = [dataclasses.replace(m, runner="replay", extra={**m.extra, "measured_by": "gpu"}) for m in gpu]
    rng = np.random.default_rng(0)
    evidence = [_evidence("a|x|vllm", 0.1, rng), _evidence("b|y|vllm", 0.1, rng)]
    assert default_prior(base, replayed, evidence) == default_prior(base, gpu, evidence)
    assert default_prior(base, replayed, evidence).phase_kernel
    other = [dataclasses.replace(m, extra={**m.extra, "measured_by": "endpoint"}) for m in replayed]
    assert not default_prior(base, other, evidence).phase_kernel


def test_bundled_evidence_names_the_gpu_runner_deployments():
    names = {e.name for e in bundled_phase_evidence()}
    assert "meta-llama/meta-llama-3.1-8b|h100_sxm|vllm" in names
    assert len(names) >= 3
    assert learned_prior(bundled_phase_evidence(), Prior()).phase_kernel
    assert {e.name for e in bundled_phase_evidence() if e.moe} == {"qwen/qwen3-30b-a3b|h200_sxm|vllm"}


def test_the_silicon_prior_leaves_the_prefill_step_at_the_generic_prior():
    """Agg rows never observe a prefill probe's step cost: the bundled silicon prior must not narrow it."""
    from validate.calibrate import bundled_prior

    base = RooflineSource(STACK)
    assert "log_prefill_step" in bundled_prior(STACK.backend)  # the file has it (the families' prior echoed)
    ms = [dataclasses.replace(m, runner="synthetic") for m in _records(Distorted(base))]
    assert default_prior(base, ms, []).shared["log_prefill_step"] == Prior().shared["log_prefill_step"]


def test_kriging_matches_scikit_learns_gaussian_process_where_no_parameter_is_shared():
    """With no parameter in common (zero Jacobian), the field's kriging is plain GP regression: its mean and
    variance equal scikit-learn's ``GaussianProcessRegressor`` with the same kernel and noise."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    from estimator.phase_field import PhaseField, features

    h = KernelHyper(0.03, (0.5, 0.9), 0.004)
    rng = np.random.default_rng(3)
    pts = [FieldPoint("TP1", "tpot", 1.0, float(b), float(c), float(rng.normal(0, 0.03)), 0.01)
           for b, c in ((1, 1024), (8, 1024), (64, 4096), (128, 8192))]  # fmt: skip
    field = PhaseField(pts, np.zeros((len(pts), 1)), {"tpot": h})
    kernel = ConstantKernel(h.amplitude**2) * RBF(list(h.length)) + WhiteKernel(h.white**2)
    x = np.array([features("tpot", p.isl, p.batch, p.context) for p in pts])
    gp = GaussianProcessRegressor(kernel, alpha=np.array([p.noise_sd for p in pts]) ** 2, optimizer=None,
                                  normalize_y=False).fit(x, [p.log_residual for p in pts])  # fmt: skip
    for b, c in ((1, 1024), (16, 2048), (256, 16384)):
        mean, var, _ = field.predict("TP1", "tpot", 1.0, b, c, np.zeros(1))
        ref_mean, ref_sd = gp.predict(features("tpot", 1.0, b, c)[None, :], return_std=True)
        assert mean == pytest.approx(float(ref_mean[0]), abs=1e-12)
        assert var == pytest.approx(float(ref_sd[0]) ** 2, rel=1e-9)


def test_evidence_without_a_parameter_is_refused_or_never_learned_from():
    """A fit from before ``log_attention`` existed must not teach it 0 +- 0.2 (the default standing in):
    the bundled reader refuses it; an old file read on purpose (``allow_missing``) keeps that parameter's
    prior while the others are learned."""
    def old(name, alpha):
        shared = dataclasses.asdict(dataclasses.replace(SharedParameters(), alpha_prefill=alpha))
        shared.pop("log_attention")
        return {"name": name, "moe": False, "shared": shared, "residuals": []}

    with pytest.raises(ValueError, match="log_attention"):
        DeploymentEvidence.from_dict(old("a|h200_sxm|vllm", 0.3))
    evidence = [DeploymentEvidence.from_dict(old(f"{n}|h200_sxm|vllm", a), allow_missing=True)
                for n, a in (("a", 0.3), ("b", 0.4), ("c", 0.5))]  # fmt: skip
    assert evidence[0].missing == {"log_attention"}
    learned = learned_prior(evidence, Prior())
    generic = GENERIC_SHARED["log_attention"]
    assert learned.shared["log_attention"] == Prior().shared["log_attention"] == generic
    assert learned.shared["alpha_prefill"][0] == pytest.approx(0.4)
