"""What we need to know about a model, read from its Hugging Face ``config.json``.

A model is either a Hugging Face id bundled with AI Configurator (read offline from the
``aiconfigurator-core`` package files, without importing its SDK) or a local directory
holding ``config.json``. Reading the file ourselves keeps a cached study free of the
0.4 s SDK import.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

from .errors import SpecError
from .study_file import DuplicateKey, unique_keys

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
        attn = (
            self.num_layers * self.hidden_size * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        )
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
    return Path(
        str(metadata.distribution("aiconfigurator-core").locate_file("aiconfigurator_core/model_configs"))
    )


def bundled_models() -> list[str]:
    """Hugging Face ids whose configs AIC ships (usable offline by every source; the aic source itself
    reads a few of them only online: ``sources.aic.offline_model_ids``)."""
    names = sorted(p.name for p in bundled_config_dir().glob("*_config.json") if "_hf_quant_" not in p.name)
    return [n.removesuffix("_config.json").replace("--", "/", 1) for n in names]


def model_key(name: str) -> str:
    """What names one model however it is written: the id after aliases (``meta-llama/Llama-3.1-8B`` is
    ``Meta-Llama-3.1-8B``), the last part of a path or id (a server's ``/models/Qwen3-32B`` is the study's
    ``Qwen/Qwen3-32B``), the repository of a Hugging Face cache snapshot path, lower-cased.

    Why: a server names its model by the path or alias it was started with, a study by its id; comparing
    these keys tells a record of another model from one of the same model named differently."""
    raw = name.strip().rstrip("/")
    text = _ALIASES.get(raw.lower(), raw)
    parts = [p for p in text.replace("\\", "/").split("/") if p]
    cached = [p for p in parts if p.startswith("models--")]
    last = cached[-1].split("--")[-1] if cached else (parts[-1] if parts else text)
    return last.lower()


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


def bundled_config_path(model_id: str) -> Path:
    """Where AIC ships the config of a Hugging Face id (the file may not exist)."""
    return bundled_config_dir() / (model_id.replace("/", "--", 1) + "_config.json")


def _read_config(name: str) -> dict:
    if os.path.isdir(name):
        path = Path(name) / "config.json"
    else:
        path = bundled_config_path(name)
    cfg = _read_json(path, max_bytes=16 << 20)
    if not isinstance(cfg, dict):
        raise SpecError("model", f"{path} must hold a JSON object, got {type(cfg).__name__}")
    return cfg


def _read_json(path: Path, max_bytes: int) -> object:
    """``study_file.read_json`` (same errors) that also refuses duplicate keys: a config.json with
    ``hidden_size`` twice is a mistake, and which one counts is not ours to guess."""
    import json

    try:
        if path.stat().st_size > max_bytes:
            raise SpecError("model", f"{path} is larger than {max_bytes} bytes")
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError("model", f"cannot read {path}: {exc.strerror}") from None
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=unique_keys)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SpecError("model", f"{path} line {line}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise SpecError("model", f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from None
    except DuplicateKey as exc:
        raise SpecError("model", f"{path}: {exc} (given twice in one object)") from None
    except RecursionError:
        raise SpecError("model", f"{path}: JSON nested too deeply") from None


def _int_field(path: str, cfg: dict, key: str, default: int | None = None, lo: int = 1) -> int:
    """A config.json integer >= ``lo``; missing/null uses ``default``; anything else names the key."""
    v = cfg.get(key)
    if v is None or (v == 0 and default is not None and lo > 0):
        if default is None:
            raise SpecError("model", f"{path}: {key} is missing")
        return default
    if (
        isinstance(v, bool)
        or not isinstance(v, (int, float))
        or not math.isfinite(v)
        or v != int(v)
        or v < lo
    ):
        raise SpecError("model", f"{path}: {key} must be an integer >= {lo}, got {str(v)[:40]!r}")
    return int(v)


EXPERT_COUNT_KEYS = ("num_experts", "n_routed_experts", "num_local_experts")  # where configs count experts


@cache
def load_model_info(model: str) -> ModelInfo:
    """Read the shape of ``model`` (already resolved by :func:`resolve_model_name`)."""
    cfg = _read_config(model)
    where = f"config.json of {model}"
    text_cfg = cfg.get("text_config") or cfg
    if not isinstance(text_cfg, dict):
        raise SpecError("model", f"{where}: text_config must be an object")
    hidden = _int_field(where, text_cfg, "hidden_size")
    heads = _int_field(where, text_cfg, "num_attention_heads")
    layers = _int_field(where, text_cfg, "num_hidden_layers")
    kv_heads = _int_field(where, text_cfg, "num_key_value_heads", heads)
    head_dim = _int_field(where, text_cfg, "head_dim", max(1, hidden // heads))
    inter = _int_field(where, text_cfg, "intermediate_size", 4 * hidden)
    experts = 0
    for key in EXPERT_COUNT_KEYS:
        experts = experts or _int_field(where, text_cfg, key, 0, lo=0)
    quant = cfg.get("quantization_config") or {}
    if not isinstance(quant, dict):
        raise SpecError("model", f"{where}: quantization_config must be an object")
    method = str(quant.get("quant_method", "")).lower()
    if method in ("fp8", "modelopt") or "fp8" in str(quant.get("quant_algo", "")).lower():
        bytes_per_param = 1.0
    elif "fp4" in method or "fp4" in str(quant.get("quant_algo", "")).lower():
        bytes_per_param = 0.5
    else:
        bytes_per_param = 2.0
    block = quant.get("weight_block_size") or [0]
    if not isinstance(block, list) or not block:
        raise SpecError("model", f"{where}: weight_block_size must be a list of integers")
    archs = cfg.get("architectures") or ["unknown"]
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise SpecError("model", f"{where}: architectures must be a list of names")
    return ModelInfo(
        name=model,
        architecture=archs[0],
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=inter,
        moe_intermediate_size=_int_field(where, text_cfg, "moe_intermediate_size", inter),
        num_experts=experts,
        experts_per_token=_int_field(where, text_cfg, "num_experts_per_tok", 0, lo=0),
        vocab_size=_int_field(where, text_cfg, "vocab_size", 32000),
        max_context_tokens=_int_field(where, text_cfg, "max_position_embeddings", 4096),
        weight_bytes_per_param=bytes_per_param,
        quant_block_size=_int_field(where, {"b": block[-1]}, "b", 0, lo=0),
    )
