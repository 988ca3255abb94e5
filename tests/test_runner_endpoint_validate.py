"""`sla-estimate validate --runner endpoint`: one server is measured as the one engine it runs (issue 11).

The README's endpoint example used to record one server as TP1, TP2 and TP4 and hand its KV capacity
to every candidate. Here the endpoint (the SSE stand-in, ``sse_standin.py``) runs TP2 (runner option):
every record must be TP2, the plan must say which points it left out and why, and the measured KV
capacity must stay TP2's.
"""

from __future__ import annotations

import json

import pytest
from sse_standin import SseStandIn

from estimator.candidates import Candidate, Mapping
from estimator.cli import main
from estimator.measurements import MeasurementStore
from estimator.sources import make_source
from estimator.sources.aic import AicSource
from estimator.sources.base import Stack
from estimator.spec import load_spec

FLAGS = ["--model", "meta-llama/Llama-3.1-8B", "--system", "h100_sxm", "--gpus", "1,2,4", "--no-plots"]
STANDIN_KV_TOKENS = 64 * 16  # the stand-in's vllm:cache_config_info: 64 blocks of 16 tokens


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLA_ESTIMATE_CACHE_DIR", str(tmp_path / "cache"))


def test_validate_with_an_endpoint_measures_only_its_engine(tmp_path, capsys):
    out = tmp_path / "out"
    with SseStandIn(token_delay_s=0.001) as srv:
        options = [
            f"url={srv.url}",
            "model=standin",
            "tokenizer=token_ids",
            "candidate=TP2",
            "warmup=0",
            "repeats=2",
        ]
        args = ["validate", *FLAGS, "--runner", "endpoint", "--budget", "4", "-o", str(out)]
        args += [a for o in options for a in ("--runner-option", o)]
        assert main(args) == 0
    text = capsys.readouterr().out
    records = MeasurementStore(out / "measurements.jsonl").load()
    assert records and {m.probe.candidate.name for m in records} == {"TP2"}
    assert {m.probe.kind.value for m in records} == {"prefill", "decode"}
    v = json.loads((out / "report.json").read_text())["validation"]
    left = [n for n in v["not_planned"] if not n["measurable"]]
    assert left and all("runs TP2 (runner option candidate=TP2)" in n["why_not"] for n in left)
    assert {n["probe"]["candidate"] for n in left} >= {"TP1", "TP4"}
    assert "not planned:" in text

    stack = Stack.from_spec(load_spec(model="meta-llama/Llama-3.1-8B", system="h100_sxm"))
    cal, aic = make_source(str(out / "calibration.json"), stack), AicSource(stack)
    tp1, tp2 = Candidate(Mapping.TP, 1), Candidate(Mapping.TP, 2)
    assert cal.kv_capacity_tokens(tp2) == STANDIN_KV_TOKENS  # measured, on the engine that was measured
    assert cal.kv_capacity_tokens(tp1) == aic.kv_capacity_tokens(tp1) != STANDIN_KV_TOKENS
