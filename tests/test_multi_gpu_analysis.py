"""The decision rule and the "would the loop ask" criterion of benchmarks/multi_gpu_analysis.py."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import multi_gpu_analysis as A

from estimator.candidates import Candidate, Mapping
from estimator.measurements import Measurement, Probe, ProbeKind
from estimator.sources.base import Stack

STACK = Stack("meta-llama/Meta-Llama-3.1-8B", "h100_sxm", "vllm")


class Table:
    """A source answering ITL from a table per TP, with a band of ± ``band`` (fraction)."""

    def __init__(self, itl_ms: dict[int, float], band: float):
        self.itl_ms, self.band = itl_ms, band

    def decode_itl_ms(self, cand, batch, context):
        return np.array([self.itl_ms[cand.num_gpus]])

    def decode_itl_band(self, cand, batch, context):
        v = self.itl_ms[cand.num_gpus]
        return np.array([v * (1 - self.band)]), np.array([v * (1 + self.band)])


def decode(tp: int, itl_ms: float) -> Measurement:
    probe = Probe(ProbeKind.DECODE, STACK, Candidate(Mapping.TP, tp), isl=1024, osl=1, concurrency=8)
    return Measurement(probe=probe, runner="gpu", itl_ms=itl_ms)


def test_pick_prefers_tokens_per_gpu_among_engines_that_meet_the_target():
    pt = ("decode", 8, 1024)
    assert A.pick({1: 10.0, 2: 7.0}, pt, 12.0) == 1  # both meet it: TP1 gives more tokens/s/GPU
    assert A.pick({1: 10.0, 2: 7.0}, pt, 8.0) == 2  # only TP2 meets it
    assert A.pick({1: 10.0, 2: 7.0}, pt, 6.0) is None


def test_loop_asks_only_when_the_band_can_flip_the_pick():
    records = {1: [decode(1, 10.0)], 2: [decode(2, 7.0)]}
    wide = A.loop_decisions(Table({1: 10.0, 2: 7.0}, band=0.5), records, (2,))
    narrow = A.loop_decisions(Table({1: 10.0, 2: 7.0}, band=0.01), records, (2,))
    assert wide["scenarios"] == narrow["scenarios"] == len(A.SLA_FACTORS)
    assert wide["asked"] > narrow["asked"]
    # targets 6, 7, 8, 9, 11 ms: a ±1 % band around 7 ms straddles only the 7 ms target
    assert narrow["asked"] == 1


def test_a_wrong_pick_without_asking_is_counted():
    records = {1: [decode(1, 10.0)], 2: [decode(2, 9.5)]}  # TP2 really misses 0.8 x 10 ms
    r = A.loop_decisions(Table({1: 10.0, 2: 7.0}, band=0.01), records, (2,))
    assert r["scored"] == len(A.SLA_FACTORS)
    assert r["wrong_and_not_asked"] >= 1
