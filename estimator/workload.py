"""Workloads as distributions: fixed ISL/OSL, a lognormal (mean, spread), or a mooncake JSONL trace.

A ``Workload`` is a set of request samples (ISL, OSL, prefix tokens already cached) plus, for a
trace, their arrival times. Capacity planning uses the samples for the service-time distribution of
prefill (percentiles of TTFT) and the means for decode; a trace also gives the offered rate and the
burstiness of arrivals (squared coefficient of variation of inter-arrival times, 1 for Poisson).

Prefix reuse: in the mooncake format each request lists one ``hash_ids`` entry per 512-token block
of its prompt, and equal ids are the same prefix block. With an unbounded prefix cache a request
reuses the leading blocks that any earlier request already computed; its effective prefill is the
rest of the prompt (always at least one token). A plain ``prefix_hit_rate`` h shortens every prompt's
prefill to (1 - h) x ISL; with both, the larger reuse wins.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SpecError
from .study_file import unique_keys

BLOCK_TOKENS = 512  # tokens per hash id in the published mooncake traces
NUM_SAMPLES = 128  # quantile samples of a parametric distribution


@dataclass(frozen=True, slots=True)
class Workload:
    """Request samples (equal weight). ``arrival_ms`` is set only for traces."""

    name: str
    isl: np.ndarray  # prompt tokens per request
    osl: np.ndarray  # output tokens per request
    cached_tokens: np.ndarray  # prompt tokens served from the prefix cache
    arrival_ms: np.ndarray | None = None
    # means, computed once: a capacity search reads them millions of times
    _mean_isl: float = field(init=False, repr=False, compare=False)
    _mean_osl: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (len(self.isl) == len(self.osl) == len(self.cached_tokens)) or len(self.isl) == 0:
            raise SpecError("workload", "needs at least one request and equal-length isl/osl/cached arrays")
        object.__setattr__(self, "_mean_isl", float(np.mean(self.isl)))
        object.__setattr__(self, "_mean_osl", float(np.mean(self.osl)))

    @property
    def prefill_tokens(self) -> np.ndarray:
        """Tokens each request must actually prefill (prompt minus cached prefix)."""
        return self.isl - self.cached_tokens

    @property
    def mean_isl(self) -> float:
        return self._mean_isl

    @property
    def mean_osl(self) -> float:
        return self._mean_osl

    @property
    def mean_prefill_tokens(self) -> float:
        return float(np.mean(self.prefill_tokens))

    @property
    def decode_context_tokens(self) -> float:
        """Mean context during decode: ISL + OSL/2 (the PerfSource convention)."""
        return self.mean_isl + self.mean_osl / 2

    @property
    def prefix_reuse(self) -> float:
        """Fraction of prompt tokens served from the prefix cache."""
        return float(np.sum(self.cached_tokens) / np.sum(self.isl))

    @property
    def rate_rps(self) -> float | None:
        """Offered requests/s of a trace (requests over its span), None for synthetic workloads."""
        if self.arrival_ms is None or len(self.arrival_ms) < 2:
            return None
        span = float(self.arrival_ms[-1] - self.arrival_ms[0])
        return (len(self.arrival_ms) - 1) / span * 1000.0 if span > 0 else None

    @property
    def arrival_cv2(self) -> float:
        """Squared CV of inter-arrival times (1: Poisson, >1: bursty); 1 without a trace."""
        if self.arrival_ms is None or len(self.arrival_ms) < 3:
            return 1.0
        gaps = np.diff(self.arrival_ms)
        m = float(np.mean(gaps))
        return float(np.var(gaps) / m**2) if m > 0 else 1.0

    def with_prefix_hit_rate(self, hit_rate: float) -> Workload:
        """Every prompt reuses at least ``hit_rate`` of its tokens (one token always prefills)."""
        if not 0.0 <= hit_rate < 1.0:
            raise SpecError("prefix_hit_rate", f"must be in [0, 1), got {hit_rate!r}")
        plain = np.floor(self.isl * hit_rate)
        cached = np.minimum(np.maximum(self.cached_tokens, plain), self.isl - 1)
        return replace(self, cached_tokens=cached, name=f"{self.name}, prefix hit {hit_rate:g}")

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "requests": len(self.isl),
            "isl_mean": self.mean_isl,
            "isl_p90": float(np.percentile(self.isl, 90)),
            "osl_mean": self.mean_osl,
            "osl_p90": float(np.percentile(self.osl, 90)),
            "prefill_tokens_mean": self.mean_prefill_tokens,
            "prefix_reuse": self.prefix_reuse,
            "trace_rate_rps": self.rate_rps,
            "arrival_cv2": self.arrival_cv2,
        }


def fixed(isl: int, osl: int) -> Workload:
    one = np.ones(1)
    return Workload(f"fixed ISL {isl} / OSL {osl}", one * isl, one * osl, np.zeros(1))


def _lognormal_quantiles(mean: float, cv: float, n: int) -> np.ndarray:
    from scipy.stats import lognorm

    if cv <= 0:
        return np.full(n, float(mean))
    sigma = math.sqrt(math.log1p(cv * cv))
    mu = math.log(mean) - sigma * sigma / 2
    q = (np.arange(n) + 0.5) / n
    return lognorm.ppf(q, s=sigma, scale=math.exp(mu))


def lognormal(isl_mean: float, osl_mean: float, isl_cv: float, osl_cv: float, *, max_tokens: int = 0,
              n: int = NUM_SAMPLES) -> Workload:  # fmt: skip
    """ISL and OSL independent lognormals with the given means and coefficients of variation.

    Samples are the distribution's quantiles (deterministic), OSL paired in a fixed shuffled order.
    """
    isl = np.maximum(1, np.round(_lognormal_quantiles(isl_mean, isl_cv, n)))
    osl = np.maximum(1, np.round(_lognormal_quantiles(osl_mean, osl_cv, n)))
    osl = osl[np.random.default_rng(0).permutation(n)]
    if max_tokens:
        isl = np.minimum(isl, np.maximum(1, max_tokens - osl))
    name = f"lognormal ISL {isl_mean:g} (cv {isl_cv:g}) / OSL {osl_mean:g} (cv {osl_cv:g})"
    return Workload(name, isl, osl, np.zeros(n))


def _bad(path: Path, line: int, why: str) -> SpecError:
    return SpecError("workload", f"{path}:{line}: {why}")


def load_trace(path: str | Path, block_tokens: int = BLOCK_TOKENS) -> Workload:
    """A mooncake JSONL trace: ``timestamp`` (ms), ``input_length``, ``output_length``, ``hash_ids``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError("workload", f"cannot read {path}: {exc.strerror}") from None
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise _bad(path, line, f"not UTF-8 text (byte 0x{data[exc.start]:02x})") from None
    ts, isl, osl, cached = [], [], [], []
    seen: set[Any] = set()
    for no, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            rec = json.loads(text, object_pairs_hook=unique_keys)
        except json.JSONDecodeError as exc:
            raise _bad(path, no, f"not valid JSON ({exc.msg})") from None
        except ValueError as exc:  # a duplicate key
            raise _bad(path, no, str(exc)) from None
        except RecursionError:
            raise _bad(path, no, "JSON nested too deeply") from None
        if not isinstance(rec, dict):
            raise _bad(path, no, "expected a JSON object")
        try:
            t, n_in, n_out = rec["timestamp"], rec["input_length"], rec["output_length"]
            hashes = rec.get("hash_ids", [])
        except KeyError as exc:
            raise _bad(path, no, f"missing field {exc.args[0]!r}") from None
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise _bad(path, no, f"timestamp must be a number, got {repr(t)[:60]}")
        t = float(t) if not isinstance(t, int) or abs(t) < 1e300 else math.inf  # inf is refused below
        for field, v in (("input_length", n_in), ("output_length", n_out)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise _bad(path, no, f"{field} must be a positive integer, got {v!r}")
        if not isinstance(hashes, list) or not math.isfinite(t) or t < 0:
            raise _bad(path, no, "hash_ids must be a list and timestamp a finite number >= 0")
        odd = next((h for h in hashes if isinstance(h, bool) or not isinstance(h, (int, str))), None)
        if odd is not None:
            raise _bad(path, no, f"hash_ids must hold integers or strings, got {odd!r}")
        if ts and t < ts[-1]:
            raise _bad(path, no, f"timestamp {t:g} is earlier than the previous line's {ts[-1]:g}")
        reused = 0
        for h in hashes:
            if h not in seen:
                break
            reused += 1
        seen.update(hashes)
        ts.append(t)
        isl.append(n_in)
        osl.append(n_out)
        cached.append(min(reused * block_tokens, n_in - 1))
    if not ts:
        raise SpecError("workload", f"{path}: no requests in the trace")
    arr = np.asarray
    return Workload(
        f"trace {path.name}", arr(isl, float), arr(osl, float), arr(cached, float), arr(ts, float)
    )


def load_workload(path: str | Path, *, max_tokens: int = 0) -> Workload:
    """``.jsonl``: a mooncake trace. ``.yaml``/``.yml``: ``isl``/``osl`` as numbers or
    ``{mean: 4000, cv: 0.5}`` (lognormal), optional ``prefix_hit_rate``."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return load_trace(path)
    if path.suffix not in (".yaml", ".yml"):
        raise SpecError("workload", f"{path}: expected a .jsonl trace or a .yaml distribution")
    from .spec import read_yaml

    raw = read_yaml(path)
    parts = {}
    for key in ("isl", "osl"):
        v = raw.get(key)
        if isinstance(v, dict):
            extra = sorted(set(v) - {"mean", "cv"}, key=str)
            if extra:
                raise SpecError("workload", f"{path}: {key} takes mean and cv, not {extra[0]!r}")
            mean, cv = v.get("mean"), v.get("cv", 0.0)
        else:
            mean, cv = v, 0.0
        try:
            mean, cv = float(mean), float(cv)
        except (TypeError, ValueError):
            raise SpecError("workload", f"{path}: {key} needs a number or {{mean, cv}}, got {v!r}") from None
        if isinstance(v, bool) or (isinstance(v, dict) and isinstance(v.get("mean"), bool)):
            raise SpecError("workload", f"{path}: {key} needs a number or {{mean, cv}}, got {v!r}")
        if not (mean >= 1 and cv >= 0 and math.isfinite(mean) and math.isfinite(cv)):
            raise SpecError("workload", f"{path}: {key} mean must be >= 1 and cv >= 0, got {v!r}")
        if cv == 0 and mean != int(mean):
            raise SpecError("workload", f"{path}: a fixed {key} is a whole number of tokens, got {mean:g}")
        parts[key] = (mean, cv)
    unknown = sorted(set(raw) - {"isl", "osl", "prefix_hit_rate"})
    if unknown:
        raise SpecError("workload", f"{path}: unknown field {unknown[0]!r}")
    (im, icv), (om, ocv) = parts["isl"], parts["osl"]
    w = (
        fixed(int(im), int(om))
        if icv == 0 and ocv == 0
        else lognormal(im, om, icv, ocv, max_tokens=max_tokens)
    )
    hit = raw.get("prefix_hit_rate")
    if hit is not None:
        if isinstance(hit, bool) or not isinstance(hit, (int, float)):
            raise SpecError("prefix_hit_rate", f"{path}: must be a number in [0, 1), got {hit!r}")
        w = w.with_prefix_hit_rate(float(hit))
    return w


__all__ = ["BLOCK_TOKENS", "Workload", "fixed", "load_trace", "load_workload", "lognormal"]
