"""Read a Dynamo ``DynamoGraphDeploymentRequest`` (``nvidia.com/v1beta1``) as a study.

Users describe a study to Dynamo 1.6 as a DGDR: ``model``, ``backend``, ``hardware{gpuSku, totalGpus,
numGpusPerNode}``, ``workload{isl, osl, concurrency | requestRate}``, ``sla{ttft, itl}``,
``features{planner, kvRouter, mocker}`` (field names from the wheel's ``dgdr_v1beta1_types.py``).
``dgdr_fields`` turns one into the raw study fields ``spec.load_spec`` validates, so the checks stay
in one place; errors about a DGDR value name the DGDR field (``sla.ttft``, not ``ttft_ms``).

Accepted: the whole custom resource (``apiVersion``/``kind``/``metadata``/``spec``) or its bare spec
(what ``python -m dynamo.profiler --config`` takes). Omitted workload and SLA fields take Dynamo's
defaults (ISL 4000, OSL 1000, TTFT 2000 ms, ITL 30 ms), so one file means the same to both tools.
A field we cannot honour is a one-line error; one that is safe to ignore is a warning naming it.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Mapping
from typing import Any

from .errors import SpecError
from .spec import MAX_CONCURRENCY, MAX_REQUEST_RATE, MIN_REQUEST_RATE
from .study_file import as_float

log = logging.getLogger(__name__)

API_VERSION = "nvidia.com/v1beta1"
KIND = "DynamoGraphDeploymentRequest"
DYNAMO_DEFAULTS = {"isl": 4000, "osl": 1000, "ttft": 2000.0, "itl": 30.0}  # DGDR WorkloadSpec / SLASpec
SPEC_KEYS = frozenset(
    {"model", "backend", "image", "runtimeVersionOverride", "modelCache", "hardware", "workload", "sla",
     "overrides", "features", "searchStrategy", "autoApply"}
)  # fmt: skip
_HARDWARE_KEYS = frozenset({"gpuSku", "vramMb", "totalGpus", "numGpusPerNode", "interconnect", "rdma"})
_WORKLOAD_KEYS = frozenset({"isl", "osl", "concurrency", "requestRate"})
_SLA_KEYS = frozenset({"ttft", "itl", "e2eLatency", "optimizationType"})
_FEATURE_KEYS = frozenset({"planner", "kvRouter", "mocker"})

# Our study field -> the DGDR field it came from (to name the DGDR field in load_spec's errors).
DGDR_FIELD = {
    "model": "model",
    "backend": "backend",
    "system": "hardware.gpuSku",
    "max_gpus": "hardware.numGpusPerNode",
    "gpus_per_node": "hardware.numGpusPerNode",
    "total_gpus": "hardware.totalGpus",
    "isl": "workload.isl",
    "osl": "workload.osl",
    "request_rate": "workload.requestRate",
    "ttft_ms": "sla.ttft",
    "itl_ms": "sla.itl",
    "planner_args": "features.planner",
    "runtime_image": "image",
    "runtime_version_override": "runtimeVersionOverride",
}


def is_dgdr(doc: Mapping[str, Any]) -> bool:
    """A YAML document that declares a ``kind`` is a Kubernetes object, never a study file."""
    return "kind" in doc or "apiVersion" in doc


def _mapping(field: str, v: Any) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise SpecError(field, f"expected a mapping, got {type(v).__name__}")
    return dict(v)


def _unknown(prefix: str, section: Mapping[str, Any], known: frozenset[str]) -> None:
    extra = sorted(set(section) - known)
    if extra:
        raise SpecError(f"{prefix}{extra[0]}", "unknown DynamoGraphDeploymentRequest field")


def _warn(field: str, why: str) -> None:
    log.warning("DGDR %s: %s", field, why)


def dgdr_spec(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The DGDR's ``spec`` from a whole custom resource (kind and apiVersion checked) or a bare spec."""
    if is_dgdr(doc):
        if doc.get("kind") != KIND:
            raise SpecError("kind", f"{doc.get('kind')!r} is not {KIND}")
        if doc.get("apiVersion") != API_VERSION:
            raise SpecError("apiVersion", f"{doc.get('apiVersion')!r} is not {API_VERSION} (Dynamo 1.6)")
        _unknown("", doc, frozenset({"apiVersion", "kind", "metadata", "spec", "status"}))
        _mapping("metadata", doc.get("metadata"))
        spec = _mapping("spec", doc.get("spec"))
        prefix = "spec."
    else:
        spec, prefix = dict(doc), ""
    if not spec.get("model"):
        raise SpecError(f"{prefix}model", "is required")
    _unknown(prefix, spec, SPEC_KEYS)
    return spec


