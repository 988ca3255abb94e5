"""Joint draws of several latencies (``PerfSource.latency_draws``, ``Correction.sample``): dependence and marginals.

A hand-built correction: prefill scale alpha_prefill with posterior sd 0.10 shared by TP1 and TP2, per-engine
offsets with sd 0.03, TTFT discrepancy 0.02, no step or request overhead (so d log TTFT / d alpha = 1). The
correlation of two engines' log TTFT is then var(alpha) / (var(alpha) + var(delta) + noise^2) = 0.01 / 0.0113.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import multivariate_normal, norm

from estimator.calibration import Correction, EngineOffsets, Noise, Observation, Parameters, SharedParameters
from estimator.candidates import Candidate, Mapping
from estimator.confidence import prob_all_within, prob_within
from estimator.sources.base import LatencyQuery, PerfSource, Stack
from estimator.sources.calibrated import CalibratedSource

TP = {n: Candidate(Mapping.TP, n) for n in (1, 2, 4)}
STACK = Stack("meta-llama/Llama-3.1-8B", "h100_sxm", "vllm")
N = 40000


class Flat(PerfSource):
    """A base source with fixed values and a ×(0.8, 1.25) band: TTFT 100 ms / n^0.8 (n GPUs), ITL 10 ms."""

    name = "flat"

    def prefill_ttft_ms(self, candidate, isl):
        return np.full(np.atleast_1d(isl).shape, 100.0 / candidate.num_gpus**0.8)

    def decode_itl_ms(self, candidate, batch, context):
        return np.full(np.broadcast(np.atleast_1d(batch), np.atleast_1d(context)).shape, 10.0)

    def kv_capacity_tokens(self, candidate):
        return 10**6

    def prefill_ttft_band(self, candidate, isl):
        v = self.prefill_ttft_ms(candidate, isl)
        return 0.8 * v, 1.25 * v

    def decode_itl_band(self, candidate, batch, context):
        v = self.decode_itl_ms(candidate, batch, context)
        return 0.8 * v, 1.25 * v


def correction(sd_alpha=0.10, sd_delta=0.03, noise=0.02, rho_phases=0.0, dof=0.0) -> Correction:
    shared = SharedParameters(log_step_ms=-30.0, log_overhead_ms=-30.0)
    mean = Parameters(shared, {"TP1": EngineOffsets(), "TP2": EngineOffsets()})
    names = mean.names
    cov = np.zeros((len(names), len(names)))
    i_p, i_d = names.index("alpha_prefill"), names.index("alpha_decode")
    cov[i_p, i_p] = cov[i_d, i_d] = sd_alpha**2
    cov[i_p, i_d] = cov[i_d, i_p] = rho_phases * sd_alpha**2
    for e in ("TP1", "TP2"):
        for p in ("delta_prefill", "delta_decode"):
            j = names.index(f"{p}[{e}]")
            cov[j, j] = sd_delta**2
    kinds = {"ttft": noise, "tpot": noise}
    return Correction(mean, cov, Noise(kinds, {"ttft": 0.0, "tpot": 0.0}, {"ttft": dof, "tpot": dof}),
                      {"delta_prefill": 0.2, "delta_decode": 0.2, "delta_ttft": 0.0, "delta_step": 0.0})  # fmt: skip


def log_corr(d: np.ndarray) -> np.ndarray:
    return np.corrcoef(np.log(d).T)


def test_default_draws_one_quantile_per_engine_and_phase_independent_between_engines():
    src = Flat(STACK)
    qs = [LatencyQuery.ttft(TP[1], 3000), LatencyQuery.ttft(TP[2], 3000), LatencyQuery.itl(TP[1], 8, 3075),
          LatencyQuery.itl(TP[1], 64, 3075)]  # fmt: skip
    d = src.latency_draws(qs, N, np.random.default_rng(0))
    r = log_corr(d)
    assert abs(r[0, 1]) < 0.03  # two engines: independent
    assert abs(r[0, 2]) < 0.03  # TTFT and ITL of one engine: independent
    assert r[2, 3] == pytest.approx(1.0)  # one engine's ITL curve moves as one
    assert not src.draws_are_joint


def test_calibrated_draws_share_the_phase_scale_between_engines():
    src = CalibratedSource(Flat(STACK), correction())
    qs = [LatencyQuery.ttft(TP[1], 1024), LatencyQuery.ttft(TP[2], 1024), LatencyQuery.ttft(TP[4], 1024)]
    d = src.latency_draws(qs, N, np.random.default_rng(0))
    r = log_corr(d)
    assert r[0, 1] == pytest.approx(0.01 / 0.0113, abs=0.01)  # 0.885
    # TP4 was never measured: its offset has the prior's sd 0.2, so it follows the shared scale less
    # (sampling sd of this correlation at 40000 draws: ~0.005)
    assert r[0, 2] == pytest.approx(0.01 / math.sqrt(0.0113 * (0.01 + 0.04 + 0.0004)), abs=0.025)  # 0.419
    assert src.draws_are_joint


def test_calibrated_draws_marginals_are_the_bands():
    for dof in (0.0, 4.0):
        src = CalibratedSource(Flat(STACK), correction(dof=dof))
        qs = [LatencyQuery.ttft(TP[1], 1024), LatencyQuery.ttft(TP[4], 1024), LatencyQuery.itl(TP[2], 16, 2048)]
        d = src.latency_draws(qs, N, np.random.default_rng(3))
        lo, hi = src.query_bands(qs)
        q05, q50, q95 = np.quantile(d, [0.05, 0.5, 0.95], axis=0)
        width = np.log(hi / lo)
        assert np.all(np.abs(np.log(q05 / lo)) < 0.03 * width)
        assert np.all(np.abs(np.log(q95 / hi)) < 0.03 * width)
        point = np.array([src.prefill_ttft_ms(TP[1], [1024])[0], src.prefill_ttft_ms(TP[4], [1024])[0],
                          src.decode_itl_ms(TP[2], [16], [2048])[0]])  # fmt: skip
        assert np.all(np.abs(np.log(q50 / point)) < 0.03 * width)


def test_ttft_and_itl_move_together_when_their_scales_do():
    qs = [LatencyQuery.ttft(TP[1], 1024), LatencyQuery.itl(TP[1], 16, 2048)]
    apart = log_corr(CalibratedSource(Flat(STACK), correction()).latency_draws(qs, N, np.random.default_rng(0)))
    joint = log_corr(
        CalibratedSource(Flat(STACK), correction(rho_phases=0.9)).latency_draws(qs, N, np.random.default_rng(0))
    )
    assert abs(apart[0, 1]) < 0.03
    assert joint[0, 1] == pytest.approx(0.9 * 0.01 / 0.0113, abs=0.01)  # 0.796


def test_joint_probability_from_draws_beats_the_product_when_errors_move_together():
    src = CalibratedSource(Flat(STACK), correction(rho_phases=0.9))
    qs = [LatencyQuery.ttft(TP[1], 1024), LatencyQuery.itl(TP[1], 16, 2048)]
    lo, hi = src.query_bands(qs)
    targets = [float(hi[0]) * 0.95, float(hi[1]) * 0.95]  # each met with P ~ 0.9
    product = float(prob_within(targets[0], lo[0], hi[0]) * prob_within(targets[1], lo[1], hi[1]))
    joint = prob_all_within(src, qs, targets, n=N)
    # Gaussian: both log latencies standardised, correlation 0.9 * 0.01 / 0.0113: P(both) by scipy's bivariate cdf
    z = [math.log(t / math.sqrt(a * b)) / (math.log(b / a) / (2 * 1.6448536)) for t, a, b in zip(targets, lo, hi)]
    rho = 0.9 * 0.01 / 0.0113
    want = float(multivariate_normal([0, 0], [[1, rho], [rho, 1]]).cdf(z))
    assert joint == pytest.approx(want, abs=0.008)
    assert joint > product + 0.05  # correlated errors: P(both) well above the product ...
    # ... and a source without joint draws gets the product exactly
    assert prob_all_within(Flat(STACK), qs, targets) == pytest.approx(
        float(prob_within(targets[0], 80, 125) * prob_within(targets[1], 8, 12.5))
    )


def test_sample_handles_heavy_tails_and_no_observations():
    c = correction(dof=1.0)
    obs = [Observation.prefill("TP1", 100.0, 1024.0)]
    d = c.sample(obs, 5000, np.random.default_rng(0))
    assert np.all(np.isfinite(d)) and np.all(d > 0)
    assert c.sample([], 10, np.random.default_rng(0)).shape == (10, 0)


def test_selection_reports_both_picks_jointly_when_the_source_has_joint_draws():
    from estimator.select import select
    from estimator.surfaces import decode_sweep, prefill_point

    for src, joint in ((Flat(STACK), False), (CalibratedSource(Flat(STACK), correction(rho_phases=0.9)), True)):
        points = [prefill_point(src, TP[n], 1024) for n in (1, 2)]
        sweeps = [decode_sweep(src, TP[n], 1024, 2048, num_points=8, cap=256) for n in (1, 2)]
        sel = select(points, sweeps, ttft_target_ms=1.1 * points[0].ttft_ms, itl_target_ms=11.0, isl=1024,
                     osl=2048, source=src)  # fmt: skip
        p, d = sel.best_prefill, sel.best_decode
        product = float(prob_within(1.1 * points[0].ttft_ms, p.point.ttft_low_ms, p.point.ttft_high_ms)
                        * prob_within(11.0, d.itl_low_ms, d.itl_high_ms))  # fmt: skip
        if joint:
            assert sel.p_meets_sla > product + 0.02
        else:
            assert sel.p_meets_sla == pytest.approx(product)


def test_decision_confidence_ranks_engines_on_joint_draws():
    # TP1 prefills 2^0.2 = 1.149x the tokens/s/GPU of TP2. Independent bands (log sd 0.106 each): P(TP1 best)
    # = Phi(ln 1.149 / (0.106 sqrt 2)) = 0.82; a shared scale leaves only the offsets and noise to tell them
    # apart (sd sqrt(2 (0.0009 + 0.0004)) = 0.051): Phi(2.72) = 0.997
    from estimator.select import select
    from estimator.surfaces import decode_sweep, prefill_point
    from validate.sequential import decision_confidence

    src = CalibratedSource(Flat(STACK), correction())
    points = [prefill_point(src, TP[n], 1024) for n in (1, 2)]
    sweeps = [decode_sweep(src, TP[1], 1024, 2048, num_points=4, cap=64)]
    sel = select(points, sweeps, ttft_target_ms=500, itl_target_ms=50, isl=1024, osl=2048)
    assert sel.best_prefill.candidate == TP[1]
    joint = decision_confidence(points, sweeps, sel, 500, 50, source=src, draws=20000)
    apart = decision_confidence(points, sweeps, sel, 500, 50, draws=20000)
    assert joint.p_prefill == pytest.approx(0.997, abs=0.003)
    assert apart.p_prefill == pytest.approx(float(norm.cdf(math.log(2**0.2) / (math.sqrt(2 * 0.0113)))), abs=0.01)
    assert joint.confidence == pytest.approx(joint.p_prefill * joint.p_decode, abs=0.003)  # one decode engine


# ---- P(meeting a target) from the source itself (``PerfSource.prob_within``) -------------------------------
def tailed_study(dof: float = 1.9):
    """Flat's engines through a correction whose predictive is a Student-t of ``dof`` (the bundled silicon
    tails: 1.9 TTFT, 2.4 TPOT), prefill points TP1/TP2/TP4 and decode sweeps TP1/TP2."""
    from estimator.surfaces import decode_sweep, prefill_point

    src = CalibratedSource(Flat(STACK), correction(dof=dof))
    points = [prefill_point(src, TP[n], 1024) for n in (1, 2, 4)]
    sweeps = [decode_sweep(src, TP[n], 1024, 2048, num_points=8, cap=256) for n in (1, 2)]
    return src, points, sweeps


def draws_marginal(src, query, target_ms, n=200_000):
    return float(np.mean(src.latency_draws([query], n, np.random.default_rng(7))[:, 0] <= target_ms))


def test_calibrated_prob_within_is_the_predictives_own_cdf():
    from scipy.stats import t as student_t

    src = CalibratedSource(Flat(STACK), correction(dof=1.9))
    qs = [LatencyQuery.ttft(TP[1], 1024), LatencyQuery.ttft(TP[4], 1024), LatencyQuery.itl(TP[2], 16, 2048)]
    preds = src.correction.predictive(src._observations(qs))
    targets = [1.5 * p.point_ms for p in preds]
    want = [student_t.cdf(math.log(1.5) / p.log_sd, 1.9) for p in preds]
    assert src.prob_within(qs, targets) == pytest.approx(want, rel=1e-9)
    # and the joint draws' marginals (what plan --confidence and P(both) are computed from)
    for q, t, w in zip(qs, targets, want, strict=True):
        assert draws_marginal(src, q, t) == pytest.approx(w, abs=0.003)
    # normal where there is no dof; a zero-spread predictive is the point rule
    normal = CalibratedSource(Flat(STACK), correction(dof=0.0))
    p0 = normal.correction.predictive(normal._observations(qs[:1]))[0]
    want0 = norm.cdf(math.log(1.5) / p0.log_sd)
    assert float(normal.prob_within(qs[:1], [1.5 * p0.point_ms])[0]) == pytest.approx(want0)
    exact = CalibratedSource(Flat(STACK), correction(sd_alpha=0.0, sd_delta=0.0, noise=0.0))
    assert list(exact.prob_within([qs[0], qs[0]], [100.0, 99.9])) == [1.0, 0.0]


@pytest.mark.parametrize("level", [0.99, 0.999])
def test_confident_pick_meets_the_level_under_the_sources_own_tails(level):
    """The targets sit where the band read as a lognormal gives TP1 (the most tokens/s/GPU) exactly ``level``:
    the old rule (every P from the band, as ``source=None`` still does) certified TP1 there, whose P under the
    calibration's own Student-t (dof 1.9: what its draws sample) is 0.972 at 0.99 and 0.983 at 0.999. The
    pick must reach the level under the source's own model."""
    from estimator.confidence import quantile
    from estimator.select import best_decode_point_confident, rank_prefill_confident, select

    src, points, sweeps = tailed_study()
    ttft_t = float(quantile(level, points[0].ttft_low_ms, points[0].ttft_high_ms)) * 1.0001
    itl_t = float(quantile(level, sweeps[0].itl_low_ms[0], sweeps[0].itl_high_ms[0])) * 1.0001
    # the band reading (the old rule) certifies what the source's own model does not
    old = rank_prefill_confident(points, ttft_t, level)[0]
    assert old.candidate == TP[1] and old.meets_sla
    assert draws_marginal(src, LatencyQuery.ttft(TP[1], 1024), ttft_t) < level - 0.01
    assert best_decode_point_confident(sweeps[0], itl_t, level).meets_sla

    sel = select(points, sweeps, ttft_target_ms=ttft_t, itl_target_ms=itl_t, isl=1024, osl=2048,
                 confidence=level, source=src)  # fmt: skip
    p = sel.best_prefill
    tol = 3 * math.sqrt(level * (1 - level) / 200_000)
    if p.meets_sla:
        assert draws_marginal(src, LatencyQuery.ttft(p.candidate, 1024), ttft_t) >= level - tol
    else:  # nothing reaches the level: the most probable engine, and the warning says so
        assert p.p_meets == max(c.p_meets for c in sel.prefill)
        assert any("most probable is" in w for w in sel.warnings)
    assert p.candidate != TP[1] and p.p_meets >= sel.prefill[-1].p_meets
    for c in sel.prefill:  # every certified engine, not only the pick
        if c.meets_sla:
            assert draws_marginal(src, LatencyQuery.ttft(c.candidate, 1024), ttft_t) >= level - tol
    d = sel.best_decode  # ITL flat in batch: the level is out of reach of every point
    assert not d.meets_sla and d.p_meets < level
    assert draws_marginal(src, LatencyQuery.itl(d.candidate, d.concurrency, d.context_tokens), itl_t) == \
        pytest.approx(d.p_meets, abs=0.003)  # fmt: skip


