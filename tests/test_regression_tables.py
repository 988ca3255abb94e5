"""Node tables of distilled files: AIC's answers at the nodes, read out monotone, saved as data."""

import logging

import numpy as np
import pytest

from estimator.candidates import Candidate, Mapping
from estimator.errors import DataNotAvailable, SourceError
from estimator.sources.base import Stack
from estimator.sources.regression import RegressionSource, load_model_file
from estimator.sources.regression.data import measurement_rows, workload_nodes
from estimator.sources.regression.fitting import fit_model_file
from estimator.sources.regression.nodes import EngineTable, encode, table_key
from tests.test_regression import LLAMA, QWEN, TruthSource, _direct_records

TP2 = Candidate(Mapping.TP, 2)
ISL = np.array([64.0, 256.0, 1024.0, 3000.0, 8192.0])
BATCH = np.array([1.0, 2.0, 8.0, 32.0])
CTX = np.array([128.0, 1024.0, 3075.0, 16384.0])


def _table() -> dict:
    """The truth source's answers at the nodes, with a dip (batch 2 faster than batch 1) as AIC shows."""
    src = TruthSource(QWEN)
    ttft = src.prefill_ttft_ms(TP2, ISL)
    b, c = np.meshgrid(BATCH, CTX, indexing="ij")
    itl = src.decode_itl_ms(TP2, b.ravel(), c.ravel()).reshape(b.shape)
    itl[1, :] = itl[0, :] * 0.97
    t = EngineTable(ISL, ttft, BATCH, CTX, itl, 123_456, {})
    refused = EngineTable(None, None, None, None, None, None, {"kv": "no data", "prefill": "no data"})
    return {table_key(QWEN, "TP2"): t.to_dict(), table_key(QWEN, "TP4"): refused.to_dict()}


def _file(tmp_path):
    data, _ = measurement_rows(_direct_records(LLAMA) + _direct_records(QWEN))
    tables = _table()
    mf = fit_model_file(data, "tabled", params={"residual": False}, tables=tables, table_checks=[])
    return mf.save(tmp_path / "m.json"), tables


def test_table_reproduces_its_nodes_and_stays_monotone(tmp_path):
    path, tables = _file(tmp_path)
    t = EngineTable.from_dict(tables[table_key(QWEN, "TP2")])
    src = RegressionSource(QWEN, str(path))
    assert np.allclose(src.prefill_ttft_ms(TP2, ISL), t.prefill_ms, rtol=1e-12, atol=0)
    b, c = np.meshgrid(BATCH, CTX, indexing="ij")
    got = src.decode_itl_ms(TP2, b.ravel(), c.ravel()).reshape(b.shape)
    expect = t.decode_ms.copy()
    expect[0, :] = expect[1, :]  # batch 1 can be padded to batch 2: bounded by the faster batch 2
    assert np.allclose(got, expect, rtol=1e-12, atol=0)
    assert src.kv_capacity_tokens(TP2) == 123_456
    assert src.provenance()["node_table_engines"] == ["TP2"]
    isl = np.geomspace(16, 60000, 200)
    assert np.all(np.diff(src.prefill_ttft_ms(TP2, isl)) >= 0)
    for ctx in (100.0, 2000.0, 50000.0):
        itl = src.decode_itl_ms(TP2, np.arange(1.0, 300.0), np.full(299, ctx))
        assert np.all(np.diff(itl) >= 0)
    by_ctx = src.decode_itl_ms(TP2, np.full(200, 5.0), np.geomspace(64, 60000, 200))
    assert np.all(np.diff(by_ctx) >= 0)


