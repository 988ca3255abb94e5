"""The learned part: step time from roofline terms, fitted on measured or AIC-generated points.

Two layers, both chosen by measurement (``docs/regression.md``):

- ``linear``: per backend and phase, ``ms = sum_k c_k * term_k`` with ``c_k >= 0`` (non-negative least
  squares on relative error). Physical, extrapolates like the roofline, monotone by construction, and
  linear in its coefficients, so aggregated-serving rows (TTFT/TPOT out of the serving model) fit it
  exactly like direct prefill/decode points.
- ``residual`` (optional): gradient-boosted trees on ``log(measured / linear)`` over log terms and
  engine descriptors, for the regimes a sum of terms misses (overlap, launch-bound small steps).

KV capacity: per backend, ``free bytes per GPU = a * memory - b - c * activation bytes``, fitted on
KV capacities where the data has them (AIC's memory model, the GPU runner), else the backends'
memory fractions. scikit-learn and scipy are imported in ``fit`` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import NotFittedError
from ...features import TERM_NAMES
from .checks import integer, number, numbers, obj
from .trees import TreeEnsemble

K = len(TERM_NAMES)
PHASES = ("prefill", "decode")
BACKENDS = ("vllm", "sglang", "trtllm")
POOLED = "*"  # coefficients fitted on every backend: used for a backend the data lacks
DEFAULT_KV = {"vllm": (0.92, 2.0e9, 1.0), "sglang": (0.88, 2.0e9, 1.0), "trtllm": (0.9, 2.0e9, 1.0)}


@dataclass(frozen=True, slots=True)
class TrainingSet:
    """Rows the regression fits. ``design`` (n, 2K): a row's target is ``design @ [c_prefill; c_decode]``.

    ``kind``: prefill | decode (direct points; ``features`` hold the residual features) or ttft | tpot
    (aggregated-serving rows: the design holds the serving model's per-term sums). ``group``: model,
    system for leave-one-out splits. ``kv``: rows (backend, capacity bytes per GPU, memory, act bytes).
    ``quant``: each row's quantisation (``"GEMM/KV"``, ``default`` where the stack names none), so a file
    can record which stacks it was trained on; None where unknown (rows cached by older code).
    """

    kind: np.ndarray
    backend: np.ndarray
    model: np.ndarray
    system: np.ndarray
    design: np.ndarray
    features: np.ndarray
    y_ms: np.ndarray
    origin: np.ndarray
    kv_backend: np.ndarray = field(default_factory=lambda: np.array([], dtype=str))
    kv_rows: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    quant: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.y_ms.size)

    def subset(self, mask: np.ndarray) -> TrainingSet:
        quant = None if self.quant is None else self.quant[mask]
        return TrainingSet(self.kind[mask], self.backend[mask], self.model[mask], self.system[mask],
                           self.design[mask], self.features[mask], self.y_ms[mask], self.origin[mask],
                           self.kv_backend, self.kv_rows, quant)  # fmt: skip

    @staticmethod
    def concat(parts: list[TrainingSet]) -> TrainingSet:
        parts = [p for p in parts if len(p) or p.kv_rows.size]
        if not parts:
            raise ValueError("no training rows")
        cat = {n: np.concatenate([getattr(p, n) for p in parts]) for n in (
            "kind", "backend", "model", "system", "design", "features", "y_ms", "origin", "kv_backend", "kv_rows")}  # fmt: skip
        known = all(p.quant is not None for p in parts)
        return TrainingSet(**cat, quant=np.concatenate([p.quant for p in parts]) if known else None)

    def digest(self) -> str:
        import hashlib

        h = hashlib.sha256()
        for a in (self.design, self.y_ms, self.kv_rows):
            h.update(np.ascontiguousarray(a, dtype=float).tobytes())
        for a in (self.kind, self.backend, self.model, self.system):
            h.update("\x1f".join(map(str, a)).encode())
        return h.hexdigest()

    def summary(self) -> dict[str, Any]:
        def count(a: np.ndarray) -> dict[str, int]:
            keys, n = np.unique(a, return_counts=True)
            return {str(k): int(v) for k, v in zip(keys, n, strict=True)}

        out = {"rows": len(self), "kinds": count(self.kind), "origins": count(self.origin),
               "backends": count(self.backend), "systems": count(self.system), "models": count(self.model),
               "kv_rows": int(self.kv_rows.shape[0])}  # fmt: skip
        if self.quant is not None:  # the combinations trained: a band is in-sample only for one of these
            rows = zip(self.model, self.system, self.backend, self.quant, strict=True)
            out["stacks"] = count(np.array([stack_id(*r) for r in rows], dtype=str))
        return out


def quant_id(gemm_quant: str | None, kvcache_quant: str | None) -> str:
    """One row's quantisation as the training summary records it."""
    return f"{gemm_quant or 'default'}/{kvcache_quant or 'default'}"


def stack_id(model: str, system: str, group: str, quant: str) -> str:
    """``model@system/group/GEMM/KV``: a stack as the training summary's ``stacks`` names it."""
    return f"{model}@{system}/{group}/{quant}"


class PerfRegressor:
    """Fit/predict estimator of step times (ms). Constructor stores only; learned state ends in ``_``.

    Parameters
    ----------
    residual : bool
        Add boosted trees on the log ratio to the linear part (direct prefill/decode rows only).
    base : "linear" (non-negative roofline-term fit) or "roofline" (max(compute, memory) + comm, unfitted:
        the trees then model log efficiency measured / roofline; kept to compare the two designs).
    max_iter, max_leaf_nodes, learning_rate : boosting settings.
    """

    def __init__(self, *, residual: bool = True, max_iter: int = 150, max_leaf_nodes: int = 15,
                 learning_rate: float = 0.1, max_depth: int = 6, base: str = "linear") -> None:  # fmt: skip
        self.base = base
        self.max_depth = max_depth
        self.residual = residual
        self.max_iter = max_iter
        self.max_leaf_nodes = max_leaf_nodes
        self.learning_rate = learning_rate

    def get_params(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in ("residual", "max_iter", "max_leaf_nodes", "learning_rate", "max_depth", "base")
        }

    # ---- fit ----------------------------------------------------------------------------------
    def fit(self, data: TrainingSet) -> PerfRegressor:
        """Fit coefficients (per backend, pooled fallback), residual trees and the KV memory model."""
        from scipy.optimize import nnls

        if len(data) == 0:
            raise ValueError("cannot fit on zero rows")
        check_params("params", self.get_params())  # before sklearn: its own errors are tracebacks
        coef: dict[str, list[float]] = {}
        for backend in (*sorted(set(data.backend.tolist())), POOLED):
            mask = data.backend == backend if backend != POOLED else np.ones(len(data), dtype=bool)
            a = data.design[mask] / data.y_ms[mask, None]  # relative error
            c, _ = nnls(a, np.ones(int(mask.sum())), maxiter=50 * a.shape[1])
            coef[backend] = [float(v) for v in c]
        self.coef_ = coef
        self.trees_: dict[str, TreeEnsemble] = {}
        if self.residual:
            from sklearn.ensemble import HistGradientBoostingRegressor

            from .trees import from_sklearn

            for i, phase in enumerate(PHASES):
                mask = data.kind == phase
                if mask.sum() < 20:
                    continue
                base = self._linear(data.backend[mask], data.design[mask][:, i * K : (i + 1) * K], i)
                est = HistGradientBoostingRegressor(
                    max_iter=self.max_iter, max_leaf_nodes=self.max_leaf_nodes, learning_rate=self.learning_rate,
                    max_depth=self.max_depth,
                    l2_regularization=1.0, early_stopping=False, random_state=0,
                ).fit(data.features[mask], np.log(data.y_ms[mask] / base))  # fmt: skip
                self.trees_[phase] = from_sklearn(est)
        self.kv_ = _fit_kv(data)
        self.n_features_ = int(data.features.shape[1])
        return self

    # ---- predict ------------------------------------------------------------------------------
    def _check(self) -> None:
        if not hasattr(self, "coef_"):
            raise NotFittedError("this regression model is not fitted: call fit() or load a model file")

    def _linear(self, backend: np.ndarray | str, terms: np.ndarray, phase_index: int) -> np.ndarray:
        if self.base == "roofline":  # the plain roofline: the trees then learn log efficiency alone
            return (
                np.maximum(terms[:, 0] + terms[:, 1], terms[:, 2] + terms[:, 3] + terms[:, 4]) + terms[:, 5]
            )
        if isinstance(backend, str):
            c = np.asarray(self.coef_.get(backend, self.coef_[POOLED]))[
                phase_index * K : (phase_index + 1) * K
            ]
            return np.maximum(terms @ c, 1e-6)
        backends = np.broadcast_to(np.asarray(backend), terms.shape[:1])
        out = np.empty(terms.shape[0])
        for b in np.unique(backends):
            c = np.asarray(self.coef_.get(str(b), self.coef_[POOLED]))[
                phase_index * K : (phase_index + 1) * K
            ]
            m = backends == b
            out[m] = terms[m] @ c
        return np.maximum(out, 1e-6)

    def predict_linear(self, phase: str, backend: str, terms: np.ndarray) -> np.ndarray:
        self._check()
        return self._linear(backend, terms, PHASES.index(phase))

    def predict(self, phase: str, backend: str, terms: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Step time in ms, shape (n,): linear part times exp(residual) where trees were fitted."""
        base = self.predict_linear(phase, backend, terms)
        trees = self.trees_.get(phase)
        return base if trees is None else base * np.exp(trees.predict(features))

    def has_residual(self, phase: str) -> bool:
        self._check()
        return phase in self.trees_

    def kv_params(self, backend: str) -> tuple[float, float, float]:
        self._check()
        return tuple(
            self.kv_.get(backend) or self.kv_.get(POOLED) or DEFAULT_KV.get(backend, (0.9, 2e9, 1.0))
        )  # type: ignore[return-value]

    # ---- files --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        self._check()
        return {
            "params": self.get_params(),
            "coef": self.coef_,
            "trees": {k: v.to_dict() for k, v in self.trees_.items()},
            "kv": {k: list(v) for k, v in self.kv_.items()},
            "n_features": self.n_features_,
        }

    @classmethod
    def from_dict(cls, d: Any, n_features: int) -> PerfRegressor:
        """Checked field by field, since a file is hand-editable; raises ValueError naming the field.
        Term coefficients must be >= 0 (NNLS): only then is the linear part monotone in the terms."""
        d = obj("regressor", d, ("params", "coef", "trees", "kv", "n_features"))
        params = obj("regressor.params", d["params"], _PARAMS)
        r = cls(**check_params("regressor.params", params))
        r.n_features_ = integer("regressor.n_features", d["n_features"], lo=1)
        if r.n_features_ != n_features:
            raise ValueError(f"regressor.n_features: {r.n_features_}, sla-estimate computes {n_features}")
        coef = obj("regressor.coef", d["coef"])
        if POOLED not in coef:
            raise ValueError(f"regressor.coef: the pooled {POOLED!r} entry is missing")
        r.coef_ = {k: numbers(f"regressor.coef.{k}", v, 2 * K, lo=0.0) for k, v in coef.items()}
        trees = obj("regressor.trees", d["trees"], optional=PHASES)
        if trees and not r.residual:
            raise ValueError("regressor.trees: residual trees, but params.residual is false")
        r.trees_ = {k: TreeEnsemble.from_dict(t, n_features, f"regressor.trees.{k}")
                    for k, t in trees.items()}  # fmt: skip
        r.kv_ = {}
        for k, v in obj("regressor.kv", d["kv"]).items():
            a, b, c = numbers(f"regressor.kv.{k}", v, 3)
            number(f"regressor.kv.{k}[0]", a, positive=True)  # free memory grows with the GPU's memory
            r.kv_[k] = (a, b, c)
        return r


_PARAMS = ("residual", "max_iter", "max_leaf_nodes", "learning_rate", "max_depth", "base")


def check_params(field: str, p: dict[str, Any]) -> dict[str, Any]:
    """PerfRegressor settings in the ranges scikit-learn accepts and the tree bounds a file may hold."""
    from .trees import MAX_DEPTH, MAX_LEAVES, MAX_TREES

    obj(field, p, optional=_PARAMS)
    if "residual" in p and not isinstance(p["residual"], bool):
        raise ValueError(f"{field}.residual: must be true or false, got {p['residual']!r}")
    ranges = (("max_iter", 1, MAX_TREES), ("max_leaf_nodes", 2, MAX_LEAVES), ("max_depth", 1, MAX_DEPTH))
    for k, lo, hi in ranges:
        if k in p and (k == "max_iter" or p[k] is not None):
            integer(f"{field}.{k}", p[k], lo, hi)
    if "learning_rate" in p:
        number(f"{field}.learning_rate", p["learning_rate"], positive=True)
    if p.get("base", "linear") not in ("linear", "roofline"):
        raise ValueError(f"{field}.base: must be 'linear' or 'roofline', got {str(p['base'])[:40]!r}")
    return p


def _fit_kv(data: TrainingSet) -> dict[str, tuple[float, float, float]]:
    """Least squares of free bytes per GPU = a * memory - b - c * activation bytes, per backend."""
    out: dict[str, tuple[float, float, float]] = {}
    rows = data.kv_rows
    for backend in sorted(set(data.kv_backend.tolist())):
        m = data.kv_backend == backend
        free, mem, act = (
            rows[m, 0] + rows[m, 1],
            rows[m, 2],
            rows[m, 3],
        )  # kv bytes + weights = a*mem - b - c*act
        if m.sum() >= 3:
            a = np.stack([mem, -np.ones_like(mem), -act], axis=1)
            sol, *_ = np.linalg.lstsq(a / free[:, None], np.ones_like(free), rcond=None)
            out[backend] = (float(sol[0]), float(sol[1]), float(sol[2]))
        else:  # too few points: keep the memory fraction, fit only the fixed reserve
            fa, _, fc = DEFAULT_KV.get(backend, (0.9, 2e9, 1.0))
            out[backend] = (fa, float(np.mean(fa * mem - fc * act - free)), fc)
    return out
