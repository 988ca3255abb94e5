"""Measure prefill and decode on the local GPU with Hugging Face transformers (no serving engine).

The model is built from its config with random weights (or loaded from a local checkpoint).
Prefill: TTFT of one request of ISL tokens, logits of the last token only. Decode: one step of
``batch`` requests at ``context`` tokens, from a static KV cache filled with random values, replayed
as a CUDA graph. Attention reads exactly the valid KV length (``torch_kv.py``); the stock static-cache
path attends over the whole buffer and is 4-10x slower than the floor.
Every point carries its ratio to the memory-bandwidth floor (weights + KV bytes / copy bandwidth);
timing and the device's ceilings are in ``torch_timing.py``.

Tensor parallel (``tp_size`` > 1, one process per GPU under ``torchrun``): each rank builds its
Megatron-style shard of the model with random weights (``torch_tp.py``).
"""

from __future__ import annotations

import json
import logging
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

from estimator.candidates import Candidate, Mapping
from estimator.errors import EngineStartError, MeasurementError, ProbeNotSupported
from estimator.measurements import Measurement, Probe, ProbeKind

from .base import Capabilities, Runner
from .torch_floors import WeightSplit, count_experts_read, weight_split
from .torch_kv import (
    EXACT_KV_ATTENTION,
    ExactKvCache,
    attach_kv_cache,
    attention_modules,
    check_exact_kv,
    kv_shape,
    last_token_logits,
    register_exact_kv_attention,
)
from .torch_timing import DeviceCeilings, mean, measure_device, roofline_floors, std, time_step_ms
from .torch_tp import add_tp_collectives, shard_config

log = logging.getLogger(__name__)


