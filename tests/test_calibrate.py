"""Calibration on synthetic truth: a known distortion of a source must be recovered from few points."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from estimator.calibration import FORMAT_VERSION, Observation, Parameters, predict_ms
from estimator.calibration_vector import VectorModel
from estimator.candidates import Candidate, Mapping
from estimator.errors import CalibrationError
from estimator.measurements import Measurement, Probe, ProbeKind
from estimator.pipeline import estimate
from estimator.serving import SchedulerConfig, predict_agg
from estimator.sources import make_source
from estimator.sources.aic import AicSource
from estimator.sources.base import PerfSource, Stack
from estimator.sources.calibrated import CalibratedSource
from estimator.sources.roofline import RooflineSource
from estimator.spec import load_spec
from validate.calibrate import calibrate, collect_observations
from validate.calibration_report import calibration_report

STACK = Stack("meta-llama/Meta-Llama-3.1-8B", "h100_sxm", "vllm")
TP1, TP2, TP4 = (Candidate(Mapping.TP, n) for n in (1, 2, 4))


class Distorted(PerfSource):
    """Truth: base × a·(isl/1024)^b for prefill, base × c·(batch/16)^d (+ per-engine factor) for decode."""

    name = "truth"

    def __init__(self, base: PerfSource, engine_factor: dict[str, float] | None = None):
        super().__init__(base.stack)
        self.base, self.engine_factor = base, engine_factor or {}

    def prefill_ttft_ms(self, c, isl):
        isl = np.atleast_1d(np.asarray(isl, float))
        return (
            self.base.prefill_ttft_ms(c, isl)
            * 1.6
            * (isl / 1024) ** 0.15
            * self.engine_factor.get(c.name, 1.0)
        )

    def decode_itl_ms(self, c, batch, context):
        b, ctx = np.broadcast_arrays(
            np.atleast_1d(np.asarray(batch, float)), np.atleast_1d(np.asarray(context, float))
        )
        return (
            self.base.decode_itl_ms(c, b, ctx) * 0.7 * (b / 16) ** 0.08 * self.engine_factor.get(c.name, 1.0)
        )

    def kv_capacity_tokens(self, c):
        return self.base.kv_capacity_tokens(c)


def _prefill(truth, cand, isl):
    return Measurement(Probe(ProbeKind.PREFILL, STACK, cand, isl=isl), "synthetic",
                       ttft_ms=float(truth.prefill_ttft_ms(cand, [isl])[0]))  # fmt: skip


def _decode(truth, cand, n, isl=2000, osl=200):
    ctx = isl + osl // 2
    return Measurement(Probe(ProbeKind.DECODE, STACK, cand, isl=isl, osl=osl, concurrency=n), "synthetic",
                       itl_ms=float(truth.decode_itl_ms(cand, [n], [ctx])[0]))  # fmt: skip


@pytest.fixture(scope="module")
def setup():
    base = RooflineSource(STACK)
    truth = Distorted(base, {"TP1": 1.05, "TP2": 0.95})
    ms = [_prefill(truth, c, isl) for c in (TP1, TP2) for isl in (512, 4096)]
    ms += [_decode(truth, c, n) for c in (TP1, TP2) for n in (2, 64)]
    ms.append(Measurement(ms[-1].probe, "synthetic", itl_ms=ms[-1].itl_ms, kv_capacity_tokens=123_456))
    return base, truth, calibrate(base, ms, prior={}), ms


def test_recovers_distortion_within_tolerance(setup):
    base, truth, cal, _ = setup
    for c in (TP1, TP2):
        isl = np.array([600, 1024, 2000, 8000])
        np.testing.assert_allclose(cal.prefill_ttft_ms(c, isl), truth.prefill_ttft_ms(c, isl), rtol=0.08)
        b, ctx = np.array([1, 8, 32, 128]), np.full(4, 2100)
        np.testing.assert_allclose(cal.decode_itl_ms(c, b, ctx), truth.decode_itl_ms(c, b, ctx), rtol=0.08)
    raw_err = abs(base.prefill_ttft_ms(TP1, [2000])[0] / truth.prefill_ttft_ms(TP1, [2000])[0] - 1)
    assert raw_err > 0.4  # the distortion is real: the raw source is far off


def test_band_covers_truth_and_widens_for_unmeasured_engines(setup):
    _, truth, cal, _ = setup
    for c in (TP1, TP2):
        lo, hi = cal.prefill_ttft_band(c, [300, 3000])
        t = truth.prefill_ttft_ms(c, [300, 3000])
        assert np.all(lo <= t)
        assert np.all(t <= hi)
        assert np.all(lo < hi)
        lo, hi = cal.decode_itl_band(c, [4, 48], [2100, 2100])
        t = truth.decode_itl_ms(c, [4, 48], [2100, 2100])
        assert np.all(lo <= t)
        assert np.all(t <= hi)
    lo1, hi1 = cal.decode_itl_band(TP1, [16], [2100])
    lo4, hi4 = cal.decode_itl_band(TP4, [16], [2100])  # never measured: pooled estimate, wider band
    assert hi4[0] / lo4[0] > hi1[0] / lo1[0]


def test_measured_kv_capacity_replaces_estimate(setup):
    base, _, cal, _ = setup
    assert cal.kv_capacity_tokens(TP2) == 123_456
    assert cal.kv_capacity_tokens(TP1) == base.kv_capacity_tokens(TP1)


def test_save_load_round_trip(setup, tmp_path):
    base, _, cal, _ = setup
    path = tmp_path / "models" / "calibration.json"
    cal.save(path)
    doc = json.loads(path.read_text())
    assert doc["format_version"] == FORMAT_VERSION
    assert doc["training_data_hash"] == cal.correction.data_hash
    assert set(doc["parameters"]) == set(cal.correction.mean.names)
    again = CalibratedSource.load(path, base)
    np.testing.assert_allclose(
        again.prefill_ttft_ms(TP1, [1000, 3000]), cal.prefill_ttft_ms(TP1, [1000, 3000])
    )
    np.testing.assert_allclose(again.decode_itl_band(TP4, [8], [2100]), cal.decode_itl_band(TP4, [8], [2100]))
    assert again.kv_capacity_tokens(TP2) == 123_456


def test_file_records_stack_and_base_and_refuses_another(setup, tmp_path):
    """A calibration fitted for h100_sxm on the roofline source refuses h200_sxm, another quantisation or
    another base source, and make_source wraps the base source the file records."""
    _, _, cal, _ = setup
    path = tmp_path / "calibration.json"
    cal.save(path)
    assert isinstance(make_source(str(path), STACK).base, RooflineSource)
    with pytest.raises(CalibrationError, match="system 'h100_sxm' vs 'h200_sxm'"):
        make_source(str(path), Stack(STACK.model, "h200_sxm", STACK.backend))
    with pytest.raises(CalibrationError, match="gemm_quant"):
        make_source(str(path), Stack(STACK.model, STACK.system, STACK.backend, gemm_quant="fp8"))
    with pytest.raises(CalibrationError, match="Qwen"):
        CalibratedSource.load(path, RooflineSource(Stack("Qwen/Qwen3-32B", "h100_sxm", "vllm")))
    with pytest.raises(CalibrationError, match="fitted on the 'roofline' source"):
        CalibratedSource.load(path, AicSource(STACK))


def test_file_without_stack_or_with_another_format_is_refused(setup, tmp_path):
    _, _, cal, _ = setup
    path = tmp_path / "calibration.json"
    cal.save(path)
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in doc.items() if k != "base_source"}))
    with pytest.raises(CalibrationError, match="base source"):
        make_source(str(path), STACK)
    path.write_text(json.dumps({**doc, "base_source": "no_such_source"}))
    with pytest.raises(CalibrationError, match="no_such_source"):
        make_source(str(path), STACK)
    path.write_text(json.dumps({**doc, "format_version": 1}))
    with pytest.raises(CalibrationError, match="format"):
        CalibratedSource.load(path, RooflineSource(STACK))


def test_agg_points_calibrate_through_serving_model():
    base = RooflineSource(STACK)
    truth = Distorted(base)
    cfg = SchedulerConfig(token_budget=8192, max_num_seqs=1024, waves=3, warmup_waves=1, stagger=True)
    ms = []
    for c, isl, osl in ((8, 2000, 200), (32, 2000, 200), (64, 2000, 200), (16, 4000, 200)):
        ttft, tpot = predict_agg(truth, TP1, c, isl, osl, cfg)
        ms.append(Measurement(Probe(ProbeKind.AGG, STACK, TP1, isl=isl, osl=osl, concurrency=c), "synthetic",
                              ttft_ms=ttft, tpot_ms=tpot))  # fmt: skip
    cal = calibrate(base, ms, prior={})
    # held-out agg point: the calibrated serving prediction lands close to the truth, the raw one does not
    held = Measurement(Probe(ProbeKind.AGG, STACK, TP1, isl=3000, osl=200, concurrency=24), "synthetic",
                       ttft_ms=1.0, tpot_ms=1.0)  # fmt: skip
    true_ttft, true_tpot = predict_agg(truth, TP1, 24, 3000, 200, cfg)
    raw_ttft, raw_tpot = predict_agg(base, TP1, 24, 3000, 200, cfg)
    t_ttft, t_tpot = collect_observations(base, [held])[0]
    assert abs(raw_tpot / true_tpot - 1) > 0.10  # the raw serving prediction is off ...
    assert abs(cal.correction.predict(t_tpot) / true_tpot - 1) < 0.10  # ... the calibrated one is not
    assert abs(raw_ttft / true_ttft - 1) > 0.15
    assert abs(cal.correction.predict(t_ttft) / true_ttft - 1) < 0.15
    # the phase surfaces themselves move toward the truth (agg points constrain them only loosely)
    b = np.array([16, 48])
    err = cal.decode_itl_ms(TP1, b, [2100, 2100]) / truth.decode_itl_ms(TP1, b, [2100, 2100]) - 1
    raw = base.decode_itl_ms(TP1, b, [2100, 2100]) / truth.decode_itl_ms(TP1, b, [2100, 2100]) - 1
    assert np.all(np.abs(err) < 0.3)
    assert np.all(np.abs(err) < np.abs(raw))


def test_report_has_raw_loo_band_coverage_and_sharpness(setup):
    base, _, _, ms = setup
    rep = calibration_report(base, ms).to_dict()
    assert len(rep["points"]) == len(ms)
    s = rep["summary"]
    assert s["ttft"]["raw_median_abs_error_pct"] > 30
    assert s["ttft"]["loo_median_abs_error_pct"] < 15
    # the truth is inside the model's family: left-out points lie inside their bands ...
    assert s["tpot"]["band_coverage"] >= 0.6
    # ... and the band is not made wide to get there: a few times the actual error, not tens
    assert s["tpot"]["band_half_width_over_error"] < 6
    assert s["tpot"]["band_median_half_width_pct"] < 30  # the prior-width band of old: ±58 %


def test_no_measurements_is_an_error(setup):
    base, _, _, _ = setup
    with pytest.raises(CalibrationError):
        calibrate(base, [])


def test_pipeline_runs_unchanged_on_calibrated_source(setup):
    _, _, cal, _ = setup
    spec = load_spec(model="meta-llama/Meta-Llama-3.1-8B", system="h100_sxm", backend="vllm", isl=2000, osl=200,
                     ttft_ms=300, itl_ms=20, gpu_counts=(1, 2), num_decode_concurrencies=4, num_decode_contexts=3,
                     num_prefill_points=4, plots=False)  # fmt: skip
    profile = estimate(spec, cal)
    assert profile.selection.best_prefill.candidate in (TP1, TP2)
    assert profile.provenance["source"] == "calibrated"
    p = profile.selection.best_prefill.point
    assert p.ttft_low_ms < p.ttft_ms
    assert p.ttft_ms < p.ttft_high_ms


def test_only_measurements_of_the_same_deployment_calibrate(setup):
    _, _, _, ms = setup
    other_quant = Stack(STACK.model, STACK.system, STACK.backend, gemm_quant="fp8")
    fp8_base = RooflineSource(other_quant)
    with pytest.raises(CalibrationError, match="no measurements"):
        calibrate(RooflineSource(Stack(STACK.model, "h200_sxm", STACK.backend)), ms, prior={})
    foreign = [Measurement(Probe(ProbeKind.PREFILL, Stack(STACK.model, STACK.system, STACK.backend, gemm_quant="nvfp4"),
                                 TP1, isl=1000), "synthetic", ttft_ms=1e6)]  # fmt: skip
    cal = calibrate(fp8_base, ms + foreign, prior={})  # the nvfp4 record is another deployment: ignored
    assert cal.correction.n_points == len(ms)


def test_noise_comes_from_the_points_not_the_prior(setup):
    """Exact synthetic truth: the fitted discrepancy is far below the prior's guess (0.20 / 0.06)."""
    _, _, cal, _ = setup
    assert cal.correction.noise.discrepancy["ttft"] < 0.05
    assert cal.correction.noise.discrepancy["tpot"] < 0.03