def dgdr_fields(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Raw study fields (``load_spec`` names) from a DGDR document."""
    spec = dgdr_spec(doc)
    out: dict[str, Any] = {"model": spec["model"]}

    backend = str(spec.get("backend", "auto")).lower()
    if backend == "auto":
        _warn("backend", "auto: sla-estimate studies one backend; using vllm (set backend to choose)")
        backend = "vllm"
    out["backend"] = backend

    hw = _mapping("hardware", spec.get("hardware"))
    _unknown("hardware.", hw, _HARDWARE_KEYS)
    if not hw.get("gpuSku"):
        raise SpecError("hardware.gpuSku", "is required (sla-estimate cannot discover the cluster's GPUs)")
    out["system"] = str(hw["gpuSku"]).lower()
    per_node = hw.get("numGpusPerNode")
    total = hw.get("totalGpus")
    for key, v in (("numGpusPerNode", per_node), ("totalGpus", total)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise SpecError(f"hardware.{key}", f"expected an integer, got {v!r}")
    if per_node is not None:
        out["gpus_per_node"] = per_node
    if total is not None:
        out["total_gpus"] = total
    bounds = [v for v in (per_node, total) if isinstance(v, int) and not isinstance(v, bool)]
    if bounds:
        out["max_gpus"] = min(bounds)
    for key in ("vramMb", "interconnect", "rdma"):
        if hw.get(key) is not None:
            _warn(f"hardware.{key}", "ignored (the AIC system data of gpuSku defines memory and links)")

    wl = _mapping("workload", spec.get("workload"))
    _unknown("workload.", wl, _WORKLOAD_KEYS)
    sla = _mapping("sla", spec.get("sla"))
    _unknown("sla.", sla, _SLA_KEYS)
    out["isl"] = wl.get("isl", DYNAMO_DEFAULTS["isl"])
    out["osl"] = wl.get("osl", DYNAMO_DEFAULTS["osl"])
    if sla.get("e2eLatency") is not None:
        raise SpecError("sla.e2eLatency", "not supported: give sla.ttft and sla.itl")
    if sla.get("optimizationType") not in (None, "throughput"):
        raise SpecError(
            "sla.optimizationType",
            f"{sla['optimizationType']!r}: sla-estimate maximises throughput under the SLA",
        )
    out["ttft_ms"] = sla.get("ttft", DYNAMO_DEFAULTS["ttft"])
    out["itl_ms"] = sla.get("itl", DYNAMO_DEFAULTS["itl"])
    if out["ttft_ms"] is None:
        raise SpecError("sla.ttft", "is required")
    if out["itl_ms"] is None:
        raise SpecError("sla.itl", "is required")
    out.update(_load(wl, out))

    out.update(_features(_mapping("features", spec.get("features"))))
    if spec.get("image") is not None:  # "", [] or 0 are checked (and refused) by load_spec, not skipped
        out["runtime_image"] = spec["image"]
    if spec.get("runtimeVersionOverride") is not None:
        out["runtime_version_override"] = spec["runtimeVersionOverride"]
    if spec.get("modelCache"):
        raise SpecError("modelCache", "PVC model caches are not supported (the DGD downloads the model)")
    overrides = _mapping("overrides", spec.get("overrides"))
    _unknown("overrides.", overrides, frozenset({"dgd", "profilingJob", "trustRemoteCode"}))
    if overrides.get("dgd"):
        raise SpecError("overrides.dgd", "DGD overrides are not supported; edit final_config.yaml instead")
    if overrides.get("profilingJob"):
        _warn("overrides.profilingJob", "ignored (sla-estimate runs no profiling job)")
    if overrides.get("trustRemoteCode"):
        _warn("overrides.trustRemoteCode", "ignored (model configs are read as data)")
    strategy = spec.get("searchStrategy", "rapid")
    if strategy not in ("rapid", "thorough"):
        raise SpecError("searchStrategy", f"{strategy!r} is not one of rapid, thorough")
    if strategy == "thorough":
        _warn(
            "searchStrategy", "thorough: this estimate comes from AIC; measure with `sla-estimate validate`"
        )
    if spec.get("autoApply") is not None:
        _warn("autoApply", "ignored (sla-estimate writes final_config.yaml; apply it with kubectl)")
    return out


def _load(wl: Mapping[str, Any], out: Mapping[str, Any]) -> dict[str, Any]:
    """``requestRate`` sizes the fleet; a ``concurrency`` becomes a rate by Little's law at the SLA."""
    rate, conc = wl.get("requestRate"), wl.get("concurrency")
    if rate is not None and conc is not None:
        raise SpecError("workload", "concurrency and requestRate are mutually exclusive")
    if rate is not None:
        return {"request_rate": rate}
    if conc is None:
        return {}
    conc_f = as_float("workload.concurrency", conc, hi=MAX_CONCURRENCY)  # plan --concurrency's bound
    try:
        ttft, itl, osl = (float(x) for x in (out["ttft_ms"], out["itl_ms"], out["osl"]))
    except (TypeError, ValueError):
        return {}  # load_spec refuses the bad sla or workload field, naming it
    if not (ttft > 0 and itl > 0 and osl >= 1):
        return {}
    latency_s = (ttft + (osl - 1) * itl) / 1000.0
    rate_f = conc_f / latency_s
    if not MIN_REQUEST_RATE <= rate_f <= MAX_REQUEST_RATE:  # --request-rate's bounds, named as given
        why = f"{conc_f:g} in flight at the SLA's latency is {rate_f:.3g} requests/s"
        bounds = f"[{MIN_REQUEST_RATE:g}, {MAX_REQUEST_RATE:g}]"
        raise SpecError("workload.concurrency", f"{why}, outside the bounds of {bounds}")
    _warn("workload.concurrency", f"{conc_f:g} in flight at the SLA's latency = {rate_f:.3g} requests/s")
    return {"request_rate": rate_f}


def _json(field: str, v: Any) -> str:
    """``v`` as JSON text: a YAML date as its text; NaN, infinities and other types are errors."""

    def date(x: Any) -> str:
        if isinstance(x, (datetime.date, datetime.datetime)):
            return x.isoformat()
        raise TypeError(type(x).__name__)

    try:
        return json.dumps(v, default=date, allow_nan=False)
    except (TypeError, ValueError) as exc:
        why = "must be finite numbers" if isinstance(exc, ValueError) else f"is not JSON ({exc})"
        raise SpecError(field, why) from None


def _features(features: Mapping[str, Any]) -> dict[str, Any]:
    _unknown("features.", features, _FEATURE_KEYS)
    # Dynamo's profiler adds a Planner only for features.planner (``is_planner_enabled``)
    out: dict[str, Any] = {"planner": features.get("planner") is not None}
    planner = _mapping("features.planner", features.get("planner"))
    if planner:
        # Typed values travel as JSON text; the planner config renderer parses them back. A YAML date is
        # its text; NaN and infinities are no JSON (Dynamo would read a string).
        out["planner_args"] = {k: _json(f"features.planner.{k}", v) for k, v in planner.items()}
    router = _mapping("features.kvRouter", features.get("kvRouter"))
    mocker = _mapping("features.mocker", features.get("mocker"))
    for name, section in (("kvRouter", router), ("mocker", mocker)):
        _unknown(f"features.{name}.", section, frozenset({"enabled"}))
        flag = section.get("enabled")
        if flag is not None and not isinstance(flag, bool):
            raise SpecError(f"features.{name}.enabled", f"expected true or false, got {flag!r}")
    if router.get("enabled"):
        out["kv_router"] = True
    if mocker.get("enabled"):
        raise SpecError(
            "features.mocker", "mocker deployments are not supported (sla-estimate sizes real engines)"
        )
    return out


def load_dgdr_spec(doc: Mapping[str, Any], overrides: dict[str, Any], build: Any) -> Any:
    """``build(raw, overrides)`` (``spec._spec_from_raw``) on the DGDR's fields; flags still win.

    A value error on a field that came from the DGDR is re-raised naming the DGDR field.
    """
    raw = dgdr_fields(doc)
    given = {k for k, v in overrides.items() if v is not None}
    try:
        return build(raw, overrides)
    except SpecError as exc:
        field = {"ttft": "ttft_ms", "itl": "itl_ms"}.get(exc.field, exc.field)
        if field in DGDR_FIELD and field not in given and field in raw:
            message = str(exc).removeprefix(f"{exc.field}: ")
            raise SpecError(DGDR_FIELD[field], message) from None
        raise


__all__ = ["API_VERSION", "DGDR_FIELD", "KIND", "dgdr_fields", "dgdr_spec", "is_dgdr", "load_dgdr_spec"]
