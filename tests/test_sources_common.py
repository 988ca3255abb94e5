"""One conformance suite, run against every performance source (the PerfSource contract)."""

import socket

import numpy as np
import pytest

from estimator.candidates import Candidate, Mapping
from estimator.errors import DataNotAvailable
from estimator.sources.aic import AicSource
from estimator.sources.base import PerfSource, Stack
from estimator.sources.roofline import RooflineSource

LLAMA = Stack("meta-llama/Meta-Llama-3.1-8B", "h100_sxm", "vllm")
MOE = Stack("Qwen/Qwen3-30B-A3B", "h200_sxm", "vllm")


def _aic(stack):
    return AicSource(stack)


def _roofline(stack):
    return RooflineSource(stack)


def _calibrated(stack):
    """AIC corrected from four synthetic measurements (prefill 1.3x, decode 1.2x of AIC)."""
    from estimator.sources.calibrated import CalibratedSource
    from validate.calibrate import calibrate

    if "NVFP4" in stack.model:  # a base AIC cannot estimate, wrapped with a correction fitted elsewhere
        return CalibratedSource(AicSource(stack), calibrate(_aic(LLAMA), _synthetic(_aic(LLAMA))).correction)
    return calibrate(AicSource(stack), _synthetic(AicSource(stack)))


def _synthetic(base):
    from estimator.measurements import Measurement, Probe, ProbeKind

    c = (
        Candidate(Mapping.TP, 1)
        if not base.stack.model.startswith("Qwen/Qwen3-30B")
        else Candidate(Mapping.TEP, 2)
    )
    out = []
    for isl in (512, 4096):
        p = Probe(ProbeKind.PREFILL, base.stack, c, isl)
        out.append(Measurement(p, "synthetic", ttft_ms=1.3 * float(base.prefill_ttft_ms(c, [isl])[0])))
    for n, isl in ((8, 1000), (64, 4000)):
        p = Probe(ProbeKind.DECODE, base.stack, c, isl, osl=100, concurrency=n)
        itl = 1.2 * float(base.decode_itl_ms(c, [n], [p.context_tokens])[0])
        out.append(Measurement(p, "synthetic", itl_ms=itl))
    return out


def _regression(stack):
    from estimator.sources.regression import RegressionSource

    return RegressionSource(stack, "aic-distilled")


