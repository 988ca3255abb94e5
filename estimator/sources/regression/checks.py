"""Strict readers for the fields of a model file: a model file is data, and data is checked on load.

Each raises ``ValueError("FIELD: what is wrong")``; ``files.load_model_file`` adds the file's path.
Why so strict: a hand-edited file must fail here with the field named, never later as an IndexError,
a NaN latency or a tree walk of a billion levels.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def obj(field: str, v: Any, required: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON object with string keys; with ``required``/``optional`` given, no other keys."""
    if not isinstance(v, dict):
        raise ValueError(f"{field}: must be an object, got {type(v).__name__}")
    missing = [k for k in required if k not in v]
    if missing:
        raise ValueError(f"{field}: {missing[0]!r} is missing")
    if required or optional:
        unknown = sorted(str(k) for k in set(v) - set(required) - set(optional))
        if unknown:
            raise ValueError(f"{field}: unknown key {unknown[0]!r}")
    return v


def integer(field: str, v: Any, lo: int | None = None, hi: int | None = None) -> int:
    """A JSON integer (not a bool, a float or a string) in [lo, hi]."""
    bad = type(v) is not int or (lo is not None and v < lo) or (hi is not None and v > hi)
    if bad:
        want = f" {lo}..{hi}" if lo is not None and hi is not None else f" >= {lo}" if lo is not None else ""
        raise ValueError(f"{field}: must be an integer{want}, got {_show(v)}")
    return v


def _finite(x: Any) -> bool:
    """A JSON number (not a bool) that is a finite float (an integer of 400 digits is not)."""
    if type(x) is float:
        return math.isfinite(x)
    return type(x) is int and abs(x) <= sys.float_info.max


def number(field: str, v: Any, lo: float | None = None, positive: bool = False) -> float:
    """A finite JSON number (not a bool), >= ``lo``, or > 0 with ``positive``."""
    if not _finite(v):
        raise ValueError(f"{field}: must be a finite number, got {_show(v)}")
    if (positive and v <= 0) or (lo is not None and v < lo):
        raise ValueError(f"{field}: must be {'> 0' if positive else f'>= {lo}'}, got {_show(v)}")
    return float(v)


def text(field: str, v: Any, empty: bool = True) -> str:
    if not isinstance(v, str) or (not empty and not v.strip()):
        raise ValueError(f"{field}: must be {'a' if empty else 'a non-empty'} string, got {_show(v)}")
    return v


def numbers(field: str, v: Any, n: int | None = None, lo: float | None = None) -> list[float]:
    """A list of finite numbers (of length ``n`` where given), each >= ``lo``."""
    if not isinstance(v, list):
        raise ValueError(f"{field}: must be a list, got {type(v).__name__}")
    if n is not None and len(v) != n:
        raise ValueError(f"{field}: must hold {n} numbers, got {len(v)}")
    return [number(f"{field}[{i}]", x, lo) for i, x in enumerate(v)]


def int_list(field: str, v: Any, lo: int, hi: int) -> np.ndarray:
    """A list of integers in [lo, hi] as int64; checked with numpy (trees hold ~10^5), the culprit named."""
    if not isinstance(v, list):
        raise ValueError(f"{field}: must be a list, got {type(v).__name__}")
    if set(map(type, v)) <= {int}:
        try:
            a = np.array(v, dtype=np.int64)
        except OverflowError:
            a = None
        if a is not None and (not a.size or (a.min() >= lo and a.max() <= hi)):
            return a
    for i, x in enumerate(v):
        integer(f"{field}[{i}]", x, lo, hi)
    raise AssertionError("unreachable")


def finite_list(field: str, v: Any) -> np.ndarray:
    """A list of finite numbers as float64 (tree thresholds and values, table times)."""
    if not isinstance(v, list):
        raise ValueError(f"{field}: must be a list, got {type(v).__name__}")
    if set(map(type, v)) <= {int, float}:
        try:
            a = np.array(v, dtype=float)
        except OverflowError:
            a = None
        if a is not None and np.isfinite(a).all():
            return a
    for i, x in enumerate(v):
        number(f"{field}[{i}]", x)
    raise AssertionError("unreachable")


def texts(field: str, v: Any) -> list[str]:
    if not isinstance(v, list):
        raise ValueError(f"{field}: must be a list, got {type(v).__name__}")
    return [text(f"{field}[{i}]", x) for i, x in enumerate(v)]


def counts(field: str, v: Any) -> dict[str, int]:
    """An object of name -> count (training summary, left-out reasons)."""
    return {k: integer(f"{field}.{k}", n, lo=0) for k, n in obj(field, v).items()}


_ERROR_KEYS = ("rows", "median_abs_pct", "p90_abs_pct", "log_abs_p90")


def errors(field: str, v: Any, extra: tuple[str, ...] = ()) -> None:
    """An error summary: kind -> {rows, median_abs_pct, p90_abs_pct, log_abs_p90 (, extra)}."""
    for kind, e in obj(field, v).items():
        e = obj(f"{field}.{kind}", e, _ERROR_KEYS, extra)
        integer(f"{field}.{kind}.rows", e["rows"], lo=0)
        for k in (*_ERROR_KEYS[1:], *extra):
            if k in e:
                number(f"{field}.{kind}.{k}", e[k], lo=0)


_SUMMARY_COUNTS = ("kinds", "origins", "backends", "systems", "models", "stacks")


def provenance(v: Any) -> dict[str, Any]:
    """What ``fitting.assemble`` writes; every key optional (older files lack some), none unknown."""
    p = obj("provenance", v, optional=(
        "created_utc", "training_sha256", "training_summary", "training_sources", "packages", "cv",
        "cv_scheme", "in_sample", "cv_by_group", "in_sample_by_group", "notes", "warnings", "left_out",
        "tables", "table_check"))  # fmt: skip
    for k in ("created_utc", "training_sha256", "cv_scheme", "notes"):
        if k in p:
            text(f"provenance.{k}", p[k])
    for k in ("training_sources", "warnings"):
        if k in p:
            texts(f"provenance.{k}", p[k])
    if "packages" in p:
        for name, version in obj("provenance.packages", p["packages"]).items():
            text(f"provenance.packages.{name}", version)
    if "training_summary" in p:
        keys = ("rows", "kv_rows", *_SUMMARY_COUNTS)
        s = obj("provenance.training_summary", p["training_summary"], optional=keys)
        for k in ("rows", "kv_rows"):
            if k in s:
                integer(f"provenance.training_summary.{k}", s[k], lo=0)
        for k in _SUMMARY_COUNTS:
            if k in s:
                counts(f"provenance.training_summary.{k}", s[k])
    for k in ("cv", "in_sample"):
        if k in p:
            errors(f"provenance.{k}", p[k])
    for k in ("cv_by_group", "in_sample_by_group"):
        if k in p:
            for group, e in obj(f"provenance.{k}", p[k]).items():
                errors(f"provenance.{k}.{group}", e)
    if "left_out" in p:
        lo = obj("provenance.left_out", p["left_out"], ("total",), ("reasons",))
        integer("provenance.left_out.total", lo["total"], lo=0)
        if "reasons" in lo:
            counts("provenance.left_out.reasons", lo["reasons"])
    if "tables" in p:
        counts("provenance.tables", p["tables"])
    if "table_check" in p:
        tc = dict(obj("provenance.table_check", p["table_check"]))
        if "points" in tc:
            text("provenance.table_check.points", tc.pop("points"))
        errors("provenance.table_check", tc, extra=("max_abs_pct",))
    return p
