"""The study a user asks for, parsed and checked once into a frozen ``Spec``.

``load_spec`` is the only place that validates user input: YAML file first, then flags
on top. Every error names the field, the value and what is allowed (``SpecError``).
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import SpecError
from .model import load_model_info, resolve_model_name
from .spec_checks import merge_validate, output_dir_field, source_field
from .study_file import as_bool, as_choice, as_float, as_int, as_text, read_yaml, refuse_nulls


class Backend(str, enum.Enum):
    VLLM = "vllm"
    SGLANG = "sglang"
    TRTLLM = "trtllm"


# The documented built-in study (Dynamo's docs example: ISL 3000 / OSL 150, TTFT 200 ms, ITL 20 ms).
DEFAULT_STUDY: dict[str, Any] = {
    "model": "Qwen/Qwen3-32B",
    "system": "h200_sxm",
    "backend": "vllm",
    "isl": 3000,
    "osl": 150,
    "ttft_ms": 200.0,
    "itl_ms": 20.0,
}

KNOWN_SYSTEMS = (
    "a100_pcie", "a100_sxm", "a30", "b200_sxm", "b300_sxm", "b60", "gb200", "gb300",
    "h100_pcie", "h100_sxm", "h200_sxm", "l4", "l40s", "rtx_pro_6000_server",
)  # fmt: skip

QUANT_MODES = (
    "bfloat16",
    "float16",
    "fp8",
    "fp8_block",
    "fp8_static",
    "int8_wo",
    "int4_wo",
    "nvfp4",
    "w4afp8",
)
KV_QUANT_MODES = ("bfloat16", "float16", "fp8", "int8")
RUNNER_KINDS = ("replay", "endpoint", "local", "k8s", "gpu")
DEFAULT_TIE_TOLERANCE = 0.02  # within 2 % of the best tokens/s/GPU: a tie the loop need not settle
DYNAMO_VERSIONS = ("1.6", "0.7")


@dataclass(frozen=True, slots=True)
class ValidateSpec:
    """How to check the estimate against real measurements (see ``validate``)."""

    runner: str = "replay"
    measurements: tuple[str, ...] = ()  # files/directories the replay runner reads
    budget: int = 8  # total points to measure
    max_points_per_engine: int = 4
    runner_options: tuple[tuple[str, Any], ...] = ()  # runner-specific settings (url, namespace, ...)
    until_confident: float | None = None  # measure one point at a time until the decision is this sure
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE  # an engine this close to the best's counts as right

    def option(self, name: str, default: Any = None) -> Any:
        return dict(self.runner_options).get(name, default)


@dataclass(frozen=True, slots=True)
class Spec:
    """One study: model and hardware, workload, SLA, search space and output."""

    model: str
    system: str
    backend: Backend
    isl: int
    osl: int
    ttft_ms: float
    itl_ms: float
    backend_version: str | None = None
    gpu_counts: tuple[int, ...] = (1, 2, 4, 8)
    gpus_per_node: int = 8
    gemm_quant: str | None = None
    kvcache_quant: str | None = None
    max_context_tokens: int = 0  # 0: the model's own limit
    max_concurrency: int = 2048
    num_prefill_points: int = 32
    num_decode_contexts: int = 13
    num_decode_concurrencies: int = 12
    num_alternatives: int = 3
    request_rate: float | None = None  # requests/s for replica sizing; None: skip sizing
    source: str = "aic"
    output_dir: str | None = None
    plots: bool = True
    strict: bool = False
    cache: bool = True
    planner_args: tuple[tuple[str, str], ...] = ()
    validate: ValidateSpec | None = None
    seed: int = 0
    confidence: float | None = None  # pick by P(meeting every target) >= this, not by the point estimate
    # Dynamo hand-over (artifacts/dynamo16.py): layout, images, features a DGDR may ask for.
    dynamo_version: str = "1.6"  # "1.6": final_config.yaml (v1beta1); "0.7": config_with_planner.yaml
    runtime_image: str | None = None  # image tag ("1.6.1") or reference whose registry and tag all images share
    total_gpus: int | None = None  # the fleet's GPU budget (DGDR hardware.totalGpus): planner max_gpu_budget
    kv_router: bool = False  # DGDR features.kvRouter: KV-aware routing in the frontend
    planner: bool = True  # deploy Dynamo's Planner (a DGDR without features.planner asks for none)
    runtime_version_override: str | None = None  # DGDR runtimeVersionOverride, set on every component

    @property
    def decode_context_tokens(self) -> int:
        """Mean context of a request during decode: ISL + OSL/2."""
        return self.isl + self.osl // 2

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, enum.Enum):
                v = v.value
            elif isinstance(v, ValidateSpec):
                v = {g.name: _plain(getattr(v, g.name)) for g in fields(v)}
            out[f.name] = _plain(v)
        return out


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


_as_int, _as_float, _as_choice, _as_bool, _as_text = as_int, as_float, as_choice, as_bool, as_text
MAX_REQUEST_RATE = 100_000.0  # requests/s: beyond this the sizing is not a plan but an overflow
MIN_REQUEST_RATE = 1e-6  # requests/s (one in 11.6 days): below it costs and replays overflow (1e-320: inf)
MAX_TARGET_MS = 3_600_000.0  # an hour: a latency target beyond it is a typo
# Below these a target is a unit mistake (seconds or µs for ms): AIC's fastest engine (Qwen3-0.6B, ISL 1,
# B200/GB200/B300) takes 2 ms to the first token and 1.06 ms a step; the roofline's idealised step 0.02 ms.
MIN_TARGET_MS = {"ttft": 0.1, "itl": 0.01}
MAX_SEED = 2**32 - 1  # numpy's legacy seeding, most tools' seeds and JSON readers (2**53) all take it
MAX_CONTEXT_TOKENS = 100_000_000  # no model's context is near 1e8 tokens: a larger cap is a typo
MAX_CONCURRENCY = 10_000_000  # requests in flight (plan --concurrency, a DGDR's workload.concurrency)
MAX_PLANNER_ARGS = 256
_FLAG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# A confidence level's range: probabilities come from a few hundred to a few thousand posterior draws, which
# cannot tell a level above 0.999 from 1; below 0.5 a "confident" pick is one the source expects to miss.
PROBABILITY_RANGE = (0.5, 0.999)
MAX_TIE_TOLERANCE = 0.5


def _as_probability(name: str, v: Any) -> float | None:
    """A confidence level in ``PROBABILITY_RANGE``, or None when not given."""
    if v is None:
        return None
    f = _as_float(name, v, positive=False)
    lo, hi = PROBABILITY_RANGE
    if not lo <= f <= hi:
        raise SpecError(name, f"must be a probability in [{lo:g}, {hi:g}], got {v!r}")
    return f


def _as_fraction(name: str, v: Any) -> float:
    """A share of the best option's throughput in [0, MAX_TIE_TOLERANCE]."""
    f = _as_float(name, v, positive=False)
    if not 0.0 <= f <= MAX_TIE_TOLERANCE:
        raise SpecError(name, f"must be a fraction in [0, {MAX_TIE_TOLERANCE:g}], got {v!r}")
    return f


