"""Every class of bad input from issue 12: exit code 2, ONE line on stderr naming the field or the file
(and line), no traceback. The CLI runs in-process (``estimator.cli.main``) so the suite stays fast.

Also: strings where booleans belong are parsed strictly, ``request_rate: 0`` means the same in YAML
and on the command line, the YAML ``validate:`` section is honoured field by field, measurements with
NaN/inf/<= 0 latencies are dropped with a warning before calibration, and study files are bounded.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest

from estimator.candidates import Candidate, Mapping
from estimator.cli import main
from estimator.measurements import Measurement, MeasurementStore, Probe, ProbeKind
from estimator.sources.base import Stack
from validate.silicon import bundled_silicon_csv

STUDY = [
    "--model",
    "meta-llama/Llama-3.1-8B",
    "--system",
    "h100_sxm",
    "--gpus",
    "1",
    "--isl",
    "1000",
    "--osl",
    "100",
    "--no-plots",
]
STACK = Stack("meta-llama/Meta-Llama-3.1-8B", "h100_sxm", "vllm")
TP1 = Candidate(Mapping.TP, 1)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLA_ESTIMATE_CACHE_DIR", str(tmp_path / "cache"))


def one_line_error(argv: list[str], capsys) -> str:
    rc = main(argv)
    captured = capsys.readouterr()
    err = captured.err
    assert rc == 2, (rc, err, captured.out[-500:])
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("sla-estimate: error: "), err
    return err


def _yaml(tmp: Path, text: str | bytes, name: str = "study.yaml") -> str:
    p = tmp / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(p)


def _model_dir(tmp: Path, cfg: object) -> str:
    d = tmp / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    return str(d)


def _raw_model_dir(tmp: Path, data: bytes) -> str:
    d = tmp / "model"
    d.mkdir()
    (d / "config.json").write_bytes(data)
    return str(d)


def _silicon(tmp: Path, drop: str) -> str:
    with bundled_silicon_csv().open(newline="") as fh:
        rows = list(csv.DictReader(fh))[:20]
    cols = [c for c in rows[0] if c != drop]
    buf = io.StringIO()
    w = csv.DictWriter(buf, cols, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    p = tmp / "silicon_sample.csv"
    p.write_text(buf.getvalue())
    return str(p)


def _records(tmp: Path, **values) -> str:
    p = tmp / "recorded.jsonl"
    m = Measurement(Probe(ProbeKind.PREFILL, STACK, TP1, isl=1000), "synthetic", ttft_ms=50.0)
    d = m.to_dict()
    probe = values.pop("probe", {})
    d["probe"].update(probe)
    d.update(values)
    p.write_text(json.dumps(d) + "\n")
    return str(p)


def _npz_dir(tmp: Path) -> str:
    d = tmp / "dynamo" / "selected_prefill_interpolation"
    d.mkdir(parents=True)
    np.savez(
        d / "raw_data.npz",
        prefill_isl=np.arange(100, 2000, 100.0),
        prefill_ttft=np.ones(19),
        prefill_thpt_per_gpu=np.ones(19),
    )
    data = (d / "raw_data.npz").read_bytes()
    (d / "raw_data.npz").write_bytes(data[: len(data) // 2])
    return str(tmp / "dynamo")


def _silicon_case(col: str, tmp: Path) -> list[str]:
    return _validate(_silicon(tmp, col))


def _validate(measurements: str, *extra: str) -> list[str]:
    return ["validate", *STUDY, "--runner", "replay", "--measurements", measurements, *extra]


CASES = {
    # NaN / inf / 1e400 for integer fields, CLI and YAML
    "cli isl nan": (lambda t: [*STUDY, "--isl", "nan"], "isl"),
    "cli osl inf": (lambda t: [*STUDY, "--osl", "inf"], "osl"),
    "cli gpus nan": (lambda t: [*STUDY, "--gpus", "nan"], "gpus"),
    "cli isl 1e400": (lambda t: [*STUDY, "--isl", "1e400"], "isl"),
    "cli gpus-per-node 1e400": (lambda t: [*STUDY, "--gpus-per-node", "1e400"], "gpus_per_node"),
    "cli ttft 1e400": (lambda t: [*STUDY, "--ttft", "1e400"], "ttft_ms"),
    "yaml isl .nan": (lambda t: ["--config", _yaml(t, "isl: .nan\n")], "isl"),
    "yaml gpus_per_node 1e400": (lambda t: ["--config", _yaml(t, "gpus_per_node: 1e400\n")], "gpus_per_node"),
    "yaml huge int": (lambda t: ["--config", _yaml(t, "isl: " + "9" * 500 + "\n")], "isl"),
    # wrong YAML types
    "yaml gpus 2.5": (lambda t: ["--config", _yaml(t, "gpus: 2.5\n")], "gpus"),
    "yaml gpus mapping": (lambda t: ["--config", _yaml(t, "gpus: {a: 1}\n")], "gpus"),
    "yaml gpus nested list": (lambda t: ["--config", _yaml(t, "gpus: [[1]]\n")], "gpus"),
    "yaml runner_options list": (
        lambda t: ["validate", "--config", _yaml(t, "validate: {runner_options: [a, b]}\n")],
        "runner_options",
    ),
    "yaml measurements 5": (
        lambda t: ["validate", "--config", _yaml(t, "validate: {measurements: 5}\n")],
        "measurements",
    ),
    "yaml planner_args 3": (lambda t: ["--config", _yaml(t, "planner_args: 3\n")], "planner_args"),
    "yaml planner_args nested": (
        lambda t: ["--config", _yaml(t, "planner_args: {a: [1]}\n")],
        "planner_args",
    ),
    "yaml model mapping": (lambda t: ["--config", _yaml(t, "model: {a: 1}\n")], "model"),
    "yaml system list": (lambda t: ["--config", _yaml(t, "system: [h100_sxm]\n")], "system"),
    "yaml validate list": (lambda t: ["validate", "--config", _yaml(t, "validate: [1]\n")], "validate"),
    "yaml non-string key": (lambda t: ["--config", _yaml(t, "1: 2\nisl: 3\n")], "config"),
    "yaml deeply nested": (
        lambda t: ["--config", _yaml(t, "model: " + "[" * 5000 + "]" * 5000 + "\n")],
        "config",
    ),
    "yaml nested 40": (
        lambda t: ["--config", _yaml(t, "planner_args: " + "[" * 40 + "]" * 40 + "\n")],
        "nests deeper",
    ),
    "yaml not utf-8": (
        lambda t: ["--config", _yaml(t, b"isl: 3000\nmodel: \xff\xfe\n")],
        "study.yaml line 2",
    ),
    "yaml python tag": (
        lambda t: ["--config", _yaml(t, "isl: !!python/object/apply:os.system [true]\n")],
        "malformed YAML",
    ),
    "yaml duplicate key": (
        lambda t: ["--config", _yaml(t, "isl: 1000\nosl: 10\nisl: 2000\n")],
        "duplicate key 'isl' at line 3",
    ),
    "yaml ttft twice": (lambda t: ["--config", _yaml(t, "ttft: 100\nttft_ms: 200\n")], "ttft_ms"),
    "yaml not a file": (lambda t: ["--config", str(t)], "config"),
    # booleans are parsed strictly
    "yaml plots maybe": (lambda t: ["--config", _yaml(t, "plots: maybe\n")], "plots"),
    "yaml strict 1": (lambda t: ["--config", _yaml(t, "strict: 1\n")], "strict"),
    "yaml cache null string": (lambda t: ["--config", _yaml(t, "cache: 'off?'\n")], "cache"),
    # request rate: 0 in YAML and on the command line alike; absurd values bounded
    "yaml request_rate 0": (lambda t: ["--config", _yaml(t, "request_rate: 0\n")], "request_rate"),
    "cli request-rate 0": (lambda t: [*STUDY, "--request-rate", "0"], "request_rate"),
    "cli request-rate 1e12": (lambda t: [*STUDY, "--request-rate", "1e12"], "bound of 100000"),
    "cli gpus 4096": (lambda t: [*STUDY, "--gpus", "4096"], "[1, 1024]"),
    "cli gpus-per-node 0": (lambda t: [*STUDY, "--gpus-per-node", "0"], "gpus_per_node"),
    # flags
    "empty planner flag": (lambda t: [*STUDY, "--planner-=x"], "planner_args"),
    "bare planner flag": (lambda t: [*STUDY, "--planner-"], "planner_args"),
    "models --bogus": (lambda t: ["models", "--bogus"], "bogus"),
    # flags `plan` shares with profile but does not use: refused, never ignored
    "plan --confidence with --size-for band": (
        lambda t: ["plan", *STUDY, "--request-rate", "5", "--confidence", "0.9", "--size-for", "band"],
        "either --confidence or --size-for band",
    ),
    "plan yaml confidence 1": (
        lambda t: [
            "plan",
            "--config",
            _yaml(t, "model: Qwen/Qwen3-32B\nsystem: h200_sxm\nconfidence: 1\n"),
            "--request-rate",
            "5",
        ],
        "confidence",
    ),
    "plan --confidence 1e-17": (
        lambda t: ["plan", *STUDY, "--request-rate", "5", "--confidence", "1e-17"],
        "confidence: must be a probability in [0.5, 0.999]",
    ),
    "profile --confidence 0.9999": (
        lambda t: [*STUDY, "--confidence", "0.9999"],
        "confidence: must be a probability in [0.5, 0.999]",
    ),
    "plan p99 target below p50": (
        lambda t: ["plan", *STUDY, "--request-rate", "5", "--ttft-p50", "200", "--ttft-p99", "100"],
        "ttft_p99: 100 ms is below ttft_p50",
    ),
    "plan p99 target below p90": (
        lambda t: ["plan", *STUDY, "--request-rate", "5", "--itl-p90", "30", "--itl-p99", "20"],
        "itl_p99: 20 ms is below itl_p90",
    ),
    "plan --num-alternatives": (
        lambda t: ["plan", *STUDY, "--request-rate", "5", "--num-alternatives", "2"],
        "num_alternatives",
    ),
    # --source of another kind
    "source report.json": (
        lambda t: [*STUDY, "--source", _yaml(t, '{"spec": {}, "selection": {}}', "report.json")],
        "report.json",
    ),
    "source json list": (lambda t: [*STUDY, "--source", _yaml(t, "[1, 2]", "calib.json")], "calib.json"),
    "source not utf-8": (
        lambda t: [*STUDY, "--source", _yaml(t, b'{"a": "\xff"}', "calib.json")],
        "calib.json line 1",
    ),
    "source broken calibration": (
        lambda t: [*STUDY, "--source", _yaml(t, '{"format_version": 1, "theta": [1]}', "calib.json")],
        "calib.json",
    ),
    # --output-dir that cannot be one
    "output-dir is a file": (lambda t: [*STUDY, "-o", _yaml(t, "x", "afile")], "afile is a file"),
    "output-dir under a file": (lambda t: [*STUDY, "-o", _yaml(t, "x", "afile") + "/sub"], "afile"),
    "output-dir not permitted": (lambda t: [*STUDY, "-o", "/sys/sla-estimate-test-out"], "output_dir"),
    # a local model whose config.json is wrong
    "model 0 heads": (
        lambda t: [
            *STUDY[2:],
            "--model",
            _model_dir(t, {"hidden_size": 256, "num_attention_heads": 0, "num_hidden_layers": 2}),
        ],
        "num_attention_heads",
    ),
    "model config not utf-8": (
        lambda t: [*STUDY[2:], "--model", _raw_model_dir(t, b'{"hidden_size": "\xff"}')],
        "config.json line 1",
    ),
    "model config list": (lambda t: [*STUDY[2:], "--model", _model_dir(t, [1, 2])], "config.json"),
    "model layers string": (
        lambda t: [
            *STUDY[2:],
            "--model",
            _model_dir(t, {"hidden_size": 256, "num_attention_heads": 4, "num_hidden_layers": "two"}),
        ],
        "num_hidden_layers",
    ),
    # replay inputs
    "replay truncated npz": (
        lambda t: _validate(_npz_dir(t), "--runner-option", "prefill_candidate=TP1"),
        "raw_data.npz",
    ),
    **{
        f"silicon missing {col}": (functools.partial(_silicon_case, col), f"'{col}'")
        for col in ("tp_size", "id", "isl", "model_path", "mode", "silicon_ttft_ms")
    },
    "record isl 0": (lambda t: _validate(_records(t, probe={"isl": 0})), "recorded.jsonl:1"),
    "record isl negative": (lambda t: _validate(_records(t, probe={"isl": -5})), "recorded.jsonl:1"),
    "record latency string": (lambda t: _validate(_records(t, ttft_ms="fast")), "recorded.jsonl:1"),
    "record latency nan": (lambda t: _validate(_records(t, ttft_ms=float("nan"))), "recorded.jsonl:1"),
    "record not utf-8": (
        lambda t: _validate(_yaml(t, b'{"a": "\xff"}\n', "recorded.jsonl")),
        "recorded.jsonl:1",
    ),
    "record not json object": (
        lambda t: _validate(_yaml(t, "[1]\n5\n", "recorded.jsonl")),
        "recorded.jsonl:1",
    ),
    "runner option nan": (
        lambda t: _validate(_records(t), "--runner-option", "tolerance=nan"),
        "runner_options.tolerance",
    ),
    "measurements missing": (lambda t: _validate(str(t / "nope.jsonl")), "nope.jsonl"),
    # bounded study files
    "alias bomb in model": (lambda t: ["--config", _yaml(t, _bomb("model"))], "expands to more than"),
    "alias bomb in planner_args": (
        lambda t: ["--config", _yaml(t, _bomb("planner_args"))],
        "expands to more than",
    ),
    "4 MB planner_args": (lambda t: ["--config", _yaml(t, "planner_args:\n" + "- a=b\n" * 700_000)], "bytes"),
    "many planner flags": (lambda t: [*STUDY, *[f"--planner-f{i}=1" for i in range(300)]], "at most 256"),
    # session 9 (a fuzzing review): tracebacks, or accepted without a word
    "planner value a YAML set": (lambda t: [*STUDY, "--planner-log-dir=!!set {a}"], "planner_args.log_dir"),
    "planner value binary": (lambda t: [*STUDY, "--planner-log-dir=!!binary aGVsbG8="], "log_dir"),
    "planner value refers to itself": (lambda t: [*STUDY, "--planner-log-dir=&a [*a]"], "log_dir"),
    "planner value nan": (lambda t: [*STUDY, "--planner-kalman-r=.nan"], "planner_args.kalman_r"),
    "planner field unknown without -o": (lambda t: [*STUDY, "--planner-bogus=1"], "planner_args.bogus"),
    "planner field twice": (lambda t: [*STUDY, "--planner-kalman-r=1", "--planner-kalman-r=2"], "twice"),
    "cli gpus empty": (lambda t: [*STUDY, "--gpus", ""], "gpus"),
    "cli gpus 1,,2": (lambda t: [*STUDY, "--gpus", "1,,2"], "gpus"),
    "cli backend-version empty": (lambda t: [*STUDY, "--backend-version", ""], "backend_version"),
    "cli runtime-image empty": (lambda t: [*STUDY, "--runtime-image", ""], "runtime_image"),
    "yaml empty study file": (lambda t: ["--config", _yaml(t, "# nothing\n")], "holds no fields"),
    "yaml total_gpus 0": (lambda t: ["--config", _yaml(t, "total_gpus: 0\n")], "total_gpus"),
    "yaml runtime_version_override mapping": (
        lambda t: ["--config", _yaml(t, "runtime_version_override: {a: b}\n")],
        "runtime_version_override",
    ),
    # session 10 (a fuzzing review): accepted without a word, or turned into something else
    "cli min-gpus junk beside --gpus": (
        lambda t: [*STUDY, "--min-gpus", "abc"], "min_gpus: expected an integer"
    ),
    "cli max-gpus 0 beside --gpus": (lambda t: [*STUDY, "--max-gpus", "0"], "max_gpus: 0 is out of range"),
    "cli --gpus outside --min-gpus": (
        lambda t: [*STUDY, "--min-gpus", "2"], "gpus: 1 is outside [min_gpus, max_gpus] = [2, 1024]"
    ),
    "yaml gpu_counts (was never read)": (
        lambda t: ["--config", _yaml(t, "gpu_counts: banana\n")], "gpus: expected an integer, got 'banana'"
    ),
    "yaml gpu_counts and gpus": (
        lambda t: ["--config", _yaml(t, "gpus: 1\ngpu_counts: 2\n")], "(as gpu_counts and gpus)"
    ),
    "cli max-context-tokens 1e308": (
        lambda t: [*STUDY, "--max-context-tokens", "1e308"], "max_context_tokens: 1000000000000000"
    ),
    "cli request-rate 1e-320": (
        lambda t: [*STUDY, "--request-rate", "1e-320"], "9.99989e-321 is below the bound of 1e-06"
    ),
    "yaml output_dir .nan": (
        lambda t: ["--config", _yaml(t, "output_dir: .nan\n")], "output_dir: expected a path"
    ),
    "yaml output_dir 1.0e+308": (
        lambda t: ["--config", _yaml(t, "output_dir: 1.0e+308\n")], "got the number 1e+308 (quote it)"
    ),
    "yaml runtime_image 1.10": (
        lambda t: ["--config", _yaml(t, "runtime_image: 1.10\n")], "runtime_image: expected an image tag"
    ),
    "yaml runtime_image true": (
        lambda t: ["--config", _yaml(t, "runtime_image: true\n")], "runtime_image: expected a string"
    ),
    "yaml backend_version .inf": (
        lambda t: ["--config", _yaml(t, "backend_version: .inf\n")], "backend_version: expected a string"
    ),
    "dgdr image empty list": (
        lambda t: ["--dgdr", _dgdr(t, image=[]), "--no-plots"], "image: expected a string"
    ),
    "dgdr image ''": (lambda t: ["--dgdr", _dgdr(t, image=""), "--no-plots"], "image: is empty"),
    "dgdr runtimeVersionOverride 0": (
        lambda t: ["--dgdr", _dgdr(t, runtimeVersionOverride=0), "--no-plots"], "runtimeVersionOverride"
    ),
    "cli gpus 3 (no engine of 3 GPUs)": (
        lambda t: [*STUDY, "--gpus", "3"],
        "error: gpus: no engine on 3 GPU(s) can serve this study: "
        "no candidate engine could be estimated (TP3: ",
    ),
    "cli planner-mode agg without a load": (
        lambda t: [*STUDY, "--planner-mode=agg", "-o", str(t / "out")],
        "planner_args.mode: 'agg' does not fit a disagg deployment (disagg, prefill, decode); "
        "an agg deployment comes from sizing a load: give --request-rate",
    ),
}


def _bomb(field: str) -> str:
    """A billion-laughs document whose anchors all live inside ``field``'s value (9**9 leaves)."""
    levels = ["&l0 [" + ",".join(['"lol"'] * 9) + "]"]
    levels += [f"&l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return f"{field}: [{', '.join(levels)}]\n"


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2(case, tmp_path, capsys):
    if case == "output-dir not permitted" and (
        not Path("/sys").is_dir() or os.access("/sys", os.W_OK) is False
    ):
        pytest.skip("needs /sys (a directory where nobody may create entries)")
    build, needle = CASES[case]
    t0 = time.perf_counter()
    err = one_line_error(build(tmp_path), capsys)
    assert needle in err, err
    assert time.perf_counter() - t0 < 60


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only (0555) directory")
def test_read_only_output_dir(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert "not writable" in one_line_error([*STUDY, "-o", str(ro / "out")], capsys)
    finally:
        ro.chmod(0o755)


def test_alias_bomb_is_refused_quickly(tmp_path, capsys):
    t0 = time.perf_counter()
    one_line_error(["--config", _yaml(tmp_path, _bomb("model"))], capsys)
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.parametrize(
    "word, value",
    [("true", True), ("false", False), ("yes", True), ("no", False), ("'False'", False), ("'NO'", False),
     ("on", True), ("Off", False)],  # YAML 1.1's on/off reach us as booleans (README says so)
)  # fmt: skip
def test_boolean_words_are_parsed_strictly(word, value, tmp_path):
    from estimator.spec import load_spec

    spec = load_spec(_yaml(tmp_path, f"plots: {word}\nstrict: {word}\ncache: {word}\n"))
    assert (spec.plots, spec.strict, spec.cache) == (value, value, value)


def test_validate_section_is_honoured_field_by_field(tmp_path, capsys):
    from estimator.spec import load_spec

    rec = _records(tmp_path)
    cfg = _yaml(
        tmp_path,
        f"validate:\n  runner: replay\n  measurements: [{rec}]\n  budget: 2\n"
        "  runner_options: {tolerance: 0.2}\n",
    )
    spec = load_spec(cfg, validate=True)  # `sla-estimate validate --config` with no validation flags
    assert spec.validate.budget == 2 and spec.validate.measurements == (rec,)
    spec = load_spec(cfg, validate={"budget": "3", "runner_options": {"prefill_candidate": "TP1"}})
    v = spec.validate
    assert v.budget == 3 and v.measurements == (rec,) and v.runner == "replay"
    assert dict(v.runner_options) == {"tolerance": 0.2, "prefill_candidate": "TP1"}
    # through the CLI: the file's measurements and budget are used (no "needs --measurements")
    rc = main(["validate", "--config", cfg, *STUDY, "-o", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rc == 0, out
    planned = json.loads((tmp_path / "out" / "report.json").read_text())["validation"]["planned"]
    assert 1 <= len(planned) <= 2  # the file's budget of 2, spent on what its recorded measurements hold


def test_unusable_latencies_are_dropped_with_a_warning_before_calibration(tmp_path, caplog):
    from estimator.spec import load_spec
    from validate.calibrate import calibrate  # noqa: F401 - the workflow's calibration step
    from validate.workflow import run_validation

    store = MeasurementStore(tmp_path / "recorded.jsonl")
    good = [
        Measurement(Probe(ProbeKind.PREFILL, STACK, TP1, isl=isl), "synthetic", ttft_ms=0.05 * isl)
        for isl in (500, 1000, 2000, 4000)
    ]
    bad = [
        Measurement(Probe(ProbeKind.PREFILL, STACK, TP1, isl=isl), "synthetic", ttft_ms=v)
        for isl, v in ((700, float("nan")), (800, float("inf")), (900, 0.0), (1100, -3.0))
    ]
    store.extend(good + bad)
    spec = load_spec(
        model="meta-llama/Llama-3.1-8B",
        system="h100_sxm",
        gpus="1",
        isl=1000,
        osl=100,
        output_dir=str(tmp_path / "out"),
        validate={"runner": "replay", "measurements": [str(store.path)], "budget": 2},
    )
    with caplog.at_level(logging.WARNING):
        _, result = run_validation(spec)
    text = "\n".join(r.getMessage() for r in caplog.records)
    for n in (5, 6, 7, 8):  # each bad record named by file:line
        assert f"recorded.jsonl:{n}" in text, text
    report = json.dumps(result.to_dict())
    assert "NaN" not in report and "Infinity" not in report


@pytest.mark.parametrize("other", [["--system", "h200_sxm"], ["--backend", "sglang"]])
def test_calibration_of_another_system_is_refused(other, tmp_path, capsys):
    """A calibration records its stack; applying it to another system or backend is refused."""
    out = tmp_path / "out"
    assert (
        main([*_validate(_records(tmp_path), "--budget", "2"), "-o", str(out)]) == 0
    )  # fitted on h100_sxm vllm
    capsys.readouterr()
    rc = main([*STUDY, *other, "--source", str(out / "calibration.json")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err and err.count("\n") == 1 and other[1] in err


@pytest.mark.parametrize("argv", [["models"], [*STUDY, "--json"]], ids=["models", "profile --json"])
def test_a_closed_stdout_ends_quietly(argv):
    """``sla-estimate models | head -1`` printed a BrokenPipeError traceback; now it ends quietly with 141
    (128 + SIGPIPE). The reading end is closed before the command writes: every run meets the closed pipe."""
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "estimator.cli", *argv], stdout=write_end, stderr=subprocess.PIPE,
            text=True, timeout=120,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert done.returncode == 141 and done.stderr == "", done.stderr[-2000:]


def _dgdr(tmp: Path, workload: dict | None = None, **fields: object) -> str:
    """A DynamoGraphDeploymentRequest file of the STUDY's stack with ``workload`` and spec ``fields`` added
    (OSL 10000 tokens: a request takes 250 s at the SLA's latency)."""
    import yaml

    spec = {"model": "meta-llama/Llama-3.1-8B", "backend": "vllm", "hardware": {"gpuSku": "h100_sxm"},
            "workload": {"isl": 1000, "osl": 10_000, **(workload or {})},
            "sla": {"ttft": 300, "itl": 25}, **fields}  # fmt: skip
    doc = {"apiVersion": "nvidia.com/v1beta1", "kind": "DynamoGraphDeploymentRequest", "spec": spec}
    return _yaml(tmp, yaml.safe_dump(doc), "dgdr.yaml")


def _dgdr_load(tmp: Path, **workload: object) -> str:
    return _dgdr(tmp, workload)


@pytest.mark.parametrize("value", ["1e308", 1e308, float("inf"), float("nan"), 0, -1, 2e5, "fast"])
def test_dgdr_request_rate_is_refused_as_the_flag_is(value, tmp_path, capsys):
    """workload.requestRate and --request-rate refuse the same values."""
    one_line_error([*STUDY, "--request-rate", str(value)], capsys)
    err = one_line_error(["--dgdr", _dgdr_load(tmp_path, requestRate=value), "--no-plots"], capsys)
    assert "workload.requestRate" in err, err


@pytest.mark.parametrize("value", ["1e308", 1e308, float("inf"), float("nan"), 0, -1, 2e7, "fast", True])
def test_dgdr_concurrency_is_refused_as_plan_concurrency_is(value, tmp_path, capsys):
    """workload.concurrency of 1e308 was turned into a rate of 1.9e307 requests/s, refused as
    ``workload.requestRate``, a field the file does not have; 2e7 clients at a long latency were accepted.
    Now the concurrency itself is bounded as ``plan --concurrency`` is, and named."""
    one_line_error(["plan", *STUDY, "--concurrency", str(value)], capsys)
    err = one_line_error(["--dgdr", _dgdr_load(tmp_path, concurrency=value), "--no-plots"], capsys)
    assert "workload.concurrency" in err, err


def test_dgdr_concurrency_beyond_the_rate_bound_names_the_concurrency(tmp_path, capsys):
    path = _dgdr_load(tmp_path, concurrency=9e7 / 2**5, osl=100)  # 2.8e6 in flight, 2.775 s each
    err = one_line_error(["--dgdr", path, "--no-plots"], capsys)
    assert "workload.concurrency: 2.8125e+06 in flight" in err and "[1e-06, 100000]" in err, err


def test_gpu_counts_is_honoured_as_gpus():
    """``load_spec(gpu_counts=(1, 2))`` (the Spec's own field name) was accepted and ignored: (1, 2, 4, 8)."""
    from estimator.spec import load_spec

    spec = load_spec(model="meta-llama/Llama-3.1-8B", system="h100_sxm", gpu_counts=(1, 2))
    assert spec.gpu_counts == (1, 2)
