"""AI Configurator adapter: the only module that imports ``aiconfigurator_core``.

Moving to the renamed successor (``aisimulate_core``, same ``EngineHandle`` methods) is a
change of ``_SDK_MODULE`` below. Engines compile lazily, once per candidate.
"""

from __future__ import annotations

import importlib
import logging
import os
import types
from functools import cache
from importlib import metadata
from typing import Any

import numpy as np

from ..candidates import Candidate
from ..errors import DataNotAvailable, SourceError, SpecError
from ..model import bundled_config_path
from .base import PerfSource, Stack, as_positive_array

log = logging.getLogger(__name__)

_SDK_MODULE = "aiconfigurator_core.sdk"
_DIST = "aiconfigurator-core"

# Backend quirks of the KV memory model (fraction of total for vLLM/SGLang, of free for TRT-LLM).
MEMORY_FRACTION = {"vllm": ("of_total", 0.92), "sglang": ("of_total", 0.88), "trtllm": ("of_free", 0.9)}


# AIC modules that parse its system/version YAML files with PyYAML's pure-Python loader.
_YAML_READERS = ("aiconfigurator_core.sdk.perf_database", "aiconfigurator_core.sdk.attention_lanes")


def _use_libyaml(module_names: tuple[str, ...]) -> None:
    """Give those AIC modules a ``yaml`` whose ``safe_load``/``SafeLoader`` use libyaml (same semantics).

    Parsing ~60 system files is about half a second of a cold study in pure Python; libyaml does it
    ~10x faster. Only the named modules see the change; without libyaml nothing changes.
    """
    import yaml

    loader = getattr(yaml, "CSafeLoader", None)
    if loader is None:
        return
    fast = types.ModuleType("yaml")
    fast.__dict__.update(yaml.__dict__)
    fast.safe_load = lambda stream: yaml.load(stream, Loader=loader)  # type: ignore[attr-defined]
    fast.SafeLoader = loader  # type: ignore[attr-defined]
    for name in module_names:
        module = importlib.import_module(name)
        if getattr(module, "yaml", None) is yaml:
            module.yaml = fast


@cache
def _sdk() -> Any:
    logging.getLogger("aiconfigurator_core").setLevel(logging.ERROR)
    sdk = importlib.import_module(_SDK_MODULE)
    _use_libyaml(_YAML_READERS)
    return sdk


def _perf_database() -> Any:
    _sdk()
    return importlib.import_module("aiconfigurator_core.sdk.perf_database")


@cache
def offline_model_ids() -> frozenset[str]:
    """Hugging Face ids AIC reads from its own bundled configs; any other id it downloads (AIC ships a
    few more config files than it reads offline, e.g. Mixtral's)."""
    return frozenset(importlib.import_module(f"{_SDK_MODULE}.common").DefaultHFModels)


def _check_offline(model: str) -> None:
    """Refuse an id AIC would download (it ships the config but reads only its own list offline): without
    a network that is a download failure per engine; a local directory with the config works."""
    if os.path.isdir(model) or model in offline_model_ids():
        return
    shipped = bundled_config_path(model)
    if shipped.is_file():
        raise SpecError(
            "model",
            f"AI Configurator ships a config for {model!r} but does not read it offline: give a local "
            f"directory holding it as config.json (it is {shipped}), or another source (--source roofline)",
        )


def aic_version() -> str:
    return metadata.version(_DIST)


def _errors() -> Any:
    return importlib.import_module("aiconfigurator_core.sdk.errors")


@cache
def current_backend_version(system: str, backend: str) -> str:
    """The literal data version AIC's ``current`` slot resolves to for (system, backend)."""
    pdb = _perf_database()
    try:
        return str(pdb.resolve_query_version(system, backend, "current"))
    except Exception:  # translate at the edge
        raise SpecError("backend", f"AIC has no {backend} data for system {system}") from None


