"""The predictive's tail shape learned from other deployments' held-out errors (heavy-tailed agg errors)."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest

from estimator.calibration import Correction
from estimator.calibration_fit import MIN_TAIL_POINTS, Prior, fit, learn_tails
from estimator.errors import CalibrationError
from estimator.measurements import Measurement, Probe, ProbeKind
from estimator.serving import SchedulerConfig, predict_agg
from estimator.sources.roofline import RooflineSource
from tests.test_calibrate import STACK, TP1, Distorted
from validate.calibrate import bundled_tails, collect_observations, default_prior


def test_learn_tails_recovers_a_student_t_and_skips_thin_kinds():
    rng = np.random.default_rng(0)
    z = 0.5 * rng.standard_t(2.0, size=4000)
    got = learn_tails({"ttft": z.tolist(), "tpot": [0.1] * (MIN_TAIL_POINTS - 1)})
    assert set(got) == {"ttft"}
    scale, dof = got["ttft"]
    assert scale == pytest.approx(0.5, rel=0.1)
    assert dof == pytest.approx(2.0, rel=0.2)


def _agg_records(base, concurrencies=(4, 8, 16, 32, 64, 128)):
    truth = Distorted(base)
    cfg = SchedulerConfig(token_budget=8192, max_num_seqs=1024, waves=3, warmup_waves=1, stagger=True)
    ms = []
    for c in concurrencies:
        ttft, tpot = predict_agg(truth, TP1, c, 2000, 200, cfg)
        ms.append(Measurement(Probe(ProbeKind.AGG, STACK, TP1, isl=2000, osl=200, concurrency=c), "synthetic",
                              ttft_ms=ttft, tpot_ms=tpot))  # fmt: skip
    return ms


def test_tails_set_the_predictives_shape_and_leave_the_point_alone():
    base = RooflineSource(STACK)
    obs = [o for pair in collect_observations(base, _agg_records(base)) for o in pair]
    gauss = fit(obs, Prior())
    heavy = fit(obs, dataclasses.replace(Prior(), tails={"ttft": (0.45, 1.6), "tpot": (0.4, 2.1)}))
    for o in obs:
        (g,), (h,) = gauss.predictive([o]), heavy.predictive([o])
        assert h.point_ms == pytest.approx(g.point_ms)  # the tails change the band, not the fit
        assert h.dof == (1.6 if o.kind == "ttft" else 2.1)
        assert h.log_sd == pytest.approx((0.45 if o.kind == "ttft" else 0.4) * g.log_sd)
        # sharper in the middle (the 80 % interval), wider far out (the 99.9 % point)
        assert h.quantile(0.9) < g.quantile(0.9)
        assert h.quantile(0.999) > g.quantile(0.999)


def test_tail_scale_survives_a_round_trip_and_a_bad_one_is_refused():
    base = RooflineSource(STACK)
    obs = [o for pair in collect_observations(base, _agg_records(base)) for o in pair]
    corr = fit(obs, dataclasses.replace(Prior(), tails={"ttft": (0.45, 1.6)}))
    doc = json.loads(json.dumps(corr.to_dict()))
    back = Correction.from_dict(doc)
    assert dict(back.noise.tail_scale) == {"ttft": 0.45}
    assert back.predictive(obs)[0].log_sd == pytest.approx(corr.predictive(obs)[0].log_sd)
    old = {**doc, "noise": {k: v for k, v in doc["noise"].items() if k != "tail_scale"}}
    assert dict(Correction.from_dict(old).noise.tail_scale) == {}  # files from before: no factor
    with pytest.raises(CalibrationError, match="tail_scale"):
        Correction.from_dict({**doc, "noise": {**doc["noise"], "tail_scale": {"ttft": -1.0}}})


def test_agg_calibrations_take_the_bundled_tails_and_phase_ones_do_not():
    tails = bundled_tails()
    assert set(tails) == {"ttft", "tpot"}
    assert all(0 < scale < 1 and 1 < dof < 30 for scale, dof in tails.values())  # heavier than a Gaussian
    base = RooflineSource(STACK)
    assert default_prior(base, _agg_records(base)).tails == tails
    prefill = [Measurement(Probe(ProbeKind.PREFILL, STACK, TP1, isl=1024, osl=1, concurrency=1), "synthetic",
                           ttft_ms=20.0)]  # fmt: skip
    assert not default_prior(base, prefill).tails


def test_a_malformed_tails_entry_is_ignored_with_a_warning(tmp_path, caplog):
    from validate.calibrate import PRIOR_FILE

    doc = json.loads(PRIOR_FILE.read_text())
    path = tmp_path / "prior.json"
    path.write_text(json.dumps({**doc, "tails": {"ttft": [0.0, 2.0]}}))
    with caplog.at_level(logging.WARNING):
        assert bundled_tails(path) == {}
    assert "tails" in caplog.text


def test_the_benchmarks_learn_a_familys_tails_from_the_other_families_only():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import silicon_calibration as SC

    rng = np.random.default_rng(1)
    rows = [
        {"family": fam, "kind": "ttft", "measured_ms": 100.0 * float(np.exp(sd * z)), "ours_ms": 100.0,
         "log_sd": 1.0}
        for fam, sd in (("wide", 3.0), ("narrow", 0.3))
        for z in rng.standard_normal(400)
    ]
    z = SC.standardised_errors(rows)
    assert len(z["wide"]["ttft"]) == 400
    assert SC.tails_without(z, "narrow")["ttft"][0] > 2.0  # learned from the wide family alone
    assert SC.tails_without(z, "wide")["ttft"][0] < 0.5
