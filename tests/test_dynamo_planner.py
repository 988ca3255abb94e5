"""Dynamo 1.6.1's own code on our output (the `dynamo` venv: scripts/setup_dynamo_venv.sh).

For a dense 8B (Llama-3.1-8B / h100_sxm / vLLM), a 32B (Qwen3-32B / h200_sxm, from the committed DGDR
example) and an MoE (Qwen3-30B-A3B / SGLang) study: Dynamo's ``PlannerConfig`` accepts our
``planner_config.json`` with our SLA; its prefill regression fitted on our profile data predicts TTFT
at the workload ISL within 5 % of our surface, and its decode regression the decode engine's best
request rate within 10 % of ours; our DGD passes Dynamo's typed DGD model and has the structure of the
packaged v1beta1 template for that backend and mode. Also agg and TRT-LLM deployments (hand-made).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from estimator.artifacts import deployment_of, write_artifacts
from estimator.artifacts.planner_config import DYNAMO_DEFAULT_GPU_BUDGET, PLANNER_FIELDS
from estimator.deployment import Deployment
from estimator.errors import SpecError
from estimator.pipeline import estimate, surface_engines
from estimator.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
DYNAMO_PYTHON = Path(os.environ.get("SLA_ESTIMATE_DYNAMO_PYTHON", ROOT / ".venv-dynamo" / "bin" / "python"))
pytestmark = [
    pytest.mark.dynamo,
    pytest.mark.skipif(not DYNAMO_PYTHON.exists(), reason=f"no Dynamo venv at {DYNAMO_PYTHON}"),
]

STUDIES = {
    "dense-8b": {
        "model": "meta-llama/Llama-3.1-8B",
        "system": "h100_sxm",
        "backend": "vllm",
        "isl": 3000,
        "osl": 150,
    },
    "qwen3-32b-dgdr": {"dgdr": str(ROOT / "examples" / "dgdr_qwen3_32b.yaml")},
    # 40 requests/s: a fleet of 20 GPUs, more than the Planner's default budget of 8
    "qwen3-32b-40rps": {"model": "Qwen/Qwen3-32B", "system": "h200_sxm", "backend": "vllm", "isl": 3000,
                        "osl": 150, "request_rate": 40},  # fmt: skip
    "moe-30b-a3b": {
        "model": "Qwen/Qwen3-30B-A3B",
        "system": "h200_sxm",
        "backend": "sglang",
        "isl": 4000,
        "osl": 150,
    },
}


def run_dynamo(out: Path, spec) -> dict:
    cmd = [str(DYNAMO_PYTHON), str(ROOT / "tests" / "dynamo_check.py"), str(out)]
    cmd += [
        "--isl",
        str(spec.isl),
        "--osl",
        str(spec.osl),
        "--ttft",
        str(spec.ttft_ms),
        "--itl",
        str(spec.itl_ms),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=out, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module", params=sorted(STUDIES))
def study(request, tmp_path_factory):
    kw = dict(STUDIES[request.param])
    if "dgdr" not in kw:
        kw |= {"ttft": 200, "itl": 20}
    spec = load_spec(None, **kw)
    profile = estimate(spec)
    out = tmp_path_factory.mktemp(request.param)
    write_artifacts(profile, out, plots=False)
    return profile, out, run_dynamo(out, spec)


def test_planner_config_is_accepted_with_our_sla_and_engines(study):
    profile, _, res = study
    cfg, sel = res["planner_config"], profile.selection
    assert cfg["ttft_ms"] == profile.spec.ttft_ms and cfg["itl_ms"] == profile.spec.itl_ms
    assert cfg["optimization_target"] == "sla" and cfg["enable_throughput_scaling"] is True
    assert cfg["mode"] == "disagg" and cfg["pre_deployment_sweeping_mode"] == "thorough"
    prefill, decode = surface_engines(sel, profile.deployment)  # the deployed fleet's engines
    assert cfg["prefill_engine_num_gpu"] == prefill.num_gpus
    assert cfg["decode_engine_num_gpu"] == decode.candidate.num_gpus
    assert cfg["profile_results_dir"] == "/workspace/profiling_results"
    assert cfg["backend"] == profile.spec.backend.value
    if profile.spec.total_gpus:
        assert cfg["max_gpu_budget"] == profile.spec.total_gpus


def test_the_planner_keeps_the_deployed_fleet_within_its_gpu_budget(study):
    """Dynamo's budget clamp leaves the deployed replicas as they are: without a budget of the user's,
    max_gpu_budget is the Planner's default (8) or the fleet's GPUs where it is larger (before: 8 always,
    and a 20-GPU fleet was cut to 8 GPUs at the Planner's first adjustment)."""
    profile, _, res = study
    assert res["budget_clamp"] == res["deployed_replicas"]
    gpus = deployment_of(profile).total_gpus
    assert res["planner_config"]["max_gpu_budget"] == (profile.spec.total_gpus or max(8, gpus))


def test_our_default_gpu_budget_is_dynamos(study):
    assert study[2]["default_max_gpu_budget"] == DYNAMO_DEFAULT_GPU_BUDGET


def test_dynamos_prefill_regression_reproduces_our_ttft(study):
    profile, _, res = study
    prefill, _ = surface_engines(profile.selection, profile.deployment)
    ours = next(p for p in profile.prefill_points if p.candidate == prefill).ttft_ms
    assert res["configmap_matches_npz"]
    assert res["prefill_kept"] == res["prefill_points"]  # nothing retired by the sample limit
    assert res["prefill_ttft_ms"] == pytest.approx(ours, rel=0.05)


def test_dynamos_decode_regression_reproduces_our_best_rate(study):
    profile, _, res = study
    _, best = surface_engines(profile.selection, profile.deployment)
    ours_rps = best.concurrency / (best.itl_ms / 1000.0) / profile.spec.osl
    assert res["decode_kept"] == res["decode_points"]
    assert res["decode_rps"] == pytest.approx(ours_rps, rel=0.10)
    assert res["decode_itl_ms"] <= profile.spec.itl_ms


def test_dgd_has_the_packaged_template_structure(study):
    _, out, res = study
    dgd = next(
        d for d in yaml.safe_load_all((out / "final_config.yaml").read_text()) if d["kind"] != "ConfigMap"
    )
    assert res["dgd_validates"] == "nvidia.com/v1beta1"
    assert_template_structure(dgd, res["template"])


def test_our_planner_field_list_is_dynamos(study):
    _, _, res = study
    assert set(res["planner_fields"]) == PLANNER_FIELDS


# Template flags whose values name the template's example model or engine-config file.
_MODEL_FLAGS = {"--model", "--model-path", "--served-model-name", "--extra-engine-args", "--tp"}


def _flags(args: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for i, a in enumerate(args):
        if a.startswith("--"):
            nxt = args[i + 1] if i + 1 < len(args) else None
            out[a] = None if nxt is None or nxt.startswith("--") else nxt
    return out


def assert_template_structure(ours: dict, template: dict) -> None:
    assert ours["apiVersion"] == template["apiVersion"] and ours["kind"] == template["kind"]
    comps = {c["name"]: c for c in ours["spec"]["components"]}
    tmpl = {c["name"]: c for c in template["spec"]["components"]}
    assert set(comps) == set(tmpl) | {"Planner"}
    assert comps["Planner"]["type"] == "planner"
    for name, t in tmpl.items():
        c = comps[name]
        # a lone agg worker is retyped "decode" when the Planner scales it (as Dynamo's profiler does)
        assert c["type"] == t["type"] or (t["type"], c["type"]) == ("worker", "decode"), name
        (tc,), (oc,) = t["podTemplate"]["spec"]["containers"], c["podTemplate"]["spec"]["containers"]
        assert oc["name"] == tc["name"] == "main"
        assert oc["command"] == tc["command"], name
        assert oc.get("workingDir") == tc.get("workingDir"), name
        assert oc["envFrom"] == tc["envFrom"], name
        assert oc["image"].rsplit(":", 1)[0] == tc["image"].rsplit(":", 1)[0], name
        assert oc["image"].endswith(":1.6.1")
        assert set(oc.get("resources", {}).get("limits", {})) == set(
            tc.get("resources", {}).get("limits", {})
        )
        ours_flags, t_flags = _flags(oc.get("args", [])), _flags(tc.get("args", []))
        for flag, value in t_flags.items():
            if flag == "--extra-engine-args":  # a model-specific file; we pass --override-engine-args
                assert "--override-engine-args" in ours_flags, name
                continue
            assert flag in ours_flags, (name, flag)
            if flag not in _MODEL_FLAGS:
                assert ours_flags[flag] == value, (name, flag)


class _WithDeployment:
    """A Profile with ``deployment`` set, as the capacity planner will hand it over."""

    def __init__(self, profile, deployment):
        self._p, self.deployment = profile, deployment

    def __getattr__(self, name):
        return getattr(self._p, name)


@pytest.mark.parametrize("backend", ["vllm", "sglang", "trtllm"])
@pytest.mark.parametrize("mode", ["agg", "disagg"])
def test_every_backend_and_mode_matches_its_template(backend, mode, tmp_path):
    spec = load_spec(None, model="meta-llama/Llama-3.1-8B", system="h100_sxm", backend=backend, gpus="1,2")
    profile = estimate(spec)
    sel = profile.selection
    dep = (
        Deployment.agg(sel.best_decode.candidate, replicas=3)
        if mode == "agg"
        else Deployment.disagg(sel.best_prefill.candidate, sel.best_decode.candidate, 2, 1)
    )
    write_artifacts(_WithDeployment(profile, dep), tmp_path, plots=False)
    res = run_dynamo(tmp_path, spec)
    docs = list(yaml.safe_load_all((tmp_path / "final_config.yaml").read_text()))
    dgd = docs[-1]
    assert res["dgd_validates"] == "nvidia.com/v1beta1"
    assert_template_structure(dgd, res["template"])
    assert res["planner_config"]["mode"] == mode
    workers = [c for c in dgd["spec"]["components"] if c["type"] in ("prefill", "decode")]
    assert sorted(c["replicas"] for c in workers) == ([3] if mode == "agg" else [1, 2])
    if mode == "agg":  # Dynamo emits no profile data for agg picks
        assert [d["metadata"]["name"].rsplit("-", 1)[0] for d in docs[:-1]] == ["planner-config"]
        assert res["planner_config"]["pre_deployment_sweeping_mode"] == "none"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_a_load_target_gets_the_deployed_engines_thresholds_and_dynamo_accepts_it(tmp_path):
    """optimization_target load: Dynamo's PlannerConfig requires the prefill queue-token and decode KV-rate
    thresholds; we wrote none (the Planner pod would crash-loop) and printed 0.x-style bounds of the
    selected, not the deployed, engines. Now the deployed engines' thresholds fill the fields the user
    left out, in Dynamo 1.6's units."""
    spec = load_spec(None, model="Qwen/Qwen3-32B", system="h200_sxm", backend="vllm", isl=3000, osl=150,
                     ttft=200, itl=20, request_rate=5,
                     planner_args={"optimization_target": "load", "decode_scale_up_kv_rate": "70",
                                   "mode": "disagg"})  # fmt: skip
    profile = estimate(spec)
    write_artifacts(profile, tmp_path, plots=False)
    cfg = run_dynamo(tmp_path, spec)["planner_config"]
    ours = profile.selection.bounds.load_thresholds(spec.isl)
    assert cfg["optimization_target"] == "load" and cfg["decode_scale_up_kv_rate"] == 70
    assert cfg["decode_scale_down_kv_rate"] == ours["decode_scale_down_kv_rate"]
    assert cfg["prefill_scale_up_queue_tokens"] == ours["prefill_scale_up_queue_tokens"]
    prefill, decode = surface_engines(profile.selection, profile.deployment)
    p_choice = next(c for c in profile.selection.prefill if c.candidate == prefill)
    queue = (1.2 * 200 / p_choice.point.ttft_ms - 1) * 3000  # requests of ISL tokens that fit in 1.2 x TTFT
    assert ours["prefill_scale_up_queue_tokens"] == max(2, round(queue))


_VALIDATE = """
import json, sys
from dynamo.planner.config.planner_config import PlannerConfig
from pydantic import ValidationError
out = []
for cfg in json.load(open(sys.argv[1])):
    try:
        PlannerConfig.model_validate(cfg)
        out.append(None)
    except ValidationError as exc:
        out.append(str(exc).splitlines()[-2][:300])
print(json.dumps(out))
"""
# planner args that Dynamo's PlannerConfig refuses together, and the phrase of our one-line refusal
_CROSS_FIELD = [
    ("disagg", {"mode": "prefill", "decode_min_endpoint": "1"}, "decode_min_endpoint: is not supported"),
    ("disagg", {"mode": "decode", "prefill_min_endpoint": "1"}, "prefill_min_endpoint: is not supported"),
    ("agg", {"prefill_min_endpoint": "1"}, "use min_endpoint"),
    ("disagg", {"report_interval_hours": "0"}, "report_interval_hours: must be a positive number"),
    ("disagg", {"fpm_sample_bucket_size": "15"}, "fpm_sample_bucket_size: must be a perfect square"),
    ("disagg", {"enable_power_awareness": "true"}, "total_gpu_power_limit: is required"),
    ("disagg", {"enable_power_awareness": "true", "total_gpu_power_limit": "9000", "environment": "virtual"},
     "needs environment kubernetes"),
    ("agg", {"enable_power_awareness": "true", "total_gpu_power_limit": "9000"},
     "not supported with mode 'agg'"),
    ("disagg", {"environment": "global-planner"}, "global_planner_namespace: is required"),
    ("disagg", {"enable_throughput_scaling": "false"}, "both off: no scaling at all"),
    ("disagg", {"enable_load_scaling": "true", "load_adjustment_interval_seconds": "180"}, "must be shorter"),
    ("disagg", {"throughput_adjustment_interval_seconds": "0"}, "must be > 0"),
]  # fmt: skip
# combinations Dynamo accepts and we must not refuse
_ACCEPTED = [
    ("disagg", {"prefill_min_endpoint": "1", "decode_min_endpoint": "2"}),
    ("agg", {"min_endpoint": "1"}),
    ("disagg", {"fpm_sample_bucket_size": "25", "report_interval_hours": "0.5"}),
    ("disagg", {"enable_load_scaling": "true", "load_adjustment_interval_seconds": "10"}),
    ("disagg", {"enable_throughput_scaling": "false", "enable_load_scaling": "true",
                "load_adjustment_interval_seconds": "600"}),
    ("disagg", {"environment": "global-planner", "global_planner_namespace": "gp"}),
    ("disagg", {"optimization_target": "latency", "enable_throughput_scaling": "false"}),
]  # fmt: skip


def _planner(mode, args=()):
    from estimator.artifacts.planner_config import planner_config

    return planner_config(mode=mode, backend="vllm", model="Qwen/Qwen3-32B", ttft_ms=200.0, itl_ms=20.0,
                          prefill_num_gpus=None if mode == "agg" else 1, decode_num_gpus=2, profile_data=True,
                          planner_args=tuple(args))  # fmt: skip


def _dynamo_verdicts(configs, tmp_path):
    path = tmp_path / "configs.json"
    path.write_text(json.dumps(configs))
    proc = subprocess.run([str(DYNAMO_PYTHON), "-c", _VALIDATE, str(path)], capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_cross_field_rules_are_dynamos_refused_in_one_line(tmp_path):
    """Each combination Dynamo 1.6.1's PlannerConfig refuses (its Planner pod would crash-loop) is a
    SpecError naming the field here, and Dynamo itself refuses the config we would otherwise write; the
    combinations it accepts pass both."""
    from estimator.artifacts.planner_config import user_settings

    bad, fields = [], []
    for mode, args, phrase in _CROSS_FIELD:
        with pytest.raises(SpecError, match=re.escape(phrase)) as err:
            _planner(mode, args.items())
        fields.append(err.value.field.removeprefix("planner_args."))
        bad.append({**_planner(mode), **user_settings(tuple(args.items()))})
    good = [_planner(mode, args.items()) for mode, args in _ACCEPTED]
    verdicts = _dynamo_verdicts(bad + good + [_planner("disagg"), _planner("agg")], tmp_path)
    refused, accepted = verdicts[: len(bad)], verdicts[len(bad) :]
    for field, why in zip(fields, refused, strict=True):
        assert why is not None and field in why, (field, why)  # Dynamo refuses it, for the same field
    assert all(v is None for v in accepted), accepted


def test_the_rules_defaults_are_dynamos():
    from estimator.artifacts.planner_config import DYNAMO_RULE_DEFAULTS

    code = ("import json; from dynamo.planner.config.defaults import SLAPlannerDefaults as d; "
            f"print(json.dumps({{k: getattr(d, k) for k in {sorted(DYNAMO_RULE_DEFAULTS)!r}}}))")  # fmt: skip
    proc = subprocess.run([str(DYNAMO_PYTHON), "-c", code], capture_output=True, text=True, timeout=300,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == DYNAMO_RULE_DEFAULTS