def test_repetition_spread_over_the_repetitions_is_the_measurement_noise():
    """The noise of a stored mean is its standard error: one repetition's spread / sqrt(repetitions)."""
    truth = Distorted(RooflineSource(STACK))
    m = _prefill(truth, TP1, 1000)
    probe = dataclasses.replace(m.probe, repeats=4)
    noisy = Measurement(probe, "synthetic", ttft_ms=m.ttft_ms, ttft_std_ms=0.1 * m.ttft_ms)
    from_samples = Measurement(probe, "synthetic", ttft_ms=10.0, samples={"ttft_ms": [9.0, 10.0, 11.0]})
    base = RooflineSource(STACK)
    assert collect_observations(base, [noisy])[0][0].noise_sd == pytest.approx(0.1 / 2)  # 4 repeats
    assert collect_observations(base, [from_samples])[0][0].noise_sd == pytest.approx(0.1 / np.sqrt(3))
    assert collect_observations(base, [m])[0][0].noise_sd == 0.0


def test_band_widens_far_from_the_measured_inputs(setup):
    _, _, cal, _ = setup
    lo, hi = cal.prefill_ttft_band(TP1, [2000, 60000])  # measured at 512 and 4096
    assert np.log(hi[1] / lo[1]) > 2 * np.log(hi[0] / lo[0])
    lo, hi = cal.decode_itl_band(TP1, [16, 4096], [2100, 2100])  # measured at 2 and 64
    assert np.log(hi[1] / lo[1]) > 2 * np.log(hi[0] / lo[0])


