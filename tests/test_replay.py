"""Replay runner on each input format: our jsonl, a Dynamo output directory, silicon_sample rows."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from estimator.candidates import Candidate, Mapping
from estimator.errors import MeasurementError
from estimator.sources.base import Stack
from estimator.measurements import Measurement, MeasurementStore, Probe, ProbeKind
from validate.runners.replay import DYNAMO_DECODE_OSL, ReplayRunner
from validate.silicon import load_silicon

STACK = Stack("Qwen/Qwen3-32B", "h200_sxm", "vllm")
TP1, TP2, TP4 = (Candidate(Mapping.TP, n) for n in (1, 2, 4))


def test_jsonl_exact_and_nearest_match(tmp_path):
    store = MeasurementStore(tmp_path / "m.jsonl")
    store.append(
        Measurement(Probe(ProbeKind.PREFILL, STACK, TP2, isl=3000), runner="endpoint", ttft_ms=120.0)
    )
    store.append(Measurement(Probe(ProbeKind.DECODE, STACK, TP2, isl=3000, osl=150, concurrency=32),
                             runner="endpoint", itl_ms=14.0))  # fmt: skip
    with ReplayRunner.from_paths([store.path]) as runner:
        exact = runner.measure(Probe(ProbeKind.PREFILL, STACK, TP2, isl=3000, reason="selected"))
        assert exact.ttft_ms == 120.0 and exact.runner == "replay" and exact.probe.reason == "selected"
        near = runner.measure(Probe(ProbeKind.DECODE, STACK, TP2, isl=3100, osl=150, concurrency=33))
        assert near.itl_ms == 14.0 and near.extra["replayed_from"]["concurrency"] == 32
        for far in (Probe(ProbeKind.DECODE, STACK, TP2, isl=3000, osl=150, concurrency=64),  # 2x concurrency
                    Probe(ProbeKind.PREFILL, STACK, TP4, isl=3000),  # other engine
                    Probe(ProbeKind.PREFILL, Stack("Qwen/Qwen3-32B", "h100_sxm", "vllm"), TP2, isl=3000)):  # fmt: skip
            with pytest.raises(MeasurementError):
                runner.measure(far)


def _aiperf(ttft: float, itl: float, thpt: float, isl: int, osl: int, conc: int) -> dict:
    return {"time_to_first_token": {"unit": "ms", "avg": ttft}, "inter_token_latency": {"unit": "ms", "avg": itl},
            "output_token_throughput": {"unit": "tokens/sec", "avg": thpt},
            "input_sequence_length": {"unit": "tokens", "avg": isl},
            "output_sequence_length": {"unit": "tokens", "avg": osl},
            "input_config": {"loadgen": {"concurrency": conc}}}  # fmt: skip


def _dynamo_dir(root):
    (root / "selected_prefill_interpolation").mkdir(parents=True)
    np.savez(
        root / "selected_prefill_interpolation" / "raw_data.npz",
        prefill_isl=np.array([100.0, 2000.0, 4000.0]),
        prefill_ttft=np.array([20.0, 80.0, 170.0]),
        prefill_thpt_per_gpu=np.array([2500.0, 12500.0, 11764.0]),
    )
    (root / "selected_decode_interpolation").mkdir()
    max_kv, y = 100_000, np.array([1250.0, 1250.0, 3250.0])
    conc = np.array([1, 40, 10])
    np.savez(root / "selected_decode_interpolation" / "raw_data.npz", max_kv_tokens=np.array([max_kv]),
             x_kv_usage=conc * y / max_kv, y_context_length=y, z_itl=np.array([6.0, 9.0, 8.0]),
             z_thpt_per_gpu=np.array([40.0, 1000.0, 300.0]))  # fmt: skip
    p = root / "prefill_tp2" / "aiperf_isl3000"
    p.mkdir(parents=True)
    (p / "profile_export_aiperf.json").write_text(json.dumps(_aiperf(110.0, 0, 0, 3000, 5, 1)))
    d = root / "decode_tp4" / "gap_isl1000_osl500_n16"
    d.mkdir(parents=True)
    (d / "profile_export_genai_perf.json").write_text(json.dumps(_aiperf(300.0, 7.5, 2000.0, 1000, 500, 16)))
    w = root / "decode_tp4" / "gap_isl1000_osl500_n16_warmup"
    w.mkdir()
    (w / "profile_export_genai_perf.json").write_text(json.dumps(_aiperf(900.0, 99.0, 1.0, 1000, 500, 16)))


def test_dynamo_output_directory(tmp_path):
    _dynamo_dir(tmp_path)
    with pytest.raises(MeasurementError, match="stack"):
        ReplayRunner.from_paths([tmp_path])
    runner = ReplayRunner.from_paths([tmp_path], stack=STACK, prefill_candidate=TP1, decode_candidate=TP2)
    assert runner.measure(Probe(ProbeKind.PREFILL, STACK, TP1, isl=2000)).ttft_ms == 80.0
    # decode npz: concurrency = x * max_kv / y, isl = y - osl/2 with Dynamo's OSL 500
    m = runner.measure(Probe(ProbeKind.DECODE, STACK, TP2, isl=1000, osl=DYNAMO_DECODE_OSL, concurrency=40))
    assert m.itl_ms == 9.0 and m.kv_capacity_tokens == 100_000
    assert (
        runner.measure(Probe(ProbeKind.DECODE, STACK, TP2, isl=3000, osl=500, concurrency=10)).itl_ms == 8.0
    )
    # per-point JSONs: engine from the directory name, point from the path, warm-up runs ignored
    assert runner.measure(Probe(ProbeKind.PREFILL, STACK, TP2, isl=3000)).ttft_ms == 110.0
    dec = runner.measure(Probe(ProbeKind.DECODE, STACK, TP4, isl=1000, osl=500, concurrency=16))
    assert dec.itl_ms == 7.5 and dec.thpt_per_gpu == pytest.approx(500.0)
    assert len(runner.records) == 3 + 3 + 2


COLS = ["id", "backend", "backend_version", "model_path", "system", "precision", "mode", "isl", "osl",
        "gemm_quant_mode", "moe_quant_mode", "batch_size", "tp_size", "pp_size", "attention_dp_size", "moe_tp_size",
        "moe_ep_size", "silicon_ttft_ms", "silicon_tpot_ms"]  # fmt: skip


def _row(rid, c, ttft, tpot, tp=2, adp=1, mtp=2, mep=1, version="0.10.1"):
    return [rid, "vllm", version, "Qwen/Qwen3-32B", "h200_sxm", "bf16", "agg", 2000, 500, "", "", c, tp, 1, adp, mtp,
            mep, ttft, tpot]  # fmt: skip


def test_silicon_rows_dedup_and_agg_probes(tmp_path):
    path = tmp_path / "silicon_sample.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLS)
        w.writerow(_row("a", 8, 150.0, 12.0))
        w.writerow(_row("a-copy", 8, 150.0, 12.0))  # exact copy of one measurement
        w.writerow(_row("a-repeat", 8, 160.0, 12.5))  # a distinct repeat: merged into one record
        w.writerow(_row("b", 32, 400.0, 20.0))
        w.writerow(_row("hybrid", 32, 400.0, 20.0, tp=4, adp=4, mtp=1, mep=16))  # TP4 x DP4: no Candidate
        w.writerow(_row("disagg", 8, 1.0, 1.0)[:6] + ["disagg"] + _row("x", 8, 1.0, 1.0)[7:])
    records, skipped = load_silicon(path)
    assert len(records) == 2 and [s.row_id for s in skipped] == ["hybrid"]
    merged = next(m for m in records if m.probe.concurrency == 8)
    assert merged.ttft_ms == pytest.approx(155.0) and merged.extra["copies_dropped"] == 1
    assert merged.samples["ttft_ms"] == [150.0, 160.0]
    runner = ReplayRunner.from_paths([path])
    probe = Probe(ProbeKind.AGG, STACK, TP2, isl=2000, osl=500, concurrency=32)
    m = runner.measure(probe)
    assert (m.ttft_ms, m.tpot_ms) == (400.0, 20.0)
