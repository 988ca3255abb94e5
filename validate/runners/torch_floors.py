"""Which weights one forward step reads and multiplies with: the GPU runner's bandwidth and compute floors.

Dense model: every weight but the input embedding table (a lookup reads a few rows) unless it is tied
to the LM head. MoE model: the dense part (attention, norms, router, shared experts, dense MLP layers,
LM head) every step, and of each MoE layer's routed experts only those the step's tokens are routed to:
at least ``top_k`` (each token picks ``top_k`` distinct experts), at most all of them (a large batch).
The runner counts the experts a step routes to (``count_experts_read``: one eager pass with hooks;
routing is fixed for fixed inputs). Without a count the floor takes ``top_k`` per layer, the fewest
possible, so the floor never exceeds what a correct kernel must read (ratio >= 1 for a real
measurement, as far as the measured copy bandwidth is the device's). Compute counts each token's own
``top_k`` experts, exact whatever the routing. torch is imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class WeightSplit:
    """Weight bytes of a built model by how often a step reads them."""

    dense_bytes: int  # read every step (LM head included; input embedding only when tied)
    expert_bytes: int  # one routed expert of one MoE layer; 0 for a dense model
    moe_layers: int
    num_experts: int  # routed experts per MoE layer
    top_k: int  # experts each token is routed to
    head_params: int  # LM head weights (prefill runs it on the last token only)
    itemsize: int

    @property
    def is_moe(self) -> bool:
        return self.moe_layers > 0

    @property
    def min_experts_read(self) -> int:
        """The fewest (layer, expert) pairs any step reads: ``top_k`` per MoE layer."""
        return self.moe_layers * min(self.top_k, self.num_experts)

    @property
    def max_experts_read(self) -> int:
        return self.moe_layers * self.num_experts

    def bytes_read(self, experts_read: int | None = None) -> int:
        """Bytes a step reads when it touches ``experts_read`` (layer, expert) pairs (None: the fewest)."""
        n = self.min_experts_read if experts_read is None else experts_read
        n = min(max(n, self.min_experts_read), self.max_experts_read)
        return self.dense_bytes + self.expert_bytes * n

    @property
    def active_params_per_token(self) -> int:
        """Weights each token multiplies with: the dense ones and its own ``top_k`` experts per MoE layer."""
        return (self.dense_bytes + self.expert_bytes * self.min_experts_read) // self.itemsize


def _bytes(params: Any) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def expert_modules(model: Any) -> list[Any]:
    """Each MoE layer's routed-experts module (named ``experts``; ``shared_expert(s)`` stay dense)."""
    return [m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] == "experts"]


def _num_experts(mod: Any) -> int:
    n = getattr(mod, "num_experts", None)
    if n is None:
        n = len(mod) if hasattr(mod, "__len__") else next(mod.parameters()).shape[0]
    return int(n)


def weight_split(model: Any) -> WeightSplit:
    """Split a built transformers model's weights into the dense part and its routed experts."""
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    total = _bytes(model.parameters())  # a tied embedding counts once
    untied_emb = 0 if emb is head else _bytes([emb])
    experts = expert_modules(model)
    expert_total = _bytes(p for m in experts for p in m.parameters())
    num = _num_experts(experts[0]) if experts else 0
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    top_k = int(getattr(config, "num_experts_per_tok", None) or getattr(config, "moe_topk", None) or 0)
    if experts and not top_k:
        raise ValueError(f"{type(model).__name__}: MoE layers but no num_experts_per_tok in the config")
    return WeightSplit(
        dense_bytes=total - untied_emb - expert_total,
        expert_bytes=expert_total // (len(experts) * num) if experts else 0,
        moe_layers=len(experts),
        num_experts=num,
        top_k=top_k,
        head_params=head.numel(),
        itemsize=head.element_size(),
    )


def count_experts_read(model: Any, step: Callable[[], Any]) -> int | None:
    """Distinct (layer, expert) pairs one eager run of ``step`` routes tokens to; None without MoE
    layers or when the routing cannot be seen (an experts module called without its indices)."""
    import torch

    mods = expert_modules(model)
    if not mods:
        return None
    per_layer: dict[int, set[int]] = {}
    handles = []
    for layer, mod in enumerate(mods):
        num = _num_experts(mod)
        if isinstance(mod, torch.nn.ModuleList):  # one module per expert: count those called
            for j, expert in enumerate(mod):
                handles.append(expert.register_forward_hook(
                    lambda *_, layer=layer, j=j: per_layer.setdefault(layer, set()).add(j)))  # fmt: skip
            continue

        def pre(_mod: Any, args: tuple, kwargs: dict, layer: int = layer, num: int = num) -> None:
            idx = args[1] if len(args) > 1 else kwargs.get("top_k_index")
            if isinstance(idx, torch.Tensor):
                ids = torch.unique(idx).tolist()
                per_layer.setdefault(layer, set()).update(
                    i for i in ids if 0 <= i < num
                )  # >= num: EP sentinel

        handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        step()
    finally:
        for h in handles:
            h.remove()
    if isinstance(mods[0], torch.nn.ModuleList) or len(per_layer) == len(mods):
        return sum(len(s) for s in per_layer.values())
    return None