def test_refusals_follow_aic_and_other_engines_keep_the_learned_path(tmp_path):
    path, _ = _file(tmp_path)
    src = RegressionSource(QWEN, str(path))
    tp4 = Candidate(Mapping.TP, 4)
    with pytest.raises(DataNotAvailable, match="AIC cannot estimate kv of TP4: no data"):
        src.kv_capacity_tokens(tp4)
    with pytest.raises(DataNotAvailable, match="prefill"):
        src.prefill_ttft_ms(tp4, [1000])
    assert src.decode_itl_ms(tp4, [8], [1000])[0] > 0  # not refused: learned path
    data, _ = measurement_rows(_direct_records(LLAMA) + _direct_records(QWEN))
    learned = RegressionSource(QWEN, params={"residual": False}).fit(data)
    tp1 = Candidate(Mapping.TP, 1)
    assert src.prefill_ttft_ms(tp1, [1000])[0] == learned.prefill_ttft_ms(tp1, [1000])[0]
    quant = RegressionSource(Stack(QWEN.model, QWEN.system, QWEN.backend, gemm_quant="fp8"), str(path))
    assert quant._engine(TP2)["table"] is None  # a table stands for default versions and quantisation only


def test_file_with_tables_round_trips_bit_exactly(tmp_path):
    path, _ = _file(tmp_path)
    again = load_model_file(str(path)).save(tmp_path / "again.json")
    assert path.read_bytes() == again.read_bytes()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t.update(isl=t["isl"][::-1]),
        lambda t: t["prefill_ms"].update(base64=t["prefill_ms"]["base64"][:-12]),
        lambda t: t.update(decode_ms=encode(-np.ones((len(t["batch"]), len(t["context"]))))),
        lambda t: t["decode_ms"].update(dtype="<f4"),
        lambda t: t.pop("isl"),
    ],
)
def test_corrupt_table_is_a_clear_source_error(tmp_path, mutate):
    import json

    path, _ = _file(tmp_path)
    doc = json.loads(path.read_text())
    mutate(doc["tables"][table_key(QWEN, "TP2")])
    path.write_text(json.dumps(doc))
    with pytest.raises(SourceError, match="corrupt"):
        RegressionSource(QWEN, str(path)).prefill_ttft_ms(TP2, [100])


def test_bundled_tables_are_aic_at_the_nodes_and_decision_points():
    """The bundled tables hold AIC's answers at the nodes, which include the default workload's ISL and
    decode sweep; the source reads them as their monotone minorant, so the largest batch within an
    ITL target, and its ITL, are AIC's."""
    from estimator.sources.aic import AicSource
    from estimator.sources.regression.monotone import minorant

    logging.getLogger("aiconfigurator_core").setLevel(logging.ERROR)
    stack = Stack("meta-llama/Meta-Llama-3.1-70B", "h200_sxm", "trtllm")
    mf = load_model_file("aic-distilled")
    assert mf.provenance["table_check"]["decode"]["rows"] > 0
    src, aic = RegressionSource(stack, "aic-distilled"), AicSource(stack)
    for name in ("TP4", "TP8"):
        c = Candidate.parse(name)
        t = mf.table(table_key(stack, name))
        kv = aic.kv_capacity_tokens(c)
        assert src.kv_capacity_tokens(c) == kv == t.kv_capacity_tokens
        isl_w, ctx_w, batch_w = workload_nodes(kv, c.attention_dp_size, [(3000, 150)])
        assert (
            isl_w <= set(t.isl.tolist())
            and ctx_w <= set(t.context.tolist())
            and batch_w <= set(t.batch.tolist())
        )
        assert np.allclose(t.prefill_ms, aic.prefill_ttft_ms(c, t.isl), rtol=1e-8)
        assert np.allclose(src.prefill_ttft_ms(c, t.isl), minorant(t.prefill_ms), rtol=1e-12)
        j = int(np.flatnonzero(t.context == 3075.0)[0])
        itl = aic.decode_itl_ms(c, t.batch, np.full_like(t.batch, 3075.0))
        assert np.allclose(t.decode_ms[:, j], itl, rtol=1e-8)
        levels = np.array(sorted(batch_w))
        ours = src.decode_itl_ms(c, levels, np.full_like(levels, 3075.0))
        theirs = aic.decode_itl_ms(c, levels, np.full_like(levels, 3075.0))
        for target in (10.0, 20.0, 40.0):
            if (theirs <= target).any():
                best = np.flatnonzero(theirs <= target).max()
                assert np.flatnonzero(ours <= target).max() == best
                assert ours[best] == pytest.approx(theirs[best], rel=1e-8)