def test_parameters_are_named_and_the_correction_immutable(setup):
    _, _, cal, _ = setup
    values = cal.correction.mean.values()
    assert values["delta_prefill[TP1]"] == cal.correction.mean.offsets("TP1").delta_prefill
    assert cal.correction.mean.offsets("TP8").delta_prefill == 0.0  # never measured: shared part only
    with pytest.raises(CalibrationError, match="missing"):
        Parameters.from_values({k: v for k, v in values.items() if k != "beta_isl"}, cal.correction.engines)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cal.correction.noise = None


def test_vectorised_model_agrees_with_the_reference_prediction(setup):
    """The fit's numpy evaluation and ``predict_ms`` are one formula (prefill, decode, agg, unmeasured engine)."""
    base, truth, cal, ms = setup
    cfg = SchedulerConfig(token_budget=8192, max_num_seqs=1024, waves=3, warmup_waves=1, stagger=True)
    ttft, tpot = predict_agg(truth, TP1, 16, 2000, 200, cfg)
    agg = Measurement(Probe(ProbeKind.AGG, STACK, TP4, isl=2000, osl=200, concurrency=16), "synthetic",
                      ttft_ms=ttft, tpot_ms=tpot)  # fmt: skip
    obs = collect_observations(base, ms + [agg])[0] + [Observation.prefill("TP1", 10.0, 8192.0, 4.0)]
    names = cal.correction.mean.names
    rng = np.random.default_rng(0)
    theta = np.array([cal.correction.mean.values()[n] for n in names]) + rng.normal(0, 0.1, len(names))
    params = Parameters.from_values(dict(zip(names, theta, strict=True)), cal.correction.engines)
    ref = np.log([predict_ms(o, params) for o in obs])
    np.testing.assert_allclose(VectorModel(obs, names).log_pred(theta)[0], ref, rtol=1e-12, atol=1e-12)


