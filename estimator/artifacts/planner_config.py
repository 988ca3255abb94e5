"""``planner_config.json``: the serialised ``PlannerConfig`` Dynamo 1.6's Planner starts from.

Dynamo 1.6 runs ``python3 -m dynamo.planner --config .../planner_config.json`` (a pydantic
``PlannerConfig``, ``dynamo/planner/config/planner_config.py``). We write the fields the profile
decides (mode, SLA, engine GPU counts, the thorough profile data) and the user's ``--planner-<field>``
or DGDR ``features.planner`` settings on top; ``optimization_target`` defaults to ``sla`` because
throughput-based scaling is silently off otherwise. Field names are checked here against the
wheel's (``PLANNER_FIELDS``; tests/test_dynamo_planner.py compares them with the real class).
"""

from __future__ import annotations

import datetime
import math
from typing import Any

import yaml

from ..errors import SpecError

# PlannerConfig's fields in ai-dynamo 1.6.1 (``namespace`` and the Prometheus connection settings are
# excluded from its dump and come from the pod's environment).
PLANNER_FIELDS = frozenset(
    [
        "advisory",
        "aic_interpolation",
        "ais_perf_model",
        "backend",
        "control_api_port",
        "decode_engine_num_gpu",
        "decode_min_endpoint",
        "decode_scale_down_kv_rate",
        "decode_scale_up_kv_rate",
        "enable_load_scaling",
        "enable_power_awareness",
        "enable_throughput_scaling",
        "environment",
        "fpm_sample_bucket_size",
        "global_planner_namespace",
        "itl_ms",
        "kalman_min_points",
        "kalman_q_level",
        "kalman_q_trend",
        "kalman_r",
        "live_dashboard_port",
        "load_adjustment_interval_seconds",
        "load_min_observations",
        "load_predictor",
        "load_predictor_log1p",
        "load_predictor_warmup_trace",
        "load_scaling_down_sensitivity",
        "log_dir",
        "max_gpu_budget",
        "max_num_fpm_samples",
        "max_throughput_scaling_replicas",
        "metric_pulling_prometheus_ca_bundle",
        "metric_pulling_prometheus_endpoint",
        "metric_pulling_prometheus_extra_query_params",
        "metric_pulling_prometheus_request_timeout_seconds",
        "metric_pulling_prometheus_ssl_verify",
        "metric_pulling_prometheus_token",
        "metric_pulling_prometheus_token_file",
        "metric_reporting_prometheus_port",
        "min_endpoint",
        "min_gpu_budget",
        "mode",
        "model_name",
        "namespace",
        "optimization_target",
        "plugin_registration",
        "pre_deployment_sweeping_mode",
        "prefill_engine_num_gpu",
        "prefill_min_endpoint",
        "prefill_scale_down_queue_tokens",
        "prefill_scale_up_queue_tokens",
        "profile_results_dir",
        "prophet_window_size",
        "report_filename",
        "report_interval_hours",
        "report_output_dir",
        "report_write_gzip_log",
        "scheduling",
        "speculative_nextn",
        "throughput_adjustment_interval_seconds",
        "throughput_metrics_source",
        "total_gpu_power_limit",
        "ttft_ms",
    ]
)
_ALIASES = {
    "ttft": "ttft_ms",
    "itl": "itl_ms",
    "throughput_adjustment_interval": "throughput_adjustment_interval_seconds",
    "load_adjustment_interval": "load_adjustment_interval_seconds",
}
_RETIRED = {"aic_perf_model": "retired in Dynamo 1.6 (use pre_deployment_sweeping_mode)"}
# Set from the profile; a user value would contradict the deployment it is written for.
# SLAPlannerDefaults.max_gpu_budget in ai-dynamo 1.6.1: the Planner refuses to start on a DGD whose
# workers take more GPUs than its budget (tests/test_dynamo_planner.py checks the value against the wheel)
DYNAMO_DEFAULT_GPU_BUDGET = 8
_OWNED = frozenset({"prefill_engine_num_gpu", "decode_engine_num_gpu", "profile_results_dir", "backend"})
# SLAPlannerDefaults of ai-dynamo 1.6.1 that PlannerConfig's cross-field rules read when a field is left
# out (tests/test_dynamo_planner.py compares them with the wheel's)
DYNAMO_RULE_DEFAULTS: dict[str, Any] = {
    "enable_throughput_scaling": True,
    "enable_load_scaling": False,
    "load_adjustment_interval_seconds": 5,
    "throughput_adjustment_interval_seconds": 180,
    "fpm_sample_bucket_size": 16,
}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
PROFILE_DATA_MOUNT = "/workspace/profiling_results"
PLANNER_CONFIG_MOUNT = "/workspace/planner_config"


def _value(name: str, text: str) -> Any:
    """A pass-through value: YAML/JSON scalars and mappings (``true``, ``5``, ``{"a": 1}``), else text.
    It must be JSON (``planner_config.json``): a YAML date stays the text it was, NaN, infinities, binary,
    sets and self-references are errors."""
    try:
        v = yaml.safe_load(text) if isinstance(text, str) else text
    except yaml.YAMLError:
        return text
    if isinstance(v, (datetime.date, datetime.datetime)):
        return text.strip()
    _check_json(f"planner_args.{name}", v, 0)
    return v