def latency_target(name: str, v: Any) -> float:
    """A TTFT or ITL target (``ttft_ms``, ``itl_p90`` ...) in ms, in [MIN_TARGET_MS, MAX_TARGET_MS]."""
    f = _as_float(name, v, hi=MAX_TARGET_MS)
    lo = MIN_TARGET_MS[name.split("_")[0]]
    if f < lo:
        raise SpecError(name, f"{f:g} ms is below the floor of {lo:g} ms (targets are in milliseconds)")
    return f


def request_rate_field(name: str, v: Any) -> float:
    """Requests/s in [MIN_REQUEST_RATE, MAX_REQUEST_RATE]."""
    f = _as_float(name, v, hi=MAX_REQUEST_RATE)
    if f < MIN_REQUEST_RATE:
        raise SpecError(name, f"{f:g} is below the bound of {MIN_REQUEST_RATE:g} requests/s")
    return f


def _gpu_counts(raw: dict[str, Any]) -> tuple[int, ...]:
    g = raw.get("gpus")
    if g is not None:
        if isinstance(g, str):
            items: list[Any] = g.split(",")
        elif isinstance(g, (list, tuple)):
            items = list(g)
        elif isinstance(g, (int, float)) and not isinstance(g, bool):
            items = [g]
        else:
            raise SpecError("gpus", f"expected a list of GPU counts like 1,2,4, got {type(g).__name__}")
        if not items or any(isinstance(x, str) and not x.strip() for x in items):
            raise SpecError("gpus", f"expected GPU counts like 1,2,4, got {g!r}")
        counts = tuple(sorted({_as_int("gpus", x, 1, 1024) for x in items}))
        lo = _as_int("min_gpus", raw["min_gpus"], 1, 1024) if raw.get("min_gpus") is not None else 1
        hi = _as_int("max_gpus", raw["max_gpus"], 1, 1024) if raw.get("max_gpus") is not None else 1024
        outside = [n for n in counts if not lo <= n <= hi]
        if outside:  # min/max given with the list: checked against it, never ignored
            raise SpecError("gpus", f"{outside[0]} is outside [min_gpus, max_gpus] = [{lo}, {hi}]")
        return counts
    lo = _as_int("min_gpus", raw.get("min_gpus", 1), 1, 1024)
    if raw.get("max_gpus") is not None:
        hi = _as_int("max_gpus", raw["max_gpus"], 1, 1024)
    else:
        hi = _as_int("gpus_per_node", raw.get("gpus_per_node", 8), 1, 1024)
    counts = tuple(n for n in (2**k for k in range(11)) if lo <= n <= hi)
    if not counts:
        raise SpecError("max_gpus", f"no power of two lies in the GPU range [{lo}, {hi}]")
    return counts