def test_attention_is_scaled_apart_from_the_rest_of_prefill():
    """``log_attention`` scales only a prefill's attention part; AIC's part is its context-attention op."""
    obs = Observation.prefill("TP1", 10.0, 8192.0, 4.0)
    p = Parameters(dataclasses.replace(Parameters().shared, log_step_ms=-30.0, log_overhead_ms=-30.0,
                                       log_attention=np.log(0.5)))  # fmt: skip
    assert predict_ms(obs, p) == pytest.approx(6.0 + 0.5 * 4.0)
    aic = AicSource(STACK)
    total, attention = aic.prefill_ttft_ms(TP1, [256, 32768]), aic.prefill_attention_ms(TP1, [256, 32768])
    assert np.all(attention > 0) and np.all(attention < total)
    assert attention[1] / total[1] > attention[0] / total[0]  # its share grows with ISL


def test_predictive_distribution_gives_the_band(setup):
    """Decisions sample the same distribution the band is cut from."""
    _, _, cal, _ = setup
    obs = cal._prefill(TP1, [3000])[0]
    (pred,) = cal.correction.predictive([obs])
    band = cal.correction.band(obs)
    assert pred.quantile(0.05) == pytest.approx(band.low_ms)
    assert pred.quantile(0.95) == pytest.approx(band.high_ms)
    assert pred.quantile(0.5) == pytest.approx(band.point_ms)
    assert pred.dof == cal.correction.noise.dof["ttft"]


