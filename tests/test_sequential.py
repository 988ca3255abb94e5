"""The until-confident loop: decision probability by sampling bands, probe choice, and a replay run on real records.

The replay data are the GPU-runner records of the H100 study (models/measurements/, Llama-3.1-8B TP1 and TP2,
50 points). The recommendation "all the data gives" is the one calibrated on every record.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from estimator.candidates import Candidate, Mapping
from estimator.confidence import normal_cdf
from estimator.cli import main
from estimator.measurements import MeasurementStore, Probe, ProbeKind
from estimator.pipeline import estimate
from estimator.select import select
from estimator.sources import make_source
from estimator.sources.base import Stack
from estimator.spec import load_spec
from estimator.surfaces import DecodeSweep, PrefillPoint
from validate.calibrate import calibrate
from validate.next_probe import nearest, probe_scores
from validate.sequential import decision_confidence

TP = {n: Candidate(Mapping.TP, n) for n in (1, 2, 4)}
RECORDS = Path(__file__).resolve().parents[1] / "models" / "measurements"
FILES = [RECORDS / "h100_llama31_8b_gpu_runner.jsonl", RECORDS / "h100_llama31_8b_gpu_runner_tp2.jsonl"]
STUDY = {"model": "meta-llama/Llama-3.1-8B", "system": "h100_sxm", "gpus": "1,2", "itl": 12}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLA_ESTIMATE_CACHE_DIR", str(tmp_path / "cache"))


def sweep(n, conc, itl, rel_low=1.0, rel_high=1.0):
    conc, itl = np.asarray(conc, float), np.asarray(itl, float)
    return DecodeSweep(TP[n], 10**6, 3075, conc, itl, conc / itl * 1000 / n, itl * rel_low, itl * rel_high)


def test_prefill_probability_by_hand():
    # TP1: TTFT 100 ms, band (80, 125), 30k tok/s/GPU; TP2 certain at 24k. TP1 is the best exactly when its
    # TTFT < 100 * 30k / 24k = 125 ms, its band's 95 % point: P = 0.95 (both always meet 200 ms)
    points = [PrefillPoint(TP[1], 3000, 100, 30000, 80, 125), PrefillPoint(TP[2], 3000, 60, 24000, 60, 60)]
    sweeps = [sweep(1, [1, 8], [10, 15])]
    sel = select(points, sweeps, ttft_target_ms=200, itl_target_ms=20, isl=3000, osl=150)
    d = decision_confidence(points, sweeps, sel, 200, 20, draws=20000)
    assert sel.best_prefill.candidate == TP[1]
    assert d.p_prefill == pytest.approx(0.95, abs=0.01)
    assert d.p_decode == 1.0 and d.confidence == pytest.approx(d.p_prefill)
    assert d.p_best["prefill"]["TP2"] == pytest.approx(0.05, abs=0.01)


def test_tie_tolerance_counts_a_near_best_engine_as_right():
    # as above with a 10 % tolerance: TP1 is right while 30k * 100 / TTFT >= 0.9 * 24k, i.e. TTFT <= 138.9 ms:
    # z <= ln(1.389) / (ln(1.25) / 1.645) = 2.42, P = 0.992
    points = [PrefillPoint(TP[1], 3000, 100, 30000, 80, 125), PrefillPoint(TP[2], 3000, 60, 24000, 60, 60)]
    sweeps = [sweep(1, [1, 8], [10, 15])]
    sel = select(points, sweeps, ttft_target_ms=200, itl_target_ms=20, isl=3000, osl=150)
    strict = decision_confidence(points, sweeps, sel, 200, 20, draws=20000)
    tied = decision_confidence(points, sweeps, sel, 200, 20, draws=20000, tie_tolerance=0.1)
    assert tied.p_prefill == pytest.approx(0.992, abs=0.004)
    assert strict.p_prefill == pytest.approx(0.95, abs=0.01)
    assert tied.p_best == strict.p_best  # P(best) drives the next probe and does not take the tolerance


def test_tie_tolerance_never_counts_an_engine_that_misses_the_target():
    # TP1's TTFT band (150, 250) straddles the 200 ms target: a tolerance cannot make a miss right
    points = [PrefillPoint(TP[1], 3000, 194, 30000, 150, 250), PrefillPoint(TP[2], 3000, 60, 1000, 60, 60)]
    sweeps = [sweep(1, [1, 8], [10, 15])]
    sel = select(points, sweeps, ttft_target_ms=200, itl_target_ms=20, isl=3000, osl=150)
    assert sel.best_prefill.candidate == TP[1]
    d = decision_confidence(points, sweeps, sel, 200, 20, draws=20000, tie_tolerance=0.5)
    p_meets = float(normal_cdf(np.log(200 / np.sqrt(150 * 250)) / (np.log(250 / 150) / 2 / 1.645)))
    assert d.p_prefill == pytest.approx(p_meets, abs=0.01)


def test_zero_width_bands_are_certain():
    points = [PrefillPoint(TP[1], 3000, 100, 30000, 100, 100), PrefillPoint(TP[2], 3000, 60, 24000, 60, 60)]
    sweeps = [sweep(1, [1, 8, 32], [10, 15, 25]), sweep(2, [1, 16, 64], [8, 12, 19])]
    sel = select(points, sweeps, ttft_target_ms=200, itl_target_ms=20, isl=3000, osl=150)
    d = decision_confidence(points, sweeps, sel, 200, 20)
    assert (d.p_prefill, d.p_decode) == (1.0, 1.0)


def test_decode_probability_counts_best_engine_not_its_concurrency():
    # TP1 certain: best 8/15*1000 = 533 tok/s/GPU (conc 8 within 20 ms). TP2: ITL 12 and 19 ms at conc 16 and 64,
    # band x(0.8, 1.25), one draw z for both points. Even when conc 64 misses 20 ms, conc 16 gives 8000/ITL16
    # tok/s/GPU > 533 while ITL16 < 15 ms, i.e. z < ln(1.25)/sigma = 1.645: P(TP2 best) = 0.95
    sweeps = [sweep(1, [1, 8, 32], [10, 15, 25]), sweep(2, [16, 64], [12, 19], 0.8, 1.25)]
    points = [PrefillPoint(TP[1], 3000, 100, 30000, 100, 100)]
    sel = select(points, sweeps, ttft_target_ms=200, itl_target_ms=20, isl=3000, osl=150)
    assert sel.best_decode.candidate == TP[2]
    d = decision_confidence(points, sweeps, sel, 200, 20, draws=20000)
    assert d.p_decode == pytest.approx(0.95, abs=0.01)


def test_probe_scores_favour_contested_engines():
    spec = load_spec(model="meta-llama/Llama-3.1-8B", system="h100_sxm", gpus="1,2")
    profile = estimate(spec)
    src = make_source("aic", profile.stack)
    points = [PrefillPoint(TP[1], 3000, 100, 30000, 80, 125), PrefillPoint(TP[2], 3000, 60, 24000, 60, 60)]
    sweeps = [sweep(1, [1, 8], [10, 15])]
    sel = select(points, sweeps, ttft_target_ms=200, itl_target_ms=20, isl=3000, osl=150)
    d = decision_confidence(points, sweeps, sel, 200, 20)
    pool = [Probe(ProbeKind.PREFILL, profile.stack, TP[1], isl=3000), Probe(ProbeKind.DECODE, profile.stack, TP[1],
            isl=3000, osl=150, concurrency=8)]  # fmt: skip
    # raw AIC bands have zero width: nothing left to learn anywhere, every score is 0
    assert [s for s, _ in probe_scores(src, d, pool, spec)] == [0.0, 0.0]
    assert (
        nearest(pool, Probe(ProbeKind.DECODE, profile.stack, TP[1], isl=3000, osl=150, concurrency=10))
        == pool[1]
    )


def _all_data_recommendation(spec):
    from validate.runners.replay import ReplayRunner

    base = make_source("aic", Stack.from_spec(spec))
    records = ReplayRunner.from_paths(FILES).records
    cal = calibrate(base, records)
    sel = estimate(spec, cal).selection
    return sel.best_prefill.candidate.name, sel.best_decode.candidate.name


def test_until_confident_on_replay_reaches_the_all_data_recommendation(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SLA_ESTIMATE_PROGRESS", "1")  # a progress bar on stderr although it is no terminal
    spec = load_spec(**STUDY)
    want = _all_data_recommendation(spec)
    out = tmp_path / "seq"
    flags = ["--model", STUDY["model"], "--system", STUDY["system"], "--gpus", "1,2", "--itl", "12", "--no-plots",
             "--runner", "replay", *(a for f in FILES for a in ("--measurements", str(f))), "--budget", "8"]  # fmt: skip
    assert main(["validate", *flags, "--until-confident", "0.8", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    text = captured.out
    assert "until confident" in captured.err and "point" in captured.err  # tqdm: points done / budget
    seq = json.loads((out / "report.json").read_text())["validation"]["sequential"]
    assert seq["stopped_because"].startswith("confidence")
    assert seq["confidence"] >= 0.8 and seq["points_measured"] < 8
    assert (seq["recommendation"]["prefill"], seq["recommendation"]["decode"]) == want
    assert len(MeasurementStore(out / "measurements.jsonl").load()) == seq["points_measured"]
    steps = seq["steps"]
    assert [s["points_measured"] for s in steps] == list(range(1, len(steps) + 1))
    assert steps[0]["confidence_after"] is None and all(s["confidence_after"] is not None for s in steps[1:])
    assert all(s["why"] for s in steps)
    assert "confidence in the recommendation (prefill TP1, decode TP2)" in text
    # the one-shot plan (budget 8) plans only what the replay runner holds and is not sequential
    assert main(["validate", *flags, "-o", str(tmp_path / "oneshot")]) == 0
    one = json.loads((tmp_path / "oneshot" / "report.json").read_text())["validation"]
    assert "sequential" not in one
    assert len(one["planned"]) <= 8


def test_failed_probe_is_reported_and_the_loop_goes_on(tmp_path):
    from estimator.errors import MeasurementError
    from validate.runners.replay import ReplayRunner
    from validate.sequential import run_until_confident

    class Flaky(ReplayRunner):
        """Fails the first decode probe it is asked for."""

        failed = False

        def measure(self, probe):
            if probe.kind is ProbeKind.DECODE and not Flaky.failed:
                Flaky.failed = True
                raise MeasurementError("engine went away", probe)
            return super().measure(probe)

    spec = load_spec(**STUDY, cache=False)
    profile = estimate(spec)
    base = make_source("aic", profile.stack)
    runner = Flaky(ReplayRunner.from_paths(FILES).records)
    store = MeasurementStore(tmp_path / "m.jsonl")
    res = run_until_confident(
        profile, base, runner, store, level=0.99, budget=4, calibrate_fn=calibrate, progress=False
    )
    assert res.steps[1].error and "engine went away" in res.steps[1].error
    assert len(res.run.failures) == 1 and len(res.run.measurements) == 4
    assert len(store.load()) == 4
    # 4 points: the budget, or the level reached with the 4th (the GPU runner's prior, since session 10)
    assert res.stopped_because == "budget of 4 points spent" or res.stopped_because.startswith("confidence")
    # a rerun answers what is stored from the store and measures only the rest: nothing is measured twice
    again = run_until_confident(profile, base, ReplayRunner.from_paths(FILES), store, level=0.99, budget=4,
                                calibrate_fn=calibrate, progress=False)  # fmt: skip
    assert again.run.reused >= 1 and again.run.measured >= 1 and not again.run.failures
    keys = [m.probe.key for m in store.load()]
    assert len(keys) == len(set(keys)) == 4 + again.run.measured


def test_generated_pool_keeps_what_the_runner_can_measure():
    from validate.next_probe import candidate_probes

    class OneEngine:
        """A runner that says it runs TP2 only (the capability contract's ``can_measure``)."""

        def can_measure(self, probe):
            return None if probe.candidate == TP[2] else "runs TP2 only"

    profile = estimate(load_spec(**STUDY, cache=False))
    pool = candidate_probes(profile, OneEngine())
    assert pool and {p.candidate for p in pool} == {TP[2]}
    assert {p.kind for p in pool} == {ProbeKind.PREFILL, ProbeKind.DECODE}
    everything = candidate_probes(profile, object())  # a runner that does not say: every engine
    assert {p.candidate for p in everything} == {TP[1], TP[2]}
    assert {p.isl for p in everything if p.kind is ProbeKind.PREFILL} == {187, 3000, 6000}


def test_until_confident_at_the_default_level_stops_before_the_one_shot_budget(tmp_path):
    # issue 11's target: at 0.9 the loop reaches the all-data recommendation with fewer points than the
    # one-shot plan's budget (8); the joint draws of the calibration (one phase scale shared by the engines)
    # make this possible, the independent reading of the bands never got past 89 % within 16 points
    from validate.runners.replay import ReplayRunner
    from validate.sequential import run_until_confident

    spec = load_spec(**STUDY, cache=False)
    profile = estimate(spec)
    base = make_source("aic", profile.stack)
    res = run_until_confident(profile, base, ReplayRunner.from_paths(FILES), MeasurementStore(tmp_path / "m.jsonl"),
                              level=0.9, budget=16, calibrate_fn=calibrate, progress=False)  # fmt: skip
    assert res.stopped_because.startswith("confidence")
    assert res.decision.confidence >= 0.9 and len(res.run.measurements) < 8
    assert res.decision.engines == _all_data_recommendation(spec)


def test_tie_tolerance_stops_a_near_tie_with_an_engine_as_good_as_the_all_data_pick(tmp_path):
    # ITL 20 ms: TP1 and TP2 decode 1.8 % apart on all 50 records, a tie strict confidence never
    # certifies at 0.9 within 16 points (docs/sequential.md); within a 5 % tolerance the loop stops early,
    # and what it recommends is, on all the data, within 5 % of the all-data pick
    from validate.runners.replay import ReplayRunner
    from validate.sequential import rank, run_until_confident

    spec = load_spec(**{**STUDY, "itl": 20}, cache=False)
    profile = estimate(spec)
    base = make_source("aic", profile.stack)
    store = MeasurementStore(tmp_path / "m.jsonl")
    res = run_until_confident(profile, base, ReplayRunner.from_paths(FILES), store, level=0.9, budget=16,
                              calibrate_fn=calibrate, progress=False, tie_tolerance=0.05)  # fmt: skip
    assert res.stopped_because.startswith("confidence") and len(res.run.measurements) < 8
    assert res.to_dict()["tie_tolerance"] == 0.05 and "within 5% of the best" in res.summary_lines()[0]
    everything = calibrate(base, ReplayRunner.from_paths(FILES).records)
    _, sweeps, sel = rank(everything, profile)
    best = {s.candidate.name: float(np.max(s.thpt_per_gpu[s.itl_ms <= 20])) for s in sweeps}
    assert sel.best_prefill.candidate.name == res.decision.engines[0]
    assert best[res.decision.engines[1]] >= 0.95 * max(best.values())


@pytest.mark.parametrize(
    "validate, message",
    [({"until_confident": 0.9, "tie_tolerance": 0.6}, "tie_tolerance: must be a fraction in [0, 0.5]"),
     ({"until_confident": 0.9, "tie_tolerance": -0.01}, "validate.tie_tolerance: must be a fraction"),
     ({"tie_tolerance": 0.05}, "validate.tie_tolerance: applies only with until_confident")],
)  # fmt: skip
def test_bad_tie_tolerance_is_refused(validate, message):
    from estimator.errors import SpecError

    with pytest.raises(SpecError) as err:
        load_spec(**STUDY, validate=validate)
    assert message in str(err.value)


def test_tie_tolerance_defaults_to_two_percent_and_is_set_by_the_flag():
    assert load_spec(**STUDY, validate={"until_confident": 0.9}).validate.tie_tolerance == 0.02
    from estimator.cli import _overrides, build_parser  # noqa: PLC0415

    ns = build_parser().parse_args(["validate", "--until-confident", "--tie-tolerance", "0.05"])
    assert _overrides(ns, [])["validate"]["tie_tolerance"] == "0.05"


def test_the_loops_ranking_is_the_profiles_under_confidence():
    """With ``--confidence`` the loop ranks with the source's own probabilities, as the final profile does:
    a target at the 0.99 point of TP1's band (which the lognormal reading of the band certifies and the
    calibration's Student-t does not) gives the same prefill pick in ``rank`` and in ``estimate``."""
    from estimator.confidence import quantile
    from validate.runners.replay import ReplayRunner
    from validate.sequential import rank

    recs = ReplayRunner.from_paths(FILES).records
    spec0 = load_spec(**STUDY, cache=False)
    cal = calibrate(make_source("aic", Stack.from_spec(spec0)), [recs[i] for i in (3, 11, 27, 40)])
    prof = estimate(spec0, cal)
    tp1 = next(c for c in prof.selection.prefill if c.candidate == TP[1])
    target = float(quantile(0.99, tp1.point.ttft_low_ms, tp1.point.ttft_high_ms)) * 1.001
    spec = load_spec(**STUDY, cache=False, ttft=target, confidence=0.99)
    _, _, loop = rank(cal, type("Profile", (), {"spec": spec, "candidates": prof.candidates})())
    final = estimate(spec, cal).selection
    assert loop.best_prefill.candidate == final.best_prefill.candidate
    assert loop.best_prefill.meets_sla == final.best_prefill.meets_sla
