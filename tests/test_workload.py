"""Workloads: mooncake traces (prefix reuse, rate, bad lines), lognormal samples, prefix hit rate."""

from __future__ import annotations

import json

import numpy as np
import pytest

from estimator.cli import main
from estimator.errors import SpecError
from estimator.workload import fixed, load_trace, load_workload, lognormal


def _trace(tmp_path, recs, name="t.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return p


def test_prefix_reuse_reduces_prefill_tokens(tmp_path):
    p = _trace(tmp_path, [
        {"timestamp": 0, "input_length": 1200, "output_length": 10, "hash_ids": [1, 2, 3]},
        {"timestamp": 100, "input_length": 1100, "output_length": 10, "hash_ids": [1, 2, 4]},  # 2 blocks reused
        {"timestamp": 200, "input_length": 600, "output_length": 10, "hash_ids": [5, 2]},  # first block new: none
        {"timestamp": 300, "input_length": 1000, "output_length": 10, "hash_ids": [1, 2]},  # whole prompt cached
    ])  # fmt: skip
    w = load_trace(p)
    assert list(w.cached_tokens) == [0, 1024, 0, 999]  # 2 x 512; a full hit still prefills one token
    assert list(w.prefill_tokens) == [1200, 76, 600, 1]
    assert w.rate_rps == pytest.approx(3 / 0.3)
    assert w.arrival_cv2 == pytest.approx(0.0)  # evenly spaced


def test_prefix_hit_rate_shortens_prefill():
    w = fixed(4000, 500).with_prefix_hit_rate(0.25)
    assert w.mean_prefill_tokens == 3000
    with pytest.raises(SpecError):
        fixed(10, 10).with_prefix_hit_rate(1.0)


def test_lognormal_has_the_asked_mean_and_spread():
    w = lognormal(4000, 500, 0.5, 0.3)
    assert w.mean_isl == pytest.approx(4000, rel=0.02)
    assert np.std(w.isl) / w.mean_isl == pytest.approx(0.5, rel=0.1)
    assert w.mean_osl == pytest.approx(500, rel=0.02)


def test_yaml_workload(tmp_path):
    p = tmp_path / "w.yaml"
    p.write_text("isl: {mean: 2000, cv: 0.4}\nosl: 200\nprefix_hit_rate: 0.5\n")
    w = load_workload(p)
    assert w.mean_isl == pytest.approx(2000, rel=0.02) and w.prefix_reuse == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("line,why", [
    ('{"timestamp": 5, "input_length": 100}', "missing field 'output_length'"),
    ('{"timestamp": 5, "input_length": -3, "output_length": 4}', "input_length must be a positive integer"),
    ("not json", "not valid JSON"),
    ('{"timestamp": 5, "input_length": 10, "output_length": 4, "hash_ids": [[1]]}', "hash_ids must hold"),
    ('{"timestamp": 5, "input_length": 10, "output_length": 4, "hash_ids": [{"a": 1}]}', "hash_ids must hold"),
])  # fmt: skip
def test_bad_trace_line_is_one_line_error_naming_the_line(tmp_path, capsys, line, why):
    good = json.dumps({"timestamp": 0, "input_length": 100, "output_length": 10, "hash_ids": [1]})
    p = tmp_path / "bad.jsonl"
    p.write_text(good + "\n" + good + "\n" + line + "\n")
    rc = main(["plan", "--model", "meta-llama/Llama-3.1-8B", "--system", "h100_sxm", "--request-rate", "1",
               "--workload", str(p)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1
    assert f"{p}:3:" in err and why in err


def test_lognormal_is_capped_by_the_context():
    w = lognormal(30000, 500, 1.0, 0.5, max_tokens=32768)
    assert np.all(w.isl + w.osl <= 32768) and np.all(w.isl >= 1)


def test_yaml_workload_through_plan(tmp_path, capsys):
    p = tmp_path / "w.yaml"
    p.write_text("isl: {mean: 3000, cv: 0.6}\nosl: {mean: 200, cv: 0.5}\nprefix_hit_rate: 0.2\n")
    rc = main(["plan", "--model", "meta-llama/Llama-3.1-8B", "--system", "h100_sxm", "--ttft-p99", "1000",
               "--itl-p90", "30", "--workload", str(p), "--request-rate", "8", "--json"])  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["workload"]["requests"] == 128
    assert doc["workload"]["prefix_reuse"] == pytest.approx(0.2, abs=0.01)
    assert set(doc["sla"]["targets"]) == {"ttft_p99", "itl_p90"}  # means apply only when given
    assert doc["fleets"] and all(f["ttft_ms"]["p99"] <= 1000 for f in doc["fleets"])


@pytest.mark.parametrize("text,why", [
    ("isl: 3000\nosl: 150\nprefix_hit_rate: abc\n", "prefix_hit_rate"),
    ("isl: {mean: 3000, CV: 0.5}\nosl: 150\n", "isl takes mean and cv, not 'CV'"),
    ("isl: 3000.9\nosl: 150\n", "a fixed isl is a whole number of tokens"),
    ("isl: true\nosl: 150\n", "isl needs a number"),
])  # fmt: skip
def test_bad_yaml_workload_is_one_line_error(tmp_path, capsys, text, why):
    """Each was a traceback (prefix_hit_rate: abc) or accepted silently (a misspelt cv: a fixed workload;
    3000.9 tokens cut to 3000; true read as 1 token)."""
    p = tmp_path / "w.yaml"
    p.write_text(text)
    rc = main(["plan", "--model", "meta-llama/Llama-3.1-8B", "--system", "h100_sxm", "--request-rate", "1",
               "--workload", str(p)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and why in err
