"""Boosted trees as plain arrays: exported from scikit-learn after fit, evaluated with numpy.

Why not keep the sklearn object: importing sklearn costs seconds, and pickles are code, not data.
A fitted ``HistGradientBoostingRegressor`` is a baseline plus a sum of binary trees; each node is
(feature, threshold, left, right, leaf value). All trees are padded into (trees, nodes) arrays so one
prediction walks every tree at once, level by level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import SourceError


@dataclass(frozen=True, slots=True)
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

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        n, trees = x.shape[0], self.feature.shape[0]
        if trees == 0:
            return np.full(n, self.baseline)
        rows = np.arange(trees)[None, :]
        node = np.zeros((n, trees), dtype=np.int64)
        for _ in range(self.depth):
            feat = self.feature[rows, node]
            leaf = feat < 0
            xv = np.take_along_axis(x, np.where(leaf, 0, feat), axis=1)
            nxt = np.where(xv <= self.threshold[rows, node], self.left[rows, node], self.right[rows, node])
            node = np.where(leaf, node, nxt)
        return self.baseline + self.value[rows, node].sum(axis=1)

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
