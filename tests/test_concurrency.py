"""Two processes into one output directory.

- Two ``validate`` runs: the second is told (exit 2, one line) while the first holds the measurement
  store, and however they interleave, no point is measured or stored twice.
- Two ``profile`` runs: the directory ends up holding one complete set of files from one of the
  studies (never a mix, never a torn file) and no staging directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from estimator.measurements import Measurement, MeasurementStore, ProbeKind
from estimator.pipeline import estimate
from estimator.sources.aic import AicSource
from estimator.spec import load_spec
from validate.plan import plan_probes

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--model", "meta-llama/Llama-3.1-8B", "--system", "h100_sxm", "--gpus", "1,2", "--no-plots"]


def _cli(*args: str, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SLA_ESTIMATE_CACHE_DIR": str(cache)}
    return subprocess.Popen([sys.executable, "-m", "estimator.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> Path:
    spec = load_spec(model="meta-llama/Llama-3.1-8B", system="h100_sxm", gpus="1,2")
    profile = estimate(spec)
    aic = AicSource(profile.stack)
    store = MeasurementStore(tmp_path_factory.mktemp("rec") / "recorded.jsonl")
    for p in plan_probes(profile, budget=8, max_points_per_engine=4):
        if p.kind is ProbeKind.PREFILL:
            store.append(
                Measurement(p, "synthetic", ttft_ms=1.3 * float(aic.prefill_ttft_ms(p.candidate, [p.isl])[0]))
            )
        else:
            itl = 1.2 * float(aic.decode_itl_ms(p.candidate, [p.concurrency], [p.context_tokens])[0])
            store.append(
                Measurement(
                    p, "synthetic", itl_ms=itl, kv_capacity_tokens=aic.kv_capacity_tokens(p.candidate)
                )
            )
    return store.path


def test_second_validate_is_told_while_the_first_measures(tmp_path, recordings):
    out = tmp_path / "out"
    hold = (
        "import sys, time; from estimator.measurements import MeasurementStore as S\n"
        "with S(sys.argv[1]).exclusive():\n    print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(out / "measurements.jsonl")],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        run = _cli("validate", *FLAGS, "--runner", "replay", "--measurements", str(recordings), "-o", str(out),
                   cache=tmp_path / "cache")  # fmt: skip
        _, err = run.communicate(timeout=300)
        assert run.returncode == 2 and "Traceback" not in err, err
        assert err.count("\n") == 1 and "being measured by another run (pid" in err
        assert not (out / "measurements.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()


def test_two_validate_runs_never_measure_a_point_twice(tmp_path, recordings):
    out = tmp_path / "out"
    args = ("validate", *FLAGS, "--runner", "replay", "--measurements", str(recordings), "-o", str(out))
    runs = [_cli(*args, cache=tmp_path / f"cache{i}") for i in range(2)]
    results = [(r.wait(timeout=600), r.stdout.read(), r.stderr.read()) for r in runs]
    codes = sorted(rc for rc, _, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    for rc, _, err in results:
        if rc == 2:
            assert "being measured by another run" in err and "Traceback" not in err
    keys = Counter(m.probe.key for m in MeasurementStore(out / "measurements.jsonl").load())
    assert len(keys) == 8 and set(keys.values()) == {1}
    measured = [json.loads((out / "report.json").read_text())["validation"]["measured_now"]]
    assert measured[0] in (0, 8)


def _expected(study: list[str], tmp: Path, name: str) -> dict[str, bytes]:
    ref = tmp / name
    run = _cli(*study, "-o", str(ref), cache=tmp / f"cache-{name}")
    assert run.wait(timeout=600) == 0, run.stderr.read()
    return {p.relative_to(ref).as_posix(): p.read_bytes() for p in ref.rglob("*") if p.is_file()}


def test_two_profiles_into_one_directory_leave_one_whole_set(tmp_path):
    base = ["--model", "meta-llama/Llama-3.1-8B", "--system", "h100_sxm", "--max-gpus", "2"]
    studies = {"a": [*base, "--isl", "1000", "--no-plots"], "b": [*base, "--isl", "3000"]}
    out = tmp_path / "shared"
    runs = [_cli(*v, "-o", str(out), cache=tmp_path / f"cache-run-{k}") for k, v in studies.items()]
    for r in runs:
        assert r.wait(timeout=600) == 0, r.stderr.read()
    got = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert not [p for p in out.iterdir() if p.name.startswith(".staging-")]
    won = "a" if json.loads(got["report.json"])["spec"]["isl"] == 1000 else "b"
    winner = _expected(studies[won], tmp_path, "ref")  # the same study alone, into its own directory
    assert set(got) == set(winner)  # every file of the winner, none of the other study
    for name in winner:
        if name.endswith(".npz"):
            a, b = np.load(out / name), np.load(tmp_path / "ref" / name)
            assert all(np.array_equal(a[k], b[k]) for k in b.files), name
        elif name.endswith(".png"):
            assert got[name][:8] == b"\x89PNG\r\n\x1a\n" and got[name].endswith(b"IEND\xaeB`\x82"), name
