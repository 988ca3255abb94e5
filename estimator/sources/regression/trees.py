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

from .checks import finite_list, int_list, integer, number, obj

# Bounds of what ``models fit`` allows (and a file may hold): the walk is depth x trees per point.
MAX_TREES = 10_000  # boosting rounds
MAX_LEAVES = 2048  # leaves per tree
MAX_NODES = 2 * MAX_LEAVES - 1
MAX_DEPTH = 64  # edges from a root to its deepest leaf


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
    def from_dict(cls, d: Any, n_features: int, where: str = "trees") -> TreeEnsemble:
        """Checked, since a file is hand-editable: finite numbers, features below ``n_features``, each
        tree well formed (``_levels``) and ``depth`` the levels of its deepest tree, bounded, so the
        walk stays short. Raises ValueError naming the field."""
        d = obj(where, d, ("baseline", "depth", "trees"))
        baseline = number(f"{where}.baseline", d["baseline"])
        trees = d["trees"]
        if not isinstance(trees, list) or len(trees) > MAX_TREES:
            raise ValueError(f"{where}.trees: must be a list of at most {MAX_TREES} trees")
        checked = []
        for i, t in enumerate(trees):
            at = f"{where}.trees[{i}]"
            t = obj(at, t, _NODE_KEYS)
            n = len(t["feature"]) if isinstance(t["feature"], list) else 0
            for k in _NODE_KEYS:
                if not isinstance(t[k], list) or len(t[k]) != n or not 1 <= n <= MAX_NODES:
                    raise ValueError(f"{at}.{k}: must be a list of 1..{MAX_NODES} nodes, as many as feature")
            checked.append({"feature": int_list(f"{at}.feature", t["feature"], -1, n_features - 1),
                            "left": int_list(f"{at}.left", t["left"], 0, n - 1),
                            "right": int_list(f"{at}.right", t["right"], 0, n - 1),
                            "threshold": finite_list(f"{at}.threshold", t["threshold"]),
                            "value": finite_list(f"{at}.value", t["value"])})  # fmt: skip
        n_nodes = np.array([len(t["feature"]) for t in checked], dtype=np.int64)
        width = int(n_nodes.max(initial=1))
        arrs = {k: np.zeros((len(trees), width), dtype=float if k in ("threshold", "value") else np.int64)
                for k in _NODE_KEYS}  # fmt: skip
        arrs["feature"][:] = -1
        for i, t in enumerate(checked):
            for k, a in arrs.items():
                a[i, : n_nodes[i]] = t[k]
        levels = _levels(where, arrs["feature"], arrs["left"], arrs["right"], n_nodes)
        depth = integer(f"{where}.depth", d["depth"], 1, MAX_DEPTH + 1)
        if depth != levels:
            raise ValueError(f"{where}.depth: {depth}, but the deepest tree has {levels} levels")
        return cls(baseline, depth=depth, n_nodes=n_nodes, **arrs)


_NODE_KEYS = ("feature", "threshold", "left", "right", "value")


def _levels(where: str, feature: np.ndarray, left: np.ndarray, right: np.ndarray, n_nodes: np.ndarray) -> int:
    """Levels of the deepest tree (a root alone: 1), once each is a tree: a leaf (feature -1) has children
    0 as sklearn writes them, an inner node's children come after it (no cycles), and every node but the
    root has exactly one parent (so every node is reached). One pass over all trees (files hold ~10^4)."""
    trees, width = feature.shape
    node = np.broadcast_to(np.arange(width), feature.shape)
    row = np.broadcast_to(np.arange(trees)[:, None], feature.shape)
    real = node < n_nodes[:, None]
    inner = real & (feature >= 0)
    parents = np.zeros(feature.shape, dtype=np.int64)
    parent = np.full(feature.shape, -1, dtype=np.int64)
    for side, child in (("left", left), ("right", right)):
        bad = (inner & (child <= node)) | (real & ~inner & (child != 0))
        if bad.any():
            t, j = np.argwhere(bad)[0]
            why = "a leaf's children are 0" if feature[t, j] < 0 else f"a child comes after its node {j}"
            raise ValueError(f"{where}.trees[{t}].{side}[{j}]: {child[t, j]}, but {why}")
        np.add.at(parents, (row[inner], child[inner]), 1)
        parent[row[inner], child[inner]] = node[inner]
    want = real.astype(np.int64)
    want[:, 0] = 0
    if (parents != want).any():
        t, j = np.argwhere(parents != want)[0]
        raise ValueError(f"{where}.trees[{t}]: node {j} " + ("has two parents" if parents[t, j] > 1 else
                         "is not reached from the root"))  # fmt: skip
    level = np.zeros(feature.shape, dtype=np.int64)
    up = parent
    for _ in range(MAX_DEPTH):
        if not (up >= 0).any():
            break
        level += up >= 0
        up = np.where(up >= 0, parent[row, np.maximum(up, 0)], -1)
    if (up >= 0).any():
        raise ValueError(f"{where}: a tree is deeper than {MAX_DEPTH} levels below its root")
    return int(level.max(initial=0)) + 1


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