def resolve_version(stack: Stack) -> str:
    """Validate the requested version against AIC's slots; return the literal version."""
    if stack.backend_version in (None, "", "current"):
        return current_backend_version(stack.system, stack.backend)
    pdb = _perf_database()
    try:
        return str(pdb.resolve_query_version(stack.system, stack.backend, stack.backend_version))
    except Exception as exc:  # noqa: BLE001
        raise SpecError(
            "backend_version",
            f"{stack.backend_version!r} is not a queryable {stack.backend} version on {stack.system} "
            f"(current: {current_backend_version(stack.system, stack.backend)}): {str(exc).splitlines()[0][:160]}",
        ) from None


class AicSource(PerfSource):
    """Kernel-database estimates from AI Configurator (SILICON data, in-process)."""

    name = "aic"

    def __init__(self, stack: Stack):
        super().__init__(stack)
        _check_offline(stack.model)
        self._handles: dict[Candidate, Any] = {}
        self._kv: dict[Candidate, int] = {}
        self._no_attention_split: set[Candidate] = set()  # per-op prefill failed: attention reads as 0

    def _quant_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if self.stack.gemm_quant:
            kw["gemm_quant_mode"] = self.stack.gemm_quant
        if self.stack.kvcache_quant:
            kw["kvcache_quant_mode"] = self.stack.kvcache_quant
        return kw

    def _parallel_kwargs(self, c: Candidate) -> dict[str, int]:
        return {
            "tp_size": c.tp_size,
            "pp_size": 1,
            "attention_dp_size": c.attention_dp_size,
            "moe_tp_size": c.moe_tp_size,
            "moe_ep_size": c.moe_ep_size,
        }

    def engine(self, c: Candidate) -> Any:
        """The compiled AIC engine for ``c`` (compiled on first use)."""
        h = self._handles.get(c)
        if h is None:
            sdk = _sdk()
            version = resolve_version(self.stack)
            kwargs = {**self._parallel_kwargs(c), **self._quant_kwargs()}
            try:
                h = sdk.EngineHandle.compile(
                    self.stack.model, self.stack.system, self.stack.backend, backend_version=version, **kwargs
                )
                h.predict_prefill_latency(1, 128, 0)  # missing kernel data surfaces on the first query
            except Exception as exc:  # translate every SDK failure at this edge
                if _needs_bf16_attention(exc):
                    try:  # the CLI's fix-up: no fp8 attention data -> bf16 attention
                        h = sdk.EngineHandle.compile(
                            self.stack.model, self.stack.system, self.stack.backend,
                            backend_version=version, fmha_quant_mode="bfloat16", **kwargs,
                        )  # fmt: skip
                        h.predict_prefill_latency(1, 128, 0)
                    except Exception as exc2:
                        raise self._translate(c, exc2) from exc2
                else:
                    raise self._translate(c, exc) from exc
            self._handles[c] = h
        return h

    def _translate(self, c: Candidate, exc: Exception) -> Exception:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:240]
        errs = _errors()
        missing = (
            errs.PerfDataNotAvailableError, errs.InterpolationDataNotAvailableError, errs.MissingSystemFlopsError,
            errs.UnsupportedAttentionBackendError, errs.UnsupportedWideepConfigError, NotImplementedError,
        )  # fmt: skip
        words = ("not available", "unsupported", "not supported", "missing")
        if isinstance(exc, missing) or any(w in first.lower() for w in words):
            return DataNotAvailable(f"AIC cannot estimate {c.name} of {self.stack.model} on "
                                    f"{self.stack.system}/{self.stack.backend}: {first}")  # fmt: skip
        return SourceError(f"AIC failed on {c.name}: {type(exc).__name__}: {first}")

    def prefill_ttft_ms(self, candidate: Candidate, isl: Any) -> np.ndarray:
        self.check_supported(candidate)
        isl = as_positive_array("isl", isl)
        h = self.engine(candidate)
        try:
            out = np.array([h.predict_prefill_latency(1, int(round(x)), 0) for x in isl], dtype=float)
        except Exception as exc:
            raise self._translate(candidate, exc) from exc
        return _checked(out, candidate, "prefill")

    def prefill_attention_ms(self, candidate: Candidate, isl: Any) -> np.ndarray:
        """The context-attention op of AIC's per-op prefill (``run_static_per_op``, the ops
        ``predict_prefill_latency`` sums). An MLA model's attention is one ``context_mla_block`` op with
        its projections (GEMMs): not split, 0. Where the per-op call fails but the total works, 0 for that
        engine from then on (fit and prediction alike), with one warning: losing the split costs only
        the attention term, not the engine's prefill."""
        self.check_supported(candidate)
        isl = as_positive_array("isl", isl)
        if candidate in self._no_attention_split:
            return np.zeros(isl.shape)
        h = self.engine(candidate)
        try:
            ops = [h.run_static_per_op(batch_size=1, isl=int(round(x)), osl=1)[0] for x in isl]
        except Exception as exc:
            self.prefill_ttft_ms(candidate, isl)  # the total fails too: that error, not this one
            self._no_attention_split.add(candidate)
            first = (str(exc).splitlines() or [""])[0][:160]
            log.warning("AIC's per-op prefill of %s failed (%s: %s); its attention is not scaled apart",
                        candidate.name, type(exc).__name__, first)
            return np.zeros(isl.shape)
        return np.array([sum(v[1] for v in op if v[0] == "context_attention") for op in ops], dtype=float)

    def decode_itl_ms(self, candidate: Candidate, batch: Any, context: Any) -> np.ndarray:
        self.check_supported(candidate)
        b, ctx = np.broadcast_arrays(as_positive_array("batch", batch), as_positive_array("context", context))
        per_rank = np.ceil(b / candidate.attention_dp_size).astype(int)
        h = self.engine(candidate)
        try:
            out = np.array(
                [h.predict_decode_latency(int(n), int(round(c)), 2) for n, c in zip(per_rank, ctx, strict=True)],
                dtype=float,
            )
        except Exception as exc:
            raise self._translate(candidate, exc) from exc
        return _checked(out, candidate, "decode")

    def kv_capacity_tokens(self, candidate: Candidate) -> int:
        if candidate in self._kv:
            return self._kv[candidate]
        self.check_supported(candidate)
        kind, fraction = MEMORY_FRACTION[self.stack.backend]
        version = resolve_version(self.stack)
        try:
            est = _sdk().estimate_kv_cache(
                self.stack.model, self.stack.system, self.stack.backend, version,
                max_num_tokens=8192, max_batch_size=256,
                memory_fraction_kind=kind, memory_fraction_value=fraction,
                **self._parallel_kwargs(candidate), **self._quant_kwargs(),
            )  # fmt: skip
            per_rank = int(est["total_kv_size_tokens"])
        except ValueError as exc:
            text = str(exc).lower()
            if "budget" in text or "negative" in text or "exceed" in text or "insufficient" in text:
                per_rank = 0  # weights and activations leave no room for KV
            else:
                raise self._translate(candidate, exc) from exc
        except Exception as exc:
            raise self._translate(candidate, exc) from exc
        tokens = max(0, per_rank) * candidate.attention_dp_size
        self._kv[candidate] = tokens
        return tokens

    def provenance(self) -> dict[str, Any]:
        return {
            **super().provenance(),
            "aiconfigurator_core": aic_version(),
            "backend_version_resolved": resolve_version(self.stack),
            "database_mode": "SILICON",
        }


