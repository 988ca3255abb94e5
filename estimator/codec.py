"""Typed dataclasses <-> plain JSON data, driven by the dataclasses' own type hints.

Why: the profile cache must hold data, never code (a pickle runs whatever it names when loaded).
``encode`` turns a dataclass tree into dicts, lists, strings and numbers; ``decode(cls, data)``
rebuilds it by reading ``cls``'s type hints, so a field someone adds to ``Profile``, ``Selection``
or a surface keeps working without touching this module. Supported: frozen/slotted dataclasses,
enums, ``tuple[X, ...]`` / fixed tuples, lists, ``dict[K, V]``, ``X | None`` and other unions,
numpy arrays (numeric dtypes only, as lists), str/int/float/bool and ``Any`` holding plain JSON.
Anything else raises ``CodecError``: decoding never constructs a type the hints do not name.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from functools import cache
from typing import Any

import numpy as np

from .errors import SlaEstimateError

_ARRAY_KINDS = "biuf"  # bool, int, unsigned, float: no object or string arrays
_FLOAT_TAGS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class CodecError(SlaEstimateError):
    """The value cannot be written as data, or the data does not match the type it should hold."""


@cache
def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError) as exc:  # a hint naming a type imported only for type checking
        raise CodecError(f"cannot resolve the type hints of {cls.__name__}: {exc}") from None


def _float_out(x: float) -> float | str:
    return x if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))


def encode(value: Any, tp: Any = Any) -> Any:
    """``value`` as plain JSON data (dict keys are strings; non-finite floats are tagged strings)."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return _plain(value)
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(tp)
        if value is None and type(None) in members:
            return None
        real = [m for m in members if m is not type(None)]
        if len(real) == 1:
            return encode(value, real[0])
        for i, m in enumerate(real):
            if _matches(value, m):
                return {"union": i, "value": encode(value, m)}
        raise CodecError(f"{type(value).__name__} is none of {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, tp):
            raise CodecError(f"expected {tp.__name__}, got {type(value).__name__}")
        hints = _hints(tp)
        return {f.name: encode(getattr(value, f.name), hints[f.name]) for f in dataclasses.fields(tp)}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value).value
    if tp is np.ndarray or origin is np.ndarray:
        arr = np.asarray(value)
        if arr.dtype.kind not in _ARRAY_KINDS:
            raise CodecError(f"array of dtype {arr.dtype} is not numeric")
        flat = [_float_out(float(x)) for x in arr.ravel()] if arr.dtype.kind == "f" else arr.ravel().tolist()
        return {"dtype": arr.dtype.str, "shape": list(arr.shape), "data": flat}
    if origin is tuple or origin is list or tp in (tuple, list):
        args = typing.get_args(tp)
        if not isinstance(value, (tuple, list)):
            raise CodecError(f"expected a sequence, got {type(value).__name__}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise CodecError(f"expected {len(args)} items, got {len(value)}")
            return [encode(v, a) for v, a in zip(value, args, strict=True)]
        item = args[0] if args else Any
        return [encode(v, item) for v in value]
    if origin is dict or tp is dict:
        k_tp, v_tp = typing.get_args(tp) or (Any, Any)
        return [[encode(k, k_tp), encode(v, v_tp)] for k, v in value.items()]
    if tp is float:
        return _float_out(float(value))
    if tp is bool:
        return bool(value)
    if tp is int:
        return int(value)
    if tp is str:
        return str(value)
    if tp is type(None):
        return None
    raise CodecError(f"cannot encode a field of type {tp!r}")


def _matches(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp) or tp
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if tp is float:
        return isinstance(value, (float, int, np.floating, np.integer)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    return isinstance(origin, type) and isinstance(value, origin)


def _plain(value: Any) -> Any:
    """``Any`` fields: JSON data only (numpy scalars become numbers, tuples lists)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _float_out(float(value))
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise CodecError("an untyped mapping must have string keys")
        return {k: _plain(v) for k, v in value.items()}
    raise CodecError(f"an untyped field holds {type(value).__name__}, which is not plain data")


def decode(tp: Any, data: Any, where: str = "$") -> Any:
    """Rebuild a value of type ``tp`` from ``encode``'s output; ``CodecError`` names the path on a mismatch."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return _plain_in(data, where)
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(tp)
        if data is None and type(None) in members:
            return None
        real = [m for m in members if m is not type(None)]
        if len(real) == 1:
            return decode(real[0], data, where)
        if (
            not isinstance(data, dict)
            or set(data) != {"union", "value"}
            or not isinstance(data["union"], int)
        ):
            raise CodecError(f"{where}: expected a tagged union value")
        if not 0 <= data["union"] < len(real):
            raise CodecError(f"{where}: union member {data['union']} does not exist")
        return decode(real[data["union"]], data["value"], where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise CodecError(f"{where}: expected an object for {tp.__name__}")
        hints = _hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        extra = set(data) - names
        if extra:
            raise CodecError(f"{where}: {tp.__name__} has no field {min(extra)!r}")
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in data:
                kwargs[f.name] = decode(hints[f.name], data[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise CodecError(f"{where}: {tp.__name__}.{f.name} is missing")
        try:
            return tp(**kwargs)
        except (TypeError, ValueError) as exc:
            raise CodecError(f"{where}: {exc}") from None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(data)
        except ValueError:
            raise CodecError(f"{where}: {data!r} is not a {tp.__name__}") from None
    if tp is np.ndarray or origin is np.ndarray:
        return _array_in(data, where)
    if origin is tuple or origin is list or tp in (tuple, list):
        if not isinstance(data, list):
            raise CodecError(f"{where}: expected a list")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(data):
                raise CodecError(f"{where}: expected {len(args)} items, got {len(data)}")
            return tuple(
                decode(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, data, strict=True))
            )
        item = args[0] if args else Any
        items = [decode(item, v, f"{where}[{i}]") for i, v in enumerate(data)]
        return tuple(items) if (origin or tp) is tuple else items
    if origin is dict or tp is dict:
        k_tp, v_tp = typing.get_args(tp) or (Any, Any)
        if not isinstance(data, list) or not all(isinstance(p, list) and len(p) == 2 for p in data):
            raise CodecError(f"{where}: expected a list of [key, value] pairs")
        return {decode(k_tp, k, f"{where}.key"): decode(v_tp, v, f"{where}[{k!r}]") for k, v in data}
    if tp is float:
        if isinstance(data, str) and data in _FLOAT_TAGS:
            return _FLOAT_TAGS[data]
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise CodecError(f"{where}: expected a number, got {type(data).__name__}")
        return float(data)
    if tp is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise CodecError(f"{where}: expected an integer, got {type(data).__name__}")
        return data
    if tp is bool or tp is str:
        if not isinstance(data, tp):
            raise CodecError(f"{where}: expected {tp.__name__}, got {type(data).__name__}")
        return data
    if tp is type(None):
        if data is not None:
            raise CodecError(f"{where}: expected null")
        return None
    raise CodecError(f"{where}: cannot decode a field of type {tp!r}")


def _plain_in(data: Any, where: str) -> Any:
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list):
        return [_plain_in(v, where) for v in data]
    if isinstance(data, dict):
        return {str(k): _plain_in(v, f"{where}.{k}") for k, v in data.items()}
    raise CodecError(f"{where}: {type(data).__name__} is not plain data")


def _array_in(data: Any, where: str) -> np.ndarray:
    if not isinstance(data, dict) or set(data) != {"dtype", "shape", "data"}:
        raise CodecError(f"{where}: expected an array object (dtype, shape, data)")
    try:
        dtype = np.dtype(str(data["dtype"]))
    except TypeError:
        raise CodecError(f"{where}: unknown dtype {data['dtype']!r}") from None
    shape = data["shape"]
    if (
        dtype.kind not in _ARRAY_KINDS
        or not isinstance(shape, list)
        or not all(isinstance(n, int) and n >= 0 for n in shape)
    ):
        raise CodecError(f"{where}: bad array dtype {dtype} or shape {shape!r}")
    values = data["data"]
    if not isinstance(values, list) or len(values) != math.prod(shape):
        raise CodecError(f"{where}: array data does not match shape {shape}")
    if dtype.kind == "f":
        values = [_FLOAT_TAGS[v] if isinstance(v, str) and v in _FLOAT_TAGS else v for v in values]
    if not all(isinstance(v, (int, float)) for v in values):
        raise CodecError(f"{where}: array data must be numbers")
    try:
        return np.asarray(values, dtype=dtype).reshape(shape)
    except (OverflowError, ValueError) as exc:
        raise CodecError(f"{where}: {exc}") from None


__all__ = ["CodecError", "decode", "encode"]
