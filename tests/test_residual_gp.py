"""The residual field on agg points: recovers a pattern the serving model cannot express, stays local."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from estimator.measurements import Measurement, Probe, ProbeKind
from estimator.serving import SchedulerConfig, predict_agg
from estimator.sources.base import Stack
from estimator.sources.calibrated import CalibratedSource
from estimator.sources.residual_gp import HYPER, ResidualField, ResidualPoint
from estimator.sources.roofline import RooflineSource
from tests.test_calibrate import TP1, TP2, Distorted
from validate.calibrate import calibrate, collect_observations

STACK = Stack("meta-llama/Meta-Llama-3.1-8B", "h100_sxm", "vllm")


def _pattern(c: float, isl: float) -> float:
    """A smooth log-residual in concurrency and ISL (what e.g. a client's arrival pattern adds)."""
    return 0.5 * math.tanh(math.log(c / 16)) + 0.2 * math.log(isl / 2048)


def test_field_interpolates_near_points_and_reverts_far_away():
    pts = [ResidualPoint(e, "ttft", c, isl, 512, _pattern(c, isl))
           for e in ("TP1", "TP2") for c in (4, 16, 64) for isl in (1024, 4096)]  # fmt: skip
    gp = ResidualField(pts)
    for c, isl in ((32, 2048), (8, 1024)):  # between measured inputs
        assert abs(gp.predict("TP2", "ttft", c, isl, 512)[0] - _pattern(c, isl)) < 0.05
    at_point = gp.predict("TP2", "ttft", 16, 1024, 512)
    shared, engine, noise = HYPER["ttft"]
    far_mean, far_var = gp.predict("TP2", "ttft", 4096, 1_000_000, 512)
    assert abs(far_mean) < 0.01  # far from every point: back to the parametric prediction ...
    assert far_var == pytest.approx(
        shared**2 + engine**2 + noise**2, rel=1e-3
    )  # ... with the prior's variance
    assert abs(at_point[0] - _pattern(16, 1024)) < 0.01
    assert at_point[1] < far_var / 20
    assert gp.predict("TP2", "tpot", 32, 2048, 512) is None  # no TPOT points: no field
    again = ResidualField.from_dict(gp.to_dict())
    assert again.predict("TP4", "ttft", 8, 3000, 512) == pytest.approx(
        gp.predict("TP4", "ttft", 8, 3000, 512)
    )


def _agg(truth, cand, c, isl, osl, cfg):
    ttft, tpot = predict_agg(truth, cand, c, isl, osl, cfg)
    ttft *= math.exp(_pattern(c, isl))  # what the serving model cannot produce
    return Measurement(Probe(ProbeKind.AGG, STACK, cand, isl=isl, osl=osl, concurrency=c), "synthetic",
                       ttft_ms=ttft, tpot_ms=tpot)  # fmt: skip


def test_calibration_uses_the_field_for_agg_only(tmp_path):
    base = RooflineSource(STACK)
    truth = Distorted(base)
    cfg = SchedulerConfig(token_budget=8192, max_num_seqs=1024, waves=3, warmup_waves=1, stagger=True)
    ms = [_agg(truth, TP1, c, isl, 256, cfg) for c in (4, 16, 64) for isl in (1024, 4096)]
    ms += [_agg(truth, TP2, c, 2048, 256, cfg) for c in (4, 64)]
    cal = calibrate(base, ms, prior={})
    held = _agg(truth, TP2, 16, 2048, 256, cfg)  # TP2 never measured at c = 16; TP1 was, nearby
    t_ttft, _ = collect_observations(base, [held])[0]
    with_field = cal.correction.predict(t_ttft)
    without = dataclasses.replace(cal.correction, residual=None).predict(t_ttft)
    err, err0 = abs(with_field / held.ttft_ms - 1), abs(without / held.ttft_ms - 1)
    assert err < 0.1
    assert err < 0.7 * err0
    band = cal.correction.band(t_ttft)
    assert band.low_ms < held.ttft_ms
    assert held.ttft_ms < band.high_ms
    # phase surfaces (what selection uses) do not go through the agg field
    plain = CalibratedSource(base, dataclasses.replace(cal.correction, residual=None))
    np.testing.assert_allclose(
        cal.prefill_ttft_ms(TP2, [1000, 4000]), plain.prefill_ttft_ms(TP2, [1000, 4000])
    )
    # the field is saved with the calibration
    cal.save(tmp_path / "cal.json")
    again = CalibratedSource.load(tmp_path / "cal.json", base)
    assert again.correction.predict(t_ttft) == pytest.approx(with_field)
