"""Leftovers of the bad-input rule (one line on stderr, exit code 2, nothing accepted silently):
``models fit`` flags that only a Dynamo directory uses, explicit YAML nulls, non-ASCII digits, latency
targets too small to be milliseconds, and seeds outside [0, 2**32 - 1]."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from estimator import cli
from estimator.cli import main
from estimator.spec import Spec
from tests.test_bad_input import STUDY, _yaml, one_line_error
from tests.test_bad_input_models import _records
from tests.test_bad_input_plan import no_study  # noqa: F401  (fixture)

NULL = "null is not a value; remove the key to use the default"
LLAMA = "model=meta-llama/Llama-3.1-8B,system=h100_sxm,backend=vllm"
PLAN = ["plan", *STUDY, "--request-rate", "5"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLA_ESTIMATE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def specs(monkeypatch):
    """main() up to a checked Spec (the estimate is stubbed); the specs it would have run."""
    seen: list[Spec] = []

    def ok(spec, as_json):
        seen.append(spec)
        return 0

    monkeypatch.setattr(cli, "_run_profile", ok)
    monkeypatch.setattr(cli, "_run_validate", ok)
    return seen


# ---- 1: models fit --stack / --prefill-candidate / --decode-candidate need a Dynamo directory ---------
@pytest.mark.parametrize("flag", [["--stack", "model=Qwen/Qwen3-32B,system=h200_sxm,backend=vllm"],
                                  ["--prefill-candidate", "TP2"], ["--decode-candidate", "TP4"]])  # fmt: skip
def test_fit_dynamo_flags_without_a_dynamo_directory(flag, tmp_path, capsys):
    out = tmp_path / "out" / "m.json"
    argv = ["models", "fit", "--measurements", _records(tmp_path), "-o", str(out), "--no-residual", *flag]
    err = one_line_error(argv, capsys)
    assert f"{flag[0].lstrip('-')}: applies only to a Dynamo profiling directory" in err
    assert not out.parent.exists()


def test_fit_stack_still_reads_a_dynamo_directory(tmp_path, capsys):
    from tests.test_replay import _dynamo_dir

    _dynamo_dir(tmp_path / "dyn")
    out = tmp_path / "m.json"
    argv = ["models", "fit", "--measurements", _records(tmp_path), "--measurements", str(tmp_path / "dyn"),
            "--stack", LLAMA, "--prefill-candidate", "TP1", "--decode-candidate", "TP2", "-o", str(out),
            "--no-residual"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert out.is_file()


# ---- 2: an explicit null is refused where the key has a default ---------------------------------------
@pytest.mark.parametrize("text,field", [
    ("ttft: null\n", "ttft"), ("itl:\n", "itl"), ("isl: ~\n", "isl"), ("model: null\n", "model"),
    ("gpus: null\n", "gpus"), ("min_gpus: null\ngpus: [1]\n", "min_gpus"), ("max_gpus: null\n", "max_gpus"),
    ("gpus_per_node: null\n", "gpus_per_node"), ("seed: null\n", "seed"), ("plots: null\n", "plots"),
    ("source: null\n", "source"), ("planner_args: null\n", "planner_args"), ("cache:\n", "cache"),
    ("dynamo_version: null\n", "dynamo_version"), ("max_context_tokens: null\n", "max_context_tokens"),
])  # fmt: skip
def test_yaml_null_for_a_key_with_a_default(text, field, tmp_path, capsys, specs):
    err = one_line_error(["--config", _yaml(tmp_path, text), *STUDY], capsys)
    assert f"{field}: {NULL}" in err


@pytest.mark.parametrize("section,field", [
    ("{budget: }", "validate.budget"), ("{runner: null}", "validate.runner"),
    ("{measurements: null}", "validate.measurements"), ("{runner_options: null}", "validate.runner_options"),
    ("{max_points_per_engine: null}", "validate.max_points_per_engine"),
    ("{until_confident: 0.9, tie_tolerance: null}", "validate.tie_tolerance"),
])  # fmt: skip
def test_yaml_null_in_the_validate_section(section, field, tmp_path, capsys, specs):
    err = one_line_error(["validate", "--config", _yaml(tmp_path, f"validate: {section}\n"), *STUDY], capsys)
    assert f"{field}: {NULL}" in err


def test_yaml_null_runner_option_with_a_default(tmp_path, capsys):
    text = f"validate: {{measurements: {_records(tmp_path)}, runner_options: {{tolerance: }}}}\n"
    cfg = _yaml(tmp_path, text)
    err = one_line_error(["validate", "--config", cfg, *STUDY, "-o", str(tmp_path / "o")], capsys)
    assert f"runner_options.tolerance: {NULL}" in err


@pytest.mark.parametrize("text", ["request_rate: null\n", "confidence: null\n", "output_dir: null\n",
                                  "gemm_quant: null\n", "backend_version:\n", "total_gpus: null\n",
                                  "validate: null\n"])  # fmt: skip
def test_yaml_null_where_none_is_the_value(text, tmp_path, capsys, specs):
    assert main(["--config", _yaml(tmp_path, text), *STUDY]) == 0, capsys.readouterr().err
    assert getattr(specs[0], text.split(":")[0]) is None
    assert main(["validate", "--config", _yaml(tmp_path, "validate: {until_confident: null}\n"), *STUDY]) == 0
    assert specs[1].validate.until_confident is None


@pytest.mark.parametrize("text,field", [("ttft: null\n", "ttft"), ("isl: null\n", "isl"),
                                        ("top: null\n", "top"), ("headroom:\n", "headroom"),
                                        ("plots: null\n", "plots")])  # fmt: skip
def test_plan_config_null(text, field, tmp_path, capsys, no_study):  # noqa: F811
    err = one_line_error([*PLAN, "--config", _yaml(tmp_path, text)], capsys)
    assert f"{field}: {NULL}" in err


def test_plan_yaml_scenario_row_null(tmp_path, capsys, no_study):  # noqa: F811
    rows = _yaml(tmp_path, "- {name: a, request_rate: 5}\n- {name: b, isl: null}\n", "s.yaml")
    err = one_line_error(["plan", *STUDY, "--scenarios", rows], capsys)
    assert f"row 2: isl: {NULL}" in err


# ---- 3: numbers in ASCII digits only ------------------------------------------------------------------
@pytest.mark.parametrize("argv,field", [
    ([*STUDY, "--isl", "٣٠٠٠"], "isl"), ([*STUDY, "--osl", "３００"], "osl"),
    ([*STUDY, "--ttft", "２００"], "ttft_ms"),
    ([*STUDY, "--itl", "٢٠.٥"], "itl_ms"), ([*STUDY, "--gpus", "١,٢"], "gpus"),
    ([*STUDY, "--request-rate", "５"], "request_rate"), ([*STUDY, "--confidence", "0.９"], "confidence"),
    ([*PLAN, "--ttft-p90", "١٠٠"], "ttft_p90"), (["plan", *STUDY, "--concurrency", "٤"], "concurrency"),
])  # fmt: skip
def test_non_ascii_digits_are_refused(argv, field, tmp_path, capsys, specs, no_study):  # noqa: F811
    err = one_line_error(argv, capsys)
    assert f"{field}: expected" in err and "ASCII digits" in err


def test_non_ascii_digits_in_yaml_and_models_flags(tmp_path, capsys, specs):
    err = one_line_error(["--config", _yaml(tmp_path, "isl: '３０００'\n"), *STUDY[:6]], capsys)
    assert "isl: expected" in err and "ASCII digits" in err
    out = tmp_path / "m.json"
    argv = ["models", "fit", "--measurements", _records(tmp_path), "-o", str(out), "--max-iter", "١٠"]
    assert "max-iter: expected" in one_line_error(argv, capsys)
    assert not out.exists()


def test_non_ascii_digits_in_a_candidate_and_a_runner_option(tmp_path, capsys):
    from estimator.candidates import Candidate
    from tests.test_replay import _dynamo_dir

    with pytest.raises(ValueError, match="not a candidate name"):
        Candidate.parse("TP٢")
    _dynamo_dir(tmp_path / "dyn")
    argv = ["models", "fit", "--measurements", str(tmp_path / "dyn"), "-o", str(tmp_path / "m.json"),
            "--stack", LLAMA, "--prefill-candidate", "TP١"]
    assert "not a candidate name" in one_line_error(argv, capsys)
    argv = ["validate", *STUDY, "--measurements", _records(tmp_path), "--runner-option", "tolerance=０.２",
            "-o", str(tmp_path / "o")]  # fmt: skip
    assert "runner_options.tolerance" in one_line_error(argv, capsys)


# ---- 4: latency targets below a floor are a unit mistake ----------------------------------------------
@pytest.mark.parametrize("argv,expect", [
    ([*STUDY, "--ttft", "1e-9"], "ttft_ms: 1e-09 ms is below the floor of 0.1 ms"),
    ([*STUDY, "--ttft", "0.05"], "ttft_ms: 0.05 ms is below the floor of 0.1 ms"),
    ([*STUDY, "--itl", "1e-12"], "itl_ms: 1e-12 ms is below the floor of 0.01 ms"),
    ([*PLAN, "--ttft-p99", "0.001"], "ttft_p99: 0.001 ms is below the floor of 0.1 ms"),
    ([*PLAN, "--itl-p50", "0.005"], "itl_p50: 0.005 ms is below the floor of 0.01 ms"),
])  # fmt: skip
def test_tiny_latency_targets_are_refused(argv, expect, capsys, specs, no_study):  # noqa: F811
    assert expect in one_line_error(argv, capsys)


def test_tiny_target_in_yaml_and_dgdr(tmp_path, capsys, specs):
    err = one_line_error(["--config", _yaml(tmp_path, "itl: 0.001\n")], capsys)
    assert "itl_ms: 0.001 ms is below" in err
    example = Path(__file__).parents[1] / "examples" / "dgdr_qwen3_32b.yaml"
    text = example.read_text().replace("ttft: 200", "ttft: 0.0002")
    assert "sla.ttft: 0.0002 ms is below" in one_line_error(["--dgdr", _yaml(tmp_path, text)], capsys)


def test_latency_targets_at_the_floor_are_accepted(capsys, specs):
    assert main([*STUDY, "--ttft", "0.1", "--itl", "0.01"]) == 0, capsys.readouterr().err
    assert (specs[0].ttft_ms, specs[0].itl_ms) == (0.1, 0.01)


# ---- 5: the seed is a 32-bit unsigned integer ---------------------------------------------------------
@pytest.mark.parametrize("seed", ["100000000000000000000000", "-1", str(2**32), "1e20"])
def test_seed_out_of_range(seed, tmp_path, capsys, specs):
    err = one_line_error(["--config", _yaml(tmp_path, f"seed: {seed}\n"), *STUDY], capsys)
    assert "seed:" in err and f"out of range [0, {2**32 - 1}]" in err


def test_seed_bounds_are_accepted(tmp_path, capsys, specs):
    for seed in (0, 2**32 - 1):
        assert main(["--config", _yaml(tmp_path, f"seed: {seed}\n"), *STUDY]) == 0, capsys.readouterr().err
    assert [s.seed for s in specs] == [0, 2**32 - 1]
    np.random.default_rng(specs[-1].seed)  # what the sequential loop seeds with it
    assert json.loads(json.dumps(specs[-1].to_dict()))["seed"] == 2**32 - 1
