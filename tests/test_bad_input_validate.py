"""Bad input to ``validate`` and to a calibration file (review items 14-21): exit code 2 and ONE line on
stderr naming the option, the file (and line) or the field; nothing accepted silently, no traceback.

Replay tolerance (non-numeric, <= 0, or loose enough to store a record under another point's label),
malformed Dynamo benchmark JSONs, duplicate keys in a measurement record, endpoint request options, a
JSON file that is no measurement store, and every number of a calibration file.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from estimator.calibration import Correction, EngineOffsets, Noise, Parameters, identity, unique_keys
from estimator.calibration_params import ENGINE_NAMES, SharedParameters
from estimator.candidates import Candidate, Mapping
from estimator.cli import main
from estimator.errors import CalibrationError, MeasurementError, ProbeNotSupported, SpecError
from estimator.measurements import MAX_WARNINGS, Measurement, MeasurementStore, Probe, ProbeKind
from estimator.sources.base import Stack
from validate.runners.endpoint import EndpointRunner
from validate.runners.local import LocalEngineRunner
from validate.runners.replay import MAX_TOLERANCE, ReplayRunner, load_dynamo_dir
from tests.test_bad_input import one_line_error

STUDY = ["--model", "meta-llama/Llama-3.1-8B", "--system", "h100_sxm", "--gpus", "1", "--isl", "1000",
         "--osl", "100", "--no-plots"]  # fmt: skip
STACK = Stack("meta-llama/Meta-Llama-3.1-8B", "h100_sxm", "vllm")
TP1 = Candidate(Mapping.TP, 1)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLA_ESTIMATE_CACHE_DIR", str(tmp_path / "cache"))


def _store(tmp: Path, name: str = "recorded.jsonl") -> Path:
    store = MeasurementStore(tmp / name)
    store.extend(Measurement(Probe(ProbeKind.PREFILL, STACK, TP1, isl=isl), "synthetic", ttft_ms=0.05 * isl)
                 for isl in (500, 1000, 2000))  # fmt: skip
    return store.path


def _validate(measurements: str | Path, *extra: str) -> list[str]:
    return ["validate", *STUDY, "--runner", "replay", "--measurements", str(measurements), *extra]


# ---- 14, 15: the replay tolerance ----------------------------------------------------------------------
@pytest.mark.parametrize("value", [-1.0, 0.0, 0, float("nan"), float("inf"), 1e300, MAX_TOLERANCE * 1.01,
                                   (1, 2), [0.1], "0.1", True, None])  # fmt: skip
def test_replay_tolerance_outside_its_range_is_refused(value):
    with pytest.raises(SpecError, match=r"runner_options\.tolerance: must be a number in \(0, 0.5\]"):
        ReplayRunner([], tolerance=value)


def test_replay_tolerance_is_refused_before_any_file_is_read(tmp_path):
    with pytest.raises(SpecError, match="tolerance"):
        ReplayRunner.from_paths([tmp_path / "does-not-exist.jsonl"], tolerance=-1)


@pytest.mark.parametrize("value", ["-1", "0", "1e300"])
def test_replay_tolerance_on_the_command_line(value, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [*_validate(_store(tmp_path), "--runner-option", f"tolerance={value}"), "-o", str(out)]
    err = one_line_error(argv, capsys)
    assert "runner_options.tolerance" in err and "ISL, OSL and concurrency" in err
    assert not (out / "measurements.jsonl").exists()  # nothing stored under a wrong label


@pytest.mark.parametrize("option", ["prefill_candidate=TP2", "decode_candidate=TP1"])
def test_replay_engine_labels_without_a_dynamo_directory_are_refused(option, tmp_path, capsys):
    """They label a Dynamo profiling directory's engines; a record names its own: ignored, they misled."""
    out = tmp_path / "out"
    err = one_line_error([*_validate(_store(tmp_path), "--runner-option", option), "-o", str(out)], capsys)
    assert f"runner_options.{option.split('=')[0]}" in err and "Dynamo profiling" in err
    assert not (out / "measurements.jsonl").exists()


def test_replay_tolerance_a_yaml_list(tmp_path, capsys):
    cfg = tmp_path / "study.yaml"
    cfg.write_text(f"validate: {{runner: replay, measurements: [{_store(tmp_path)}], "
                   "runner_options: {tolerance: [1, 2]}}\n")  # fmt: skip
    assert "runner_options.tolerance" in one_line_error(["validate", "--config", str(cfg), *STUDY], capsys)


