"""Run NVIDIA Dynamo 1.6.1's own code on one output directory of ours; print the results as JSON.

Runs in the Dynamo venv (scripts/setup_dynamo_venv.sh), driven by tests/test_dynamo_*.py through a
subprocess, like the engine tests drive the vLLM server:

    .venv-dynamo/bin/python tests/dynamo_check.py OUT_DIR --isl 3000 --osl 150 --ttft 200 --itl 20

- ``PlannerConfig.model_validate`` on ``planner_config.json`` from the planner-config ConfigMap;
- the profile-data ConfigMap's JSON files laid out as the Planner pod mounts them, turned into forward-pass
  metrics by ``perf_metrics._convert_profiling_data_to_fpms`` (also on the npz files, which must agree);
- ``PrefillRegressionModel`` / ``DecodeRegressionModel`` fitted on them with the config's sample limits:
  predicted TTFT at the workload ISL and the best decode request rate under the ITL target;
- the DGD through Dynamo's typed ``profiler.utils.config.Config`` and the packaged template it should match;
- the Planner's GPU-budget clamp (``core.budget.proportional_clamp_pair``) on the deployed replicas.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--isl", type=float, required=True)
    ap.add_argument("--osl", type=float, required=True)
    ap.add_argument("--ttft", type=float, required=True)
    ap.add_argument("--itl", type=float, required=True)
    args = ap.parse_args()

    from dynamo.planner.config.defaults import SLAPlannerDefaults, SubComponentType
    from dynamo.planner.config.planner_config import PlannerConfig
    from dynamo.planner.core.perf_model import DecodeRegressionModel, PrefillRegressionModel
    from dynamo.planner.monitoring.perf_metrics import _convert_profiling_data_to_fpms
    from dynamo.profiler.utils.config import Config
    from dynamo.profiler.utils.dgd_template import load_dgd_template

    out = Path(args.out_dir)
    docs = list(yaml.safe_load_all((out / "final_config.yaml").read_text()))
    maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    dgd = next(d for d in docs if d["kind"] == "DynamoGraphDeployment")
    planner_cm = next(d for n, d in maps.items() if n.startswith("planner-config-"))
    cfg = PlannerConfig.model_validate(json.loads(planner_cm["data"]["planner_config.json"]))
    result: dict = {
        "planner_config": cfg.model_dump(mode="json", exclude={"scheduling", "plugin_registration"}),
        "dgd_validates": Config.model_validate(dgd).apiVersion,
        "planner_fields": sorted(PlannerConfig.model_fields),
        "default_max_gpu_budget": SLAPlannerDefaults.max_gpu_budget,
    }
    mode = "agg" if cfg.mode == "agg" else "disagg"
    result["template"] = load_dgd_template(dgd_backend(dgd), mode)
    workers = {c["type"]: c for c in dgd["spec"]["components"] if c["type"] in ("prefill", "decode")}
    if mode == "disagg" and set(workers) == {"prefill", "decode"}:
        # the replicas the Planner keeps of the deployed fleet at its first adjustment (its GPU budget)
        from dynamo.planner.core.budget import proportional_clamp_pair

        deployed = [workers["prefill"]["replicas"], workers["decode"]["replicas"]]
        result["deployed_replicas"] = deployed
        result["budget_clamp"] = list(proportional_clamp_pair(
            *deployed, cfg.prefill_engine_num_gpu, cfg.decode_engine_num_gpu, cfg.min_gpu_budget,
            cfg.max_gpu_budget, cfg.min_endpoint))  # fmt: skip

    profile_cm = next((d for n, d in maps.items() if n.startswith("planner-profile-data-")), None)
    if profile_cm is not None:
        with tempfile.TemporaryDirectory() as mount:  # the ConfigMap as the Planner pod sees it
            for key, text in profile_cm["data"].items():
                Path(mount, key).write_text(text)
            fpms = {t: _convert_profiling_data_to_fpms(mount, t) for t in SubComponentType}
        npz_fpms = {t: _convert_profiling_data_to_fpms(str(out), t) for t in SubComponentType}
        result["configmap_matches_npz"] = all(
            [f.wall_time for f in fpms[t]] == [f.wall_time for f in npz_fpms[t]] for t in SubComponentType
        )
        kw = {
            "max_num_fpm_samples": cfg.max_num_fpm_samples,
            "min_observations": cfg.load_min_observations,
            "bucket_count": cfg.fpm_sample_bucket_size,
        }
        prefill = PrefillRegressionModel(**kw)
        prefill.load_benchmark_fpms(fpms[SubComponentType.PREFILL])
        p_rps, p_ttft = prefill.find_best_engine_prefill_rps(args.ttft, args.isl)
        decode = DecodeRegressionModel(**kw)
        decode.load_benchmark_fpms(fpms[SubComponentType.DECODE])
        max_kv = json.loads(profile_cm["data"]["decode_raw_data.json"])["max_kv_tokens"]
        d_rps, d_itl = decode.find_best_engine_decode_rps(
            args.itl, args.isl + args.osl / 2, args.osl, max_kv_tokens=max_kv
        )
        result |= {
            "prefill_points": len(fpms[SubComponentType.PREFILL]),
            "decode_points": len(fpms[SubComponentType.DECODE]),
            "prefill_kept": prefill.num_observations,
            "decode_kept": decode.num_observations,
            "prefill_ttft_ms": p_ttft,
            "prefill_rps": p_rps,
            "decode_rps": d_rps,
            "decode_itl_ms": d_itl,
        }
    json.dump(result, sys.stdout)
    return 0


def dgd_backend(dgd: dict) -> str:
    for c in dgd["spec"]["components"]:
        cmd = c["podTemplate"]["spec"]["containers"][0].get("command", [])
        for mod in ("vllm", "sglang", "trtllm"):
            if f"dynamo.{mod}" in cmd:
                return mod
    raise SystemExit("no worker component")


if __name__ == "__main__":
    sys.exit(main())