def test_report_probabilities_are_the_sources_own():
    """The report printed P(prefill) from the band (0.99 at the band's 0.99 point) next to P(both) from the
    draws (0.972): P(both) above P(prefill). Now each marginal is the source's, and P(both) <= each."""
    import types

    from estimator.artifacts.report import sla_probability, sla_probability_lines
    from estimator.confidence import quantile
    from estimator.select import select

    src, points, sweeps = tailed_study()
    ttft_t = float(quantile(0.99, points[0].ttft_low_ms, points[0].ttft_high_ms))
    for level in (None, 0.9):
        sel = select(points, sweeps, ttft_target_ms=ttft_t, itl_target_ms=100.0, isl=1024, osl=2048,
                     confidence=level, source=src)  # fmt: skip
        spec = types.SimpleNamespace(ttft_ms=ttft_t, itl_ms=100.0, confidence=level, num_alternatives=2)
        prof = types.SimpleNamespace(spec=spec, selection=sel)
        rep = sla_probability(prof)
        for x, c in zip(rep["prefill"], sel.prefill, strict=True):
            own = draws_marginal(src, LatencyQuery.ttft(c.candidate, 1024), ttft_t)
            assert x["p_meets_ttft"] == pytest.approx(own, abs=0.003)
        assert rep["prefill"][0]["candidate"] == "TP1"  # the pick at both levels: P 0.972 >= 0.9
        assert rep["prefill"][0]["p_meets_ttft"] == pytest.approx(0.9724, abs=0.001)
        assert rep["pick"] <= min(rep["prefill"][0]["p_meets_ttft"], rep["decode"][0]["p_meets_itl"])
        assert "prefill TP1 97.2%" in sla_probability_lines(prof)[0]


