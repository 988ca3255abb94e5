"""The learned regression source: fit/predict contract, known-coefficient recovery, model files."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from estimator.candidates import Candidate, Mapping
from estimator.errors import NotFittedError, SourceError
from estimator.features import TERM_NAMES
from estimator.measurements import Measurement, Probe, ProbeKind
from estimator.serving import predict_agg
from estimator.sources.base import PerfSource, Stack
from estimator.sources.regression import RegressionSource, load_model_file
from estimator.sources.regression.data import measurement_rows
from estimator.sources.regression.engine import EngineFeatures
from estimator.sources.regression.fitting import fit_model_file
from estimator.sources.regression.regressor import K, PerfRegressor

ROOT = Path(__file__).resolve().parents[1]
LLAMA = Stack("meta-llama/Meta-Llama-3.1-8B", "h100_sxm", "vllm")
QWEN = Stack("Qwen/Qwen3-32B", "h200_sxm", "vllm")
# prefill: 1.3x GEMM peak time, 1.1x attention, 0.9x weights, 2 ms fixed; decode: 1.2x weights, 1.5x KV, 0.5 ms
TRUE = np.zeros(2 * K)
TRUE[[0, 1, 2, 8]] = [1.3, 1.1, 0.9, 2.0]
TRUE[[K + 2, K + 3, K + 8]] = [1.2, 1.5, 0.5]


class TruthSource(PerfSource):
    """Step times exactly linear in the roofline terms with the coefficients TRUE."""

    name = "truth"

    def prefill_ttft_ms(self, candidate, isl):
        terms, _ = EngineFeatures.of(self.stack, candidate).prefill(np.asarray(isl, dtype=float))
        return terms @ TRUE[:K]

    def decode_itl_ms(self, candidate, batch, context):
        terms, _ = EngineFeatures.of(self.stack, candidate).decode(batch, context)
        return terms @ TRUE[K:]

    def kv_capacity_tokens(self, candidate):
        return 400_000 * candidate.num_gpus


def _direct_records(stack):
    src, out = TruthSource(stack), []
    for c in (Candidate(Mapping.TP, 1), Candidate(Mapping.TP, 2), Candidate(Mapping.TP, 4)):
        for isl in (128, 512, 2048, 8192, 16384):
            out.append(
                Measurement(
                    Probe(ProbeKind.PREFILL, stack, c, isl),
                    "t",
                    ttft_ms=float(src.prefill_ttft_ms(c, [isl])[0]),
                )
            )
        for n, isl in ((1, 500), (8, 1000), (32, 4000), (128, 2000), (256, 8000)):
            p = Probe(ProbeKind.DECODE, stack, c, isl, osl=100, concurrency=n)
            itl = float(src.decode_itl_ms(c, [n], [p.context_tokens])[0])
            out.append(Measurement(p, "t", itl_ms=itl, kv_capacity_tokens=src.kv_capacity_tokens(c)))
    return out


def _agg_records(stack):
    src, out = TruthSource(stack), []
    for c in (Candidate(Mapping.TP, 1), Candidate(Mapping.TP, 2)):
        for conc, isl, osl in (
            (1, 1000, 100),
            (8, 2000, 200),
            (32, 4000, 300),
            (64, 1000, 500),
            (16, 8000, 100),
        ):
            ttft, tpot = predict_agg(src, c, conc, isl, osl)
            out.append(
                Measurement(Probe(ProbeKind.AGG, stack, c, isl, osl, conc), "t", ttft_ms=ttft, tpot_ms=tpot)
            )
    return out


def _fitted(residual=False):
    data, skipped = measurement_rows(_direct_records(LLAMA) + _direct_records(QWEN))
    assert not skipped
    return data, PerfRegressor(residual=residual).fit(data)


def test_recovers_known_coefficients_from_direct_points():
    _, reg = _fitted()
    np.testing.assert_allclose(reg.coef_["vllm"], TRUE, rtol=1e-6, atol=1e-6)


def test_recovers_known_coefficients_through_the_serving_model():
    """Aggregated TTFT/TPOT are linear in the step-time coefficients: agg rows alone recover them."""
    data, _ = measurement_rows(_agg_records(LLAMA) + _agg_records(QWEN))
    assert set(data.kind) == {"ttft", "tpot"}
    reg = PerfRegressor(residual=False).fit(data)
    np.testing.assert_allclose(reg.coef_["vllm"][K:], TRUE[K:], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(reg.coef_["vllm"][:3], TRUE[:3], rtol=1e-3, atol=1e-3)


def test_not_fitted_raises():
    with pytest.raises(NotFittedError):
        RegressionSource(LLAMA).prefill_ttft_ms(Candidate(Mapping.TP, 1), [1000])
    with pytest.raises(NotFittedError):
        PerfRegressor().predict_linear("prefill", "vllm", np.zeros((1, K)))
    assert isinstance(NotFittedError("x"), SourceError)


def test_constructor_only_stores():
    src = RegressionSource(LLAMA, "aic-distilled", params={"residual": False})
    assert set(vars(src)) == {"stack", "model", "params"}


def test_fitted_source_predicts_the_truth():
    data, _ = _fitted()
    src = RegressionSource(QWEN, params={"residual": False}).fit(data)
    c = Candidate(Mapping.TP, 2)
    np.testing.assert_allclose(
        src.prefill_ttft_ms(c, [300, 3000]), TruthSource(QWEN).prefill_ttft_ms(c, [300, 3000])
    )
    np.testing.assert_allclose(
        src.decode_itl_ms(c, [4, 64], [3000, 3000]), TruthSource(QWEN).decode_itl_ms(c, [4, 64], [3000, 3000])
    )


def test_numpy_trees_match_sklearn():
    from sklearn.ensemble import HistGradientBoostingRegressor

    from estimator.sources.regression.trees import from_sklearn

    rng = np.random.default_rng(0)
    x = rng.random((400, 5))
    y = np.sin(4 * x[:, 0]) + x[:, 1] * x[:, 2]
    est = HistGradientBoostingRegressor(max_iter=40, max_leaf_nodes=15, random_state=0).fit(x, y)
    xt = rng.random((200, 5))
    np.testing.assert_allclose(from_sklearn(est).predict(xt), est.predict(xt), rtol=0, atol=1e-12)


def test_residual_output_stays_monotone():
    data, _ = measurement_rows(_direct_records(LLAMA) + _direct_records(QWEN))
    noisy = data.subset(np.ones(len(data), dtype=bool))
    rng = np.random.default_rng(1)
    object.__setattr__(noisy, "y_ms", noisy.y_ms * np.exp(rng.normal(0, 0.2, len(noisy))))
    src = RegressionSource(LLAMA, params={"residual": True, "max_iter": 30}).fit(noisy)
    c = Candidate(Mapping.TP, 1)
    assert src.regressor_.has_residual("prefill")
    assert np.all(np.diff(src.prefill_ttft_ms(c, np.geomspace(1, 300_000, 200))) >= 0)
    b = np.geomspace(1, 3000, 60)
    by_batch = src.decode_itl_ms(c, b, np.full_like(b, 3000))
    assert np.all(np.diff(by_batch) >= -1e-12 * by_batch[1:])
    ctx = np.geomspace(1, 500_000, 60)
    by_ctx = src.decode_itl_ms(c, np.full_like(ctx, 16), ctx)
    assert np.all(np.diff(by_ctx) >= -1e-12 * by_ctx[1:])


def test_saved_model_round_trips_bit_exactly(tmp_path):
    data, _ = _fitted()
    mf = fit_model_file(data, "synthetic", params={"residual": True, "max_iter": 20}, sources=["synthetic"])
    first = mf.save(tmp_path / "m.json")
    loaded = load_model_file(str(first))
    second = loaded.save(tmp_path / "again.json")
    assert first.read_bytes() == second.read_bytes()
    assert loaded.provenance["training_sha256"] == data.digest()
    assert set(loaded.provenance["cv"]) == {"prefill", "decode"}
    a, b = RegressionSource(QWEN, str(first)), RegressionSource(QWEN).fit(data)
    b.regressor_ = mf.regressor
    c = Candidate(Mapping.TP, 4)
    isl = np.array([100.0, 3000.0, 30000.0])
    assert np.array_equal(a.prefill_ttft_ms(c, isl), b.prefill_ttft_ms(c, isl))
    assert a.provenance()["model_sha256"] == loaded.sha256


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda text: text[: len(text) // 2], "not a readable"),
        (lambda text: text.replace('"format_version":1', '"format_version":99'), "format version 99"),
        (
            lambda text: text.replace('"format":"sla-estimate/regression-model"', '"format":"other"'),
            "not a regression model",
        ),
        (lambda text: text.replace('"gemm_flops_ms"', '"flops"'), "other features"),
        (lambda text: text.replace('"coef":', '"coefficients":'), "corrupt"),
    ],
)
def test_corrupt_or_incompatible_file_is_a_clear_source_error(tmp_path, mutate, words):
    data, _ = _fitted()
    path = fit_model_file(data, "m", params={"residual": False}).save(tmp_path / "m.json")
    path.write_text(mutate(path.read_text()))
    with pytest.raises(SourceError, match=words):
        RegressionSource(LLAMA, str(path)).prefill_ttft_ms(Candidate(Mapping.TP, 1), [100])


def test_cli_bad_model_file_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = subprocess.run([sys.executable, "-m", "estimator.cli", "--source", f"regression:{bad}", "--no-cache"],
                       check=False, capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr and "not a readable" in r.stderr


def test_term_names_are_the_design_columns():
    assert len(TERM_NAMES) == K
    ef = EngineFeatures.of(LLAMA, Candidate(Mapping.TP, 2))
    t, f = ef.prefill(np.array([1000.0]))
    assert t.shape == (1, K) and np.all(t >= 0) and np.all(np.isfinite(f))


def test_unbundled_local_config_is_estimated(tmp_path):
    """A model AIC does not bundle, given as a directory with config.json, answered by the distilled model."""
    from estimator.pipeline import estimate
    from estimator.spec import load_spec

    cfg = {"architectures": ["LlamaForCausalLM"], "hidden_size": 3072, "intermediate_size": 8192,
           "num_attention_heads": 24, "num_key_value_heads": 8, "num_hidden_layers": 28, "head_dim": 128,
           "vocab_size": 128256, "max_position_embeddings": 32768, "torch_dtype": "bfloat16"}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    src = RegressionSource(Stack(str(tmp_path), "h100_sxm", "vllm"), "aic-distilled")
    c = Candidate(Mapping.TP, 1)
    ttft = src.prefill_ttft_ms(c, [1000, 4000])
    assert np.all(ttft > 0) and ttft[1] > ttft[0] and src.kv_capacity_tokens(c) > 0
    p = estimate(load_spec(model=str(tmp_path), system="h100_sxm", backend="vllm", source="regression:aic-distilled",
                           cache=False))  # fmt: skip
    assert p.provenance["source"] == "regression" and p.provenance["model_name"] == "aic-distilled"
    assert p.selection.best_prefill.point.ttft_ms > 0


def test_distilled_answers_without_importing_aic():
    code = ("import sys; from estimator.sources import make_source, Stack; from estimator.candidates import Candidate;"
            "s = make_source('regression:aic-distilled', Stack('Qwen/Qwen3-32B', 'h200_sxm', 'vllm'));"
            "c = Candidate.parse('TP2'); s.prefill_ttft_ms(c, [3000]); s.decode_itl_ms(c, [8], [3000]);"
            "s.kv_capacity_tokens(c); print(any(m.startswith(('aiconfigurator', 'sklearn')) for m in sys.modules))")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert r.stdout.strip() == "False"


def test_validate_calibrates_the_regression_source(tmp_path, monkeypatch):
    """validate with --source regression:...: recorded GPU-runner points calibrate the surrogate's surfaces."""
    from estimator.cli import main

    monkeypatch.setenv("SLA_ESTIMATE_CACHE_DIR", str(tmp_path / "cache"))
    rec = [
        str(ROOT / "models/measurements" / f)
        for f in ("h100_llama31_8b_gpu_runner.jsonl", "h100_llama31_8b_gpu_runner_tp2.jsonl")
    ]
    argv = ["validate", "--model", "meta-llama/Llama-3.1-8B", "--system", "h100_sxm", "--gpus", "1,2", "--no-plots",
            "--source", "regression:aic-distilled", "--runner", "replay", "--json", "-o", str(tmp_path / "out")]  # fmt: skip
    for r in rec:
        argv += ["--measurements", r]
    assert main(argv) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (tmp_path / "out" / "calibration.json").is_file()
    assert "regression" in json.dumps(report["provenance"]["source"])

    # the file names its model, and applies to that model only
    from estimator.errors import CalibrationError
    from estimator.sources import make_source
    from estimator.sources.calibrated import CalibratedSource

    cal = tmp_path / "out" / "calibration.json"
    doc = json.loads(cal.read_text())
    assert doc["base_source"] == "regression:aic-distilled" and len(doc["base_model_sha256"]) == 64
    stack = Stack(**doc["stack"])
    assert make_source(str(cal), stack).base.source_spec() == "regression:aic-distilled"
    with pytest.raises(CalibrationError, match="regression:aic-distilled.*not 'regression:measured'"):
        CalibratedSource.load(cal, base=make_source("regression:measured", stack))


def test_cli_models_fit_show_and_use(tmp_path, capsys, monkeypatch):
    from estimator.cli import main
    from estimator.measurements import MeasurementStore

    monkeypatch.setenv("SLA_ESTIMATE_CACHE_DIR", str(tmp_path / "cache"))
    store = MeasurementStore(tmp_path / "m.jsonl")
    store.extend(_direct_records(LLAMA) + _direct_records(QWEN))
    out = tmp_path / "mine.json"
    assert main(["models", "fit", "--measurements", str(store.path), "--no-residual", "-o", str(out)]) == 0
    assert main(["models", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "leave-one-model-out" in shown and load_model_file(str(out)).sha256 in shown
    assert (
        main(["--model", "Qwen/Qwen3-32B", "--system", "h200_sxm", "--source", f"regression:{out}", "--json"])
        == 0
    )
    report = json.loads(capsys.readouterr().out.split("\n(")[0])
    assert report["provenance"]["source"]["model_sha256"] == load_model_file(str(out)).sha256
    assert main(["models", "fit", "--measurements", str(tmp_path / "missing.jsonl"), "-o", str(out)]) == 2
    assert main(["models", "show", "no-such-model"]) == 2
