"""DynamoGraphDeploymentRequest in: fields mapped into a Spec, flags on top, bad input one line + exit 2."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from estimator.cli import main
from estimator.errors import SpecError
from estimator.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "dgdr_qwen3_32b.yaml"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLA_ESTIMATE_CACHE_DIR", str(tmp_path / "cache"))


def _dgdr(tmp_path: Path, spec: dict, **top) -> Path:
    doc = {
        "apiVersion": "nvidia.com/v1beta1",
        "kind": "DynamoGraphDeploymentRequest",
        "metadata": {"name": "x"},
    }
    doc |= top
    doc["spec"] = spec
    path = tmp_path / "dgdr.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


BASE = {
    "model": "meta-llama/Llama-3.1-8B",
    "backend": "sglang",
    "hardware": {"gpuSku": "h100_sxm", "totalGpus": 4, "numGpusPerNode": 8},
    "workload": {"isl": 2000, "osl": 200, "requestRate": 12.5},
    "sla": {"ttft": 300, "itl": 25},
    "features": {"planner": {"min_endpoint": 2, "enable_load_scaling": False}, "kvRouter": {"enabled": True}},
}


def test_example_maps_every_field():
    spec = load_spec(EXAMPLE)  # detected by its kind
    assert (spec.model, spec.system, spec.backend.value) == ("Qwen/Qwen3-32B", "h200_sxm", "vllm")
    assert (spec.isl, spec.osl, spec.ttft_ms, spec.itl_ms) == (3000, 150, 200.0, 20.0)
    assert spec.gpu_counts == (1, 2, 4, 8) and spec.gpus_per_node == 8 and spec.total_gpus == 8
    assert spec.request_rate == 5.0
    planner = {k: json.loads(v) for k, v in spec.planner_args}
    assert planner["optimization_target"] == "sla" and planner["mode"] == "disagg"
    assert load_spec(None, dgdr=str(EXAMPLE)) == spec


def test_fields_bounds_and_flags_on_top(tmp_path):
    path = _dgdr(tmp_path, BASE)
    spec = load_spec(None, dgdr=str(path), isl=2500)
    assert spec.isl == 2500 and spec.osl == 200  # flags win
    assert spec.gpu_counts == (1, 2, 4)  # min(totalGpus, numGpusPerNode)
    assert spec.kv_router and spec.request_rate == 12.5 and spec.backend.value == "sglang"
    assert dict(spec.planner_args) == {"min_endpoint": "2", "enable_load_scaling": "false"}


def test_bare_spec_and_dynamo_defaults(tmp_path):
    path = tmp_path / "bare.yaml"
    path.write_text(yaml.safe_dump({"model": "Qwen/Qwen3-32B", "hardware": {"gpuSku": "h200_sxm"}}))
    spec = load_spec(None, dgdr=str(path))
    assert (spec.isl, spec.osl, spec.ttft_ms, spec.itl_ms) == (4000, 1000, 2000.0, 30.0)  # Dynamo's defaults
    assert spec.backend.value == "vllm"  # backend auto -> vllm, with a warning


def test_concurrency_becomes_a_rate_with_a_warning(tmp_path, caplog):
    spec = {**BASE, "workload": {"isl": 2000, "osl": 201, "concurrency": 60}}
    with caplog.at_level(logging.WARNING):
        s = load_spec(None, dgdr=str(_dgdr(tmp_path, spec)))
    assert s.request_rate == pytest.approx(60 / ((300 + 200 * 25) / 1000))
    assert "workload.concurrency" in caplog.text


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.update(kind="DynamoGraphDeployment"), "kind"),
        (lambda d: d.update(apiVersion="nvidia.com/v1alpha1"), "apiVersion"),
        (lambda d: d["spec"].pop("model"), "spec.model"),
        (lambda d: d["spec"]["hardware"].update(gpuSku="mi300"), "hardware.gpuSku"),
        (lambda d: d["spec"]["hardware"].pop("gpuSku"), "hardware.gpuSku"),
        (lambda d: d["spec"]["sla"].update(ttft=0), "sla.ttft"),
        (lambda d: d["spec"]["sla"].update(ttft=-5), "sla.ttft"),
        (lambda d: d["spec"]["sla"].update(itl="fast"), "sla.itl"),
        (lambda d: d["spec"]["workload"].update(isl=0), "workload.isl"),
        (lambda d: d["spec"]["workload"].update(concurrency=8), "workload"),
        (lambda d: d["spec"]["sla"].update(e2eLatency=9000), "sla.e2eLatency"),
        (lambda d: d["spec"].update(modelCache={"pvcName": "m"}), "modelCache"),
        (lambda d: d["spec"]["features"].update(mocker={"enabled": True}), "features.mocker"),
        (lambda d: d["spec"].update(colour="red"), "spec.colour"),
        (lambda d: d["spec"]["features"]["planner"].update(aic_perf_model={}), "planner_args.aic_perf_model"),
        (
            lambda d: d["spec"]["features"]["planner"].update(prefill_engine_num_gpu=2),
            "prefill_engine_num_gpu",
        ),
        (lambda d: d["spec"]["features"]["planner"].update(no_such_field=1), "planner_args.no_such_field"),
        # session 9: each was a traceback or accepted silently
        (lambda d: d["spec"]["features"]["planner"].update(kalman_r=float("nan")), "planner.kalman_r"),
        (lambda d: d["spec"]["features"]["planner"].update(log_dir=b"x"), "features.planner.log_dir"),
        (lambda d: d["spec"]["hardware"].update(totalGpus="1"), "hardware.totalGpus"),
        (lambda d: d["spec"].update(overrides={"bogus": 1}), "overrides.bogus"),
        (lambda d: d["spec"]["features"]["kvRouter"].update(bogus=1), "features.kvRouter.bogus"),
        (lambda d: d["spec"]["features"]["kvRouter"].update(enabled="maybe"), "features.kvRouter.enabled"),
        (lambda d: d["spec"]["features"].update(mocker={"enabled": False, "x": 1}), "features.mocker.x"),
        (lambda d: d["spec"]["workload"].update(requestRate=None, concurrency=True), "workload.concurrency"),
        (lambda d: d["spec"].update(runtimeVersionOverride=[1]), "runtimeVersionOverride"),
        (lambda d: d.update(metadata=5), "metadata"),
    ],
)
def test_bad_dgdr_is_one_line_naming_the_field_exit_2(tmp_path, capsys, mutate, field):
    doc = {
        "apiVersion": "nvidia.com/v1beta1",
        "kind": "DynamoGraphDeploymentRequest",
        "spec": json.loads(json.dumps(BASE)),
    }
    mutate(doc)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    rc = main(["--config", str(path), "--no-plots", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and field in err and "Traceback" not in err, err


def test_config_and_dgdr_together_is_an_error():
    with pytest.raises(SpecError, match="dgdr"):
        load_spec(EXAMPLE, dgdr=str(EXAMPLE))


def test_example_runs_from_the_readme_and_writes_final_config(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--dgdr", str(EXAMPLE), "--no-plots", "-o", str(out)]) == 0
    docs = list(yaml.safe_load_all((out / "final_config.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["ConfigMap", "ConfigMap", "DynamoGraphDeployment"]
    cfg = json.loads(docs[0]["data"]["planner_config.json"])
    assert cfg["ttft_ms"] == 200.0 and cfg["itl_ms"] == 20.0 and cfg["max_gpu_budget"] == 8
    assert cfg["enable_load_scaling"] is False and cfg["optimization_target"] == "sla"
    assert docs[2]["apiVersion"] == "nvidia.com/v1beta1"


def _deployed(out: Path) -> tuple[int, dict]:
    docs = list(yaml.safe_load_all((out / "final_config.yaml").read_text()))
    cfg = json.loads(docs[0]["data"]["planner_config.json"])
    workers = [c for c in docs[-1]["spec"]["components"] if c["type"] in ("prefill", "decode")]
    limits = [int(c["podTemplate"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) for c in workers]
    return sum(c["replicas"] * g for c, g in zip(workers, limits)), cfg


@pytest.mark.parametrize(("total", "rate"), [(3, 5), (8, 40)])
def test_total_gpus_caps_the_deployed_fleet_and_says_what_it_carries(tmp_path, capsys, total, rate):
    """hardware.totalGpus is the fleet's budget, not only the largest engine: the example sized 6 GPUs at
    5 requests/s in a budget of 3, and 20 GPUs at 40 in a budget of 8, and exited 0 without a word (Dynamo's
    Planner then refused to start, or cut the fleet). Now the fleet fits, the summary says the rate asked is
    out of reach and what the fleet carries, and --strict exits 1."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["hardware"]["totalGpus"] = total
    doc["spec"]["workload"]["requestRate"] = rate
    path = tmp_path / "dgdr.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    assert main(["--dgdr", str(path), "--no-plots", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    gpus, cfg = _deployed(out)
    assert gpus <= total and cfg["max_gpu_budget"] == total
    assert f"no fleet within the budget of {total} GPUs meets the SLA at {rate:g} requests/s" in text
    assert main(["--dgdr", str(path), "--no-plots", "--strict"]) == 1