def test_non_calibrated_sources_keep_the_band_reading():
    """A source without its own ``prob_within`` answers from its bands, as before: the same P, picks and
    report numbers whether selection is handed the source or reads the points' bands."""
    import types

    from estimator.artifacts.report import sla_probability
    from estimator.confidence import prob_within as band_p
    from estimator.select import select
    from estimator.surfaces import decode_sweep, prefill_point

    src = Flat(STACK)
    qs = [LatencyQuery.ttft(TP[1], 1024), LatencyQuery.ttft(TP[2], 1024), LatencyQuery.itl(TP[1], 8, 2048)]
    lo, hi = src.query_bands(qs)
    targets = [90.0, 60.0, 11.0]
    assert list(src.prob_within(qs, targets)) == [float(band_p(t, a, b)) for t, a, b in zip(targets, lo, hi)]
    product = float(np.prod(band_p(np.array(targets), lo, hi)))
    assert prob_all_within(src, qs, targets) == pytest.approx(product)
    points = [prefill_point(src, TP[n], 1024) for n in (1, 2, 4)]
    sweeps = [decode_sweep(src, TP[n], 1024, 2048, num_points=8, cap=256) for n in (1, 2)]
    for level in (None, 0.5, 0.9, 0.999):
        kw = {"ttft_target_ms": 80.0, "itl_target_ms": 11.0, "isl": 1024, "osl": 2048, "confidence": level}
        with_src, bands = select(points, sweeps, source=src, **kw), select(points, sweeps, **kw)
        spec = types.SimpleNamespace(ttft_ms=80.0, itl_ms=11.0, confidence=level, num_alternatives=2)
        a = sla_probability(types.SimpleNamespace(spec=spec, selection=with_src))
        b = sla_probability(types.SimpleNamespace(spec=spec, selection=bands))
        assert a["prefill"] == b["prefill"] and a["decode"] == b["decode"]
        assert a["pick"] == pytest.approx(b["pick"])
        assert [c.candidate for c in with_src.prefill] == [c.candidate for c in bands.prefill]
        assert [(c.candidate, c.concurrency) for c in with_src.decode] == [
            (c.candidate, c.concurrency) for c in bands.decode]  # fmt: skip
        for c in with_src.prefill:
            assert c.p_meets == float(band_p(80.0, c.point.ttft_low_ms, c.point.ttft_high_ms))


