"""Backend quirks of Dynamo workers and plain OpenAI servers, one row per backend.

Parallel flags: vLLM ``--tensor-parallel-size`` (MoE: ``--enable-expert-parallel``, DEP via
``--data-parallel-size``), SGLang ``--tp`` (``--ep-size``, DEP via ``--dp`` + ``--enable-dp-attention``),
TRT-LLM LLM-API engine arguments in one ``--override-engine-args`` JSON. Role flags mark disaggregated
prefill/decode workers; prefix-cache flags are set only when asked (the runner's prefill probes turn
caching off). Flag spellings follow Dynamo's own manifests and profiler.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..candidates import Candidate
from ..candidates import Mapping as ParallelMapping
from ..errors import SpecError


class Role(str, enum.Enum):
    PREFILL = "prefill"  # disaggregated prefill worker
    DECODE = "decode"  # disaggregated decode worker
    AGG = "agg"  # one worker doing both (what the runner measures)


def _vllm_parallel(c: Candidate) -> tuple[str, ...]:
    if c.mapping is ParallelMapping.DEP:
        return (
            "--tensor-parallel-size",
            "1",
            "--data-parallel-size",
            str(c.num_gpus),
            "--enable-expert-parallel",
        )
    ep = ("--enable-expert-parallel",) if c.mapping is ParallelMapping.TEP else ()
    return ("--tensor-parallel-size", str(c.num_gpus), *ep)


def _sglang_parallel(c: Candidate) -> tuple[str, ...]:
    n = str(c.num_gpus)
    if c.mapping is ParallelMapping.DEP:
        return ("--tp", n, "--dp", n, "--enable-dp-attention", "--ep-size", n)
    return ("--tp", n, "--ep-size", n) if c.mapping is ParallelMapping.TEP else ("--tp", n)


def _trtllm_engine(c: Candidate, role: Role, prefix_caching: bool | None) -> dict[str, Any]:
    """TRT-LLM takes parallelism and role settings as LLM-API engine arguments (one JSON flag)."""
    args: dict[str, Any] = {"tensor_parallel_size": c.num_gpus}
    if c.mapping is not ParallelMapping.TP:
        args |= {"moe_expert_parallel_size": c.num_gpus, "moe_tensor_parallel_size": 1}
        args["enable_attention_dp"] = c.mapping is ParallelMapping.DEP
    if prefix_caching is not None:
        args["kv_cache_config"] = {"enable_block_reuse": prefix_caching}
    if role is not Role.AGG:
        args["cache_transceiver_config"] = {"backend": "DEFAULT"}
    if role is Role.PREFILL:
        args["disable_overlap_scheduler"] = True  # not supported by prefill-only TRT-LLM workers
    return args


_SGLANG_DISAGG = ("--disaggregation-transfer-backend", "nixl", "--disaggregation-bootstrap-port", "12345")


@dataclass(frozen=True, slots=True)
class BackendFlags:
    """What differs between backends, in one place."""

    module: str  # Dynamo worker: python3 -m <module>
    runtime: str  # Dynamo runtime image name under nvcr.io/nvidia/ai-dynamo/
    model_flags: Callable[[str], tuple[str, ...]]
    parallel: Callable[[Candidate], tuple[str, ...]] | None  # None: engine args carry it (TRT-LLM)
    role_flags: Mapping[Role, tuple[str, ...]]
    prefix_cache_flags: Mapping[bool, tuple[str, ...]]
    worker_names: Mapping[Role, str]  # DGD service names Dynamo's planner looks for
    serve_command: tuple[str, ...] | None  # plain (non-Dynamo) OpenAI server; None: unsupported
    serve_model_flag: str | None  # how serve_command takes the model (None: positional)
    serve_image: str | None


BACKENDS: dict[str, BackendFlags] = {
    "vllm": BackendFlags(
        module="dynamo.vllm",
        runtime="vllm-runtime",
        model_flags=lambda m: ("--model", m),
        parallel=_vllm_parallel,
        role_flags={Role.PREFILL: ("--is-prefill-worker",), Role.DECODE: (), Role.AGG: ()},
        prefix_cache_flags={True: ("--enable-prefix-caching",), False: ("--no-enable-prefix-caching",)},
        worker_names={
            Role.PREFILL: "VllmPrefillWorker",
            Role.DECODE: "VllmDecodeWorker",
            Role.AGG: "VllmWorker",
        },
        serve_command=("vllm", "serve"),
        serve_model_flag=None,
        serve_image="vllm/vllm-openai:latest",
    ),
    "sglang": BackendFlags(
        module="dynamo.sglang",
        runtime="sglang-runtime",
        model_flags=lambda m: ("--model-path", m, "--served-model-name", m),
        parallel=_sglang_parallel,
        role_flags={
            Role.PREFILL: ("--disaggregation-mode", "prefill", *_SGLANG_DISAGG),
            Role.DECODE: ("--disaggregation-mode", "decode", *_SGLANG_DISAGG),
            Role.AGG: (),
        },
        prefix_cache_flags={True: (), False: ("--disable-radix-cache",)},
        worker_names={Role.PREFILL: "prefill", Role.DECODE: "decode", Role.AGG: "decode"},
        serve_command=("python3", "-m", "sglang.launch_server"),
        serve_model_flag="--model-path",
        serve_image="lmsysorg/sglang:latest",
    ),
    "trtllm": BackendFlags(
        module="dynamo.trtllm",
        runtime="tensorrtllm-runtime",
        model_flags=lambda m: ("--model-path", m, "--served-model-name", m),
        parallel=None,
        role_flags={
            Role.PREFILL: ("--disaggregation-mode", "prefill"),
            Role.DECODE: ("--disaggregation-mode", "decode"),
            Role.AGG: (),
        },
        prefix_cache_flags={True: (), False: ()},  # in the engine args
        worker_names={
            Role.PREFILL: "TRTLLMPrefillWorker",
            Role.DECODE: "TRTLLMDecodeWorker",
            Role.AGG: "TRTLLMWorker",
        },
        serve_command=None,
        serve_model_flag=None,
        serve_image=None,
    ),
}


def backend_flags(backend: str) -> BackendFlags:
    try:
        return BACKENDS[str(getattr(backend, "value", backend))]
    except KeyError:
        raise SpecError("backend", f"{backend!r} is not one of {', '.join(BACKENDS)}") from None


def engine_args(
    backend: str, candidate: Candidate, role: Role, *, prefix_caching: bool | None = None
) -> tuple[str, ...]:
    """Parallel, role and prefix-cache flags of one engine; ``prefix_caching=None``: engine default."""
    b = backend_flags(backend)
    if b.parallel is None:
        engine = _trtllm_engine(candidate, role, prefix_caching)
        return (*b.role_flags[role], "--override-engine-args", json.dumps(engine))
    cache = () if prefix_caching is None else b.prefix_cache_flags[prefix_caching]
    return (*b.parallel(candidate), *b.role_flags[role], *cache)
