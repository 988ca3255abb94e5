"""Validate plumbing: replayed records count once, resume only from the same source, the budget holds."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from estimator.candidates import Candidate, Mapping
from estimator.measurements import Measurement, MeasurementStore, Probe, ProbeKind
from estimator.pipeline import estimate
from estimator.sources import make_source
from estimator.sources.base import Stack
from estimator.spec import load_spec
from validate.calibrate import calibrate
from validate.run import FINGERPRINT, run_plan, runner_fingerprint
from validate.runners.base import Runner
from validate.runners.replay import ReplayRunner
from validate.workflow import _recorded_for, once_per_record, run_validation, source_key

RECORDS = Path(__file__).resolve().parents[1] / "models" / "measurements"
FILES = [RECORDS / "h100_llama31_8b_gpu_runner.jsonl", RECORDS / "h100_llama31_8b_gpu_runner_tp2.jsonl"]
STUDY = {"model": "meta-llama/Llama-3.1-8B", "system": "h100_sxm", "gpus": "1,2", "osl": 150}
STACK = Stack("meta-llama/Llama-3.1-8B", "h100_sxm", "vllm")
TP1 = Candidate(Mapping.TP, 1)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLA_ESTIMATE_CACHE_DIR", str(tmp_path / "cache"))


def prefill(isl: int, stack: Stack = STACK) -> Probe:
    return Probe(ProbeKind.PREFILL, stack, TP1, isl)


# ---- 1. one-shot replay: each record enters the calibration once ------------------------------------------
def test_one_shot_replay_counts_each_record_once(tmp_path):
    spec = load_spec(**STUDY, isl=4000, ttft=300, itl=20, plots=False, cache=False, output_dir=str(tmp_path),
                     validate={"runner": "replay", "measurements": [str(f) for f in FILES]})  # fmt: skip
    _, bound = run_validation(spec)
    res = bound.result
    records = ReplayRunner.from_paths(FILES).records
    snapped = [m for m in res.run.measurements if source_key(m) != m.probe.key]
    assert snapped, "the planned ISL 4000 should be answered by the record at ISL 4096"
    assert res.run.measured + res.num_recorded == len({m.probe.key for m in records})
    assert json.loads((tmp_path / "calibration.json").read_text())["n_points"] == len(records)


def test_two_planned_points_of_one_record_count_once_and_model_case_does_not_matter():
    rec = Measurement(probe=prefill(4096), runner="gpu", ttft_ms=120.0)
    other = Measurement(probe=prefill(1024), runner="gpu", ttft_ms=30.0)
    runner = ReplayRunner([rec, other])
    copies = [runner.measure(prefill(isl)) for isl in (4000, 4100)]  # both snap to the ISL 4096 record
    lower = dataclasses.replace(STACK, model=STACK.model.lower())
    recorded = _recorded_for(runner, lower, copies)
    assert [m.probe.isl for m in recorded] == [1024]  # the record they replay is left out; case ignored
    assert [m.probe.isl for m in once_per_record(copies + recorded)] == [4000, 1024]


# ---- 2. resume: reuse a stored point only from the same source ---------------------------------------------
class Fixed(Runner):
    """Answers every probe with one TTFT; ``fingerprint`` names its source."""

    name = "fixed"

    def __init__(self, ttft: float, fingerprint: str = "fixed a"):
        self.ttft, self.fingerprint, self.calls = ttft, fingerprint, 0

    def measure(self, probe: Probe) -> Measurement:
        self.calls += 1
        return Measurement(probe=probe, runner=self.name, ttft_ms=self.ttft)


def test_a_point_stored_from_another_source_is_measured_again_and_kept(tmp_path, caplog):
    store = MeasurementStore(tmp_path / "m.jsonl")
    probes = [prefill(isl) for isl in (1000, 2000, 3000)]
    first = run_plan(probes, Fixed(10.0, "fixed a"), store)
    assert first.measured == 3 and {m.extra[FINGERPRINT] for m in store.load()} == {"fixed a"}
    runner = Fixed(20.0, "fixed b")
    with caplog.at_level(logging.WARNING, logger="validate.run"):
        again = run_plan(probes, runner, store)
    assert (again.reused, again.measured, again.remeasured, runner.calls) == (0, 3, 3, 3)
    assert [m.ttft_ms for m in again.measurements] == [20.0] * 3
    assert len(store.load()) == 6  # the old records stay
    warned = [r.getMessage() for r in caplog.records if "another source" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("3 stored point(s)")
    third = run_plan(probes, Fixed(30.0, "fixed b"), store)  # the same source again: the new points reused
    assert (third.reused, third.measured, third.remeasured) == (3, 0, 0)
    assert [m.ttft_ms for m in third.measurements] == [20.0] * 3


def test_an_old_record_without_fingerprint_is_reused_only_by_its_runner(tmp_path):
    store = MeasurementStore(tmp_path / "m.jsonl")
    store.append(Measurement(probe=prefill(1000), runner="fixed", ttft_ms=10.0))  # an older store's record
    same = run_plan([prefill(1000)], Fixed(20.0), store)
    assert (same.reused, same.measured) == (1, 0) and same.measurements[0].ttft_ms == 10.0
    store.append(Measurement(probe=prefill(2000), runner="endpoint", ttft_ms=10.0))
    other = run_plan([prefill(2000)], Fixed(20.0), store)
    assert (other.reused, other.measured, other.remeasured) == (0, 1, 1)


def test_runner_fingerprints_name_their_source(tmp_path):
    from validate.runners.endpoint import EndpointRunner

    a, b = (EndpointRunner(f"http://127.0.0.1:{p}", candidate="TP1") for p in (9, 10))
    assert runner_fingerprint(a) != runner_fingerprint(b) and "127.0.0.1:9" in runner_fingerprint(a)
    rec = Measurement(probe=prefill(1000), runner="gpu", ttft_ms=10.0)
    slower = dataclasses.replace(rec, ttft_ms=20.0)
    assert ReplayRunner([rec]).fingerprint == ReplayRunner([dataclasses.replace(rec)]).fingerprint
    assert ReplayRunner([rec]).fingerprint != ReplayRunner([slower]).fingerprint
    assert runner_fingerprint(ReplayRunner([rec])).startswith("replay sha256:")


# ---- 3. --until-confident never measures more than the budget ----------------------------------------------
@pytest.mark.parametrize("budget", [1, 3])
def test_until_confident_keeps_to_the_budget(tmp_path, budget):
    from validate.sequential import run_until_confident

    profile = estimate(load_spec(**STUDY, isl=3000, ttft=200, itl=12, cache=False))
    base = make_source("aic", profile.stack)
    store = MeasurementStore(tmp_path / "m.jsonl")
    runner = ReplayRunner.from_paths(FILES)
    res = run_until_confident(profile, base, runner, store, level=0.999, budget=budget,
                              calibrate_fn=calibrate, progress=False)  # fmt: skip
    assert len(res.run.measurements) == len(store.load()) == len(res.steps) == budget
    assert res.stopped_because == f"budget of {budget} points spent"
    assert res.decision is not None  # the last point was calibrated on
