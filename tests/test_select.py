"""Selection, ranking, planner bounds and sizing on hand-made points with hand-computed answers."""

from dataclasses import replace

import numpy as np
import pytest

from estimator.candidates import Candidate, Mapping
from estimator.select import (
    best_decode_point,
    best_decode_point_confident,
    planner_bounds,
    rank_decode,
    rank_prefill,
    rank_prefill_confident,
    select,
    size_replicas,
)
from estimator.surfaces import DecodeSweep, PrefillPoint

TP = {n: Candidate(Mapping.TP, n) for n in (1, 2, 4, 8)}


def pp(n, ttft, thpt):
    return PrefillPoint(TP[n], 3000, ttft, thpt, ttft, ttft)


def sweep(n, conc, itl, capacity=100_000, ctx=3075):
    conc = np.asarray(conc, float)
    itl = np.asarray(itl, float)
    thpt = conc / itl * 1000 / n
    return DecodeSweep(TP[n], capacity, ctx, conc, itl, thpt, itl, itl)


def test_prefill_picks_highest_throughput_within_target():
    ranked = rank_prefill([pp(1, 250, 12000), pp(2, 150, 10000), pp(4, 90, 8000)], 200)
    assert [c.candidate.name for c in ranked] == ["TP2", "TP4", "TP1"]
    assert [c.meets_sla for c in ranked] == [True, True, False]


def test_prefill_none_meets_returns_lowest_latency():
    ranked = rank_prefill([pp(1, 500, 12000), pp(2, 300, 10000)], 200)
    assert ranked[0].candidate.name == "TP2" and not ranked[0].meets_sla


def test_decode_best_point_per_engine_then_rank():
    # TP1: conc 1,8,32 -> itl 10,15,25 ms; within 20 ms the best is conc 8: 8/15*1000/1 = 533.3 tok/s/GPU
    # TP2: conc 1,16,64 -> itl 8,12,19: best conc 64: 64/19*1000/2 = 1684.2 tok/s/GPU
    ranked = rank_decode([sweep(1, [1, 8, 32], [10, 15, 25]), sweep(2, [1, 16, 64], [8, 12, 19])], 20)
    assert ranked[0].candidate.name == "TP2" and ranked[0].concurrency == 64
    assert ranked[0].thpt_per_gpu == pytest.approx(64 / 19 * 1000 / 2)
    assert ranked[1].concurrency == 8 and ranked[1].thpt_per_gpu == pytest.approx(8 / 15 * 1000)


def test_decode_none_meets_picks_lowest_itl_with_warning():
    sel = select(
        [pp(1, 100, 30000)],
        [sweep(1, [1, 8], [30, 40]), sweep(2, [1, 8], [25, 35])],
        ttft_target_ms=200, itl_target_ms=20, isl=3000, osl=150,
    )  # fmt: skip
    assert sel.best_decode.candidate.name == "TP2" and sel.best_decode.itl_ms == 25
    assert not sel.sla_met and any("no decode engine meets ITL 20" in w for w in sel.warnings)


def test_planner_bounds_match_dynamo_docs_example():
    # Dynamo docs: TTFT target 50 ms, prefill TP4 at 48.37 ms -> queue bounds 0.24 / 0.10
    (p,) = rank_prefill([PrefillPoint(TP[4], 3000, 48.37, 15505.23, 48.37, 48.37)], 50)
    # decode: conc 100 at (3000 + 150/2) over 2,000,000 tokens -> usage 0.15375 -> kv bounds 0.35375 / 0.1
    (d,) = rank_decode([sweep(4, [100], [4.83], capacity=2_000_000)], 20)
    b = planner_bounds(50, p, d, 3000, 150)
    assert round(b.prefill_queue_upper, 2) == 0.24 and b.prefill_queue_lower == 0.1
    assert b.decode_kv_upper == pytest.approx(0.15375 + 0.2) and b.decode_kv_lower == 0.1


def test_planner_bounds_clamps():
    (p,) = rank_prefill([pp(1, 10, 1)], 100)  # ratio 10 -> lower 7, upper 11
    (d,) = rank_decode([sweep(1, [1000], [5], capacity=3_100_000)], 20)  # usage 0.9919 -> upper clamps to 1
    b = planner_bounds(100, p, d, 3000, 150)
    assert b.prefill_queue_lower == pytest.approx(7) and b.prefill_queue_upper == pytest.approx(11)
    assert b.decode_kv_upper == 1.0 and b.decode_kv_lower == pytest.approx(1000 * 3075 / 3_100_000 - 0.2)


