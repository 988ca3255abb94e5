"""Runners behind one interface, and ``make_runner``: the one place a study picks its runner.

Runner settings arrive as strings (``--runner-option key=value`` or YAML ``runner_options``); they are
checked against the runner's constructor and converted to the types of its defaults.
"""

from __future__ import annotations

import importlib
import inspect
import json
from typing import Any

from estimator.candidates import Candidate
from estimator.errors import SpecError
from estimator.sources.base import Stack

from .base import Capabilities, Runner

# kind -> (module, class); imported only when chosen (torch, kubernetes are optional extras)
RUNNERS = {
    "replay": ("validate.runners.replay", "ReplayRunner"),
    "endpoint": ("validate.runners.endpoint", "EndpointRunner"),
    "local": ("validate.runners.local", "LocalEngineRunner"),
    "k8s": ("validate.runners.k8s", "KubernetesRunner"),
    "gpu": ("validate.runners.torch_gpu", "TorchGpuRunner"),
}
_ALIASES = {"url": "base_url"}
_EXTRAS = {"k8s": "k8s", "gpu": "gpu"}


def _coerce(kind: str, name: str, value: Any, default: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        if isinstance(default, (int, float)) and not value.isascii():  # int() and float() take ٣ and ３ too
            raise ValueError(value)
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if isinstance(default, int) and not isinstance(default, bool):
            return int(value)
        if isinstance(default, float):
            f = float(value)
            if f != f or f in (float("inf"), float("-inf")):  # nan/inf: a timeout that never ends
                raise ValueError(value)
            return f
        if isinstance(default, (tuple, list)):
            return tuple(json.loads(value)) if value.startswith("[") else tuple(value.split())
        if isinstance(default, dict):
            return json.loads(value)
    except ValueError:
        raise SpecError(f"runner_options.{name}", f"{value!r} is not valid for the {kind} runner") from None
    if name in ("port", "repeats", "warmup_iters", "min_iters", "tp_size", "gpus") and value.isdigit():
        if not value.isascii():  # ٨٠٠٠ (and ², which int() refuses with a traceback)
            raise SpecError(f"runner_options.{name}", f"{value!r} is not valid for the {kind} runner")
        return int(value)
    return value


def runner_kwargs(
    kind: str, factory: Any, options: dict[str, Any], reserved: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Options checked against ``factory``'s keyword parameters and converted to their defaults' types."""
    params = inspect.signature(factory).parameters
    allowed = {n: p for n, p in params.items() if n not in reserved and p.kind is not p.VAR_KEYWORD}
    out = {}
    for key, value in options.items():
        name = _ALIASES.get(key, key)
        if name not in allowed:
            raise SpecError(
                f"runner_options.{key}", f"unknown for the {kind} runner; known: {', '.join(sorted(allowed))}"
            )
        default = allowed[name].default
        if value is None and default is not None:  # YAML `key:`: None would replace the runner's default
            why = "" if default is inspect.Parameter.empty else "; remove the key to use the default"
            raise SpecError(f"runner_options.{key}", f"null is not a value{why}")
        out[name] = _coerce(kind, name, value, None if default is inspect.Parameter.empty else default)
    return out


def _load(kind: str) -> type:
    module, cls = RUNNERS[kind]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        extra = _EXTRAS.get(kind)
        hint = f"; install it with pip install 'sla-estimate[{extra}]'" if extra else ""
        raise SpecError("validate.runner", f"the {kind} runner needs {exc.name}{hint}") from None


def make_runner(spec: Any) -> Runner:
    """Build the runner ``spec.validate`` names, with its options checked."""
    v = spec.validate
    if v is None:
        raise SpecError("validate", "no validation settings")
    cls = _load(v.runner)
    options = dict(v.runner_options)
    if v.runner == "replay":
        if not v.measurements:
            raise SpecError(
                "measurements", "the replay runner needs --measurements FILE|DIR (jsonl, csv, Dynamo dir)"
            )
        kw = {}
        for key in ("prefill_candidate", "decode_candidate"):
            if key in options:
                try:
                    kw[key] = Candidate.parse(str(options.pop(key)))
                except ValueError as exc:
                    raise SpecError(f"runner_options.{key}", str(exc)) from None
        kw.update(runner_kwargs("replay", cls.from_paths, options, reserved=("paths", "stack")))
        return cls.from_paths(v.measurements, stack=Stack.from_spec(spec), **kw)
    if v.runner == "endpoint" and "base_url" not in options and "url" not in options:
        raise SpecError("runner_options.url", "the endpoint runner needs url=http://HOST:PORT")
    kwargs = runner_kwargs(v.runner, cls, options, reserved=("endpoint_factory", "api_client", "env"))
    if v.runner in ("local", "gpu"):
        kwargs.setdefault("model", spec.model)
    if v.runner == "local":
        kwargs.setdefault("serves", spec.model)  # model= may be a path to the study model's weights
        kwargs.setdefault("backend", spec.backend.value)
        if spec.output_dir:  # engines recorded here; a later run reaps what a kill -9 left
            kwargs.setdefault("pid_file", f"{spec.output_dir}/engines.pid")
    return cls(**kwargs)


__all__ = ["RUNNERS", "Capabilities", "Runner", "make_runner", "runner_kwargs"]