class TorchGpuRunner(Runner):
    """Prefill and decode probes on one local GPU (or CPU for tests), random or real weights.

    ``model`` is the id probes carry (an AIC bundled id or a local directory); ``model_path`` a
    directory with ``config.json`` (and optional safetensors) to build from instead, for machines
    without aiconfigurator-core. ``check_exact_kv``: before timing, prove the exact-KV attention right
    for this model's shape in fp32 (``torch_kv.check_exact_kv``; ``ExactKvMismatch`` if not). ``kv_reserve_fraction`` of total memory is kept free for activations
    and graph pools (vLLM's 0.92 utilisation) when sizing the KV capacity. ``tp_size`` > 1 needs an
    initialised NCCL process group of that size (torchrun) and a ``device`` of this rank.
    """

    name = "gpu"
    kinds = frozenset({ProbeKind.PREFILL, ProbeKind.DECODE})

    def __init__(self, model: str, *, model_path: str | None = None, device: str = "cuda",
                 dtype: str = "bfloat16", use_cuda_graph: bool | None = None, warmup_iters: int = 3,
                 min_iters: int = 10, kv_reserve_fraction: float = 0.08, tp_size: int = 1,
                 seed: int = 0, check_exact_kv: bool = True):  # fmt: skip
        self.model = model
        self.model_path = model_path
        self.device = device
        self.dtype = dtype
        self.use_cuda_graph = use_cuda_graph
        self.warmup_iters = warmup_iters
        self.min_iters = min_iters
        self.kv_reserve_fraction = kv_reserve_fraction
        self.tp_size = tp_size
        self.seed = seed
        self.check_exact_kv = check_exact_kv
        self.exact_kv_rel_err_: float | None = None
        self._model: Any = None
        self._weights: WeightSplit | None = None
        self._dev: DeviceCeilings | None = None

    # ---- set-up -------------------------------------------------------------------------------
    def load(self) -> Any:
        """Build the model (once) and measure the device ceilings. Raises EngineStartError."""
        if self._model is not None:
            return self._model
        try:
            import torch
            import transformers
        except ImportError as exc:
            raise EngineStartError(
                f"gpu runner needs torch and transformers (pip install '.[gpu]'): {exc}"
            ) from exc
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineStartError(f"device {self.device!r} asked for but torch sees no CUDA GPU")
        if self.graphs and not self.device.startswith("cuda"):
            raise EngineStartError("CUDA graphs need a CUDA device; pass use_cuda_graph=False")
        if self.tp_size > 1 and not (torch.distributed.is_initialized()
                                     and torch.distributed.get_world_size() == self.tp_size):  # fmt: skip
            raise EngineStartError(
                f"TP {self.tp_size} needs a process group of {self.tp_size} ranks (torchrun)"
            )
        torch.manual_seed(self.seed)
        path = self._config_source()
        try:
            model = self._build(path, torch, transformers)
            if self.check_exact_kv:  # before any timing: ExactKvMismatch if our attention is wrong here
                self.exact_kv_rel_err_ = check_exact_kv(model.config, self.device)
                log.info(
                    "exact-KV attention = stock sdpa in fp32 (relative error %.2g)", self.exact_kv_rel_err_
                )
            self._model = model
            self._dev = measure_device(torch, transformers, self.device, model.dtype,
                                       self.kv_bytes_per_token, self.kv_reserve_fraction)  # fmt: skip
        except _oom_types() as exc:
            self._model = None
            raise EngineStartError(f"{self.model}: weights do not fit on {self.device}: {exc}") from exc
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            self._model = None
            raise EngineStartError(f"cannot build {self.model} from {path}: {exc}") from exc
        log.info("built %s on %s: %.1f GB weights, copy %.0f GB/s, KV capacity %d tokens", self.model,
                 self._dev.name, self.weight_bytes / 1e9, self._dev.copy_bytes_per_s / 1e9,
                 self._dev.kv_capacity_tokens)  # fmt: skip
        return self._model

    @property
    def graphs(self) -> bool:
        return self.device.startswith("cuda") if self.use_cuda_graph is None else self.use_cuda_graph

    def _config_source(self) -> Path:
        if self.model_path:
            path = Path(self.model_path)
            if not (path / "config.json").is_file():
                raise EngineStartError(f"model_path {str(path)!r} has no config.json")
            return path / "config.json"
        from estimator.model import bundled_config_dir, resolve_model_name

        try:
            name = resolve_model_name(self.model)
        except Exception as exc:  # SpecError, or PackageNotFoundError where AIC is not installed
            raise EngineStartError(
                f"cannot find a config for {self.model!r}: {exc}; pass model_path"
            ) from exc
        if os.path.isdir(name):
            return Path(name) / "config.json"
        return bundled_config_dir() / (name.replace("/", "--", 1) + "_config.json")

    def _build(self, config_file: Path, torch: Any, transformers: Any) -> Any:
        register_exact_kv_attention()
        raw = json.loads(config_file.read_text())
        raw.pop("quantization_config", None)  # random bf16 weights; quantised kernels are not ours to measure
        if self.tp_size > 1:
            raw = shard_config(raw, self.tp_size)
        config = transformers.AutoConfig.for_model(raw.pop("model_type"), **raw)
        dtype = getattr(torch, self.dtype)
        major = int(transformers.__version__.split(".")[0])
        dtype_kw = {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}
        weights = list(config_file.parent.glob("*.safetensors"))
        auto = transformers.AutoModelForCausalLM
        if weights and self.tp_size > 1:
            raise EngineStartError(
                "tensor parallel runs use random weights; give a model_path without safetensors"
            )
        if weights:  # real checkpoint
            # loaded on the host, then moved (device_map would need accelerate)
            model = auto.from_pretrained(
                config_file.parent, attn_implementation=EXACT_KV_ATTENTION, **dtype_kw
            )
        else:
            with torch.device(self.device):
                model = auto.from_config(config, attn_implementation=EXACT_KV_ATTENTION, **dtype_kw)
        model = model.to(device=self.device, dtype=dtype).eval()
        if self.tp_size > 1:
            add_tp_collectives(model, self.tp_size)
        if not attention_modules(model):
            raise EngineStartError(
                f"{type(model).__name__}: no attention modules with layer_idx/o_proj found"
            )
        return model

    # ---- properties of the built model ---------------------------------------------------------
    @property
    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self._model.parameters())

    @property
    def weights(self) -> WeightSplit:
        """The built model's weights split into the dense part and routed experts (``torch_floors.py``)."""
        if self._weights is None:
            self._weights = weight_split(self._model)
        return self._weights

    @property
    def weight_bytes_read_per_step(self) -> int:
        """The most a step can read: all weights but the input embedding table (a lookup reads a few rows,
        unless it is tied), every expert included. A step of an MoE model reads less (``_weight_floor``)."""
        return self.weights.bytes_read(self.weights.max_experts_read)

    @property
    def kv_bytes_per_token(self) -> int:
        layers, kv_heads, head_dim = kv_shape(self._model.config)
        return 2 * layers * kv_heads * head_dim * self._model.dtype.itemsize

    def kv_capacity_tokens(self) -> int:
        """KV tokens that fit in memory left after the weights, less the reserve."""
        self.load()
        return self._dev.kv_capacity_tokens

    def device_facts(self) -> dict[str, Any]:
        """What was measured once: device name, software, copy bandwidth, matmul rate, memory sizes."""
        self.load()
        d = self._dev
        return {"device": d.name, "software": dict(d.software), "copy_gb_per_s": d.copy_bytes_per_s / 1e9,
                "matmul_tflops": d.matmul_flops_per_s / 1e12, "kv_capacity_tokens": d.kv_capacity_tokens,
                "weight_bytes": self.weight_bytes, "kv_bytes_per_token": self.kv_bytes_per_token,
                "exact_kv_rel_err": self.exact_kv_rel_err_}  # fmt: skip

    # ---- probes -------------------------------------------------------------------------------
    def measure(self, probe: Probe) -> Measurement:
        self._check(probe)
        self.load()
        import torch

        iters = max(probe.repeats, self.min_iters)
        try:
            with torch.inference_mode():
                if probe.kind is ProbeKind.PREFILL:
                    return self._prefill(probe, iters, torch)
                return self._decode(probe, iters, torch)
        except _oom_types() as exc:
            raise MeasurementError(f"out of memory at {_describe(probe)}: {str(exc)[:200]}", probe) from exc
        except RuntimeError as exc:
            raise MeasurementError(f"torch failed at {_describe(probe)}: {str(exc)[:300]}", probe) from exc
        finally:
            attach_kv_cache(self._model, None)
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()

    def capabilities(self) -> Capabilities:
        """Prefill and decode of the model it builds, on the engine of its process group (``engine``)."""
        quantised = self._config_quantised()
        plain = frozenset({None, self.dtype})
        return Capabilities(
            kinds=self.kinds,
            candidates=frozenset({self.engine}),
            models=frozenset({self.model}),
            why=f"tp_size={self.tp_size} on {self.device}",
            gemm_quants=frozenset({self.dtype}) if quantised else plain,
            kv_quants=plain,
            quants_why=f"it builds random {self.dtype} weights and KV cache"
            + ("; the config is of a quantised checkpoint" if quantised else ""),
        )

    def _config_quantised(self) -> bool:
        """Whether the model's config names a quantised checkpoint, whose default the runner does not build
        (``_build`` drops ``quantization_config``); False without a readable config (``load`` says why)."""
        raw = self._raw_config()
        text = raw.get("text_config")
        nested = text.get("quantization_config") if isinstance(text, dict) else None
        return bool(raw.get("quantization_config") or nested)

    @property
    def engine(self) -> Candidate:
        """The candidate this process measures: TP{n} (its process group shards attention and every
        expert by tensor parallelism); for an MoE model on one GPU, TEP1, the candidate the estimator
        enumerates for one GPU of an MoE model (attention and all experts on that GPU, as TP1 here)."""
        if self.tp_size == 1 and self._is_moe():
            return Candidate(Mapping.TEP, 1)
        return Candidate(Mapping.TP, self.tp_size)

    def _is_moe(self) -> bool:
        """Whether the model's config routes to experts; False without a readable config (``load`` says
        why)."""
        from estimator.model import EXPERT_COUNT_KEYS

        raw = self._raw_config()
        try:
            cfg = raw.get("text_config") or raw
            return any(int(cfg.get(k) or 0) > 0 for k in EXPERT_COUNT_KEYS)
        except (ValueError, TypeError, AttributeError):
            return False

    def _raw_config(self) -> dict:
        """The model's config.json as read, or {} where it cannot be read (``load`` says why)."""
        try:
            raw = json.loads(self._config_source().read_text())
        except (EngineStartError, OSError, ValueError):
            return {}
        return raw if isinstance(raw, dict) else {}

    def _check(self, probe: Probe) -> None:
        self.require(probe)
        if probe.isl < 1 or probe.concurrency < 1:
            raise MeasurementError(
                f"isl and concurrency must be >= 1, got {probe.isl}, {probe.concurrency}", probe
            )
        if probe.kind is ProbeKind.PREFILL and probe.concurrency != 1:
            raise MeasurementError("prefill probes are batch 1", probe)

    def _prefill(self, probe: Probe, iters: int, torch: Any) -> Measurement:
        vocab = self._model.get_output_embeddings().weight.shape[0]
        ids = torch.randint(0, vocab, (1, probe.isl), device=self.device)
        step = lambda: last_token_logits(self._model, ids)
        weight_bytes, moe = self._weight_floor(step)
        samples, eager_ms = self._time_step(step, iters)
        ttft_ms = mean(samples)
        isl = probe.isl
        layers, _, head_dim = kv_shape(self._model.config)
        heads = self._model.config.get_text_config().num_attention_heads
        attn_flops = 2 * layers * heads * head_dim * isl * isl  # causal half of QK^T and PV
        head = self.weights.head_params  # the LM head runs on the last token only
        body = self.weights.active_params_per_token - head
        flops = 2 * body * isl + 2 * head + attn_flops
        bytes_moved = weight_bytes + isl * self.kv_bytes_per_token
        extra = self._floors(ttft_ms, bytes_moved, flops) | moe
        extra.update(eager_ttft_ms=eager_ms, launch_bound=bool(eager_ms and eager_ms > 1.15 * ttft_ms))
        return self._measurement(probe, samples, extra, ttft_ms=ttft_ms, ttft_std_ms=std(samples),
                                 thpt_per_gpu=isl / ttft_ms * 1e3 / self.tp_size)  # fmt: skip

    def _decode(self, probe: Probe, iters: int, torch: Any) -> Measurement:
        batch, context = probe.concurrency, probe.context_tokens
        need = batch * (context + 1)
        if need > self._dev.kv_capacity_tokens:
            raise ProbeNotSupported(f"batch {batch} at context {context} needs {need} KV tokens; "
                                   f"capacity is {self._dev.kv_capacity_tokens}", probe)  # fmt: skip
        cache = ExactKvCache.allocate(self._model.config, batch, context + 1, self.device, self._model.dtype)
        cache.fill_random(context, self.seed)
        attach_kv_cache(self._model, cache)
        vocab = self._model.get_output_embeddings().weight.shape[0]
        ids = torch.randint(0, vocab, (batch, 1), device=self.device)
        pos = torch.full((batch, 1), context, device=self.device, dtype=torch.long)
        step = lambda: last_token_logits(self._model, ids, pos)
        weight_bytes, moe = self._weight_floor(step)
        samples, eager_ms = self._time_step(step, iters)
        del cache
        itl_ms = mean(samples)
        bytes_moved = weight_bytes + need * self.kv_bytes_per_token
        flops = 2 * self.weights.active_params_per_token * batch
        extra = self._floors(itl_ms, bytes_moved, flops) | moe
        extra.update(eager_itl_ms=eager_ms, kv_tokens_read=need)
        return self._measurement(probe, samples, extra, itl_ms=itl_ms, itl_std_ms=std(samples),
                                 thpt_per_gpu=batch / itl_ms * 1e3 / self.tp_size)  # fmt: skip

    def _weight_floor(self, step: Callable[[], Any]) -> tuple[int, dict[str, Any]]:
        """Weight bytes this step reads at least; for MoE, with the experts its tokens are routed to."""
        w = self.weights
        if not w.is_moe:
            return w.bytes_read(), {}
        counted = count_experts_read(self._model, step)
        info = {"moe_experts_read": counted if counted is not None else w.min_experts_read,
                "moe_experts_counted": counted is not None, "moe_experts_total": w.max_experts_read,
                "moe_top_k": w.top_k}  # fmt: skip
        return w.bytes_read(counted), info

    def _time_step(self, step: Callable[[], Any], iters: int) -> tuple[list[float], float | None]:
        return time_step_ms(
            step, iters, device=self.device, warmup_iters=self.warmup_iters, graphs=self.graphs
        )

    def _floors(self, ms: float, bytes_moved: int, flops: float) -> dict[str, Any]:
        return {
            **roofline_floors(ms, bytes_moved, flops, self._dev),
            "cuda_graph": self.graphs,
            "weights": "real"
            if self.model_path and list(Path(self.model_path).glob("*.safetensors"))
            else "random",
        }

    def _measurement(
        self, probe: Probe, samples: list[float], extra: dict[str, Any], **fields: Any
    ) -> Measurement:
        key = "ttft_ms" if probe.kind is ProbeKind.PREFILL else "itl_ms"
        return Measurement(probe=probe, runner=self.name, samples={key: samples},
                           kv_capacity_tokens=self._dev.kv_capacity_tokens,
                           hardware=f"{self.tp_size} x {self._dev.name} on {platform.node()}", software=dict(self._dev.software),
                           extra=extra, **fields)  # fmt: skip

    def close(self) -> None:
        if self._model is not None:
            self._model, self._weights = None, None
            if self.device.startswith("cuda"):
                import torch

                torch.cuda.empty_cache()


def _oom_types() -> tuple[type[BaseException], ...]:
    try:
        import torch
    except ImportError:
        return (MemoryError,)
    return (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), MemoryError)


def _describe(probe: Probe) -> str:
    if probe.kind is ProbeKind.PREFILL:
        return f"prefill ISL {probe.isl}"
    return f"decode batch {probe.concurrency} context {probe.context_tokens}"