def _needs_bf16_attention(exc: Exception) -> bool:
    """AIC lacks fp8 attention data for some checkpoints (DeepSeek-V3): its CLI then uses bf16 attention."""
    text = str(exc).lower()
    return "fmha_quant: \"fp8\"" in text or ("fp8" in text and ("attention" in text or "mla" in text))


def _checked(out: np.ndarray, c: Candidate, phase: str) -> np.ndarray:
    if not np.all(np.isfinite(out)) or np.any(out <= 0):
        raise DataNotAvailable(f"AIC returned a non-positive or non-finite {phase} latency for {c.name}")
    return out


@cache
def _agg_parts(stack: Stack, c: Candidate) -> tuple[Any, Any, Any]:
    """(backend, model, database) objects for AIC's own aggregated-serving estimate (``run_agg``)."""
    _sdk()
    config = importlib.import_module("aiconfigurator_core.sdk.config")
    models = importlib.import_module("aiconfigurator_core.sdk.models")
    factory = importlib.import_module("aiconfigurator_core.sdk.backends.factory")
    pdb = _perf_database()
    version = resolve_version(stack)
    mc = config.ModelConfig(
        tp_size=c.tp_size, pp_size=1, attention_dp_size=c.attention_dp_size,
        moe_tp_size=c.moe_tp_size, moe_ep_size=c.moe_ep_size,
    )  # fmt: skip
    model = models.get_model(stack.model, mc, stack.backend)
    return factory.get_backend(stack.backend), model, pdb.get_database(stack.system, stack.backend, version)


