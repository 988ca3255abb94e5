"""Fleet sizing by the probability of meeting the SLA (``plan --confidence``): every kept fleet reaches the
level, the probability is the frequency a fleet meets the SLA on engines drawn from the same belief, a
source without uncertainty gives the point plan, and the CLI reports the probability."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from estimator.capacity import _Search
from estimator.capacity_confidence import (
    SIZING_DRAWS,
    _Odds,
    _shape,
    _splits,
    drawn_tables,
    ladder,
    plan_confident,
    quantile_tables,
)
from estimator.capacity_engine import EngineTable
from estimator.capacity_study import SharedWork, run_capacity
from estimator.capacity_types import Load, Sla
from estimator.cli import main
from estimator.confidence import draw
from estimator.deployment import Deployment
from estimator.sources.base import PerfSource, Stack
from estimator.spec import load_spec
from estimator.workload import fixed

STUDY = {"model": "meta-llama/Llama-3.1-8B", "system": "h100_sxm", "isl": 3000, "osl": 150, "ttft": 200,
         "itl": 20}  # fmt: skip
SLA = Sla.means(200, 20)
H100_STUDY = ["--model", "meta-llama/Llama-3.1-8B", "--system", "h100_sxm", "--backend", "vllm",
              "--isl", "3000", "--osl", "150", "--ttft", "200", "--itl", "20"]  # fmt: skip


class _Banded(PerfSource):
    """A hand-made source: point values, and a 90 % band from 0.8x to 1.4x of them."""

    name = "banded"
    width = (0.8, 1.4)

    def prefill_ttft_ms(self, candidate, isl):
        return np.asarray(isl, float) * 0.03 / candidate.num_gpus

    def decode_itl_ms(self, candidate, batch, context):
        b = np.asarray(batch, float)
        return 6.0 / candidate.num_gpus**0.5 + 0.05 * b / candidate.num_gpus + 0 * np.asarray(context)

    def kv_capacity_tokens(self, candidate):
        return 500_000 * candidate.num_gpus

    def prefill_ttft_band(self, candidate, isl):
        v = self.prefill_ttft_ms(candidate, isl)
        return v * self.width[0], v * self.width[1]

    def decode_itl_band(self, candidate, batch, context):
        v = self.decode_itl_ms(candidate, batch, context)
        return v * self.width[0], v * self.width[1]


class _Certain(_Banded):
    name = "certain"
    width = (1.0, 1.0)


def _study(source_cls, load, **kw):
    spec = load_spec(None, **STUDY)
    shared = SharedWork()
    shared.sources[(Stack.from_spec(spec), spec.source)] = source_cls(Stack.from_spec(spec))
    return run_capacity(spec, fixed(3000, 150), load, SLA, shared=shared, **kw), shared


def _true_table(src, t, rng):
    """One engine as it might really be: each phase one standard-normal quantile of the source's band (what
    ``_Banded`` claims to know), drawn here without ``drawn_tables``."""
    zp, zd = rng.standard_normal(2)
    ctx = np.full_like(t.decode_batch, t.context_tokens)
    return replace(t, prefill_ms=draw(*src.prefill_ttft_band(t.candidate, t.prefill_tokens), zp),
                   decode_ms=draw(*src.decode_itl_band(t.candidate, t.decode_batch, ctx), zd))  # fmt: skip


def _point_tables(shared):
    return [t for key, t in shared.tables.items() if not key[-1] and isinstance(t, EngineTable)]


@pytest.mark.parametrize("load", [Load(request_rate=30), Load(gpu_budget=16), Load(concurrency=64)])
def test_every_kept_fleet_reaches_the_level(load):
    st, _ = _study(_Banded, load, confidence=0.9)
    assert st.result.fleets and st.confidence == 0.9
    for f in st.result.fleets:
        assert f.p_meets_sla >= 0.9 and f.meets_sla


def _cheapest_by_brute_force(src, tables, rate, sla, level):
    """(GPUs, best P at that count) of the cheapest fleet with P >= ``level``, over every agg and disagg
    fleet of up to 16 prefill x 16 decode or 32 agg replicas, on the draws ``plan_confident`` uses."""
    w = fixed(3000, 150)
    odds = _Odds(drawn_tables(src, tables, SIZING_DRAWS), w, sla, w.arrival_cv2, 3.0)
    deps = [Deployment.agg(t.candidate, n) for t in tables for n in range(1, 33)]
    deps += [Deployment.disagg(p.candidate, d.candidate, x, y) for p in tables for d in tables
             for x in range(1, 17) for y in range(1, 17)]  # fmt: skip
    best: dict[int, float] = {}
    for dep in sorted(deps, key=lambda d: d.total_gpus):
        if best and dep.total_gpus > min(best):
            break
        if (p := odds(dep, rate, None)) >= level:
            best[dep.total_gpus] = max(p, best.get(dep.total_gpus, 0.0))
    return min(best), best[min(best)]


@pytest.fixture(scope="module")
def h100_calibration(tmp_path_factory):
    """The calibration of docs/capacity.md: the committed H100 TP1 records, replayed."""
    out = tmp_path_factory.mktemp("h100_cal")
    recs = "models/measurements/h100_llama31_8b_gpu_runner.jsonl"
    assert main(["validate", *H100_STUDY, "--measurements", recs, "--no-plots", "-o", str(out)]) == 0
    return str(out / "calibration.json")


@pytest.mark.parametrize(
    ("source", "rate", "sla"),
    [("banded", 30, SLA), ("calibration", 20, Sla.means(200, 12)), ("calibration", 40, SLA)],
)
def test_the_kept_best_is_the_cheapest_fleet_that_reaches_the_level(source, rate, sla, request):
    """No fleet with fewer GPUs reaches the level on the same draws, and at equal GPUs none is likelier:
    the band quantile at C is stricter than the joint draws (on the calibration, 200/12 ms at 20 req/s,
    the quantile search alone kept 6 GPUs where 5 reach P 0.90; at 40 req/s it ranked a 7-GPU fleet of
    P 0.93 above one of P 1.0), so every kept fleet is resized on P itself."""
    extra = {"source": request.getfixturevalue("h100_calibration")} if source == "calibration" else {}
    targets = {"ttft": sla.targets[0].ms, "itl": sla.targets[1].ms}
    spec = load_spec(None, **{**STUDY, "backend": "vllm", **targets}, **extra)
    shared = SharedWork()
    if source == "banded":
        shared.sources[(Stack.from_spec(spec), spec.source)] = _Banded(Stack.from_spec(spec))
    st = run_capacity(spec, fixed(3000, 150), Load(request_rate=rate), sla, shared=shared, confidence=0.9)
    src = next(iter(shared.sources.values()))
    gpus, p = _cheapest_by_brute_force(src, _point_tables(shared), rate, sla, 0.9)
    assert st.result.best.total_gpus == gpus
    assert st.result.best.p_meets_sla == p


def test_the_level_costs_gpus_and_the_point_pick_falls_short():
    st, _ = _study(_Banded, Load(request_rate=30), confidence=0.9)
    assert st.point_best_p < 0.9  # the point pick sits close to its targets
    assert st.result.best.total_gpus > st.point_result.best.total_gpus
    assert st.band_extra_gpus == st.result.best.total_gpus - st.point_result.best.total_gpus


def test_a_budget_sustains_less_at_the_level():
    st, _ = _study(_Banded, Load(gpu_budget=16), confidence=0.9)
    assert st.result.best.request_rate < st.point_result.best.request_rate
    assert all(f.total_gpus <= 16 for f in st.result.fleets)


def test_probability_is_the_frequency_on_engines_drawn_from_the_same_belief():
    """P of the point pick against the share of 'true' engines (drawn independently) it meets the SLA on."""
    st, shared = _study(_Banded, Load(request_rate=30), confidence=0.9)
    src = next(iter(shared.sources.values()))
    point = _point_tables(shared)
    f = st.point_result.best
    w = fixed(3000, 150)
    truth = [
        [_true_table(src, t, rng) for t in point]
        for rng in [np.random.default_rng(12345)]
        for _ in range(2000)
    ]
    met = np.mean(
        [_Search(ts, w, SLA, w.arrival_cv2, 3.0).meets(f.deployment, f.request_rate) for ts in truth]
    )
    sd = np.sqrt(met * (1 - met) / 2000 + met * (1 - met) / 400)
    assert 0.1 < met < 0.9 and abs(st.point_best_p - met) < 4 * sd


def test_a_source_without_uncertainty_gives_the_point_plan():
    st, shared = _study(_Certain, Load(request_rate=30), confidence=0.9)
    assert st.result.best.label() == st.point_result.best.label()
    assert st.result.best.total_gpus == st.point_result.best.total_gpus
    assert st.point_best_p == 1.0 and all(f.p_meets_sla == 1.0 for f in st.result.fleets)
    src = next(iter(shared.sources.values()))
    assert len(drawn_tables(src, _point_tables(shared), 400)) == 1  # all draws equal: one is evaluated
    assert len(drawn_tables(_Banded(src.stack), _point_tables(shared), 400)) == 400


def test_quantile_tables_sit_inside_the_band_and_rise_with_the_level():
    _, shared = _study(_Banded, Load(request_rate=30))
    src = next(iter(shared.sources.values()))
    t = _point_tables(shared)[0]
    lo, hi = src.prefill_ttft_band(t.candidate, t.prefill_tokens)
    q5, q95, q99 = (quantile_tables(src, [t], q)[0].prefill_ms for q in (0.05, 0.95, 0.99))
    np.testing.assert_allclose(q5, lo, rtol=1e-9)
    np.testing.assert_allclose(q95, hi, rtol=1e-9)
    assert np.all(q99 > hi)
    assert ladder(0.9)[:3] == pytest.approx([0.9, 0.95, 0.975])


def test_a_level_out_of_range_is_refused():
    _, shared = _study(_Banded, Load(request_rate=30))
    src = next(iter(shared.sources.values()))
    tables = _point_tables(shared)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        plan_confident(src, tables, fixed(3000, 150), Load(request_rate=30), SLA, confidence=1.0,
                       price_per_gpu_hour=3.0)  # fmt: skip


def test_cli_plan_reports_the_probability_of_each_fleet(capsys, tmp_path):
    argv = ["plan", "--model", "meta-llama/Llama-3.1-8B", "--system", "h100_sxm", "--backend", "vllm",
            "--isl", "3000", "--osl", "150", "--ttft", "200", "--itl", "20", "--request-rate", "20",
            "--confidence", "0.9", "--top", "3"]  # fmt: skip
    assert main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["size_for"] == "confidence" and doc["confidence"] == 0.9
    assert doc["fleets"] and all(f["p_meets_sla"] == 1.0 for f in doc["fleets"])  # raw AIC: certain
    assert doc["point_estimate_best_p_meets_sla"] == 1.0
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Sized for: P(meeting every target) >= 0.9" in out and "P(SLA)" in out
    assert "meets every target with probability 1.00" in out
    assert main([*argv, "-o", str(tmp_path), "--no-plots"]) == 0
    assert "p_meets_sla" in (tmp_path / "plan.csv").read_text().splitlines()[0]
    assert "sized for P(meeting every target) >= 0.9" in (tmp_path / "plan.md").read_text().splitlines()[0]


def test_plan_on_a_calibration_sizes_for_its_posterior(tmp_path, capsys):
    """A calibration from 8 of the committed H100 records (replay: 2 points per phase and engine), then
    ``plan --confidence 0.99`` on it: the joint posterior draws of ``CalibratedSource`` size the fleet; the
    point pick falls short of 0.99 (P 0.63 in session 10, 0.945 once prefill attention was scaled apart).
    A scenario row and the profile's ``--request-rate`` sizing
    give the same fleets. (On all 50 records the GPU runner's prior leaves the point pick at P 1.0.)"""
    from estimator.measurements import MeasurementStore

    recs = [f"models/measurements/h100_llama31_8b_gpu_runner{tail}.jsonl" for tail in ("", "_tp2")]
    few = MeasurementStore(tmp_path / "few.jsonl")
    for m in (m for r in recs for m in MeasurementStore(r).load()):
        p = m.probe
        if (p.kind.value == "prefill" and p.isl in (256, 4096)) or (
            p.kind.value == "decode" and (p.concurrency, p.context_tokens) in {(1, 4096), (64, 4096)}
        ):
            few.append(m)
    study = ["--model", "meta-llama/Llama-3.1-8B", "--system", "h100_sxm", "--backend", "vllm",
             "--isl", "3000", "--osl", "150", "--ttft", "200", "--itl", "20"]  # fmt: skip
    argv = ["validate", *study, "--runner", "replay", "--budget", "8", "--no-plots", "-o", str(tmp_path)]
    assert main([*argv, "--measurements", str(tmp_path / "few.jsonl")]) == 0
    capsys.readouterr()
    cal = str(tmp_path / "calibration.json")
    plan = ["plan", *study, "--request-rate", "30", "--source", cal, "--json"]
    assert main([*plan, "--confidence", "0.99"]) == 0
    doc = json.loads(capsys.readouterr().out)
    best, point = doc["fleets"][0], doc["point_estimate_best"]
    assert best["p_meets_sla"] >= 0.99 and 0.2 < doc["point_estimate_best_p_meets_sla"] < 0.99
    assert best["total_gpus"] > point["total_gpus"]
    rows = tmp_path / "s.yaml"
    row = "model: meta-llama/Llama-3.1-8B, system: h100_sxm, isl: 3000, osl: 150, ttft: 200, itl: 20"
    row += f", source: {cal}, request_rate: 30"
    rows.write_text(f"- {{name: sure, {row}, confidence: 0.99}}\n- {{name: point, {row}}}\n")
    assert main(["plan", "--scenarios", str(rows), "-o", str(tmp_path / "sc"), "--no-plots", "--json"]) == 0
    sure, plain = json.loads(capsys.readouterr().out)
    assert sure["p_meets_sla"] >= 0.99 and sure["confidence"] == 0.99 and "p_meets_sla" not in plain
    assert sure["total_gpus"] == best["total_gpus"] and plain["total_gpus"] == point["total_gpus"]
    from estimator.pipeline import estimate

    spec = dict(STUDY, backend="vllm", source=cal, request_rate=30)
    sure_profile = estimate(load_spec(None, confidence=0.99, **spec)).selection.sizing
    point_profile = estimate(load_spec(None, **spec)).selection.sizing
    assert sure_profile.p_meets_sla >= 0.99 and sure_profile.confidence == 0.99
    assert point_profile.p_meets_sla is None
    assert sure_profile.total_gpus == best["total_gpus"] and point_profile.total_gpus == point["total_gpus"]


def _calibrated_study(cal, load, sla=SLA):
    targets = {"ttft": sla.targets[0].ms, "itl": sla.targets[1].ms}
    spec = load_spec(None, **{**STUDY, "backend": "vllm", **targets}, source=cal)
    shared = SharedWork()
    st = run_capacity(spec, fixed(3000, 150), load, sla, shared=shared, confidence=0.9)
    return st, next(iter(shared.sources.values())), _point_tables(shared)


def test_a_budget_fleet_runs_at_the_highest_rate_any_split_keeps_at_the_level(h100_calibration):
    """200/12 ms in 16 GPUs: the quantile step's split and rate are stricter than the draws need. Every fleet
    is at the highest rate at which any split of the budget for its shape keeps P >= C (or at the point
    estimate's rate): on no split does 1 % more load keep the level. (Before: TP1 prefill + TP2 decode ran
    10 + 3 at 61.3 requests/s, where 8 + 4 kept P >= 0.9 up to 73.2; since session 11's calibration, 7 + 4
    at 67.3.)"""
    sla = Sla.means(200, 12)
    st, src, tables = _calibrated_study(h100_calibration, Load(gpu_budget=16), sla)
    w = fixed(3000, 150)
    odds = _Odds(drawn_tables(src, tables, SIZING_DRAWS), w, sla, w.arrival_cv2, 3.0)
    point_rate = {_shape(f.deployment): f.request_rate for f in st.point_result.fleets}
    labels = {f.label(): f.request_rate for f in st.result.fleets}
    mixed = [rate for label, rate in labels.items() if label.endswith("x TP1 prefill + 4 x TP2 decode")]
    assert mixed and mixed[0] > 61.3  # the quantile step's 10 + 3 rate, which the draws beat
    for f in st.result.fleets:
        assert f.total_gpus <= 16 and odds(f.deployment, f.request_rate, None) >= 0.9
        if f.request_rate == point_rate.get(_shape(f.deployment)):
            continue
        faster = [odds(d, 1.01 * f.request_rate, None, need=0.9) for d in _splits(f.deployment, 16)]
        assert max(faster) < 0.9, f.label()


def test_a_closed_loop_fleet_is_the_cheapest_that_reaches_the_level(h100_calibration):
    """64 clients: P is not monotone in replicas here (more decode raises the clients' rate and overloads
    prefill), so the plan's pick is checked against every fleet of up to 16 x 16 or 32 replicas. Its row is
    the point estimate at the rate its clients drive it at there, not at a quantile's rate."""
    st, src, tables = _calibrated_study(h100_calibration, Load(concurrency=64))
    w = fixed(3000, 150)
    f = st.result.best
    assert f.request_rate == _Search(tables, w, SLA, w.arrival_cv2, 3.0).closed_loop_rate(f.deployment, 64)
    odds = _Odds(drawn_tables(src, tables, SIZING_DRAWS), w, SLA, w.arrival_cv2, 3.0)
    deps = [Deployment.agg(t.candidate, n) for t in tables for n in range(1, 33)]
    deps += [Deployment.disagg(p.candidate, d.candidate, x, y) for p in tables for d in tables
             for x in range(1, 17) for y in range(1, 17)]  # fmt: skip
    cheaper = [d for d in deps if d.total_gpus < st.result.best.total_gpus]
    assert all(odds(d, 0.0, 64, need=0.9) < 0.9 for d in cheaper)
    same = [odds(d, 0.0, 64) for d in deps if d.total_gpus == st.result.best.total_gpus]
    assert st.result.best.p_meets_sla == max(same)