FACTORIES = {"aic": _aic, "roofline": _roofline, "calibrated": _calibrated, "regression": _regression}
# A configuration each source cannot estimate.
UNSUPPORTED = {
    "aic": (Stack("nvidia/DeepSeek-V3.1-NVFP4", "h100_sxm", "vllm"), Candidate(Mapping.TEP, 8)),
    "roofline": (Stack("meta-llama/Meta-Llama-3.1-8B", "no_such_gpu", "vllm"), Candidate(Mapping.TP, 1)),
    "calibrated": (Stack("nvidia/DeepSeek-V3.1-NVFP4", "h100_sxm", "vllm"), Candidate(Mapping.TEP, 8)),
    "regression": (Stack("meta-llama/Meta-Llama-3.1-8B", "no_such_gpu", "vllm"), Candidate(Mapping.TP, 1)),
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a performance source touched the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(params=sorted(FACTORIES), scope="module")
def make(request):
    return FACTORIES[request.param], request.param


CANDS = [Candidate(Mapping.TP, 1), Candidate(Mapping.TP, 4)]
MOE_CANDS = [Candidate(Mapping.TEP, 2), Candidate(Mapping.DEP, 4)]


def _each(make):
    factory, _ = make
    yield factory(LLAMA), CANDS
    src = factory(MOE)
    if src.supports_moe:
        yield src, MOE_CANDS


def test_is_a_perf_source(make):
    for src, _ in _each(make):
        assert isinstance(src, PerfSource)
        assert src.provenance()["source"] == src.name


def test_prefill_shape_positive_monotone(make):
    isl = np.array([128, 512, 1024, 4096, 16384])
    for src, cands in _each(make):
        for c in cands:
            ttft = src.prefill_ttft_ms(c, isl)
            assert ttft.shape == isl.shape and np.all(np.isfinite(ttft)) and np.all(ttft > 0)
            assert np.all(np.diff(ttft) >= 0), f"{src.name} {c.name}: TTFT falls as ISL grows: {ttft}"


def test_prefill_attention_is_a_part_of_the_prefill(make):
    # the calibration scales it apart (log_attention): it must be a share of the TTFT, never more
    isl = np.array([128, 1024, 16384])
    for src, cands in _each(make):
        for c in cands:
            att, ttft = src.prefill_attention_ms(c, isl), src.prefill_ttft_ms(c, isl)
            assert att.shape == isl.shape and np.all(np.isfinite(att)) and np.all(att >= 0)
            assert np.all(att < ttft), f"{src.name} {c.name}: attention {att} not below TTFT {ttft}"


def test_decode_shape_positive_monotone(make):
    batch = np.array([1, 4, 16, 64, 256])
    for src, cands in _each(make):
        for c in cands:
            by_batch = src.decode_itl_ms(c, batch, np.full(5, 2048))
            assert by_batch.shape == (5,) and np.all(np.isfinite(by_batch)) and np.all(by_batch > 0)
            assert np.all(np.diff(by_batch) >= -1e-9), f"{src.name} {c.name}: ITL falls with batch {by_batch}"
            by_ctx = src.decode_itl_ms(c, np.full(4, 32), np.array([512, 2048, 8192, 32768]))
            assert np.all(np.diff(by_ctx) >= -1e-9), f"{src.name} {c.name}: ITL falls with context {by_ctx}"


def test_kv_capacity_positive_and_grows_with_gpus(make):
    for src, cands in _each(make):
        caps = [src.kv_capacity_tokens(c) for c in cands]
        assert all(isinstance(k, int) and k > 0 for k in caps)
        assert caps == sorted(caps)


def test_deterministic(make):
    factory, _ = make
    a, b = factory(LLAMA), factory(LLAMA)
    c = CANDS[0]
    isl = np.array([1000.0, 3000.0])
    assert np.array_equal(a.prefill_ttft_ms(c, isl), b.prefill_ttft_ms(c, isl))
    assert np.array_equal(a.decode_itl_ms(c, [1, 8], [3000, 3000]), b.decode_itl_ms(c, [1, 8], [3000, 3000]))


def test_band_brackets_point(make):
    for src, cands in _each(make):
        c = cands[0]
        v = src.prefill_ttft_ms(c, [3000])
        lo, hi = src.prefill_ttft_band(c, [3000])
        assert np.all(lo <= v + 1e-9) and np.all(v <= hi + 1e-9)


def test_unsupported_raises_data_not_available(make):
    """Every latency and band call on a configuration the source cannot estimate raises, each on its own."""
    factory, name = make
    stack, cand = UNSUPPORTED[name]
    src = factory(stack)
    with pytest.raises(DataNotAvailable):
        src.prefill_ttft_ms(cand, [1000])
    with pytest.raises(DataNotAvailable):
        src.decode_itl_ms(cand, [8], [1000])
    with pytest.raises(DataNotAvailable):
        src.prefill_ttft_band(cand, [1000])
    with pytest.raises(DataNotAvailable):
        src.decode_itl_band(cand, [8], [1000])


# Where the unsupported configuration cannot be sized either. AIC's memory model sizes the KV cache of
# DeepSeek-V3.1-NVFP4 on H100 (FP4 weights fit) although its perf database has no kernels to time it.
KV_UNSUPPORTED = {"aic": False, "roofline": True, "calibrated": False, "regression": True}  # no such GPU: no memory to size


def test_kv_capacity_of_an_unsupported_configuration(make):
    factory, name = make
    stack, cand = UNSUPPORTED[name]
    src = factory(stack)
    if KV_UNSUPPORTED[name]:
        with pytest.raises(DataNotAvailable):
            src.kv_capacity_tokens(cand)
    else:
        kv = src.kv_capacity_tokens(cand)
        assert isinstance(kv, int) and kv >= 0


def test_draws_match_the_band(make):
    # the joint draws of the contract: one column per query, whose 5 %/95 % points are the query's band
    from estimator.sources.base import LatencyQuery

    for src, cands in _each(make):
        c = cands[0]
        queries = [LatencyQuery.ttft(c, 3000), LatencyQuery.ttft(cands[-1], 1000), LatencyQuery.itl(c, 8, 3075),
                   LatencyQuery.itl(c, 64, 3075)]  # fmt: skip
        d = src.latency_draws(queries, 20000, np.random.default_rng(1))
        assert d.shape == (20000, 4) and np.all(np.isfinite(d)) and np.all(d > 0)
        lo, hi = src.query_bands(queries)
        width = np.log(hi / lo)
        q05, q95 = np.quantile(d, [0.05, 0.95], axis=0)
        if np.all(width == 0):
            assert np.array_equal(d, np.broadcast_to(lo, d.shape)), f"{src.name}: zero-width band, varying draws"
        else:
            assert np.all(np.abs(np.log(q05 / lo)) <= 0.08 * width + 1e-12), f"{src.name}: 5 % point {q05} vs {lo}"
            assert np.all(np.abs(np.log(q95 / hi)) <= 0.08 * width + 1e-12), f"{src.name}: 95 % point {q95} vs {hi}"
