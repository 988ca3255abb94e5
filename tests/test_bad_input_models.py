"""Bad input to `sla-estimate models fit|distill|show`, to regression model files and to a local model's
config.json: one line on stderr, exit code 2, nothing written, nothing accepted silently."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from estimator.candidates import Candidate, Mapping
from estimator.cli import main
from estimator.errors import SourceError
from estimator.measurements import Measurement, MeasurementStore, Probe, ProbeKind
from estimator.sources.base import Stack
from estimator.sources.regression import bundled_names, load_model_file
from estimator.sources.regression.engine import EngineFeatures
from estimator.sources.regression.files import MODELS_DIR
from estimator.sources.regression.regressor import K
from tests.test_bad_input import one_line_error

LLAMA = Stack("meta-llama/Meta-Llama-3.1-8B", "h100_sxm", "vllm")
PROFILE = ["--model", "Qwen/Qwen3-8B", "--system", "h100_sxm", "--gpus", "1", "--isl", "1000", "--osl", "100",
           "--no-plots", "--no-cache"]  # fmt: skip


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLA_ESTIMATE_CACHE_DIR", str(tmp_path / "cache"))


def _records(tmp: Path) -> str:
    """Enough direct prefill and decode points (linear in the roofline terms) for the boosted residual."""
    coef = np.linspace(0.5, 1.5, 2 * K)
    out = []
    for c in (Candidate(Mapping.TP, 1), Candidate(Mapping.TP, 2), Candidate(Mapping.TP, 4)):
        ef = EngineFeatures.of(LLAMA, c)
        for isl in (128, 256, 512, 1024, 2048, 4096, 8192, 16384):
            terms, _ = ef.prefill(np.array([float(isl)]))
            ttft = float(terms[0] @ coef[:K])
            out.append(Measurement(Probe(ProbeKind.PREFILL, LLAMA, c, isl), "t", ttft_ms=ttft))
        for n in (1, 4, 8, 16, 32, 64, 128, 256):
            p = Probe(ProbeKind.DECODE, LLAMA, c, 1000, osl=100, concurrency=n)
            terms, _ = ef.decode(np.array([float(n)]), np.array([float(p.context_tokens)]))
            out.append(Measurement(p, "t", itl_ms=float(terms[0] @ coef[K:]), kv_capacity_tokens=400_000))
    store = MeasurementStore(tmp / "m.jsonl")
    store.extend(out)
    return str(store.path)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---- 22: hyperparameters are checked up front ----------------------------------------------------
@pytest.mark.parametrize("flag", [["--max-iter", "0"], ["--max-iter", "-3"], ["--max-leaf-nodes", "1"],
                                  ["--max-leaf-nodes", "-1"], ["--max-depth", "0"], ["--max-depth", "-2"],
                                  ["--max-iter", "1000000000"]])  # fmt: skip
def test_fit_hyperparameters_out_of_range(flag, tmp_path, capsys):
    out = tmp_path / "out" / "m.json"
    argv = ["models", "fit", "--measurements", _records(tmp_path), "-o", str(out), *flag]
    err = one_line_error(argv, capsys)
    assert flag[0].lstrip("-") in err
    assert not out.parent.exists()


# ---- 23: the output path is checked before the fit, and a failed write leaves no temp file -------
def _outputs(tmp: Path) -> list[tuple[str, str]]:
    (tmp / "afile").write_text("x")
    os.mkfifo(tmp / "fifo")  # not a regular file (like /dev/null, which a rename would replace)
    cases = [(str(tmp), "is a directory"), (str(tmp / "afile" / "x.json"), "not a directory"),
             ("", "empty path"), (str(tmp / "fifo"), "not a regular file")]  # fmt: skip
    if Path("/proc/self").is_dir():
        cases.append(("/proc/x.json", "cannot write"))
    return cases


@pytest.mark.parametrize("command", ["fit", "distill"])
def test_output_path_checked_before_fitting(command, tmp_path, capsys):
    stack = ["--model", "meta-llama/Llama-3.1-8B", "--system", "h100_sxm", "--backend", "vllm", "--no-tables"]
    source = ["--measurements", _records(tmp_path), "--no-residual"] if command == "fit" else stack
    for output, why in _outputs(tmp_path):
        err = one_line_error(["models", command, *source, "-o", output], capsys)
        assert "output" in err and why in err, (output, err)
        assert not _leftovers(tmp_path)


def test_failed_write_after_fit_is_one_line_and_leaves_no_temp_file(tmp_path, capsys, monkeypatch):
    def full(*_):
        raise OSError(28, "No space left on device")

    out = tmp_path / "new" / "m.json"
    monkeypatch.setattr("estimator.sources.regression.files.os.replace", full)
    argv = ["models", "fit", "--measurements", _records(tmp_path), "--no-residual", "-o", str(out)]
    err = one_line_error(argv, capsys)
    assert "No space left on device" in err
    assert not out.exists() and not _leftovers(out.parent)


def test_empty_name_is_refused(tmp_path, capsys):
    out = tmp_path / "m.json"
    argv = ["models", "fit", "--measurements", _records(tmp_path), "--name", "", "-o", str(out)]
    err = one_line_error(argv, capsys)
    assert "name" in err and not out.exists()


# ---- 24: distill refuses unknown backends and systems, with the valid ones -------------------------
@pytest.mark.parametrize("flag, listed", [
    (["--backend", "zz"], "vllm, sglang, trtllm"),
    (["--system", "zz"], "h100_sxm"),
    (["--backend", "vllm", "--backend", "vllm"], "given twice"),
])  # fmt: skip
def test_distill_unknown_choices(flag, listed, tmp_path, capsys):
    argv = ["models", "distill", "--model", "meta-llama/Llama-3.1-8B", *flag, "-o", str(tmp_path / "z.json")]
    assert listed in one_line_error(argv, capsys)
    assert not (tmp_path / "z.json").exists()


# ---- 25, 26: a model file is validated whole on load ----------------------------------------------
@pytest.fixture(scope="module")
def base_text() -> str:
    """The bundled distilled file with one node table of its 234 (smaller; still a valid file)."""
    doc = json.loads((MODELS_DIR / "aic-distilled.json").read_text())
    first = sorted(doc["tables"])[0]
    doc["tables"] = {first: doc["tables"][first]}
    return json.dumps(doc)


def _tree(phase: str, key: str, index: int | str, value):
    def mutate(d):
        t = d["regressor"]["trees"][phase]["trees"][0]
        i = t["feature"].index(-1) if index == "leaf" else index
        t[key][i] = value

    return mutate


def _set(path: str, value):
    def mutate(d):
        *head, last = path.split(".")
        for k in head:
            d = d[k]
        d[last] = value

    return mutate


def _two_parents(d):
    t = d["regressor"]["trees"]["decode"]["trees"][0]
    t["right"][0] = t["left"][0]


def _table(d):
    next(iter(d["tables"].values()))["kv_capacity_tokens"] = -5


RAGGED = {"feature": [-1], "threshold": [0.0], "left": [0, 0], "right": [0], "value": [0.0]}
CORRUPT = {
    "left out of range": (_tree("prefill", "left", 0, 10**6), "trees.prefill.trees[0].left[0]"),
    "left negative": (_tree("prefill", "left", 0, -10**6), "trees.prefill.trees[0].left[0]"),
    "left cycle": (_tree("prefill", "left", 0, 0), "trees.prefill.trees[0].left[0]"),
    "two parents": (_two_parents, "has two parents"),
    "feature out of range": (_tree("prefill", "feature", 0, 999), "trees.prefill.trees[0].feature[0]"),
    "feature -5": (_tree("prefill", "feature", 0, -5), "trees.prefill.trees[0].feature[0]"),
    "feature float": (_tree("decode", "feature", 0, 1.5), "trees.decode.trees[0].feature[0]"),
    "threshold nan": (_tree("prefill", "threshold", 0, float("nan")), "trees.prefill.trees[0].threshold[0]"),
    "threshold 400 digits": (_tree("prefill", "threshold", 0, 10**400), "trees[0].threshold[0]"),
    "leaf value inf": (_tree("prefill", "value", "leaf", float("inf")), "trees.prefill.trees[0].value["),
    "ragged tree": (_set("regressor.trees.prefill.trees", [RAGGED]), "trees.prefill.trees[0].left"),
    "depth 10**9": (_set("regressor.trees.prefill.depth", 10**9), "trees.prefill.depth"),
    "depth 0": (_set("regressor.trees.prefill.depth", 0), "trees.prefill.depth"),
    "depth too small": (_set("regressor.trees.prefill.depth", 3), "trees.prefill.depth"),
    "baseline nan": (_set("regressor.trees.prefill.baseline", float("nan")), "trees.prefill.baseline"),
    "unknown phase": (_set("regressor.trees.agg", {}), "regressor.trees"),
    "kv nan": (_set("regressor.kv.vllm", [float("nan"), 1e9, 1.0]), "kv.vllm[0]"),
    "kv short": (_set("regressor.kv.vllm", [1.0]), "kv.vllm"),
    "kv memory fraction negative": (_set("regressor.kv.vllm", [-1.0, 1e9, 1.0]), "kv.vllm[0]"),
    "coef negative": (_set("regressor.coef.vllm", [-1.0] * 2 * K), "coef.vllm[0]"),
    "coef nan": (_set("regressor.coef.vllm", [float("nan")] * 2 * K), "coef.vllm[0]"),
    "coef short": (_set("regressor.coef.vllm", [1.0]), "coef.vllm"),
    "n_features text": (_set("regressor.n_features", "22"), "n_features"),
    "params junk": (_set("regressor.params.max_depth", "x"), "params.max_depth"),
    "params unknown": (_set("regressor.params.colour", "red"), "params"),
    "params base": (_set("regressor.params.base", "cubic"), "params.base"),
    "name list": (_set("name", [1]), "name"),
    "name empty": (_set("name", ""), "name"),
    "provenance cv text": (_set("provenance.cv", "x"), "provenance.cv"),
    "provenance cv nan": (_set("provenance.cv.decode.log_abs_p90", float("nan")), "provenance.cv.decode"),
    "provenance rows text": (_set("provenance.training_summary.rows", "x"), "training_summary.rows"),
    "provenance unknown": (_set("provenance.colour", "red"), "provenance"),
    "provenance list": (_set("provenance", [1]), "provenance"),
    "hardware negative": (_set("hardware.h100_sxm.mem_bw", -1.0), "hardware.h100_sxm.mem_bw"),
    "hardware extra key": (_set("hardware.h100_sxm.colour", 1), "hardware.h100_sxm"),
    "top-level unknown": (_set("colour", 1), "unknown key"),
    "format version true": (_set("format_version", True), "format version"),
    "tables list": (_set("tables", [1]), "tables"),
    "node table kv negative": (_table, "kv_capacity_tokens"),
}


def _corrupt(tmp: Path, text: str, mutate) -> str:
    doc = json.loads(text)
    mutate(doc)
    path = tmp / "edited.json"
    path.write_text(json.dumps(doc))
    return str(path)


def test_edited_base_file_is_valid(base_text, tmp_path, capsys):
    path = _corrupt(tmp_path, base_text, lambda d: None)
    assert main(["models", "show", path]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_models_show_refuses_corrupt_file(case, base_text, tmp_path, capsys):
    mutate, field = CORRUPT[case]
    path = _corrupt(tmp_path, base_text, mutate)
    err = one_line_error(["models", "show", path], capsys)
    assert path in err and field in err, err


@pytest.mark.parametrize("case", ["left out of range", "feature out of range", "kv nan", "kv short",
                                  "provenance cv text", "threshold nan", "coef negative"])  # fmt: skip
def test_source_refuses_corrupt_file(case, base_text, tmp_path, capsys):
    mutate, field = CORRUPT[case]
    path = _corrupt(tmp_path, base_text, mutate)
    err = one_line_error([*PROFILE, "--source", f"regression:{path}"], capsys)
    assert path in err and field in err, err


def test_huge_depth_is_refused_at_load_not_walked(base_text, tmp_path):
    path = _corrupt(tmp_path, base_text, _set("regressor.trees.prefill.depth", 10**9))
    with pytest.raises(SourceError, match="depth"):
        load_model_file(path)


def test_duplicate_keys_are_refused(base_text, tmp_path, capsys):
    path = tmp_path / "dup.json"
    path.write_text(base_text.replace('"name":', '"name": "x", "name":', 1))
    err = one_line_error(["models", "show", str(path)], capsys)
    assert "duplicate key 'name'" in err


def test_saved_file_is_checked_like_a_loaded_one(tmp_path):
    mf = load_model_file("measured")
    mf.regressor.kv_["gpu-runner"] = (-1.0, 0.0, 1.0)
    with pytest.raises(SourceError, match="kv.gpu-runner"):
        mf.save(tmp_path / "m.json")
    assert not list(tmp_path.iterdir())


# ---- 27: the "no regression model" error lists the bundled ones ---------------------------------
def test_unknown_model_lists_bundled_names(capsys):
    assert {"aic-distilled", "measured"} <= set(bundled_names())
    err = one_line_error(["models", "show", "no-such-model"], capsys)
    assert "nor one of aic-distilled, measured" in err


# ---- 28: a local config.json with a key given twice ----------------------------------------------
def test_config_json_with_duplicate_key(tmp_path, capsys):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, '
                                   '"num_attention_heads": 32, "num_hidden_layers": 32, "hidden_size": 8192}')
    err = one_line_error(["--model", str(d), "--system", "h100_sxm", "--no-plots", "--no-cache"], capsys)
    assert "hidden_size" in err and "twice" in err


def test_a_config_aic_ships_but_does_not_read_offline_is_refused_with_its_path(capsys, tmp_path):
    # AIC 0.12.0 ships Mixtral-8x7B's config file but reads only its DefaultHFModels offline: it would try
    # to download the config once per candidate engine
    err = one_line_error(["profile", "--model", "mistralai/Mixtral-8x7B-v0.1", "--system", "h200_sxm",
                          "--no-plots", "--no-cache", "-o", str(tmp_path / "out")], capsys)  # fmt: skip
    assert "does not read it offline" in err
    assert "mistralai--Mixtral-8x7B-v0.1_config.json" in err
    assert not (tmp_path / "out").exists()


def test_a_config_aic_does_not_read_offline_still_serves_the_other_sources(capsys, tmp_path):
    """Only the aic source needs AIC to read the config itself: roofline reads the shipped file."""
    from estimator.model import bundled_models
    from estimator.sources.aic import offline_model_ids

    assert "mistralai/Mixtral-8x7B-v0.1" in bundled_models()
    assert "mistralai/Mixtral-8x7B-v0.1" not in offline_model_ids()
    rc = main(["profile", "--model", "mistralai/Mixtral-8x7B-v0.1", "--system", "h200_sxm",
               "--source", "roofline", "--gpus", "2", "--no-plots", "--no-cache"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert "Prefill engine: TEP2" in capsys.readouterr().out