# ``gpu_counts`` is derived from gpus (``_normalise`` renames a given one) or min/max_gpus
# fields whose default is None: a YAML null says that none (no sizing, no output dir, AIC's own version)
NULLABLE_FIELDS = frozenset(f.name for f in fields(Spec) if f.default is None)
_ALLOWED_KEYS = {f.name for f in fields(Spec) if f.name != "gpu_counts"} | {
    "gpus", "min_gpus", "max_gpus", "ttft", "itl"
}


def _normalise(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """Short names (ttft, itl) to long ones, the Spec's gpu_counts to gpus (it was ignored); both given in one
    place is ambiguous."""
    raw = dict(raw)
    for short, long in (("ttft", "ttft_ms"), ("itl", "itl_ms"), ("gpu_counts", "gpus")):
        if short in raw:
            if long in raw:
                raise SpecError(long, f"given twice in {where} (as {short} and {long})")
            raw[long] = raw.pop(short)
    return raw


def _text_or_none(name: str, v: Any) -> str | None:
    return None if v is None or v == "" else _as_text(name, v)


def load_spec(config: str | Path | None = None, **overrides: Any) -> Spec:
    """Build a checked Spec from an optional YAML file plus overrides (None values are ignored).

    Fields given nowhere come from the built-in default study (``DEFAULT_STUDY``), so a bare
    ``sla-estimate`` runs Qwen3-32B on h200_sxm with vLLM at ISL 3000 / OSL 150, TTFT 200 ms, ITL 20 ms.
    Flags override the file field by field, the ``validate:`` section included. A
    DynamoGraphDeploymentRequest (``--dgdr FILE``, or a ``--config`` file whose ``kind`` says so)
    is read by ``dgdr.py`` into the same raw fields first.
    """
    dgdr_path = overrides.pop("dgdr", None)
    if dgdr_path and config:
        raise SpecError("dgdr", "give either --config or --dgdr, not both")
    path = dgdr_path or config
    doc: dict[str, Any] = read_yaml(path) if path else {}
    if path and not doc:  # an empty file (or comments only) is not the default study
        raise SpecError("dgdr" if dgdr_path else "config", f"{path} holds no fields")
    from .dgdr import is_dgdr

    if dgdr_path or is_dgdr(doc):
        from .dgdr import load_dgdr_spec

        return load_dgdr_spec(doc, overrides, _spec_from_raw)
    refuse_nulls(doc, NULLABLE_FIELDS)
    return _spec_from_raw(_normalise(doc, str(config)) if config else {}, overrides)


def _spec_from_raw(raw: dict[str, Any], overrides: dict[str, Any]) -> Spec:
    raw = _normalise(raw, "the study")
    flags = _normalise({k: v for k, v in overrides.items() if v is not None}, "the flags")
    if "validate" in flags and "validate" in raw:
        flags["validate"] = merge_validate(
            raw["validate"], flags["validate"], {f.name for f in fields(ValidateSpec)}
        )
    raw.update(flags)
    unknown = sorted(set(raw) - _ALLOWED_KEYS)
    if unknown:
        name = unknown[0]
        raise SpecError(name if name.isidentifier() else repr(name), "unknown field")
    raw = {**DEFAULT_STUDY, **raw}  # any field not given comes from the documented default study
    for name in ("model", "system", "backend", "isl", "osl", "ttft_ms", "itl_ms"):
        if raw.get(name) is None:
            raise SpecError(name, "is required")

    model = resolve_model_name(_as_text("model", raw["model"]))
    info = load_model_info(model)
    system = _as_choice("system", raw["system"], KNOWN_SYSTEMS)
    backend = Backend(_as_choice("backend", raw["backend"], tuple(b.value for b in Backend)))
    isl = _as_int("isl", raw["isl"], 1)
    osl = _as_int("osl", raw["osl"], 1)
    max_ctx = _as_int("max_context_tokens", raw.get("max_context_tokens", 0), 0, MAX_CONTEXT_TOKENS)
    limit = min(max_ctx, info.max_context_tokens) if max_ctx else info.max_context_tokens
    if isl + osl > limit:
        raise SpecError(
            "isl", f"ISL {isl} + OSL {osl} = {isl + osl} exceeds the model context of {limit} tokens"
        )
    gemm = _text_or_none("gemm_quant", raw.get("gemm_quant"))
    kvq = _text_or_none("kvcache_quant", raw.get("kvcache_quant"))
    rate = raw.get("request_rate")
    spec = Spec(
        model=model,
        system=system,
        backend=backend,
        isl=isl,
        osl=osl,
        ttft_ms=latency_target("ttft_ms", raw["ttft_ms"]),
        itl_ms=latency_target("itl_ms", raw["itl_ms"]),
        backend_version=_text_or_none("backend_version", raw.get("backend_version")),
        gpu_counts=_gpu_counts(raw),
        gpus_per_node=_as_int("gpus_per_node", raw.get("gpus_per_node", 8), 1, 1024),
        gemm_quant=_as_choice("gemm_quant", gemm, QUANT_MODES) if gemm else None,
        kvcache_quant=_as_choice("kvcache_quant", kvq, KV_QUANT_MODES) if kvq else None,
        max_context_tokens=limit,
        max_concurrency=_as_int("max_concurrency", raw.get("max_concurrency", 2048), 1, 1_000_000),
        num_prefill_points=_as_int("num_prefill_points", raw.get("num_prefill_points", 32), 4, 10_000),
        num_decode_contexts=_as_int("num_decode_contexts", raw.get("num_decode_contexts", 13), 2, 1000),
        num_decode_concurrencies=_as_int(
            "num_decode_concurrencies", raw.get("num_decode_concurrencies", 12), 2, 1000
        ),
        num_alternatives=_as_int("num_alternatives", raw.get("num_alternatives", 3), 0, 100),
        request_rate=None if rate is None else request_rate_field("request_rate", rate),
        source=source_field(raw.get("source", "aic")),
        output_dir=output_dir_field(raw.get("output_dir")),
        plots=_as_bool("plots", raw.get("plots", True)),
        strict=_as_bool("strict", raw.get("strict", False)),
        cache=_as_bool("cache", raw.get("cache", True)),
        planner_args=_planner_args(raw.get("planner_args", ())),
        validate=_validate_spec(raw.get("validate")),
        seed=_as_int("seed", raw.get("seed", 0), 0, MAX_SEED),
        confidence=_as_probability("confidence", raw.get("confidence")),
        dynamo_version=_as_choice("dynamo_version", raw.get("dynamo_version", "1.6"), DYNAMO_VERSIONS),
        runtime_image=_image(raw.get("runtime_image")),
        total_gpus=(
            None if raw.get("total_gpus") is None else _as_int("total_gpus", raw["total_gpus"], 1, 10**6)
        ),
        kv_router=_as_bool("kv_router", raw.get("kv_router", False)),
        planner=_as_bool("planner", raw.get("planner", True)),
        runtime_version_override=_version_override(raw.get("runtime_version_override")),
    )
    if spec.dynamo_version == "1.6":  # names, values, repeats checked now, with or without an output dir
        from .artifacts.planner_config import user_settings

        user_settings(spec.planner_args)
    elif str(dict(spec.planner_args).get("mode", "")).strip('"') == "agg":
        why = "the 0.7 layout deploys disaggregated workers only; planner mode agg needs the 1.6 layout"
        raise SpecError("dynamo_version", why)
    too_big = [n for n in spec.gpu_counts if n > spec.gpus_per_node]
    if too_big:
        raise SpecError("max_gpus", f"{too_big[0]} GPUs per engine exceed gpus_per_node={spec.gpus_per_node}")
    return spec


def _version_override(v: Any) -> str | None:
    """A DGDR ``runtimeVersionOverride``: one version string (written into every component)."""
    if v is None:
        return None
    if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}", v):
        raise SpecError("runtime_version_override", f"expected a version like 1.6.1, got {str(v)[:60]!r}")
    return v