def test_posterior_draws_move_little_when_the_covariance_moves_by_round_off():
    """Draws are a continuous function of the covariance: two equal eigenvalues, one nudged by 1e-12 either
    way (what another BLAS kernel does), swap the eigenvectors eigh returns; through V sqrt(W) the draws then
    changed by the whole spread (a plan's P with them), through the symmetric root they stay put."""
    from estimator.calibration import _gaussian

    a, b = np.diag([1.0, 1.0 + 1e-12]), np.diag([1.0 + 1e-12, 1.0])
    da, db = (_gaussian(np.random.default_rng(0), c, 400) for c in (a, b))
    assert np.max(np.abs(da - db)) < 1e-9
    assert np.allclose(np.cov(da.T), np.eye(2), atol=0.2)


def test_a_failing_per_op_prefill_loses_only_the_attention_split(monkeypatch, caplog):
    """AIC's per-op call failing where its total works: attention reads 0 for that engine (one warning)
    and the prefill, the calibration and the profile go on."""
    import aiconfigurator_core.sdk.engine as engine

    def boom(self, **kw):
        raise RuntimeError("per-op stream failed (simulated)")

    monkeypatch.setattr(engine.EngineHandle, "run_static_per_op", boom)
    aic = AicSource(STACK)
    with caplog.at_level("WARNING", logger="estimator.sources.aic"):
        assert np.all(aic.prefill_attention_ms(TP1, [512, 4096]) == 0.0)
        assert np.all(aic.prefill_attention_ms(TP1, [8192]) == 0.0)
    assert sum("per-op prefill of TP1 failed" in r.getMessage() for r in caplog.records) == 1
    assert np.all(aic.prefill_ttft_ms(TP1, [512, 4096]) > 0)
