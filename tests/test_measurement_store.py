"""The append-only record store: append, resume after a crash with a torn last line, corrupt lines."""

from __future__ import annotations

import json

from estimator.candidates import Candidate, Mapping
from estimator.measurements import Measurement, MeasurementStore, Probe, ProbeKind
from estimator.sources.base import Stack

STACK = Stack("meta-llama/Meta-Llama-3.1-8B", "h100_sxm", "vllm")


def _m(isl: int, ttft: float) -> Measurement:
    return Measurement(
        Probe(ProbeKind.PREFILL, STACK, Candidate(Mapping.TP, 1), isl=isl), runner="test", ttft_ms=ttft
    )


def test_append_and_load_round_trip(tmp_path):
    store = MeasurementStore(tmp_path / "sub" / "m.jsonl")
    store.append(_m(1000, 50.0))
    store.extend([_m(2000, 90.0), _m(4000, 170.0)])
    got = store.load()
    assert [m.probe.isl for m in got] == [1000, 2000, 4000]
    assert got[1].ttft_ms == 90.0 and got[1].probe == _m(2000, 1).probe
    assert store.keys() == {m.probe.key for m in got}


def test_resume_after_torn_last_line(tmp_path, caplog):
    path = tmp_path / "m.jsonl"
    store = MeasurementStore(path)
    store.append(_m(1000, 50.0))
    whole = json.dumps(_m(2000, 90.0).to_dict())
    with path.open("a") as fh:  # the process died half-way through writing the second record
        fh.write(whole[: len(whole) // 2])
    assert [m.probe.isl for m in store.load()] == [1000]
    assert "unreadable" in caplog.text
    store.append(_m(2000, 91.0))  # the rerun measures the lost point again; it lands on its own line
    assert [(m.probe.isl, m.ttft_ms) for m in store.load()] == [(1000, 50.0), (2000, 91.0)]
    assert _m(1000, 0).probe.key in store.keys()  # noqa: SIM118 - a method returning a set


def test_corrupt_lines_are_skipped_not_fatal(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("not json\n" + json.dumps({"schema": 1, "probe": {"kind": "nope"}}) + "\n\n")
    store = MeasurementStore(path)
    store.append(_m(1000, 50.0))
    assert [m.probe.isl for m in store.load()] == [1000]


def test_missing_file_is_empty(tmp_path):
    assert MeasurementStore(tmp_path / "none.jsonl").load() == []


def test_non_utf8_line_is_skipped_with_its_line_number(tmp_path, caplog):
    path = tmp_path / "m.jsonl"
    store = MeasurementStore(path)
    store.append(_m(1000, 50.0))
    with path.open("ab") as fh:
        fh.write(b'{"probe": "\xff\xfe"}\n')
    store.append(_m(2000, 90.0))
    assert [m.probe.isl for m in store.load()] == [1000, 2000]  # resume is not blocked
    assert f"{path}:2: skipping a line that is not UTF-8" in caplog.text
    assert store.skipped == [f"{path}:2: a line that is not UTF-8 (byte 12)"]


def test_unusable_values_are_skipped_and_named(tmp_path, caplog):
    path = tmp_path / "m.jsonl"
    store = MeasurementStore(path)
    for ttft in (50.0, float("nan"), float("inf"), 0.0, -1.0, "12"):
        d = _m(1000, 1.0).to_dict()
        d["ttft_ms"] = ttft
        with path.open("a") as fh:
            fh.write(json.dumps(d) + "\n")
    assert [m.ttft_ms for m in store.load()] == [50.0]
    assert [s.split(": ", 1)[0] for s in store.skipped] == [f"{path}:{n}" for n in (2, 3, 4, 5, 6)]
    assert "ttft_ms must be a number, got str" in caplog.text


def test_exclusive_store_refuses_a_second_holder_and_is_reentrant(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    store = MeasurementStore(tmp_path / "m.jsonl")
    with store.exclusive(), MeasurementStore(tmp_path / "m.jsonl").exclusive():  # same process: re-entrant
        code = ("import sys; from estimator.measurements import MeasurementStore as S, StoreBusy\n"
                "try:\n    S(sys.argv[1]).exclusive().__enter__()\nexcept StoreBusy as e:\n    print(e)")  # fmt: skip
        out = subprocess.run([sys.executable, "-c", code, str(store.path)], check=False, capture_output=True, text=True,
                             env={"PYTHONPATH": str(Path(__file__).parents[1])})  # fmt: skip
        assert "being measured by another run (pid" in out.stdout, out.stderr
    with store.exclusive():  # released after the block: a later holder gets it
        pass
