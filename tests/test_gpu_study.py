"""benchmarks/gpu_study.py labels records with the model of the config it measures (issue 11, item 3);
benchmarks/multi_gpu_study.py runs the study's CPU path end to end on a tiny config."""

from __future__ import annotations

import json
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_study
import multi_gpu_study

from estimator.measurements import MeasurementStore

QWEN3_32B = ROOT / "models/configs/Qwen--Qwen3-32B"
LLAMA_8B = ROOT / "models/configs/meta-llama--Meta-Llama-3.1-8B"
TINY_QWEN3 = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "vocab_size": 256, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}  # fmt: skip


@pytest.fixture
def tiny_qwen3(tmp_path: Path) -> Path:
    d = tmp_path / "tiny_qwen3"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(TINY_QWEN3))
    return d


def copy_config(src: Path, dst: Path) -> Path:
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    return dst


def test_qwen3_config_is_labelled_qwen3(tmp_path):
    pytest.importorskip("aiconfigurator_core")
    folder = copy_config(QWEN3_32B, tmp_path / "some_dir")  # the folder's name says nothing
    assert gpu_study.model_label(None, str(folder)) == "Qwen/Qwen3-32B"


def test_llama_config_is_labelled_llama(tmp_path):
    pytest.importorskip("aiconfigurator_core")
    folder = copy_config(LLAMA_8B, tmp_path / "cfg")
    assert gpu_study.model_label(None, str(folder)) == "meta-llama/Meta-Llama-3.1-8B"


def test_model_that_does_not_match_the_config_is_refused():
    pytest.importorskip("aiconfigurator_core")
    with pytest.raises(SystemExit, match="does not match the config"):
        gpu_study.model_label("meta-llama/Meta-Llama-3.1-8B", str(QWEN3_32B))


def test_given_model_that_matches_is_kept():
    assert gpu_study.model_label("Qwen/Qwen3-32B", str(QWEN3_32B)) == "Qwen/Qwen3-32B"


def test_unbundled_config_is_labelled_by_its_directory(tiny_qwen3):
    assert gpu_study.model_label(None, str(tiny_qwen3)) == str(tiny_qwen3.resolve())


def test_model_or_path_is_required(tmp_path):
    with pytest.raises(SystemExit, match="--model"):
        gpu_study.model_label(None, None)
    with pytest.raises(SystemExit, match="no config.json"):
        gpu_study.model_label(None, str(tmp_path))


def test_measure_cpu_path_records_carry_the_measured_model(tiny_qwen3, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    out = tmp_path / "m.jsonl"
    rc = gpu_study.main(["measure", "--model-path", str(tiny_qwen3), "--out", str(out), "--device", "cpu",
                         "--dtype", "float32", "--no-cuda-graph", "--system", "h200_sxm", "--isl", "16",
                         "--points", "2:16"])  # fmt: skip
    ms = MeasurementStore(out).load()
    assert rc == 0
    assert len(ms) == 2
    assert {m.probe.stack.model for m in ms} == {str(tiny_qwen3.resolve())}


def test_multi_gpu_study_cpu_path_writes_every_pass(tiny_qwen3, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    out = tmp_path / "out"
    rc = multi_gpu_study.main(["--out", str(out), "--device", "cpu", "--dtype", "float32", "--no-cuda-graph",
                               "--system", "h200_sxm", "--tp", "1", "--passes", "2",
                               "--shape", f"tiny=Qwen/Qwen3-tiny@{tiny_qwen3}", "--isl", "16", "--points", "2:16"])  # fmt: skip
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["study.log", "study.tgz"]
    with tarfile.open(out / "study.tgz") as tar:
        tar.extractall(tmp_path / "x", filter="data")
    study = tmp_path / "x/study"
    prov = json.loads((study / "provenance.json").read_text())
    assert [(r["run"], r["rc"]) for r in prov["runs"]] == [("tiny_tp1", 0), ("tiny_tp1_pass2", 0)]
    assert prov["skipped"] == []
    for stem in ("tiny_tp1", "tiny_tp1_pass2"):
        ms = MeasurementStore(study / f"{stem}.jsonl").load()
        assert [m.probe.kind.value for m in ms] == ["prefill", "decode"]
        assert {m.probe.stack.model for m in ms} == {"Qwen/Qwen3-tiny"}
        assert all(m.extra["ratio_to_bw_floor"] > 0 for m in ms)


def test_multi_gpu_study_unknown_shape_is_a_clear_error():
    with pytest.raises(SystemExit, match="unknown shape"):
        multi_gpu_study.parse_shape("mixtral")