def run_agg(stack: Stack, candidate: Candidate, concurrency: int, isl: int, osl: int,
            token_budget: int = 8192) -> tuple[float, float]:  # fmt: skip
    """AIC's own agg estimate (mixed steps and its queueing factor): (TTFT ms, TPOT ms) at ``concurrency``.

    Kept beside our serving model for comparison; quantisation follows the checkpoint (AIC's defaults).
    """
    try:
        backend, model, db = _agg_parts(stack, candidate)
        config = importlib.import_module("aiconfigurator_core.sdk.config")
        rc = config.RuntimeConfig(batch_size=int(concurrency), isl=int(isl), osl=int(osl))
        result = backend.run_agg(model, db, rc, ctx_tokens=int(token_budget)).get_result_dict()
        return float(result["ttft"]), float(result["tpot"])
    except Exception as exc:  # translate every SDK failure at this edge
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DataNotAvailable(f"AIC run_agg cannot estimate {candidate.name} of {stack.model}: {first}") from exc


@cache
def system_hardware(system: str) -> dict[str, Any]:
    """GPU peaks of ``system`` from AIC's system YAML, read as plain data (the SDK is not imported).

    Keys match ``estimator.hardware.HardwareSpec``. Raises DataNotAvailable for an unknown system.
    """
    import yaml

    root = metadata.distribution(_DIST).locate_file("aiconfigurator_core/systems")
    path = root / f"{system}.yaml"  # type: ignore[operator]
    try:
        doc = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        gpu, node = doc["gpu"], doc.get("node") or {}
        bf16 = float(gpu.get("bfloat16_tc_flops") or gpu["float16_tc_flops"])
        return {
            "system": system,
            "bf16_flops": bf16,
            "fp8_flops": float(gpu.get("fp8_tc_flops") or 0.0),
            "fp4_flops": float(gpu.get("fp4_tc_flops") or 0.0),
            "mem_bw": float(gpu["mem_bw"]),
            "mem_capacity": float(gpu["mem_capacity"]),
            "intra_node_bw": float(node.get("intra_node_bw") or node.get("pcie_bw") or 64e9),
            "inter_node_bw": float(node.get("inter_node_bw") or 25e9),
            "gpus_per_node": int(node.get("num_gpus_per_node") or 8),
            "collective_latency_s": float(node.get("p2p_latency") or 1e-5),
        }
    except FileNotFoundError:
        raise DataNotAvailable(f"AIC has no system description for {system!r}") from None
    except (KeyError, TypeError, ValueError, yaml.YAMLError) as exc:
        raise SourceError(f"cannot read AIC's system file for {system!r}: {exc}") from exc
