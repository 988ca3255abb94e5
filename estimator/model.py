"""What we need to know about a model, read from its Hugging Face ``config.json``.

A model is either a Hugging Face id bundled with AI Configurator (read offline from the
``aiconfigurator-core`` package files, without importing its SDK) or a local directory
holding ``config.json``. Reading the file ourselves keeps a cached study free of the
0.4 s SDK import.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

from .errors import SpecError

# Common spellings users type for bundled ids.
_ALIASES = {
    "meta-llama/llama-3.1-8b": "meta-llama/Meta-Llama-3.1-8B",
    "meta-llama/llama-3.1-8b-instruct": "meta-llama/Meta-Llama-3.1-8B",
    "meta-llama/llama-3.1-70b": "meta-llama/Meta-Llama-3.1-70B",
    "meta-llama/llama-3.1-70b-instruct": "meta-llama/Meta-Llama-3.1-70B",
    "meta-llama/llama-3.1-405b": "meta-llama/Meta-Llama-3.1-405B",
}


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Shape facts used for candidate filtering and memory floors."""

    name: str  # the id AIC understands (bundled id or local directory)
    architecture: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    moe_intermediate_size: int
    num_experts: int  # 0 for dense models
    experts_per_token: int
    vocab_size: int
    max_context_tokens: int
    weight_bytes_per_param: float
    quant_block_size: int  # e.g. 128 for fp8 block quantisation, 0 if none

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def num_params(self) -> float:
        """Approximate parameter count (attention + MLP/experts + embeddings)."""
        attn = self.num_layers * self.hidden_size * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        if self.is_moe:
            mlp = self.num_layers * self.num_experts * 3 * self.hidden_size * self.moe_intermediate_size
        else:
            mlp = self.num_layers * 3 * self.hidden_size * self.intermediate_size
        return float(attn + mlp + 2 * self.vocab_size * self.hidden_size)

    @property
    def weight_bytes(self) -> float:
        return self.num_params * self.weight_bytes_per_param


def bundled_config_dir() -> Path:
    """Folder of Hugging Face configs shipped inside aiconfigurator-core."""
    return Path(str(metadata.distribution("aiconfigurator-core").locate_file("aiconfigurator_core/model_configs")))


def bundled_models() -> list[str]:
    """Hugging Face ids whose configs AIC ships (usable offline)."""
    names = sorted(p.name for p in bundled_config_dir().glob("*_config.json") if "_hf_quant_" not in p.name)
    return [n.removesuffix("_config.json").replace("--", "/", 1) for n in names]


def resolve_model_name(model: str) -> str:
    """Map what the user typed to a local directory or a bundled id; raise SpecError otherwise."""
    if os.path.isdir(model):
        if not (Path(model) / "config.json").is_file():
            raise SpecError("model", f"directory {model!r} has no config.json")
        return str(Path(model).resolve())
    known = bundled_models()
    if model in known:
        return model
    lowered = {m.lower(): m for m in known}
    if model.lower() in lowered:
        return lowered[model.lower()]
    if model.lower() in _ALIASES:
        return _ALIASES[model.lower()]
    raise SpecError(
        "model",
        f"unknown model {model!r}: give a local directory with config.json or one of the "
        f"{len(known)} ids bundled with AI Configurator (see `sla-estimate models`)",
    )


def _read_config(name: str) -> dict:
    if os.path.isdir(name):
        return json.loads((Path(name) / "config.json").read_text())
    path = bundled_config_dir() / (name.replace("/", "--", 1) + "_config.json")
    return json.loads(path.read_text())


@cache
def load_model_info(model: str) -> ModelInfo:
    """Read the shape of ``model`` (already resolved by :func:`resolve_model_name`)."""
    try:
        cfg = _read_config(model)
    except (OSError, json.JSONDecodeError) as exc:
        raise SpecError("model", f"cannot read config of {model!r}: {exc}") from exc
    text_cfg = cfg.get("text_config") or cfg
    try:
        hidden = int(text_cfg["hidden_size"])
        heads = int(text_cfg["num_attention_heads"])
        layers = int(text_cfg["num_hidden_layers"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SpecError("model", f"config of {model!r} lacks {exc}") from exc
    kv_heads = int(text_cfg.get("num_key_value_heads") or heads)
    head_dim = int(text_cfg.get("head_dim") or hidden // heads)
    inter = int(text_cfg.get("intermediate_size") or 4 * hidden)
    experts = int(
        text_cfg.get("num_experts") or text_cfg.get("n_routed_experts") or text_cfg.get("num_local_experts") or 0
    )
    quant = cfg.get("quantization_config") or {}
    method = str(quant.get("quant_method", "")).lower()
    if method in ("fp8", "modelopt") or "fp8" in str(quant.get("quant_algo", "")).lower():
        bytes_per_param = 1.0
    elif "fp4" in method or "fp4" in str(quant.get("quant_algo", "")).lower():
        bytes_per_param = 0.5
    else:
        bytes_per_param = 2.0
    block = quant.get("weight_block_size") or [0]
    return ModelInfo(
        name=model,
        architecture=(cfg.get("architectures") or ["unknown"])[0],
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=inter,
        moe_intermediate_size=int(text_cfg.get("moe_intermediate_size") or inter),
        num_experts=experts,
        experts_per_token=int(text_cfg.get("num_experts_per_tok") or 0),
        vocab_size=int(text_cfg.get("vocab_size") or 32000),
        max_context_tokens=int(text_cfg.get("max_position_embeddings") or 4096),
        weight_bytes_per_param=bytes_per_param,
        quant_block_size=int(block[-1] or 0),
    )
