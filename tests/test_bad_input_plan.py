"""Bad input to ``sla-estimate plan``: exit code 2 and ONE line on stderr naming the field or the file (and
line), never a traceback and never accepted silently. Inputs and the output directory are checked before the
first fleet is sized: most tests here make sizing itself an error, so they also prove the order.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from estimator.cli import main
from tests.test_bad_input import one_line_error

STUDY = ["--model", "meta-llama/Llama-3.1-8B", "--system", "h100_sxm", "--gpus", "1", "--isl", "1000",
         "--osl", "100", "--no-plots"]  # fmt: skip
PLAN = ["plan", *STUDY, "--request-rate", "5"]
ROW = "name,request_rate\na,5\n"
TRACE = '{"timestamp": 0, "input_length": 1000, "output_length": 100, "hash_ids": [1, 2]}\n'


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLA_ESTIMATE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def no_study(monkeypatch):
    """Sizing a fleet fails the test: the error must come before the (long) study."""

    def refuse(*a, **k):
        raise AssertionError("the study ran before the bad input was refused")

    monkeypatch.setattr("estimator.capacity_study.run_capacity", refuse)


def _file(tmp: Path, name: str, data: str | bytes) -> str:
    p = tmp / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(p)


# ---- 10: the output directory is checked before the study --------------------------------------------
@pytest.mark.parametrize("scenarios", [False, True], ids=["one plan", "scenarios"])
@pytest.mark.parametrize("where,needle", [
    (lambda t: _file(t, "afile", "x"), "is a file"),
    (lambda t: _file(t, "afile", "x") + "/sub", "which is a file"),
    (lambda t: "/proc/x", "/proc"),
])  # fmt: skip
def test_an_output_dir_that_cannot_be_one_fails_before_the_study(tmp_path, capsys, no_study, scenarios, where,
                                                                   needle):  # fmt: skip
    load = ["--scenarios", _file(tmp_path, "s.csv", ROW)] if scenarios else ["--request-rate", "5"]
    err = one_line_error(["plan", *STUDY, *load, "-o", where(tmp_path)], capsys)
    assert "output_dir" in err and needle in err


def test_output_dir_in_the_config_is_honoured_and_the_flag_wins(tmp_path, capsys):
    cfg = _file(tmp_path, "c.yaml", f"output_dir: {tmp_path / 'from_config'}\n")
    assert main([*PLAN, "--config", cfg]) == 0
    assert json.loads((tmp_path / "from_config" / "plan.json").read_text())
    assert main([*PLAN, "--config", cfg, "-o", str(tmp_path / "from_flag")]) == 0
    assert (tmp_path / "from_flag" / "plan.csv").is_file()


def test_a_bad_output_dir_in_the_config_fails_before_the_study(tmp_path, capsys, no_study):
    cfg = _file(tmp_path, "c.yaml", f"output_dir: {_file(tmp_path, 'afile', 'x')}\n")
    assert "is a file" in one_line_error([*PLAN, "--config", cfg], capsys)


# ---- 11: unreadable bytes and torn CSV rows -----------------------------------------------------------
CASES_11 = {
    "trace with a non-UTF-8 line": (
        lambda t: [*PLAN, "--workload", _file(t, "t.jsonl", TRACE.encode() + b"\xff\n")], "t.jsonl:2: not UTF-8"
    ),
    "scenarios csv short row": (
        lambda t: ["plan", *STUDY, "--scenarios", _file(t, "s.csv", "name,request_rate,isl\na,5\n")],
        "s.csv line 2: 2 values for the 3 columns",
    ),
    "scenarios csv long row": (
        lambda t: ["plan", *STUDY, "--scenarios", _file(t, "s.csv", "name,request_rate\na,5,7\n")],
        "s.csv line 2: 3 values for the 2 columns",
    ),
    "scenarios csv unnamed column": (
        lambda t: ["plan", *STUDY, "--scenarios", _file(t, "s.csv", "name,,request_rate\na,1,5\n")],
        "column 2 has no name",
    ),
    "scenarios csv not UTF-8": (
        lambda t: ["plan", *STUDY, "--scenarios", _file(t, "s.csv", b"name,request_rate\n\xff,5\n")],
        "s.csv line 2: not UTF-8",
    ),
    "scenarios yaml not UTF-8": (
        lambda t: ["plan", *STUDY, "--scenarios", _file(t, "s.yaml", b"- name: \xff\n  request_rate: 5\n")],
        "s.yaml line 1: not UTF-8",
    ),
}


# ---- 12: a repeated key is refused, never last-wins ---------------------------------------------------
CASES_12 = {
    "scenarios yaml repeated key": (
        lambda t: ["plan", *STUDY, "--scenarios",
                   _file(t, "s.yaml", "- name: a\n  request_rate: 5\n  request_rate: 6\n")],
        "duplicate key 'request_rate' at line 3",
    ),  # fmt: skip
    "scenarios json repeated key": (
        lambda t: ["plan", *STUDY, "--scenarios", _file(t, "s.json", '[{"name": "a", "top": 1, "top": 2}]')],
        "duplicate key 'top'",
    ),
    "scenarios csv repeated column": (
        lambda t: ["plan", *STUDY, "--scenarios", _file(t, "s.csv", "name,request_rate,request_rate\na,5,6\n")],
        "column 'request_rate' appears twice",
    ),
    "trace repeated key": (
        lambda t: [*PLAN, "--workload", _file(t, "t.jsonl", TRACE + TRACE.replace('"input_length": 1000',
                                                                                  '"input_length": 1000, "input_length": 5'))],
        "t.jsonl:2: duplicate key 'input_length'",
    ),  # fmt: skip
}


# ---- 13: empty and out-of-bound values, and fields plan does not use --------------------------------
CASES_13 = {
    "--top ''": (lambda t: [*PLAN, "--top", ""], "top: expected an integer"),
    "--headroom ''": (lambda t: [*PLAN, "--headroom", ""], "headroom: expected a number"),
    "--size-for ''": (lambda t: [*PLAN, "--size-for", ""], "size_for: is empty"),
    "--prefix-hit-rate ''": (lambda t: [*PLAN, "--prefix-hit-rate", ""], "prefix_hit_rate: expected a number"),
    "--workload ''": (lambda t: [*PLAN, "--workload", ""], "workload: is empty"),
    "-o ''": (lambda t: [*PLAN, "-o", ""], "output_dir: is empty"),
    "--scenarios ''": (lambda t: ["plan", *STUDY, "--scenarios", ""], "scenarios: is empty"),
    "--config ''": (lambda t: [*PLAN, "--config", ""], "config: is empty"),
    "yaml top 0": (lambda t: [*PLAN, "--config", _file(t, "c.yaml", "top: 0\n")], "top: 0 is out of range"),
    "yaml headroom 0.0 is fine but '' is not": (
        lambda t: [*PLAN, "--config", _file(t, "c.yaml", "headroom: ''\n")], "headroom: expected a number"
    ),
    "--request-rate 1e300": (
        lambda t: ["plan", *STUDY, "--request-rate", "1e300"], "request_rate: 1e+300 is beyond the bound of 100000"
    ),
    "scenario request_rate 1e300": (
        lambda t: ["plan", *STUDY, "--scenarios", _file(t, "s.csv", "name,request_rate\na,1e300\n")],
        "row 1 (a): request_rate: 1e+300 is beyond the bound",
    ),
    "trace arrival rate beyond the bound": (
        lambda t: ["plan", *STUDY, "--workload",
                   _file(t, "t.jsonl", TRACE + TRACE.replace('"timestamp": 0', '"timestamp": 1e-9'))],
        "arrival rate 1e+12 requests/s is beyond the bound",
    ),  # fmt: skip
    "trace timestamp true": (
        lambda t: [*PLAN, "--workload", _file(t, "t.jsonl", TRACE.replace("0", "true", 1))],
        "timestamp must be a number, got True",
    ),
    "config validate section": (
        lambda t: [*PLAN, "--config", _file(t, "c.yaml", "validate: {runner: replay}\n")],
        "validate: does not apply to `plan`",
    ),
    "config num_alternatives": (
        lambda t: [*PLAN, "--config", _file(t, "c.yaml", "num_alternatives: 2\n")],
        "num_alternatives: does not apply to `plan` (plan ranks fleets (--top))",
    ),
    "scenarios mapping with another key": (
        lambda t: ["plan", *STUDY, "--scenarios", _file(t, "s.yaml", "scenarios: [{request_rate: 5}]\ntop: 3\n")],
        "unknown field 'top' beside the scenarios list",
    ),
    # session 10 (a fuzzing review): accepted, then inf costs or NaN replays
    "--request-rate 1e-320": (
        lambda t: ["plan", *STUDY, "--request-rate", "1e-320"], "request_rate: 9.99989e-321 is below"
    ),
    "--gpu-price 1e308": (lambda t: [*PLAN, "--gpu-price", "1e308"], "gpu_price: 1e+308 is beyond the bound"),
    "--ttft-p99 1e308": (lambda t: [*PLAN, "--ttft-p99", "1e308"], "ttft_p99: 1e+308 is beyond the bound"),
    "scenario itl_p50 1e9": (
        lambda t: ["plan", *STUDY, "--scenarios", _file(t, "s.csv", "name,request_rate,itl_p50\na,5,1e9\n")],
        "row 1 (a): itl_p50: 1e+09 is beyond the bound",
    ),
    "a bad row 2 fails before row 1 is planned": (
        lambda t: ["plan", *STUDY, "--scenarios", _file(t, "s.csv", "name,request_rate\na,5\nb,-1\n")],
        "row 2 (b): request_rate: must be > 0",
    ),
}


@pytest.mark.parametrize("case", [*CASES_11, *CASES_12, *CASES_13])
def test_bad_plan_input_is_one_line_before_the_study(case, tmp_path, capsys, no_study, monkeypatch):
    monkeypatch.chdir(tmp_path)  # scenarios default to writing in "."
    argv, needle = {**CASES_11, **CASES_12, **CASES_13}[case]
    err = one_line_error(argv(tmp_path), capsys)
    assert needle in err, err


def test_a_planner_flag_is_refused_by_plan(capsys, no_study):
    assert "planner" in one_line_error([*PLAN, "--planner-kalman-r=1"], capsys)


def test_good_scenarios_still_plan(tmp_path, capsys):
    """A spreadsheet's UTF-8 byte-order mark and blank lines are fine; empty cells mean "not given"."""
    sc = _file(tmp_path, "s.csv", b"\xef\xbb\xbfname,request_rate,top\na,5,\n\nb,3,2\n")
    assert main(["plan", *STUDY, "--scenarios", sc, "-o", str(tmp_path / "out"), "--json"]) == 0
    assert [r["scenario"] for r in json.loads(capsys.readouterr().out)] == ["a", "b"]
