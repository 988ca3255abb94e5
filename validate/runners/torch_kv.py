"""Exact-KV attention over a static KV cache, for timing transformers models without a serving engine.

A function registered in transformers' ``AttentionInterface`` reads exactly the valid KV length with
``scaled_dot_product_attention(enable_gqa=True)`` and no mask; the stock static-cache path attends over
the whole buffer and is 4-10x slower than the memory-bandwidth floor. torch and transformers are
imported inside the functions, so importing this module needs neither.

``check_exact_kv`` proves the function right for a model's attention shape before anything is timed:
in fp32, one prefill and one decode step through it must give the logits of transformers' stock sdpa
attention with its own cache within ``EXACT_KV_REL_TOLERANCE``, or ``ExactKvMismatch`` is raised.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from estimator.errors import ExactKvMismatch, MeasurementError

# Relative L2 error of the logits allowed between exact-KV and stock attention, in fp32. Both paths do
# the same arithmetic in another order (seen: 0.0 on an H200); a wrong cache read is off by O(0.1-1).
EXACT_KV_REL_TOLERANCE = 1e-4
CHECK_LAYERS = 2  # depth of the fp32 twin: the attention shape is per layer, more layers add nothing
CHECK_VOCAB = 4096  # vocabulary of the twin: logits need not be full-width to show an attention error

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


def check_exact_kv(config: Any, device: Any = "cpu", *, attention: str = EXACT_KV_ATTENTION, batch: int = 2,
                   prompt_len: int = 48, seed: int = 0) -> float:  # fmt: skip
    """Relative logit error of ``attention`` (a name registered in transformers' AttentionInterface)
    against stock sdpa, on an fp32 twin of ``config`` (same heads and head size, ``CHECK_LAYERS`` layers).

    Prefill of ``prompt_len`` tokens, then one decode step, through a cache longer than needed and
    filled with noise (reading past the valid length shows). Raises ``ExactKvMismatch`` above
    ``EXACT_KV_REL_TOLERANCE``; returns the larger of the two errors otherwise.
    """
    import torch
    import transformers

    register_exact_kv_attention()
    twin = _check_config(config)
    gen = torch.Generator().manual_seed(seed)
    auto = transformers.AutoModelForCausalLM
    with torch.device(device):
        ref = auto.from_config(twin, attn_implementation="sdpa", dtype=torch.float32).eval()
        ours = auto.from_config(
            copy.deepcopy(twin), attn_implementation=attention, dtype=torch.float32
        ).eval()
    ours.load_state_dict(ref.state_dict())
    vocab = twin.get_text_config().vocab_size
    prompt = torch.randint(0, vocab, (batch, prompt_len), generator=gen).to(device)
    nxt = torch.randint(0, vocab, (batch, 1), generator=gen).to(device)
    with torch.inference_mode():
        out = ref(input_ids=prompt, use_cache=True)
        ref_prefill = out.logits[:, -1:].float()
        ref_decode = ref(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True).logits.float()
        cache = ExactKvCache.allocate(ours.config, batch, prompt_len + 9, device, torch.float32)
        cache.fill_random(0, seed + 1)
        attach_kv_cache(ours, cache)
        try:
            our_prefill = last_token_logits(ours, prompt).float()
            cache.pos = prompt_len
            our_decode = last_token_logits(
                ours, nxt, torch.full((batch, 1), prompt_len, device=device)
            ).float()
        finally:
            attach_kv_cache(ours, None)
    errors = {
        "prefill": float((our_prefill - ref_prefill).norm() / ref_prefill.norm()),
        "decode": float((our_decode - ref_decode).norm() / ref_decode.norm()),
    }
    worst = max(errors.values())
    if not worst <= EXACT_KV_REL_TOLERANCE:  # also catches NaN
        raise ExactKvMismatch(
            f"exact-KV attention {attention!r} disagrees with stock sdpa in fp32: relative logit error "
            f"prefill {errors['prefill']:.3g}, decode {errors['decode']:.3g} > {EXACT_KV_REL_TOLERANCE:g} "
            f"({type(ours).__name__}, batch {batch}, prompt {prompt_len}); timings would not be of this model"
        )
    return worst


def _check_config(config: Any) -> Any:
    """An fp32-checkable twin of ``config``: fewer layers, a small vocabulary, no quantisation."""
    twin = copy.deepcopy(config)
    text = twin.get_text_config() if hasattr(twin, "get_text_config") else twin
    layers = min(CHECK_LAYERS, int(text.num_hidden_layers))
    text.num_hidden_layers = layers
    if isinstance(getattr(text, "layer_types", None), list):  # per-layer attention types match the depth
        text.layer_types = text.layer_types[:layers]
    text.vocab_size = min(int(text.vocab_size), CHECK_VOCAB)
    if getattr(text, "pad_token_id", None) is not None and text.pad_token_id >= text.vocab_size:
        text.pad_token_id = None
    if hasattr(twin, "quantization_config"):
        delattr(twin, "quantization_config")
    return twin