def test_a_budget_too_small_for_any_fleet_is_an_error(tmp_path, capsys):
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["hardware"]["totalGpus"] = 1  # Qwen3-32B's one-GPU engines miss TTFT 200 ms
    path = tmp_path / "dgdr.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["--dgdr", str(path), "--no-plots"]) == 2
    assert "fits in 1 GPUs" in capsys.readouterr().err


def test_no_features_planner_means_no_planner_as_in_dynamo(tmp_path):
    """Dynamo's profiler adds the Planner, its ConfigMaps and the workers' scaling adapters only for a DGDR
    with features.planner (``is_planner_enabled``); we added them always, an autoscaler nobody asked for."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    del doc["spec"]["features"]
    path = tmp_path / "dgdr.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    assert main(["--dgdr", str(path), "--no-plots", "-o", str(out)]) == 0
    docs = list(yaml.safe_load_all((out / "final_config.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["DynamoGraphDeployment"]
    comps = docs[0]["spec"]["components"]
    assert "planner" not in {c["type"] for c in comps}
    assert not any("scalingAdapter" in c for c in comps)
    env = [e["name"] for c in comps for e in c["podTemplate"]["spec"]["containers"][0].get("env", [])]
    assert "DYN_BENCHMARK_MODE" not in env
    doc["spec"]["features"] = {"planner": {}}  # an empty planner section is Dynamo's defaults: a Planner
    path.write_text(yaml.safe_dump(doc))
    assert main(["--dgdr", str(path), "--no-plots", "-o", str(out)]) == 0
    docs = list(yaml.safe_load_all((out / "final_config.yaml").read_text()))
    assert "planner" in {c["type"] for c in docs[-1]["spec"]["components"]}


def test_a_yaml_date_in_features_planner_stays_its_text(tmp_path):
    """YAML reads log_dir: 2001-12-14 as a date, which json.dumps could not write (a traceback)."""
    doc = json.loads(json.dumps(BASE))
    doc["features"]["planner"]["log_dir"] = "DATE"
    path = tmp_path / "d.yaml"
    head = {"apiVersion": "nvidia.com/v1beta1", "kind": "DynamoGraphDeploymentRequest"}
    path.write_text(yaml.safe_dump({**head, "spec": doc}).replace("DATE", "2001-12-14"))
    out = tmp_path / "out"
    assert main(["--config", str(path), "--no-plots", "-o", str(out)]) == 0
    first = next(yaml.safe_load_all((out / "final_config.yaml").read_text()))
    cfg = json.loads(first["data"]["planner_config.json"])
    assert cfg["log_dir"] == "2001-12-14"