def _planner_args(v: Any) -> tuple[tuple[str, str], ...]:
    """``flag=value`` strings or a mapping; flag names are checked, values are plain scalars."""
    if isinstance(v, dict):
        items = list(v.items())
    elif isinstance(v, (list, tuple, str)):
        items = []
        for s in [v] if isinstance(v, str) else v:
            if not isinstance(s, str) or "=" not in s:
                raise SpecError("planner_args", f"expected flag=value, got {str(s)[:60]!r}")
            k, _, val = s.partition("=")
            items.append((k, val))
    else:
        raise SpecError("planner_args", f"expected a list of flag=value or a mapping, got {type(v).__name__}")
    if len(items) > MAX_PLANNER_ARGS:
        raise SpecError("planner_args", f"{len(items)} planner flags; at most {MAX_PLANNER_ARGS} are allowed")
    out = []
    for k, val in items:
        name = str(k).strip().removeprefix("--").removeprefix("planner-")
        if not _FLAG_NAME.match(name):
            raise SpecError("planner_args", f"{str(k)[:60]!r} is not a flag name (letters, digits, -, _)")
        if isinstance(val, bool):
            val = "true" if val else "false"
        out.append((name, _as_text(f"planner_args.{name}", val) if val != "" else ""))
    return tuple(out)