def test_size_replicas():
    (p,) = rank_prefill([pp(2, 150, 10000)], 200)  # 2 GPUs × 10k tok/s/GPU = 20k input tok/s per engine
    (d,) = rank_decode([sweep(4, [64], [16])], 20)  # 64/16*1000/4 = 1000 tok/s/GPU -> 4000 tok/s per engine
    s = size_replicas(10.0, 3000, 150, p, d)  # 30k input tok/s, 1.5k output tok/s
    assert (s.prefill_replicas, s.decode_replicas) == (2, 1)
    assert (s.prefill_gpus, s.decode_gpus, s.total_gpus) == (4, 4, 8)


# ---- --confidence: P(meeting the target) from the band -----------------------------------------
def pp_band(n, ttft, low, high, thpt):
    return PrefillPoint(TP[n], 3000, ttft, thpt, low, high)


def test_prefill_confident_prefers_the_sure_engine():
    # TP1: point 190 ms <= 200 but band (150, 250): P(TTFT <= 200) = Phi(ln(200/193.65)/0.1553) = 0.58
    # TP2: band (140, 160): certain to meet 200 ms
    points = [pp_band(1, 190, 150, 250, 12000), pp_band(2, 150, 140, 160, 10000)]
    assert rank_prefill(points, 200)[0].candidate.name == "TP1"
    ranked = rank_prefill_confident(points, 200, 0.9)
    assert [c.candidate.name for c in ranked] == ["TP2", "TP1"] and not ranked[1].meets_sla
    assert rank_prefill_confident(points, 200, 0.5)[0].candidate.name == "TP1"  # 0.58 >= 0.5


def test_decode_confident_backs_off_from_the_boundary():
    # band = itl x (0.8, 1.25): sigma 0.13566, centre = itl. conc 32 at 19 ms: P(<= 20) = Phi(0.378) = 0.647;
    # conc 8 at 15 ms: P = Phi(ln(4/3)/0.13566) = Phi(2.121) = 0.983
    conc, itl = np.array([1.0, 8.0, 32.0]), np.array([10.0, 15.0, 19.0])
    s = DecodeSweep(TP[1], 100_000, 3075, conc, itl, conc / itl * 1000, itl * 0.8, itl * 1.25)
    assert best_decode_point(s, 20).concurrency == 32
    assert best_decode_point_confident(s, 20, 0.9).concurrency == 8
    assert best_decode_point_confident(s, 20, 0.6).concurrency == 32


def test_confident_fallback_is_the_most_probable_not_the_lowest_point():
    """Nothing reaches 0.9; the rule falls back to the most probable option (safety first), not the lowest
    point latency. TTFT 104 ms: TP2 point 95, band (68.1, 132.5): P = Phi(ln(104/94.99)/0.2024) = 0.673;
    TP1 point 100, band (94.7, 105.6): P = Phi(ln(104/100.0)/0.0331) = 0.882."""
    points = [pp_band(2, 95.0, 68.1, 132.5, 12000), pp_band(1, 100.0, 94.7, 105.6, 10000)]
    ranked = rank_prefill_confident(points, 104.0, 0.9)
    assert [c.candidate.name for c in ranked] == ["TP1", "TP2"] and not ranked[0].meets_sla
    assert ranked[0].p_meets == pytest.approx(0.882, abs=0.002)
    assert ranked[1].p_meets == pytest.approx(0.673, abs=0.002)
    # within a sweep, ITL 10.3 ms: conc 1 at 9.5 band (6.8, 13.3) P 0.652; conc 8 at 10.0 band (9.47, 10.56)
    # P 0.814; conc 32 at 12 band (11, 13) P ~0: the most probable is conc 8, not the lowest ITL (conc 1)
    conc, itl = np.array([1.0, 8.0, 32.0]), np.array([9.5, 10.0, 12.0])
    s1 = DecodeSweep(TP[1], 100_000, 3075, conc, itl, conc / itl * 1000, np.array([6.8, 9.47, 11.0]),
                     np.array([13.3, 10.56, 13.0]))  # fmt: skip
    c1 = best_decode_point_confident(s1, 10.3, 0.9)
    assert (c1.concurrency, c1.meets_sla) == (8, False) and c1.p_meets == pytest.approx(0.814, abs=0.002)
    # across engines: by P too. TP2 at conc 1 has the lowest ITL (9.5, band (6.8, 13.3), P 0.652)
    s2 = DecodeSweep(TP[2], 100_000, 3075, conc[:1], itl[:1], conc[:1] / itl[:1] * 500, np.array([6.8]),
                     np.array([13.3]))  # fmt: skip
    sel = select(points, [s2, s1], ttft_target_ms=104.0, itl_target_ms=10.3, isl=3000, osl=150,
                 confidence=0.9)  # fmt: skip
    assert (sel.best_prefill.candidate.name, sel.best_decode.candidate.name) == ("TP1", "TP1")
    assert "most probable is TP1 (P 0.88" in sel.warnings[0]
    assert "most probable is TP1 (P 0.81" in sel.warnings[1]