def test_the_loosest_tolerance_never_answers_a_point_half_again_away():
    """tolerance=1e300 stored a concurrency-405 probe replayed from the concurrency-256 record."""
    probe = Probe(ProbeKind.DECODE, STACK, TP1, isl=1000, osl=100, concurrency=256)
    rec = Measurement(probe, "gpu", itl_ms=9.0)
    runner = ReplayRunner([rec], tolerance=MAX_TOLERANCE)
    far = Probe(ProbeKind.DECODE, STACK, TP1, isl=1000, osl=100, concurrency=405)
    assert runner.can_measure(far) is not None
    with pytest.raises(ProbeNotSupported):
        runner.measure(far)
    near = runner.measure(Probe(ProbeKind.DECODE, STACK, TP1, isl=1000, osl=100, concurrency=380))
    assert near.extra["replayed_from"]["concurrency"] == 256


# ---- 16: Dynamo benchmark JSONs of another structure -----------------------------------------------------
def _aiperf(**over) -> dict:
    doc = {"time_to_first_token": {"unit": "ms", "avg": 20.0}, "input_sequence_length": {"avg": 1000},
           "input_config": {"loadgen": {"concurrency": 1}}}  # fmt: skip
    doc.update(over)
    return doc


MALFORMED_DYNAMO = {
    "loadgen an int": (_aiperf(input_config={"loadgen": 5}), "input_config.loadgen is int"),
    "input_config a list": (_aiperf(input_config=[1]), "input_config is list"),
    "stimulus a string": (_aiperf(input_config={"perf_analyzer": {"stimulus": "x"}}), "analyzer.stimulus is"),
    "concurrency a string": (_aiperf(input_config={"loadgen": {"concurrency": "16"}}), "concurrency is '16'"),
    "concurrency 0": (_aiperf(input_config={"loadgen": {"concurrency": 0}}), "not an integer >= 1"),
    "concurrency 2.5": (_aiperf(input_config={"loadgen": {"concurrency": 2.5}}), "not an integer >= 1"),
    "ttft a number": (_aiperf(time_to_first_token=20.0), "time_to_first_token is float"),
    "ttft avg a string": (_aiperf(time_to_first_token={"avg": "20"}), "time_to_first_token.avg is '20'"),
    "isl avg a bool": (_aiperf(input_sequence_length={"avg": True}), "input_sequence_length.avg"),
    "document a list": ([_aiperf()], "a JSON list"),
}


def _dynamo(tmp: Path, doc: object) -> Path:
    d = tmp / "dynamo" / "prefill_tp1"
    d.mkdir(parents=True)
    (d / "profile_export_aiperf.json").write_text(json.dumps(doc))
    return tmp / "dynamo"


@pytest.mark.parametrize("case", sorted(MALFORMED_DYNAMO))
def test_malformed_dynamo_result_names_the_file(case, tmp_path):
    doc, needle = MALFORMED_DYNAMO[case]
    with pytest.raises(MeasurementError, match="profile_export_aiperf.json: malformed benchmark") as exc:
        load_dynamo_dir(_dynamo(tmp_path, doc), STACK)
    assert needle in str(exc.value)


def test_well_formed_dynamo_result_still_loads(tmp_path):
    (m,) = load_dynamo_dir(_dynamo(tmp_path, _aiperf(input_config={"loadgen": {"concurrency": 4}})), STACK)
    assert (m.ttft_ms, m.probe.isl, m.probe.concurrency) == (20.0, 1000, 4)


def test_malformed_dynamo_result_on_the_command_line(tmp_path, capsys):
    err = one_line_error([*_validate(_dynamo(tmp_path, _aiperf(input_config={"loadgen": 5}))), "-o",
                          str(tmp_path / "out")], capsys)  # fmt: skip
    assert "prefill_tp1/profile_export_aiperf.json" in err


# ---- 17: a key given twice in a measurement record -----------------------------------------------------
def test_duplicate_key_in_a_record_names_file_and_line(tmp_path, capsys):
    path = _store(tmp_path)
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:-1] + ', "ttft_ms": 999.0}'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(MeasurementError, match=r"recorded\.jsonl:2: a record with a duplicate key 'ttft_ms'"):
        MeasurementStore(path).load()
    err = one_line_error([*_validate(path), "-o", str(tmp_path / "out")], capsys)
    assert "recorded.jsonl:2" in err and "duplicate key 'ttft_ms'" in err