def _check_json(field: str, v: Any, depth: int) -> None:
    if depth > 20:
        raise SpecError(field, "nests too deep (or refers to itself)")
    if isinstance(v, float) and not math.isfinite(v):
        raise SpecError(field, f"must be a finite number, got {v}")
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                raise SpecError(field, f"keys must be text, got {k!r}")
            _check_json(field, x, depth + 1)
    elif isinstance(v, list):
        for x in v:
            _check_json(field, x, depth + 1)
    elif v is not None and not isinstance(v, (str, int, float, bool)):
        raise SpecError(field, f"is not a JSON value ({type(v).__name__})")


def user_settings(planner_args: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """``--planner-<field>=<value>`` / ``features.planner`` as PlannerConfig fields, names checked."""
    out: dict[str, Any] = {}
    for key, text in planner_args:
        name = str(key).removeprefix("--").removeprefix("planner-").replace("-", "_")
        name = _ALIASES.get(name, name)
        if name in out:
            raise SpecError(f"planner_args.{name}", "given twice")
        if name in _RETIRED:
            raise SpecError(f"planner_args.{name}", _RETIRED[name])
        if name not in PLANNER_FIELDS:
            raise SpecError(f"planner_args.{name}", "not a field of Dynamo 1.6's PlannerConfig")
        if name in _OWNED:
            raise SpecError(f"planner_args.{name}", "is set from the profiling results; remove it")
        out[name] = _value(name, text)
    return out


def planner_config(
    *,
    mode: str,
    backend: str,
    model: str,
    ttft_ms: float,
    itl_ms: float,
    prefill_num_gpus: int | None,
    decode_num_gpus: int,
    profile_data: bool,
    planner_args: tuple[tuple[str, str], ...] = (),
    max_gpu_budget: int | None = None,
    deployed_gpus: int = 0,
    load_thresholds: dict[str, int | float] | None = None,
) -> dict[str, Any]:
    """The JSON object of ``planner_config.json``; user settings win where they are allowed.

    ``max_gpu_budget``: the fleet's budget (DGDR ``totalGpus``); without one, Dynamo's default, raised
    to ``deployed_gpus`` (the DGD's worker GPUs) where the fleet is larger: the Planner would refuse to start.
    ``load_thresholds``: the deployed engines' load-scaling thresholds (``PlannerBounds.load_thresholds``),
    for the fields ``optimization_target: load`` needs and the user left out (Dynamo refuses the config
    without them)."""
    for field, v in (("ttft_ms", ttft_ms), ("itl_ms", itl_ms)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise SpecError(field, f"expected a positive number of ms, got {v!r}")
    user = user_settings(planner_args)
    allowed = ("agg",) if mode == "agg" else ("disagg", "prefill", "decode")
    if "mode" in user and user["mode"] not in allowed:
        article = "an" if mode == "agg" else "a"
        why = f"{user['mode']!r} does not fit {article} {mode} deployment ({', '.join(allowed)})"
        if user["mode"] == "agg":  # the fleet search deploys agg only when it sizes a load
            why += ("; an agg deployment comes from sizing a load: give --request-rate "
                    "(DGDR: requestRate or concurrency)")
        raise SpecError("planner_args.mode", why)
    cfg: dict[str, Any] = {
        "environment": "kubernetes",
        "backend": backend,
        "mode": mode,
        "optimization_target": "sla",
        "model_name": model,
        "ttft_ms": float(ttft_ms),
        "itl_ms": float(itl_ms),
        "decode_engine_num_gpu": int(decode_num_gpus),
        "pre_deployment_sweeping_mode": "thorough" if profile_data else "none",
        "profile_results_dir": PROFILE_DATA_MOUNT,
    }
    if prefill_num_gpus is not None:
        cfg["prefill_engine_num_gpu"] = int(prefill_num_gpus)
    budget = max_gpu_budget if max_gpu_budget is not None else max(DYNAMO_DEFAULT_GPU_BUDGET, deployed_gpus)
    cfg["max_gpu_budget"] = int(budget)
    cfg.update(user)
    if cfg.get("optimization_target") == "load":
        _fill_load_thresholds(cfg, load_thresholds or {})
    _check_cross_fields(cfg)
    chosen = cfg["max_gpu_budget"]
    if not isinstance(chosen, int) or isinstance(chosen, bool) or chosen < -1:
        raise SpecError("planner_args.max_gpu_budget", f"expected an integer >= -1 (-1: no limit), got {chosen!r}")
    if 0 <= chosen < deployed_gpus:
        raise SpecError("planner_args.max_gpu_budget", f"{chosen} is below the {deployed_gpus} GPUs the fleet "
                        "deploys; Dynamo's Planner would refuse to start")  # fmt: skip
    return cfg


def _flag(cfg: dict[str, Any], name: str) -> bool | None:
    """A boolean field as Dynamo reads it (its default when left out); None: not a boolean (Dynamo's own
    type check refuses it, with its message)."""
    v = cfg.get(name, DYNAMO_RULE_DEFAULTS.get(name, False))
    if isinstance(v, bool):
        return v
    text = str(v).strip().lower()
    return True if text in _TRUE else False if text in _FALSE else None


def _number(cfg: dict[str, Any], name: str) -> float | None:
    v = cfg.get(name, DYNAMO_RULE_DEFAULTS.get(name))
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _check_cross_fields(cfg: dict[str, Any]) -> None:
    """Dynamo 1.6.1 ``PlannerConfig._validate_config``'s rules between fields, so that a combination its
    Planner would refuse (the pod crash-loops at start) is one line here instead. Left to Dynamo: field
    types, ``ais_perf_model``'s roles (validated by AISimulate, not installed here) and a user-given
    ``scheduling``; tests/test_dynamo_planner.py checks each rule here against the wheel's own refusal."""
    mode = cfg["mode"]
    given = {k for k in ("prefill_min_endpoint", "decode_min_endpoint") if cfg.get(k) is not None}
    wrong = {"prefill": {"decode_min_endpoint"}, "decode": {"prefill_min_endpoint"},
             "agg": {"prefill_min_endpoint", "decode_min_endpoint"}}.get(mode, set()) & given  # fmt: skip
    if wrong:
        hint = "; use min_endpoint" if mode == "agg" else ""
        raise SpecError(f"planner_args.{sorted(wrong)[0]}", f"is not supported when mode is {mode!r}{hint}")
    hours = cfg.get("report_interval_hours")  # infinities and NaN are refused as JSON already
    if hours is not None and not (_number(cfg, "report_interval_hours") or 0.0) > 0:
        raise SpecError("planner_args.report_interval_hours", f"must be a positive number, got {hours!r}")
    bucket = cfg.get("fpm_sample_bucket_size", DYNAMO_RULE_DEFAULTS["fpm_sample_bucket_size"])
    square = isinstance(bucket, int) and not isinstance(bucket, bool) and bucket >= 0
    if square and math.isqrt(bucket) ** 2 != bucket:
        raise SpecError("planner_args.fpm_sample_bucket_size", f"must be a perfect square, got {bucket}")
    if _flag(cfg, "enable_power_awareness"):
        if cfg.get("total_gpu_power_limit") is None:
            raise SpecError("planner_args.total_gpu_power_limit", "is required with enable_power_awareness")
        if cfg.get("environment") != "kubernetes":
            raise SpecError("planner_args.environment", "enable_power_awareness needs environment kubernetes")
        if mode == "agg":
            raise SpecError("planner_args.enable_power_awareness", "is not supported with mode 'agg'")
    if cfg.get("environment") == "global-planner" and not cfg.get("global_planner_namespace"):
        raise SpecError("planner_args.global_planner_namespace", "is required with environment "
                        "global-planner")  # fmt: skip
    throughput, load = _flag(cfg, "enable_throughput_scaling"), _flag(cfg, "enable_load_scaling")
    if cfg.get("optimization_target") != "sla":  # Dynamo's easy modes force load scaling on, throughput off
        throughput, load = False, True
    if throughput is False and load is False:
        raise SpecError("planner_args.enable_load_scaling", "enable_throughput_scaling and "
                        "enable_load_scaling are both off: no scaling at all")  # fmt: skip
    t_int = _number(cfg, "throughput_adjustment_interval_seconds")
    l_int = _number(cfg, "load_adjustment_interval_seconds")
    if throughput and t_int is not None and t_int <= 0:
        raise SpecError("planner_args.throughput_adjustment_interval_seconds", f"must be > 0, got {t_int:g}")
    if throughput and load and t_int is not None and l_int is not None and l_int >= t_int:
        raise SpecError("planner_args.load_adjustment_interval_seconds", f"{l_int:g} s must be shorter "
                        f"than throughput_adjustment_interval_seconds ({t_int:g} s)")  # fmt: skip


def _fill_load_thresholds(cfg: dict[str, Any], ours: dict[str, int | float]) -> None:
    """The thresholds of the phases the mode scales, the user's where given; each scale-up above its
    scale-down, as Dynamo's PlannerConfig requires."""
    phases = {"agg": ("decode",), "prefill": ("prefill",), "decode": ("decode",)}
    scaled = phases.get(cfg["mode"], ("prefill", "decode"))
    for phase, unit in (("prefill", "queue_tokens"), ("decode", "kv_rate")):
        if phase not in scaled:
            continue
        up, down = f"{phase}_scale_up_{unit}", f"{phase}_scale_down_{unit}"
        for key in (up, down):
            if cfg.get(key) is None and key in ours:
                cfg[key] = ours[key]
        vals = (cfg.get(up), cfg.get(down))
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
        if not numbers or vals[0] <= vals[1]:
            raise SpecError(f"planner_args.{up}", f"optimization_target load needs it above {down}: {vals}")


__all__ = [
    "DYNAMO_RULE_DEFAULTS", "PLANNER_FIELDS", "PROFILE_DATA_MOUNT", "planner_config", "user_settings"
]  # fmt: skip
