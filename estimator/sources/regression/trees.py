"""Boosted trees as plain arrays: exported from scikit-learn after fit, evaluated with numpy.

Why not keep the sklearn object: importing sklearn costs seconds, and pickles are code, not data.
A fitted ``HistGradientBoostingRegressor`` is a baseline plus a sum of binary trees; each node is
(feature, threshold, left, right, leaf value). All trees are padded into (trees, nodes) arrays so one
prediction walks every tree at once, level by level.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from ...errors import SourceError


@dataclass(frozen=True)
class TreeEnsemble:
    """``baseline + sum_t tree_t(x)``; node arrays of shape (trees, max_nodes)."""

    baseline: float
    feature: np.ndarray  # int, -1 at leaves
    threshold: np.ndarray  # go left when x <= threshold
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray  # leaf values (learning rate already applied)
    n_nodes: np.ndarray  # real nodes of each tree (the rest is padding)
    depth: int

    @cached_property
    def _flat(self) -> tuple[np.ndarray, ...]:
        """1-D node arrays over all trees; leaves (and padding) loop to themselves, so a walk needs no mask."""
        trees, width = self.feature.shape
        offset = (np.arange(trees) * width)[:, None]
        leaf = self.feature < 0
        own = offset + np.arange(width)[None, :]
        feature = np.where(leaf, 0, self.feature).ravel()
        threshold = np.where(leaf, np.inf, self.threshold).ravel()
        left = np.where(leaf, own, offset + self.left).ravel()
        right = np.where(leaf, own, offset + self.right).ravel()
        return feature, threshold, left, right, self.value.ravel(), offset.ravel()

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=float)
        n, trees = x.shape[0], self.feature.shape[0]
        if trees == 0:
            return np.full(n, self.baseline)
        feature, threshold, left, right, value, roots = self._flat
        row = (np.arange(n) * x.shape[1])[:, None]
        flat_x = x.ravel()
        node = np.broadcast_to(roots, (n, trees))
        for _ in range(self.depth):
            go_left = flat_x.take(row + feature.take(node)) <= threshold.take(node)
            node = np.where(go_left, left.take(node), right.take(node))
        return self.baseline + value.take(node).sum(axis=1)

    def to_dict(self) -> dict[str, Any]:
        """Ragged lists (each tree's real nodes only) for a JSON file; floats keep every bit."""
        sizes = [int(k) for k in self.n_nodes]
        return {
            "baseline": float(self.baseline),
            "depth": int(self.depth),
            "trees": [
                {
                    k: getattr(self, k)[t, : sizes[t]].tolist()
                    for k in ("feature", "threshold", "left", "right", "value")
                }
                for t in range(len(sizes))
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TreeEnsemble:
        try:
            trees = d["trees"]
            width = max((len(t["feature"]) for t in trees), default=1)
            arrs = {k: np.zeros((len(trees), width), dtype=float if k in ("threshold", "value") else np.int64)
                    for k in ("feature", "threshold", "left", "right", "value")}  # fmt: skip
            arrs["feature"][:] = -1
            for i, t in enumerate(trees):
                for k, a in arrs.items():
                    a[i, : len(t[k])] = t[k]
            n_nodes = np.array([len(t["feature"]) for t in trees], dtype=np.int64)
            return cls(float(d["baseline"]), depth=int(d["depth"]), n_nodes=n_nodes, **arrs)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise SourceError(f"malformed tree ensemble in model file: {exc}") from exc


def from_sklearn(est: Any) -> TreeEnsemble:
    """Export a fitted ``HistGradientBoostingRegressor`` (numeric features, no missing values)."""
    trees = [p[0].nodes for p in est._predictors]
    width = max((len(t) for t in trees), default=1)
    shape = (len(trees), width)
    feature = np.full(shape, -1, dtype=np.int64)
    threshold = np.zeros(shape)
    left = np.zeros(shape, dtype=np.int64)
    right = np.zeros(shape, dtype=np.int64)
    value = np.zeros(shape)
    depth = 1
    n_nodes = np.array([len(t) for t in trees], dtype=np.int64)
    for i, nodes in enumerate(trees):
        k = len(nodes)
        leaf = nodes["is_leaf"].astype(bool)
        feature[i, :k] = np.where(leaf, -1, nodes["feature_idx"])
        threshold[i, :k] = nodes["num_threshold"]
        left[i, :k] = nodes["left"]
        right[i, :k] = nodes["right"]
        value[i, :k] = np.where(leaf, nodes["value"], 0.0)
        depth = max(depth, int(nodes["depth"].max()) + 1)
    baseline = float(np.ravel(est._baseline_prediction)[0])
    return TreeEnsemble(baseline, feature, threshold, left, right, value, n_nodes, depth)