def test_duplicate_key_nested_in_the_probe(tmp_path):
    path = _store(tmp_path)
    text = path.read_text().replace('"isl": 500,', '"isl": 500, "isl": 5000,', 1)
    path.write_text(text)
    with pytest.raises(MeasurementError, match=r"recorded\.jsonl:1: .*duplicate key 'isl'"):
        MeasurementStore(path).load()


# ---- 18: endpoint request options --------------------------------------------------------------------
@pytest.mark.parametrize("option, value", [("timeout_s", -1.0), ("timeout_s", 0.0), ("warmup", -5),
                                           ("repeats", -3), ("repeats", 0), ("repeats", "-3"),
                                           ("warmup", 1.5)])  # fmt: skip
def test_endpoint_request_options_are_refused_when_built(option, value):
    with pytest.raises(SpecError, match=f"runner_options.{option}"):
        EndpointRunner("http://127.0.0.1:9", **{option: value})
    with pytest.raises(SpecError, match=f"runner_options.{option}"):  # the local runner forwards them
        LocalEngineRunner("m", **{option: value})


def test_endpoint_defaults_still_build():
    r = EndpointRunner("http://127.0.0.1:9", warmup=0, repeats=2)
    assert (r.timeout_s, r.warmup, r.repeats) == (60.0, 0, 2)
    assert EndpointRunner("http://127.0.0.1:9").repeats is None


@pytest.mark.parametrize("option", ["timeout_s=-1", "warmup=-5", "repeats=-3"])
def test_endpoint_request_options_on_the_command_line(option, tmp_path, capsys):
    opts = ["url=http://127.0.0.1:9", "candidate=TP1", option]
    argv = ["validate", *STUDY, "--runner", "endpoint", *(x for o in opts for x in ("--runner-option", o)),
            "-o", str(tmp_path / "out")]  # fmt: skip
    assert f"runner_options.{option.split('=')[0]}" in one_line_error(argv, capsys)


# ---- 19: a JSON file that is no measurement store ---------------------------------------------------------
def test_a_report_json_fails_fast_in_one_line(tmp_path, capsys, caplog):
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"selection": {"prefill": [1] * 500}, "x": list(range(500))}, indent=1))
    with caplog.at_level(logging.WARNING):
        err = one_line_error([*_validate(report), "-o", str(tmp_path / "out")], capsys)
    assert "report.json is not a measurement store" in err and "line 1" in err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_a_torn_first_line_is_still_one_skipped_line(tmp_path, caplog):
    """A crash during the very first append leaves a torn first line: the store still loads."""
    path = _store(tmp_path)
    path.write_text('{"schema": 1, "key": "abc", "pro\n' + path.read_text())
    with caplog.at_level(logging.WARNING):
        assert len(MeasurementStore(path).load()) == 3
    assert "recorded.jsonl:1: skipping" in caplog.text


def test_skipped_lines_are_warned_in_bounded_lines(tmp_path, caplog):
    path = _store(tmp_path)
    with path.open("a") as fh:
        fh.write("not a record\n" * 100)
    store = MeasurementStore(path)
    with caplog.at_level(logging.WARNING):
        assert len(store.load()) == 3
    assert len(store.skipped) == 100
    assert len(caplog.records) == MAX_WARNINGS + 1 and "95 more lines skipped" in caplog.text


# ---- 20, 21: every number of a calibration file -----------------------------------------------------------
def _correction() -> Correction:
    mean = Parameters(SharedParameters(alpha_prefill=0.2), {"TP1": EngineOffsets(delta_prefill=0.05)})
    n = len(mean.names)
    cov = 0.01 * np.eye(n) + 0.001 * np.ones((n, n))
    noise = Noise({"ttft": 0.03, "tpot": 0.02}, {"ttft": 0.01, "tpot": 0.001}, {"ttft": 10.0, "tpot": 15.0})
    return Correction(mean, cov, noise, {k: 0.15 for k in ENGINE_NAMES}, 12, "abc")


def _set(path: str, value: object):
    def apply(d: dict) -> None:
        *head, last = path.split("/")
        for k in head:
            d = d[int(k)] if isinstance(d, list) else d[k]
        if isinstance(d, list):
            d[int(last)] = value
        else:
            d[last] = value

    return apply


