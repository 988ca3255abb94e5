"""Regression source fixes: cache keys, calibrations on model files, bands, replay labels, `models fit`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from estimator import cache
from estimator.calibration import identity
from estimator.candidates import Candidate, Mapping
from estimator.measurements import Measurement, MeasurementStore, Probe, ProbeKind
from estimator.serving import predict_agg
from estimator.sources import make_source
from estimator.sources.base import PerfSource, Stack
from estimator.sources.calibrated import CalibratedSource
from estimator.sources.regression import RegressionSource, load_model_file
from estimator.sources.regression.data import coefficient_key, measurement_rows
from estimator.sources.regression.engine import EngineFeatures
from estimator.sources.regression.fitting import fit_model_file
from estimator.sources.regression.regressor import K
from estimator.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
LLAMA = Stack("meta-llama/Meta-Llama-3.1-8B", "h100_sxm", "vllm")
QWEN = Stack("Qwen/Qwen3-32B", "h200_sxm", "vllm")
TP1, TP2 = Candidate(Mapping.TP, 1), Candidate(Mapping.TP, 2)
TRUE = np.zeros(2 * K)
TRUE[[0, 1, 2, 8]] = [1.3, 1.1, 0.9, 2.0]
TRUE[[K + 2, K + 3, K + 8]] = [1.2, 1.5, 0.5]


class Truth(PerfSource):
    """Step times linear in the roofline terms (coefficients TRUE, times ``scale``)."""

    name = "truth"

    def __init__(self, stack: Stack, scale: float = 1.0):
        super().__init__(stack)
        self.scale = scale

    def prefill_ttft_ms(self, candidate, isl):
        terms, _ = EngineFeatures.of(self.stack, candidate).prefill(np.asarray(isl, dtype=float))
        return self.scale * terms @ TRUE[:K]

    def decode_itl_ms(self, candidate, batch, context):
        terms, _ = EngineFeatures.of(self.stack, candidate).decode(batch, context)
        return self.scale * terms @ TRUE[K:]

    def kv_capacity_tokens(self, candidate):
        return 400_000 * candidate.num_gpus


def _noise(rng: np.random.Generator | None, sd: float) -> float:
    return 1.0 if rng is None else float(np.exp(rng.normal(0.0, sd)))


def _direct(stack, runner="t", scale=1.0, rng=None, sd=0.05):
    src, out = Truth(stack, scale), []
    for c in (TP1, TP2):
        for isl in (128, 512, 2048, 8192):
            ttft = float(src.prefill_ttft_ms(c, [isl])[0]) * _noise(rng, sd)
            out.append(Measurement(Probe(ProbeKind.PREFILL, stack, c, isl), runner, ttft_ms=ttft))
        for n, isl in ((1, 500), (8, 1000), (32, 4000), (128, 2000)):
            p = Probe(ProbeKind.DECODE, stack, c, isl, osl=100, concurrency=n)
            itl = float(src.decode_itl_ms(c, [n], [p.context_tokens])[0]) * _noise(rng, sd)
            out.append(Measurement(p, runner, itl_ms=itl))
    return out


def _agg(stack, rng=None, sd=0.2):
    src, out = Truth(stack), []
    for c in (TP1, TP2):
        for conc, isl, osl in ((1, 1000, 100), (8, 2000, 200), (32, 4000, 300), (16, 8000, 100)):
            ttft, tpot = predict_agg(src, c, conc, isl, osl)
            out.append(Measurement(Probe(ProbeKind.AGG, stack, c, isl, osl, conc), "replay",
                                   ttft_ms=ttft * _noise(rng, sd), tpot_ms=tpot * _noise(rng, sd)))  # fmt: skip
    return out


def _model_file(path: Path, records, **kw) -> Path:
    data, skipped = measurement_rows(records)
    assert not skipped
    return fit_model_file(data, path.stem, params={"residual": False}, **kw).save(path)


def _calibration(tmp_path: Path, model: Path | str, stack: Stack) -> Path:
    base = make_source(f"regression:{model}", stack)
    path = tmp_path / "calibration.json"
    CalibratedSource(base, identity()).save(path)
    return path


# ---- 1. the cache key follows the model file behind a calibration ------------------------------
def test_cache_key_changes_with_the_model_file_a_calibration_was_fitted_on(tmp_path):
    model = _model_file(tmp_path / "m.json", _direct(LLAMA) + _direct(QWEN))
    cal = _calibration(tmp_path, model, QWEN)
    spec = load_spec(model=QWEN.model, system=QWEN.system, backend="vllm", source=str(cal))
    before, cal_bytes = cache.profile_key(spec), cal.read_bytes()
    assert cache.profile_key(spec) == before  # stable while nothing changes
    _model_file(model, _direct(LLAMA, scale=1.5) + _direct(QWEN, scale=1.5))  # refit in place
    assert cal.read_bytes() == cal_bytes and cache.profile_key(spec) != before


def test_cache_key_changes_with_a_bundled_model_file(tmp_path, monkeypatch):
    """A calibration on ``regression:NAME`` (a bundled file) and the code hash both follow models/*.json."""
    from estimator.sources.regression import files, source

    bundled = tmp_path / "models"
    bundled.mkdir()
    monkeypatch.setattr(files, "MODELS_DIR", bundled)
    monkeypatch.setattr(source, "MODELS_DIR", bundled)
    _model_file(bundled / "tiny.json", _direct(LLAMA) + _direct(QWEN))
    cal = _calibration(tmp_path, "tiny", QWEN)
    assert json.loads(cal.read_text())["base_source"] == "regression:tiny"
    spec = load_spec(model=QWEN.model, system=QWEN.system, backend="vllm", source=str(cal))
    cache._code_hash.cache_clear()
    key, code = cache.profile_key(spec), cache._code_hash()
    _model_file(bundled / "tiny.json", _direct(LLAMA, scale=2.0) + _direct(QWEN, scale=2.0))
    cache._code_hash.cache_clear()
    try:
        assert cache._code_hash() != code
        assert cache.profile_key(spec) != key
    finally:
        cache._code_hash.cache_clear()


# ---- 2. a calibration fitted on regression:PATH.json can be used -------------------------------
def test_calibration_on_a_regression_model_path_is_reusable(tmp_path):
    model = _model_file(tmp_path / "m.json", _direct(LLAMA) + _direct(QWEN))
    cal = _calibration(tmp_path, model, QWEN)
    assert json.loads(cal.read_text())["base_source"] == f"regression:{model.resolve()}"
    src = make_source(str(cal), QWEN)
    assert isinstance(src, CalibratedSource) and src.base.source_spec() == f"regression:{model.resolve()}"
    assert np.all(src.prefill_ttft_ms(TP2, [3000.0]) > 0)


def test_calibration_on_another_calibration_is_still_refused(tmp_path):
    from estimator.errors import CalibrationError

    model = _model_file(tmp_path / "m.json", _direct(LLAMA) + _direct(QWEN))
    cal = _calibration(tmp_path, model, QWEN)
    doc = json.loads(cal.read_text())
    doc["base_source"] = str(cal)
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps(doc))
    with pytest.raises(CalibrationError, match="fitted on another calibration"):
        make_source(str(nested), QWEN)


# ---- 4. bands from the coefficient group's own rows, never silently zero -----------------------
def test_band_of_a_file_fitted_on_aggregated_rows_only_is_not_zero_width(tmp_path):
    rng = np.random.default_rng(0)
    model = _model_file(tmp_path / "agg.json", _agg(LLAMA, rng) + _agg(QWEN, rng))
    src = make_source(f"regression:{model}", QWEN)
    v = src.prefill_ttft_ms(TP2, [3000.0])
    lo, hi = src.prefill_ttft_band(TP2, [3000.0])
    d = src.decode_itl_ms(TP2, [16.0], [3000.0])
    dlo, dhi = src.decode_itl_band(TP2, [16.0], [3000.0])
    assert hi[0] / v[0] > 1.01 and dhi[0] / d[0] > 1.01 and lo[0] < v[0] and dlo[0] < d[0]
    prov = load_model_file(str(model)).provenance
    assert hi[0] / v[0] == pytest.approx(np.exp(prov["in_sample_by_group"]["vllm"]["ttft"]["log_abs_p90"]))
    band = src.provenance()["band_error"]
    assert band["prefill"]["from"].endswith("ttft") and band["decode"]["from"].endswith("tpot")


def test_band_comes_from_the_coefficient_group_that_answers(tmp_path):
    """GPU-runner direct points (tight), vLLM serving rows (loose): a vLLM stack gets the vLLM rows' error."""
    rng = np.random.default_rng(1)
    records = (_direct(LLAMA, runner="gpu", rng=rng, sd=0.01) + _direct(QWEN, runner="gpu", rng=rng, sd=0.01)
               + _agg(LLAMA, rng, sd=0.3) + _agg(QWEN, rng, sd=0.3))  # fmt: skip
    model = _model_file(tmp_path / "mixed.json", records)
    prov = load_model_file(str(model)).provenance
    src = make_source(f"regression:{model}", QWEN)
    v, (_, hi) = src.prefill_ttft_ms(TP2, [3000.0]), src.prefill_ttft_band(TP2, [3000.0])
    # only vLLM rows are ttft rows: their error, not the GPU runner's prefill rows'
    assert hi[0] / v[0] == pytest.approx(np.exp(prov["in_sample"]["ttft"]["log_abs_p90"]))
    assert hi[0] / v[0] > np.exp(prov["in_sample"]["prefill"]["log_abs_p90"])
    groups = prov["in_sample_by_group"]
    assert set(groups) == {"gpu-runner", "vllm"} and set(groups["vllm"]) == {"ttft", "tpot"}


def test_single_model_file_says_it_was_not_cross_validated(tmp_path):
    rng = np.random.default_rng(2)
    model = _model_file(tmp_path / "one.json", _direct(QWEN, rng=rng, sd=0.1))
    prov = load_model_file(str(model)).provenance
    other = make_source(f"regression:{model}", LLAMA)  # not trained: out-of-sample, but no CV to use
    v, (_, hi) = other.prefill_ttft_ms(TP1, [3000.0]), other.prefill_ttft_band(TP1, [3000.0])
    assert hi[0] > 1.01 * v[0]
    assert hi[0] / v[0] == pytest.approx(np.exp(prov["in_sample"]["prefill"]["log_abs_p90"]))
    assert prov["cv"] == {} and "no cross-validation" in prov["notes"] and prov["warnings"]
    assert prov["cv_scheme"].startswith("none")
    assert any("no cross-validated error" in w for w in other.provenance()["warnings"])


# ---- 3. out of the training data: model, system, backend and quantisation together -------------
def test_untrained_system_or_quantisation_gets_the_out_of_sample_band(tmp_path):
    rng = np.random.default_rng(3)
    model = _model_file(tmp_path / "m.json", _direct(LLAMA, rng=rng, sd=0.1) + _direct(QWEN, rng=rng, sd=0.1))
    prov = load_model_file(str(model)).provenance
    ins, cv = (np.exp(prov[k]["prefill"]["log_abs_p90"]) for k in ("in_sample", "cv"))
    assert cv != pytest.approx(ins)

    def factor(stack):
        src = make_source(f"regression:{model}", stack)
        v, (_, hi) = src.prefill_ttft_ms(TP1, [3000.0]), src.prefill_ttft_band(TP1, [3000.0])
        return hi[0] / v[0], src.provenance()

    untrained = (Stack(LLAMA.model, "h200_sxm", "vllm"), Stack(LLAMA.model, "h100_sxm", "sglang"),
                 Stack(LLAMA.model, "h100_sxm", "vllm", gemm_quant="fp8"))  # fmt: skip
    assert [factor(s)[0] for s in (LLAMA, *untrained)] == pytest.approx([ins, cv, cv, cv])
    f, p = factor(LLAMA)
    assert p["in_training_data"] and not p["warnings"]
    for stack in untrained:
        f, p = factor(stack)
        assert not p["in_training_data"]
        assert any("outside the model's training data" in w for w in p["warnings"])


def test_bundled_distilled_file_widens_off_its_systems_and_quantisation():
    def factor(stack):
        src = make_source("regression:aic-distilled", stack)
        v, (_, hi) = src.decode_itl_ms(TP2, [64.0], [3075.0]), src.decode_itl_band(TP2, [64.0], [3075.0])
        return hi[0] / v[0]

    cv = np.exp(load_model_file("aic-distilled").provenance["cv"]["decode"]["log_abs_p90"])
    assert factor(Stack("Qwen/Qwen3-32B", "a100_sxm", "vllm")) == pytest.approx(cv)
    assert factor(Stack("Qwen/Qwen3-32B", "h200_sxm", "vllm", gemm_quant="fp8")) == pytest.approx(cv)


# ---- 5. replayed GPU-runner points keep their coefficient group -------------------------------
def test_replayed_gpu_runner_records_train_the_gpu_runner_group(tmp_path):
    from validate.runners.replay import ReplayRunner

    runner = ReplayRunner.from_paths([ROOT / "models/measurements/h200_qwen3_8b_gpu_runner_tp1.jsonl"])
    assert {m.runner for m in runner.records} == {"gpu"}
    store = MeasurementStore(tmp_path / "measurements.jsonl")  # what `validate --runner replay` stores
    for rec in runner.records:
        store.append(runner.measure(rec.probe))
    replayed = store.load()
    assert {coefficient_key(m) for m in replayed} == {"gpu-runner"}
    assert set(measurement_rows(replayed)[0].backend) == {"gpu-runner"}
    assert all(m.runner == "replay" and m.extra["measured_by"] == "gpu" for m in replayed)
    again = ReplayRunner(replayed).measure(replayed[0].probe)  # replaying a replay keeps it
    assert again.extra["measured_by"] == "gpu" and coefficient_key(again) == "gpu-runner"


# ---- 6. `models fit --stack` is checked and normalised like a study ----------------------------
def _dynamo_dir(tmp_path: Path) -> Path:
    root = tmp_path / "dynamo"
    (root / "selected_prefill_interpolation").mkdir(parents=True)
    isl = np.array([256.0, 512, 1024, 2048, 4096, 8192])
    ttft = Truth(LLAMA).prefill_ttft_ms(TP1, isl)
    np.savez(root / "selected_prefill_interpolation" / "raw_data.npz", prefill_isl=isl, prefill_ttft=ttft,
             prefill_thpt_per_gpu=isl / ttft * 1000)  # fmt: skip
    return root


def test_models_fit_stack_is_normalised(tmp_path, monkeypatch):
    from estimator.cli import main

    monkeypatch.setenv("SLA_ESTIMATE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "dyn.json"
    argv = ["models", "fit", "--measurements", str(_dynamo_dir(tmp_path)), "--prefill-candidate", "TP1",
            "--no-residual", "-o", str(out), "--stack"]  # fmt: skip
    assert main([*argv, "model=meta-llama/Llama-3.1-8B,system=H100_SXM,backend=VLLM"]) == 0
    summary = load_model_file(str(out)).provenance["training_summary"]
    assert set(summary["backends"]) == {"vllm"} and set(summary["models"]) == {LLAMA.model}
    assert set(summary["systems"]) == {"h100_sxm"}


@pytest.mark.parametrize("stack, words", [
    ("model=meta-llama/Llama-3.1-8B,system=h100_sxm,backend=tensorrt", "stack backend"),
    ("model=no/such-model,system=h100_sxm,backend=vllm", "unknown model"),
    ("model=meta-llama/Llama-3.1-8B,system=h999,backend=vllm", "stack system"),
    ("model=meta-llama/Llama-3.1-8B,system=h100_sxm", "backend is required"),
    ("model=meta-llama/Llama-3.1-8B,system=h100_sxm,backend=vllm,colour=red", "unknown field"),
    ("model=meta-llama/Llama-3.1-8B,system=h100_sxm,backend=vllm,gemm_quant=fp3", "gemm_quant"),
])  # fmt: skip
def test_models_fit_refuses_a_bad_stack_with_exit_2(tmp_path, capsys, stack, words):
    from estimator.cli import main

    argv = ["models", "fit", "--measurements", str(_dynamo_dir(tmp_path)), "--prefill-candidate", "TP1",
            "-o", str(tmp_path / "x.json"), "--stack", stack]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.json").exists()


# ---- 7. `models fit` on the silicon CSV counts every row it leaves out -------------------------
COLS = ["id", "backend", "backend_version", "model_path", "system", "precision", "mode", "isl", "osl",
        "gemm_quant_mode", "moe_quant_mode", "batch_size", "tp_size", "pp_size", "attention_dp_size", "moe_tp_size",
        "moe_ep_size", "silicon_ttft_ms", "silicon_tpot_ms"]  # fmt: skip


def test_models_fit_on_silicon_reports_every_row_left_out(tmp_path, capsys, monkeypatch):
    from estimator.cli import main

    monkeypatch.setenv("SLA_ESTIMATE_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "silicon_sample.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLS)
        i = 0
        for model in ("Qwen/Qwen3-32B", "meta-llama/Llama-3.1-8B"):
            for tp in (1, 2):
                for c, isl in ((4, 1000), (16, 2000), (32, 4000)):
                    i += 1
                    w.writerow([f"r{i}", "vllm", "0.10.1", model, "h200_sxm", "bf16", "agg", isl, 200, "", "", c,
                                tp, 1, 1, tp, 1, 50.0 * isl / 1000 / tp * (1 + c / 64), 10.0 + c / 8 / tp])  # fmt: skip
        for j in range(3):
            w.writerow([f"d{j}", "vllm", "0.10.1", "Qwen/Qwen3-32B", "h200_sxm", "bf16", "disagg", 1000, 200, "", "",
                        8, 2, 1, 1, 2, 1, 50.0, 10.0])  # fmt: skip
        w.writerow(["hybrid", "vllm", "0.10.1", "Qwen/Qwen3-32B", "h200_sxm", "bf16", "agg", 1000, 200, "", "", 8, 4,
                    1, 4, 1, 16, 50.0, 10.0])  # fmt: skip
        w.writerow(["nan", "vllm", "0.10.1", "Qwen/Qwen3-32B", "h200_sxm", "bf16", "agg", 1000, 200, "", "", 8, 2, 1,
                    1, 2, 1, "", ""])  # fmt: skip
    out = tmp_path / "sil.json"
    assert main(["models", "fit", "--measurements", str(path), "--no-residual", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(5 left out: 3 disagg mode: only agg rows are used; " in printed
    assert "1 no usable measured TTFT/TPOT" in printed and "1 parallel mapping is not TP/TEP/DEP" in printed
    prov = load_model_file(str(out)).provenance
    assert prov["left_out"] == {"total": 5, "reasons": {"disagg mode: only agg rows are used": 3,
                                "no usable measured TTFT/TPOT": 1, "parallel mapping is not TP/TEP/DEP": 1}}  # fmt: skip
    assert "5 rows/records left out: 3 disagg mode" in prov["notes"]