def test_nothing_reaches_the_level_falls_back_to_the_most_probable():
    """TP1 measured (narrow band); TP2 never measured (its offsets' prior sd 0.2: a wide band) and a little
    faster by its point. At L = 0.9 neither meets TTFT 104 ms / ITL 10.3 ms; the rule falls back to the most
    probable engine (TP1: P 0.88 vs 0.67 prefill, 0.81 vs 0.65 decode), not the lowest point (TP2)."""
    from estimator.select import select
    from estimator.surfaces import decode_sweep, prefill_point

    class Flat2(Flat):
        def prefill_ttft_ms(self, candidate, isl):
            return np.full(np.atleast_1d(isl).shape, 100.0 if candidate.num_gpus == 1 else 95.0)

        def decode_itl_ms(self, candidate, batch, context):
            shape = np.broadcast(np.atleast_1d(batch), np.atleast_1d(context)).shape
            return np.full(shape, 10.0 if candidate.num_gpus == 1 else 9.5)

    mean = Parameters(SharedParameters(log_step_ms=-30.0, log_overhead_ms=-30.0), {"TP1": EngineOffsets()})
    noise = Noise({"ttft": 0.03, "tpot": 0.03}, {"ttft": 0.0, "tpot": 0.0}, {"ttft": 0.0, "tpot": 0.0})
    prior_sd = {"delta_prefill": 0.2, "delta_decode": 0.2, "delta_ttft": 0.0, "delta_step": 0.0}
    corr = Correction(mean, np.eye(len(mean.names)) * 1e-4, noise, prior_sd)
    src = CalibratedSource(Flat2(STACK), corr)
    points = [prefill_point(src, TP[n], 1024) for n in (1, 2)]
    sweeps = [decode_sweep(src, TP[n], 1024, 2048, num_points=8, cap=256) for n in (1, 2)]
    sel = select(points, sweeps, ttft_target_ms=104.0, itl_target_ms=10.3, isl=1024, osl=2048,
                 confidence=0.9, source=src)  # fmt: skip
    assert not sel.best_prefill.meets_sla and not sel.best_decode.meets_sla
    assert [c.candidate for c in sel.prefill] == [TP[1], TP[2]]
    assert [c.candidate for c in sel.decode] == [TP[1], TP[2]]
    assert sel.best_prefill.p_meets == pytest.approx(0.88, abs=0.01) and sel.prefill[1].p_meets < 0.7
    # within TP1's sweep: the concurrency whose ITL is most probably within target
    sweep_p = src.prob_within([LatencyQuery.itl(TP[1], c, sweeps[0].context_tokens)
                               for c in sweeps[0].concurrency], 10.3)  # fmt: skip
    assert sel.best_decode.p_meets == pytest.approx(float(sweep_p.max()))
    assert sel.best_decode.p_meets > sel.decode[1].p_meets
    assert "most probable is TP1 (P 0.88" in sel.warnings[0] and "most probable is TP1" in sel.warnings[1]
