"""The continuous-concurrency protocol of benchmarks/decision_regret.py: the interpolated truth, the grid, and
the prediction at any concurrency through the serving model (benchmarks/regret_continuous.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from estimator.calibration import identity
from estimator.candidates import Candidate, Mapping
from estimator.measurements import Measurement, Probe, ProbeKind
from estimator.sources.base import Stack
from estimator.sources.roofline import RooflineSource
from validate.calibrate import observations_for

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import regret_continuous as RC

STACK = Stack("meta-llama/Meta-Llama-3.1-8B", "h100_sxm", "vllm")
TP1 = Candidate(Mapping.TP, 1)
C = [4, 8, 16, 64]
TTFT = [40.0, 45.0, 70.0, 300.0]
TPOT = [8.0, 9.0, 11.0, 20.0]


def test_interpolation_reproduces_measured_rows_exactly():
    assert RC.interpolate_loglog(C, TTFT, C).tolist() == TTFT
    assert RC.interpolate_loglog(C, TPOT, [16]).tolist() == [11.0]


def test_interpolation_is_monotone_and_between_neighbours():
    c = RC.concurrency_grid(4, 64)
    y = RC.interpolate_loglog(C, TTFT, c)
    assert np.all(np.diff(y) >= 0)
    mid = RC.interpolate_loglog(C, TTFT, [32])[0]
    assert 70.0 < mid < 300.0
    assert mid == pytest.approx(np.sqrt(70.0 * 300.0))  # log-log: the geometric mean at the log midpoint


def test_interpolation_is_exact_on_a_power_law_and_refuses_to_extrapolate():
    cs = [2.0, 8.0, 32.0]
    y = [3 * c**0.4 for c in cs]
    assert RC.interpolate_loglog(cs, y, [5.0, 20.0]) == pytest.approx([3 * 5**0.4, 3 * 20**0.4])
    with pytest.raises(ValueError, match="outside"):
        RC.interpolate_loglog(cs, y, [64.0])
    with pytest.raises(ValueError, match="increasing"):
        RC.interpolate_loglog([2.0, 2.0], [1.0, 2.0], [2.0])


def test_grid_holds_the_ends_and_the_measured_points_at_fine_steps():
    g = RC.concurrency_grid(5, 100, include=[7, 64, 200])
    assert g[0] == 5 and g[-1] == 100 and 7 in g and 64 in g and 200 not in g
    assert np.all(np.diff(g) > 0)
    big = g[g >= 32]
    assert np.max(big[1:] / big[:-1]) <= 2 ** (1 / RC.PER_DOUBLING) * 1.02  # rounding to integers


def _row(engine, version, c, ttft, tpot):
    return {"family": "f", "engine": engine, "version": version, "isl": 1024, "osl": 128, "concurrency": c,
            "targets": [{"kind": "ttft", "measured_ms": ttft}, {"kind": "tpot", "measured_ms": tpot}]}  # fmt: skip


def test_curves_keep_versions_apart_merge_repeats_and_drop_single_points():
    rows = [_row("TP1", "a", 8, 10.0, 1.0), _row("TP1", "a", 8, 40.0, 4.0), _row("TP1", "a", 16, 50.0, 5.0),
            _row("TP1", "b", 8, 11.0, 1.1), _row("TP2", "a", 8, 9.0, 0.9), _row("TP2", "a", 32, 19.0, 1.9)]  # fmt: skip
    curves = RC.curves_of(rows)
    assert [(c.engine, c.version) for c in curves] == [("TP1", "a"), ("TP2", "a")]  # TP1/b: one point only
    assert curves[0].concurrency == (8, 16)
    assert curves[0].ttft_ms[0] == pytest.approx(20.0) and curves[0].tpot_ms[0] == pytest.approx(2.0)
    ttft, tpot = curves[1].truth([8, 32])
    assert ttft.tolist() == [9.0, 19.0] and tpot.tolist() == [0.9, 1.9]


def _measurement(c):
    probe = Probe(ProbeKind.AGG, STACK, TP1, isl=1024, osl=128, concurrency=c)
    return Measurement(probe, "synthetic", ttft_ms=50.0, tpot_ms=10.0, itl_ms=10.0)


def test_prediction_at_a_measured_concurrency_is_the_measured_rows_path():
    src = RooflineSource(STACK)
    m = _measurement(16)
    at = RC.observations_at(src, m, 16)
    ref = [o.with_measured(None) for o in observations_for(src, m)]
    assert at == ref


def test_prediction_at_other_concurrencies_goes_through_the_serving_model():
    import dataclasses

    from estimator.serving import SchedulerConfig, serving_terms

    src, m = RooflineSource(STACK), _measurement(16)
    ttft, tpot = RC.observations_at(src, m, 40)
    assert (ttft.kind, tpot.kind, ttft.concurrency, tpot.concurrency) == ("ttft", "tpot", 40, 40)
    cfg = dataclasses.replace(SchedulerConfig.for_backend("vllm"), waves=3, warmup_waves=1, stagger=True)
    steady = serving_terms(src, TP1, 40, 1024, 128, cfg)  # the staggered steady state at 40 clients
    assert tpot.steady.decode_ms == pytest.approx(steady.tpot_decode_ms)
    assert ttft.steady.prefill_ms == pytest.approx(steady.ttft_prefill_ms)
    raw = identity()
    per_token = [raw.predict(RC.observations_at(src, m, c)[1]) for c in (4, 16, 48, 64)]
    assert np.all(np.diff(per_token) > 0)  # a larger batch makes each token slower


def _option(c, meas_ttft, meas_tpot, pred_ttft, pred_tpot, measured, rng, sd=0.1):
    import decision_regret as D

    draws = np.exp(np.log([pred_ttft, pred_tpot])[None, :] + sd * rng.standard_normal((4000, 2)))
    band = lambda p: (p, p * np.exp(-1.645 * sd), p * np.exp(1.645 * sd))
    return {"engine": "TP1", "version": "", "concurrency": c, "measured_point": measured,
            "meas_ttft": meas_ttft, "meas_tpot": meas_tpot, "meas_thpt": D.thpt_per_gpu("TP1", c, 128, meas_ttft, meas_tpot),
            "raw_ttft": pred_ttft, "raw_tpot": pred_tpot, "raw_thpt": D.thpt_per_gpu("TP1", c, 128, pred_ttft, pred_tpot),
            "cal_ttft": band(pred_ttft), "cal_tpot": band(pred_tpot),
            "cal_thpt": D.thpt_per_gpu("TP1", c, 128, pred_ttft, pred_tpot),
            "cal_draws": draws.astype(np.float32)}  # fmt: skip


def test_continuous_scoring_uses_the_confidence_rule_and_scores_regret():
    import decision_regret as D

    rng = np.random.default_rng(0)
    cs = [8, 11, 16, 23, 32]
    ttft, tpot = (
        RC.interpolate_loglog([8, 16, 32], [40, 60, 120], cs),
        RC.interpolate_loglog([8, 16, 32], [5, 6, 9], cs),
    )
    # predicted 10 % optimistic: the point rule takes a point the silicon misses, 0.9 steps back
    opts = [
        _option(c, a, b, a * 0.9, b * 0.9, c in (8, 16, 32), rng)
        for c, a, b in zip(cs, ttft, tpot, strict=True)
    ]
    t_ttft, t_tpot = 65.0, 6.5
    joint = [D.p_meets(o, t_ttft, t_tpot) for o in opts]
    for rule in D.CONTINUOUS_RULES:  # the precomputed probabilities give the same picks
        assert D.pick(opts, rule, t_ttft, t_tpot, joint) == D.pick(opts, rule, t_ttft, t_tpot)
    out = D.score_continuous_group("f", 0, 1024, 128, opts, np.array([40.0, 120.0]), np.array([5.0, 9.0]))
    got = {(r["options"], r["rule"], r["sla_ttft_ms"], r["sla_tpot_ms"]): r for r in out}
    sla = (float(np.quantile([40.0, 120.0], 0.6)), float(np.quantile([5.0, 9.0], 0.6)))  # 88, 7.4
    meets = [a <= sla[0] and b <= sla[1] for a, b in zip(ttft, tpot, strict=True)]
    best = max(o["meas_thpt"] for o, m in zip(opts, meets, strict=True) if m)
    for name in ("grid", "measured"):
        for rule in D.CONTINUOUS_RULES:
            r = got[(name, rule, *sla)]
            i = cs.index(r["concurrency"])
            assert r["meets_on_silicon"] == meets[i]
            assert r["regret"] == (pytest.approx(1 - opts[i]["meas_thpt"] / best) if meets[i] else 1.0)
            if name == "measured":
                assert r["measured_point"]
    assert got[("grid", "k3-point", *sla)]["concurrency"] == 23  # a grid point between two measured ones
    assert got[("measured", "k3-point", *sla)]["concurrency"] == 16
