"""Candidate engines: a parallel mapping on a number of GPUs, and the rules that drop invalid ones."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import DataNotAvailable, SpecError
from .model import ModelInfo


class Mapping(str, enum.Enum):
    """How one engine spreads the model over its GPUs."""

    TP = "TP"  # tensor parallel (dense, or MoE with experts split by TP)
    TEP = "TEP"  # attention TP, experts split by expert parallelism
    DEP = "DEP"  # attention data parallel, experts split by expert parallelism


@dataclass(frozen=True, slots=True)
class Candidate:
    """One engine shape. AIC conventions: TEP n = tp n, moe_ep n; DEP n = attention_dp n, moe_ep n."""

    mapping: Mapping
    num_gpus: int

    @property
    def name(self) -> str:
        return f"{self.mapping.value}{self.num_gpus}"

    @property
    def tp_size(self) -> int:
        return 1 if self.mapping is Mapping.DEP else self.num_gpus

    @property
    def attention_dp_size(self) -> int:
        return self.num_gpus if self.mapping is Mapping.DEP else 1

    @property
    def moe_tp_size(self) -> int:
        return self.num_gpus if self.mapping is Mapping.TP else 1

    @property
    def moe_ep_size(self) -> int:
        return 1 if self.mapping is Mapping.TP else self.num_gpus

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "mapping": self.mapping.value,
            "num_gpus": self.num_gpus,
            "tp": self.tp_size,
            "attention_dp": self.attention_dp_size,
            "moe_tp": self.moe_tp_size,
            "moe_ep": self.moe_ep_size,
        }

    @classmethod
    def parse(cls, name: str) -> Candidate:
        """``"TP4"`` -> Candidate(TP, 4)."""
        for m in Mapping:
            digits = name[len(m.value) :]
            if name.upper().startswith(m.value) and digits.isascii() and digits.isdigit():  # not TP٢
                return cls(m, int(digits))
        raise ValueError(f"not a candidate name: {name!r} (expected e.g. TP4, TEP8, DEP8)")


@dataclass(frozen=True, slots=True)
class Rejection:
    """A candidate we will not estimate, and why. ``by_gpu_count``: its GPU count is the cause (the model
    does not shard that way, or its weights or one request do not fit in that many GPUs)."""

    candidate: Candidate
    reason: str
    by_gpu_count: bool = False


class GpuCountError(DataNotAvailable, SpecError):
    """No engine at all, and only because of the GPUs per engine asked for: bad input naming ``gpus``."""

    def __init__(self, message: str):
        SpecError.__init__(self, "gpus", message)


def no_engine_error(
    rejected: list[Rejection], gpu_counts: tuple[int, ...], *, all_rejected: bool = True
) -> DataNotAvailable:
    """The one-line error when no candidate could be estimated. It names ``gpus`` when every candidate
    was rejected (``all_rejected``), each for its GPU count; else it is the source's, with every reason."""
    reasons = "; ".join(f"{r.candidate.name}: {r.reason}" for r in rejected) or "no candidates"
    message = f"no candidate engine could be estimated ({reasons})"
    if all_rejected and rejected and all(r.by_gpu_count for r in rejected):
        counts = ", ".join(str(n) for n in gpu_counts)
        return GpuCountError(f"no engine on {counts} GPU(s) can serve this study: {message}")
    return DataNotAvailable(message)


def mappings_for(model: ModelInfo) -> tuple[Mapping, ...]:
    """Dense models: TP. MoE models: TEP and DEP (Dynamo's sweep)."""
    return (Mapping.TEP, Mapping.DEP) if model.is_moe else (Mapping.TP,)


def divisibility_problem(model: ModelInfo, cand: Candidate) -> str | None:
    """Why ``cand`` cannot shard ``model``, or None. Mirrors the engines' own checks."""
    tp = cand.tp_size
    if model.num_heads % tp:
        return f"{model.num_heads} attention heads do not divide by TP {tp}"
    if model.num_kv_heads % tp and tp % model.num_kv_heads:
        return f"{model.num_kv_heads} KV heads and TP {tp} do not divide each other"
    if model.is_moe:
        if model.num_experts % cand.moe_ep_size:
            return f"{model.num_experts} experts do not divide by EP {cand.moe_ep_size}"
        shard = model.moe_intermediate_size // cand.moe_tp_size
        if model.moe_intermediate_size % cand.moe_tp_size or (
            model.quant_block_size and shard % model.quant_block_size
        ):
            return f"expert intermediate size {model.moe_intermediate_size} does not split by MoE TP {cand.moe_tp_size}"
    else:
        shard = model.intermediate_size // tp
        if model.intermediate_size % tp or (model.quant_block_size and shard % model.quant_block_size):
            return f"intermediate size {model.intermediate_size} does not split by TP {tp}"
    return None


def enumerate_candidates(model: ModelInfo, gpu_counts: tuple[int, ...]) -> tuple[list[Candidate], list[Rejection]]:
    """All mappings × GPU counts; those that cannot shard the model are returned as rejections."""
    kept: list[Candidate] = []
    dropped: list[Rejection] = []
    for mapping in mappings_for(model):
        for n in gpu_counts:
            if mapping is Mapping.DEP and n == 1:
                continue  # DEP1 is TEP1
            cand = Candidate(mapping, n)
            problem = divisibility_problem(model, cand)
            if problem:
                dropped.append(Rejection(cand, problem, by_gpu_count=True))
            else:
                kept.append(cand)
    return kept, dropped
