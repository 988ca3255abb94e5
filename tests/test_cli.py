"""`sla-estimate` end to end on real AIC studies: every file, exit codes, one-line errors, the cache."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from estimator.cli import main

STUDY = ["--model", "meta-llama/Llama-3.1-8B", "--system", "h100_sxm", "--backend", "vllm",
         "--isl", "3000", "--osl", "150", "--ttft", "200", "--itl", "20", "--max-gpus", "4"]  # fmt: skip


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLA_ESTIMATE_CACHE_DIR", str(tmp_path / "cache"))


def test_profile_writes_every_file(tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*STUDY, "-o", str(out), "--planner-load-adjustment-interval=60"]) == 0
    text = capsys.readouterr().out
    assert "Prefill engine: TP" in text and "Decode engine:" in text
    assert "prefill_scale_up/down_queue_tokens" in text
    for rel in (
        "report.json", "final_config.yaml", "prefill_performance.png", "decode_performance.png",
        "selected_prefill_interpolation/raw_data.npz", "selected_decode_interpolation/raw_data.npz",
        "selected_prefill_interpolation/prefill_ttft_interpolation.png",
        "selected_decode_interpolation/decode_itl_interpolation.png",
    ):  # fmt: skip
        assert (out / rel).is_file() and (out / rel).stat().st_size > 0, rel
    report = json.loads((out / "report.json").read_text())
    assert report["spec"]["isl"] == 3000 and report["spec"]["gpu_counts"] == [1, 2, 4]
    docs = list(yaml.safe_load_all((out / "final_config.yaml").read_text()))
    planner_config = json.loads(docs[0]["data"]["planner_config.json"])
    assert planner_config["load_adjustment_interval_seconds"] == 60
    d = np.load(out / "selected_decode_interpolation/raw_data.npz")
    assert set(d.files) == {"max_kv_tokens", "x_kv_usage", "y_context_length", "z_itl", "z_thpt_per_gpu"}


def test_yaml_study_with_flag_override_and_json_output(tmp_path, capsys):
    cfg = tmp_path / "study.yaml"
    cfg.write_text("model: Qwen/Qwen3-30B-A3B\nsystem: h200_sxm\nbackend: sglang\nisl: 2000\nosl: 200\n"
                   "ttft: 300\nitl: 25\nmax_gpus: 2\n")  # fmt: skip
    assert main(["--config", str(cfg), "--isl", "1000", "--json", "--no-plots"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["spec"]["isl"] == 1000 and report["spec"]["backend"] == "sglang"
    names = {c["name"] for c in report["candidates"]}
    assert names == {"TEP1", "TEP2", "DEP2"}


def test_strict_exit_code_when_sla_missed(capsys):
    # ITL 1 ms is beyond any engine: loud warning, exit 1 only with --strict
    assert main([*STUDY, "--itl", "1", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "no decode engine meets ITL 1 ms" in out
    assert main([*STUDY, "--itl", "1", "--no-plots", "--strict"]) == 1


@pytest.mark.parametrize(
    "args, field",
    [
        (["--model", "nope/nope"], "model"),
        (["--system", "tpu_v5"], "system"),
        (["--backend", "tgi"], "backend"),
        (["--backend-version", "0.0.1"], "backend_version"),
        (["--isl", "40000", "--osl", "2000"], "isl"),
        (["--ttft", "-5"], "ttft_ms"),
        (["--itl", "0"], "itl_ms"),
        (["--min-gpus", "3", "--max-gpus", "3"], "max_gpus"),
        (["--frobnicate", "1"], "frobnicate"),
    ],
)
def test_bad_input_one_line_exit_2(args, field, capsys):
    assert main(["--model", "Qwen/Qwen3-32B", *args, "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sla-estimate: error: ") and field in err


def test_malformed_yaml_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("isl: [3000\n")
    assert main(["--config", str(bad)]) == 2
    assert "malformed YAML" in capsys.readouterr().err


def test_repeated_study_comes_from_cache(tmp_path, capsys):
    assert main([*STUDY, "--no-plots"]) == 0
    first = capsys.readouterr().out
    assert main([*STUDY, "--no-plots"]) == 0
    second = capsys.readouterr().out
    assert "(cached" in second and "(cached" not in first
    strip = lambda s: s.rsplit("\n(", 1)[0]
    assert strip(first) == strip(second)
    assert main([*STUDY, "--isl", "2500", "--no-plots"]) == 0  # another study: a miss
    assert "(cached" not in capsys.readouterr().out


def test_console_script_runs_in_a_new_process(tmp_path):
    res = subprocess.run([sys.executable, "-m", "estimator.cli", "--system", "h500"], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.strip().startswith("sla-estimate: error: system")
    assert "Traceback" not in res.stderr