def _cov_entry(i: int, j: int, value: float):
    return _set(f"covariance/matrix/{i}/{j}", value)


BAD_CALIBRATION = {
    "alpha nan": (_set("parameters/alpha_prefill", float("nan")), "parameters.alpha_prefill"),
    "alpha inf": (_set("parameters/alpha_prefill", float("inf")), "parameters.alpha_prefill"),
    "alpha 1000": (_set("parameters/alpha_prefill", 1000.0), "parameters.alpha_prefill"),
    "alpha a string": (_set("parameters/alpha_prefill", "x"), "parameters.alpha_prefill"),
    "alpha a bool": (_set("parameters/alpha_prefill", True), "parameters.alpha_prefill"),
    "log_step_ms 1000": (_set("parameters/log_step_ms", 1000.0), "parameters.log_step_ms"),
    "offset -1e9": (_set("parameters/delta_step[TP1]", -1e9), "parameters.delta_step[TP1]"),
    "slope 40": (_set("parameters/beta_batch", 40.0), "parameters.beta_batch"),
    "a parameter of no engine": (_set("parameters/delta_step[TP9]", 0.0), "unknown names"),
    "covariance nan": (_cov_entry(0, 0, float("nan")), "not finite"),
    "covariance 1e308": (_cov_entry(0, 0, 1e308), "variance outside"),
    "covariance negative variance": (_cov_entry(0, 0, -5.0), "variance outside"),
    "covariance asymmetric": (_cov_entry(0, 1, 0.5), "not symmetric"),
    "covariance indefinite": (lambda d: [_cov_entry(i, j, 0.5)(d) for i, j in ((0, 1), (1, 0))], "definite"),
    "covariance a string": (_cov_entry(0, 0, "x"), "malformed"),
    "noise discrepancy nan": (_set("noise/discrepancy/ttft", float("nan")), "noise.discrepancy.ttft"),
    "noise discrepancy negative": (_set("noise/discrepancy/ttft", -1.0), "noise.discrepancy.ttft"),
    "noise measurement a string": (_set("noise/measurement/tpot", "x"), "noise.measurement.tpot"),
    "noise of an unknown kind": (_set("noise/discrepancy/itl", 0.1), "unknown names"),
    "noise a list": (_set("noise/discrepancy", [0.1]), "must be a mapping"),
    "dof 0": (_set("noise/dof/ttft", 0), "noise.dof.ttft"),
    "dof -1": (_set("noise/dof/ttft", -1), "noise.dof.ttft"),
    "dof inf": (_set("noise/dof/ttft", float("inf")), "noise.dof.ttft"),
    "tail_scale 0": (_set("noise/tail_scale", {"ttft": 0.0}), "noise.tail_scale.ttft"),
    "engine_prior_sd negative": (_set("engine_prior_sd/delta_ttft", -1.0), "engine_prior_sd.delta_ttft"),
    "engine_prior_sd nan": (_set("engine_prior_sd/delta_step", float("nan")), "engine_prior_sd.delta_step"),
    "n_points -5": (_set("n_points", -5), "n_points"),
    "n_points 2.5": (_set("n_points", 2.5), "n_points"),
    "n_points a string": (_set("n_points", "5"), "n_points"),
    "engines a string": (_set("engines", "TP1"), "engines must be a list"),
}


@pytest.mark.parametrize("case", sorted(BAD_CALIBRATION))
def test_calibration_numbers_are_checked_at_load(case):
    mutate, needle = BAD_CALIBRATION[case]
    d = copy.deepcopy(_correction().to_dict())
    mutate(d)
    with pytest.raises(CalibrationError) as exc:
        Correction.from_dict(d)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_valid_calibrations_still_load():
    c = _correction()
    back = Correction.from_dict(json.loads(json.dumps(c.to_dict())))
    assert back.mean == c.mean and np.array_equal(back.cov, c.cov) and back.noise == c.noise
    Correction.from_dict(json.loads(json.dumps(identity().to_dict())))  # the uncalibrated one, as saved


