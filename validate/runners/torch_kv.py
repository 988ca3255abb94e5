"""Exact-KV attention over a static KV cache, for timing transformers models without a serving engine.

A function registered in transformers' ``AttentionInterface`` reads exactly the valid KV length with
``scaled_dot_product_attention(enable_gqa=True)`` and no mask; the stock static-cache path attends over
the whole buffer and is 4-10x slower than the memory-bandwidth floor. torch and transformers are
imported inside the functions, so importing this module needs neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from estimator.errors import MeasurementError

EXACT_KV_ATTENTION = "sla_exact_kv"  # name registered in transformers' AttentionInterface
_KV_ATTR = "_sla_kv_cache"  # attribute set on each attention module while a KV cache is attached


@dataclass(eq=False)
class ExactKvCache:
    """Static per-layer KV buffers of shape (batch, kv_heads, max_tokens, head_dim); ``pos`` tokens are valid."""

    keys: list[Any]
    values: list[Any]
    pos: int = 0

    @classmethod
    def allocate(cls, config: Any, batch: int, max_tokens: int, device: Any, dtype: Any) -> ExactKvCache:
        import torch

        layers, kv_heads, head_dim = kv_shape(config)
        shape = (batch, kv_heads, max_tokens, head_dim)
        keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(layers)]
        values = [torch.empty(shape, device=device, dtype=dtype) for _ in range(layers)]
        return cls(keys, values)

    def fill_random(self, pos: int, seed: int = 0) -> None:
        """Random values stand in for a real prefill of ``pos`` tokens (timing does not depend on them)."""
        import torch

        gen = torch.Generator(device=self.keys[0].device).manual_seed(seed)
        for t in (*self.keys, *self.values):
            t.normal_(generator=gen)
        self.pos = pos


def exact_kv_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                       scaling: float | None = None, dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:  # fmt: skip
    """Attention over exactly the valid KV tokens, no mask. Shapes in: (batch, heads, q_len, head_dim)."""
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    q_len = query.shape[2]
    cache: ExactKvCache | None = getattr(module, _KV_ATTR, None)
    if cache is None:  # plain prefill, no cache
        out = sdpa(query, key, value, is_causal=q_len > 1, scale=scaling, enable_gqa=True)
    else:
        if q_len > 1 and cache.pos:
            raise MeasurementError("exact-KV attention: a multi-token step needs an empty cache (pos 0)")
        i, end = module.layer_idx, cache.pos + q_len
        cache.keys[i][:, :, cache.pos : end].copy_(key)
        cache.values[i][:, :, cache.pos : end].copy_(value)
        out = sdpa(query, cache.keys[i][:, :, :end], cache.values[i][:, :, :end],
                   is_causal=q_len > 1, scale=scaling, enable_gqa=True)  # fmt: skip
    return out.transpose(1, 2).contiguous(), None


def register_exact_kv_attention() -> str:
    """Register :func:`exact_kv_attention` with transformers (idempotent); returns its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(EXACT_KV_ATTENTION, exact_kv_attention)
    return EXACT_KV_ATTENTION


def attention_modules(model: Any) -> list[Any]:
    """Self-attention modules in layer order (those carrying an integer ``layer_idx``)."""
    mods = [
        m for m in model.modules() if isinstance(getattr(m, "layer_idx", None), int) and hasattr(m, "o_proj")
    ]
    return sorted(mods, key=lambda m: m.layer_idx)


def attach_kv_cache(model: Any, cache: ExactKvCache | None) -> None:
    """Point every attention module at ``cache`` (None detaches)."""
    for m in attention_modules(model):
        setattr(m, _KV_ATTR, cache)


def last_token_logits(model: Any, input_ids: Any, position_ids: Any | None = None) -> Any:
    """Forward pass computing logits of the last position only (version-independent ``logits_to_keep=1``)."""
    hidden = model.base_model(
        input_ids=input_ids, position_ids=position_ids, use_cache=False
    ).last_hidden_state
    return model.get_output_embeddings()(hidden[:, -1:, :])


def kv_shape(config: Any) -> tuple[int, int, int]:
    """(layers, KV heads, head dim) of a model config (the text config of a multimodal one)."""
    c = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(c.num_attention_heads)
    head_dim = int(getattr(c, "head_dim", None) or c.hidden_size // heads)
    return int(c.num_hidden_layers), int(getattr(c, "num_key_value_heads", None) or heads), head_dim