def _image(v: Any) -> str | None:
    """A bare tag (``1.6.1``) or an image reference ``[registry/]name[:tag]`` without spaces."""
    if v is None:
        return None
    if isinstance(v, float):  # YAML 1.10 is the number 1.1: the tag written is lost
        raise SpecError("runtime_image", f"expected an image tag, got the number {v!r} (quote it)")
    s = _as_text("runtime_image", v, 512)
    if not re.fullmatch(r"[A-Za-z0-9._/:@-]+", s) or s.endswith((":", "/")):
        raise SpecError("runtime_image", f"{v!r} is neither an image tag nor an image reference")
    return s


def _validate_spec(v: Any) -> ValidateSpec | None:
    if v is None or v is False:
        return None
    if v is True:
        return ValidateSpec()
    if not isinstance(v, dict):
        raise SpecError("validate", f"expected a mapping, got {type(v).__name__}")
    known = {f.name for f in fields(ValidateSpec)}
    refuse_nulls({k: x for k, x in v.items() if k in known}, ("until_confident",), "validate.")
    opts = {k: val for k, val in v.items() if k not in known}
    meas = v.get("measurements")
    if meas is None:
        meas = ()
    elif isinstance(meas, str):
        meas = (_as_text("validate.measurements", meas),)
    elif isinstance(meas, (list, tuple)):
        meas = tuple(_as_text("validate.measurements", m) for m in meas)
    else:
        raise SpecError(
            "validate.measurements", f"expected a path or a list of paths, got {type(meas).__name__}"
        )
    ro = v.get("runner_options")
    if ro is None:
        ro = {}
    if not isinstance(ro, dict):
        raise SpecError(
            "validate.runner_options", f"expected a mapping of key: value, got {type(ro).__name__}"
        )
    options = {**ro, **opts}
    for key, val in options.items():
        if not isinstance(key, str) or not key:
            raise SpecError("validate.runner_options", f"option names must be strings, got {key!r}")
        scalars = (str, int, float, bool, type(None))
        if not isinstance(val, scalars) and not (
            isinstance(val, (list, tuple)) and all(isinstance(x, scalars) for x in val)
        ):
            raise SpecError(
                f"runner_options.{key}", f"expected a value or a list of values, got {type(val).__name__}"
            )
        if isinstance(val, float) and not math.isfinite(val):
            raise SpecError(f"runner_options.{key}", f"must be finite, got {val!r}")
    if v.get("tie_tolerance") is not None and v.get("until_confident") is None:
        raise SpecError("validate.tie_tolerance", "applies only with until_confident (the sequential loop)")
    return ValidateSpec(
        runner=_as_choice("validate.runner", v.get("runner", "replay"), RUNNER_KINDS),
        measurements=meas,
        budget=_as_int("validate.budget", v.get("budget", 8), 1, 10_000),
        max_points_per_engine=_as_int(
            "validate.max_points_per_engine", v.get("max_points_per_engine", 4), 1, 1000
        ),
        runner_options=tuple(
            sorted({k: tuple(x) if isinstance(x, list) else x for k, x in options.items()}.items())
        ),
        until_confident=_as_probability("validate.until_confident", v.get("until_confident")),
        tie_tolerance=_as_fraction("validate.tie_tolerance", v.get("tie_tolerance", DEFAULT_TIE_TOLERANCE)),
    )


__all__ = ["DEFAULT_STUDY", "Backend", "Spec", "ValidateSpec", "load_spec"]
