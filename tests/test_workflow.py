"""`sla-estimate validate` with the replay runner: plan -> measure -> calibrate -> recommend, and resume.

The recordings are a known distortion of AIC (prefill 1.35x, decode 1.25x, as the H100 study measured
for a transformers runner), written for exactly the probes the planner picks, so the replay answers
every planned point and calibration must recover the distortion.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from estimator.candidates import Candidate
from estimator.cli import main
from estimator.pipeline import estimate
from estimator.sources import make_source
from estimator.sources.aic import AicSource
from estimator.sources.base import Stack
from estimator.spec import load_spec
from estimator.measurements import Measurement, MeasurementStore, ProbeKind
from validate.plan import plan_probes

FLAGS = ["--model", "meta-llama/Llama-3.1-8B", "--system", "h100_sxm", "--gpus", "1,2", "--no-plots"]
PREFILL, DECODE = 1.35, 1.25


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLA_ESTIMATE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def recordings(tmp_path):
    spec = load_spec(model="meta-llama/Llama-3.1-8B", system="h100_sxm", gpus="1,2")
    profile = estimate(spec)
    aic = AicSource(profile.stack)
    store = MeasurementStore(tmp_path / "recorded.jsonl")
    for p in plan_probes(profile, budget=8, max_points_per_engine=4):
        if p.kind is ProbeKind.PREFILL:
            ttft = PREFILL * float(aic.prefill_ttft_ms(p.candidate, [p.isl])[0])
            store.append(Measurement(p, "synthetic", ttft_ms=ttft))
        else:
            itl = DECODE * float(aic.decode_itl_ms(p.candidate, [p.concurrency], [p.context_tokens])[0])
            store.append(Measurement(p, "synthetic", itl_ms=itl, kv_capacity_tokens=aic.kv_capacity_tokens(p.candidate)))
    return store.path


def test_validate_recovers_distortion_and_resumes(tmp_path, recordings, capsys):
    out = tmp_path / "out"
    args = ["validate", *FLAGS, "--runner", "replay", "--measurements", str(recordings), "-o", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "8 points planned, 8 measured now, 0 reused" in text
    # coverage and sharpness of the band
    assert re.search(r"TTFT: .*band covers \d+ %, ±[\d.]+ % wide \([\d.]+ × the error\)", text)
    report = json.loads((out / "report.json").read_text())
    v = report["validation"]
    assert v["measured_now"] == 8 and not v["failures"]
    assert v["report"]["summary"]["ttft"]["raw_median_abs_error_pct"] > 20
    assert v["report"]["summary"]["ttft"]["loo_median_abs_error_pct"] < 5
    assert len(MeasurementStore(out / "measurements.jsonl").load()) == 8

    # the calibrated source predicts the distortion at a point nobody measured
    stack = Stack.from_spec(load_spec(model="meta-llama/Llama-3.1-8B", system="h100_sxm"))
    cal, aic = make_source(str(out / "calibration.json"), stack), AicSource(stack)
    c = Candidate.parse(report["selection"]["prefill"][0]["candidate"])
    ratio = cal.prefill_ttft_ms(c, [2200]) / aic.prefill_ttft_ms(c, [2200])
    assert ratio == pytest.approx(PREFILL, rel=0.08)
    ratio = cal.decode_itl_ms(c, [24], [2500]) / aic.decode_itl_ms(c, [24], [2500])
    assert ratio == pytest.approx(DECODE, rel=0.08)

    # a rerun measures nothing again: everything comes from the output directory's record
    assert main(args) == 0
    assert "0 measured now, 8 reused" in capsys.readouterr().out


def test_validate_needs_measurements_for_replay(capsys):
    assert main(["validate", *FLAGS, "--runner", "replay"]) == 2
    assert "measurements" in capsys.readouterr().err


def test_validate_unknown_runner_option(tmp_path, recordings, capsys):
    args = ["validate", *FLAGS, "--runner", "replay", "--measurements", str(recordings),
            "--runner-option", "colour=blue", "-o", str(tmp_path / "o")]  # fmt: skip
    assert main(args) == 2
    assert "runner_options.colour" in capsys.readouterr().err


def test_calibrated_profile_uses_measured_points_through_the_cli(tmp_path, recordings, capsys):
    out = tmp_path / "out"
    main(["validate", *FLAGS, "--runner", "replay", "--measurements", str(recordings), "-o", str(out)])
    capsys.readouterr()
    assert main([*FLAGS, "--source", str(out / "calibration.json"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["provenance"]["source"]["source"] == "calibrated"
    assert np.isfinite(report["selection"]["prefill"][0]["ttft_ms"])
