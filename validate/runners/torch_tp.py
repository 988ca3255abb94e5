"""Megatron-style tensor parallelism for a transformers model built with random weights.

Each rank builds its shard (heads, KV heads, MLP width and vocabulary split by TP) and all-reduces
after the embedding, each attention output and each MLP, as vLLM does. torch is imported inside
the functions, so importing this module needs no torch.
"""

from __future__ import annotations

from typing import Any

from estimator.errors import EngineStartError


def shard_config(raw: dict[str, Any], tp: int) -> dict[str, Any]:
    """One rank's shape under Megatron-style TP: heads, KV heads, MLP width and vocabulary split by ``tp``."""
    heads = int(raw["num_attention_heads"])
    kv_heads = int(raw.get("num_key_value_heads") or heads)
    split = {"num_attention_heads": heads, "num_key_value_heads": kv_heads,
             "intermediate_size": int(raw["intermediate_size"]), "vocab_size": int(raw["vocab_size"])}  # fmt: skip
    for name, value in split.items():
        if value % tp:
            raise EngineStartError(f"{name} {value} does not split by TP {tp}")
    head_dim = int(raw.get("head_dim") or int(raw["hidden_size"]) // heads)
    return {**raw, **{k: v // tp for k, v in split.items()}, "head_dim": head_dim}


def add_tp_collectives(model: Any, tp: int) -> None:
    """All-reduce partial sums (embedding, attention output, MLP output); all-gather the vocab-split logits."""
    import torch.distributed as dist

    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in torch 2.13

    def all_reduce(_mod: Any, _inp: Any, out: Any) -> Any:
        dist.all_reduce(out)
        return out

    def all_gather(_mod: Any, _inp: Any, out: Any) -> Any:
        full = out.new_empty((tp * out.shape[0], *out.shape[1:]))
        gather(full, out.contiguous())
        return full

    model.get_input_embeddings().register_forward_hook(all_reduce)
    model.get_output_embeddings().register_forward_hook(all_gather)
    for name, mod in model.named_modules():
        if name.endswith(("self_attn.o_proj", "mlp.down_proj")):
            mod.register_forward_hook(all_reduce)