def test_confident_fallback_ties_go_to_the_lower_latency():
    # one band (8, 12.5) for both points, centre 10: P(ITL <= 10) = 0.5 each; the lower ITL (conc 8) wins
    conc, itl = np.array([1.0, 8.0]), np.array([10.0, 9.0])
    s = DecodeSweep(TP[1], 100_000, 3075, conc, itl, conc / itl * 1000, np.full(2, 8.0), np.full(2, 12.5))
    assert best_decode_point_confident(s, 10.0, 0.9).concurrency == 8
    # zero-width bands all above the target (P 0 each): the lowest ITL, as the point rule
    z = sweep(1, [1, 8, 32], [25, 22, 30])
    assert best_decode_point_confident(z, 20.0, 0.9).concurrency == 8
    assert best_decode_point(z, 20.0).concurrency == 8
    points = [pp_band(1, 110.0, 80, 125, 12000), pp_band(2, 100.0, 80, 125, 10000)]
    assert [c.candidate.name for c in rank_prefill_confident(points, 90.0, 0.9)] == ["TP2", "TP1"]


def test_select_confidence_zero_width_bands_equal_point_rule():
    args = ([pp(1, 250, 12000), pp(2, 150, 10000)], [sweep(1, [1, 8, 32], [10, 15, 25])])
    kw = {"ttft_target_ms": 200, "itl_target_ms": 20, "isl": 3000, "osl": 150}
    a, b = select(*args, **kw), select(*args, **kw, confidence=0.9)
    # the same picks; the confident rule also records their probability (certain: zero-width bands)
    assert a.best_prefill.point == b.best_prefill.point and b.best_prefill.p_meets == 1.0
    assert replace(a.best_decode, p_meets=1.0) == b.best_decode


def test_select_confidence_warning_names_the_level():
    sel = select([pp_band(1, 190, 150, 250, 12000)], [sweep(1, [1], [10])], ttft_target_ms=200,
                 itl_target_ms=20, isl=3000, osl=150, confidence=0.9)  # fmt: skip
    assert any("with probability >= 0.9" in w for w in sel.warnings)


def test_rates_read_with_four_significant_digits():
    """The summary said "Sizing at 13.4564 requests/s" (a rate solved for, printed with ``:g``)."""
    from estimator.select import rate_text

    cases = {13.4564: "13.46", 10: "10", 5.0: "5", 0.123456: "0.1235", 999.94: "999.9", 12345.6: "12346"}
    for rate, text in cases.items():
        assert rate_text(rate) == text, rate


def test_budget_fallback_names_both_rates_readably():
    """A DGDR of 43 clients (13.522 requests/s) in 8 GPUs said "... at 13.522 requests/s ...; deploying the
    one that carries the most, 13.5 requests/s": two rates that read alike at 3 digits."""
    from estimator.deployment import Deployment
    from estimator.select import Sizing, _budget_sizing

    fleet = Sizing(13.4564, Deployment.disagg(TP[2], TP[2], 3, 1))
    sizing, note = _budget_sizing(fleet, 13.522, 8, 4, lambda budget: None)
    assert sizing is fleet
    assert "at 13.52 requests/s; deploying the one that carries the most, 13.46 requests/s" in note