def test_a_band_never_overflows():
    """A valid file with a wide posterior and a heavy tail: the band is clipped as the draws are."""
    from estimator.calibration import Observation

    c = _correction()
    wide = Correction(c.mean, c.cov * 2000, Noise({"ttft": 50.0}, {}, {"ttft": 0.05}), c.engine_prior_sd)
    band = wide.band(Observation.prefill("TP1", 50.0, 1000.0))
    assert all(math.isfinite(x) and x > 0 for x in (band.low_ms, band.point_ms, band.high_ms))


def test_duplicate_keys_in_a_calibration_file_are_refused():
    """The hook ``read_calibration`` (estimator/sources/calibrated.py) is meant to read files with."""
    with pytest.raises(CalibrationError, match="duplicate key 'alpha_prefill'"):
        json.loads('{"p": {"alpha_prefill": 0.1, "alpha_prefill": 0.2}}', object_pairs_hook=unique_keys)
    assert json.loads('{"a": {"b": 1}, "b": 2}', object_pairs_hook=unique_keys) == {"a": {"b": 1}, "b": 2}


@pytest.fixture(scope="module")
def calibration_doc(tmp_path_factory) -> dict:
    """A real calibration file of the study's stack, from a replay validation."""
    tmp = tmp_path_factory.mktemp("cal")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLA_ESTIMATE_CACHE_DIR", str(tmp / "cache"))
        assert main([*_validate(_store(tmp), "--budget", "2"), "-o", str(tmp / "out")]) == 0
    return json.loads((tmp / "out" / "calibration.json").read_text())


@pytest.mark.parametrize("case", ["alpha nan", "alpha inf", "alpha 1000", "log_step_ms 1000",
                                  "covariance nan", "covariance 1e308", "covariance negative variance",
                                  "noise discrepancy nan", "noise measurement a string", "dof 0", "dof -1",
                                  "n_points -5", "engine_prior_sd negative"])  # fmt: skip
def test_bad_calibration_file_on_the_command_line(case, calibration_doc, tmp_path, capsys):
    mutate, needle = BAD_CALIBRATION[case]
    doc = copy.deepcopy(calibration_doc)
    mutate(doc)
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(doc))
    err = one_line_error([*STUDY, "--source", str(path)], capsys)
    assert needle in err and str(path) in err


def test_calibration_duplicate_keys_and_bad_measured_kv_are_one_line(calibration_doc, tmp_path, capsys):
    """A key twice (json keeps the last) and measured_kv_tokens of -1, "x" or a list were accepted or
    ended in a traceback or a misleading "weights do not fit"."""
    text = json.dumps(calibration_doc)
    dup = tmp_path / "dup.json"
    dup.write_text(text.replace('"n_points":', '"n_points": 3, "n_points":', 1))
    cases = [(dup, "duplicate key")]
    for i, bad in enumerate(({"TP1": -1}, {"TP1": "x"}, [1])):
        doc = copy.deepcopy(calibration_doc)
        doc["measured_kv_tokens"] = bad
        path = tmp_path / f"kv{i}.json"
        path.write_text(json.dumps(doc))
        cases.append((path, "measured_kv_tokens"))
    for path, needle in cases:
        err = one_line_error([*STUDY, "--source", str(path)], capsys)
        assert needle in err, (path, err)


def test_unknown_top_level_key_in_a_calibration_file_is_refused(calibration_doc, tmp_path, capsys):
    """A key the writer never emits (a typo such as ``measured_kv_token``, or a foreign file's) was
    ignored without a word; now it is a one-line error naming the key. Every key ``save`` writes loads."""
    for key in ("measured_kv_token", "colour"):
        path = tmp_path / f"{key}.json"
        path.write_text(json.dumps({**calibration_doc, key: {"TP1": 5}}))
        err = one_line_error([*STUDY, "--source", str(path)], capsys)
        assert f"unknown key {key!r}" in err and str(path) in err, err
    from estimator.sources.calibrated import CALIBRATION_KEYS

    assert set(calibration_doc) <= CALIBRATION_KEYS and set(identity().to_dict()) <= CALIBRATION_KEYS
    good = tmp_path / "good.json"
    good.write_text(json.dumps(calibration_doc))
    assert main([*STUDY, "--source", str(good)]) == 0


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs /proc/self/mem (reads fail)")
def test_a_measurement_file_that_fails_to_read_is_one_line(capsys):
    """``--measurements /proc/self/mem`` (opens, but every read fails) ended in an OSError traceback."""
    err = one_line_error(_validate("/proc/self/mem"), capsys)
    assert "cannot read /proc/self/mem" in err, err
