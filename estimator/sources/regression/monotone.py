"""Monotone read-out of a learned step-time model on a fixed log grid.

Why: boosted trees are not monotone in ISL, batch or context by themselves, and physics says the
answers must be. The model is evaluated on a fixed grid (so the answer at a point never depends on
which other points were asked for), a running maximum makes it non-decreasing along each axis, and
queries interpolate in log-log space. Beyond the grid the value follows the linear part's growth
(along each axis separately, so it stays monotone there too).
Grid nodes are computed on first need and kept.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

ISL_GRID = np.geomspace(1.0, 2.0**21, 85)  # 4 nodes per octave
BATCH_GRID = np.geomspace(1.0, 2.0**14, 29)  # 2 per octave
CONTEXT_GRID = np.geomspace(16.0, 2.0**21, 35)  # 2 per octave

Model = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (x, y) arrays -> ms


def _locate(grid: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower node index, weight of the upper node in log space, x clamped to the grid)."""
    xc = np.clip(x, grid[0], grid[-1])
    i = np.clip(np.searchsorted(grid, xc, side="right") - 1, 0, grid.size - 2)
    lg = np.log(grid)
    w = (np.log(xc) - lg[i]) / (lg[i + 1] - lg[i])
    return i, np.clip(w, 0.0, 1.0), xc


def minorant(values: np.ndarray) -> np.ndarray:
    """The largest non-decreasing array (along every axis) that nowhere exceeds ``values``.

    For tabulated times (AIC's, which rise and fall with its kernel tables): a step can always be
    padded to a larger one, so a larger ISL, batch or context that is faster bounds the smaller one
    from above; a hump that a later node undercuts is an artifact. Keeps every node that no later
    node undercuts exactly, in particular the largest batch within an ITL target (the decode choice).
    """
    out = np.asarray(values, dtype=float)
    for axis in range(out.ndim):
        flipped = np.flip(out, axis)
        out = np.flip(np.minimum.accumulate(flipped, axis=axis), axis)
    return out


def _lerp(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """a + (b - a) w, kept inside [a, b]: equal nodes give exactly their value (no rounding wiggle)."""
    return np.clip(a + (b - a) * w, np.minimum(a, b), np.maximum(a, b))


class MonotoneCurve:
    """f(isl) non-decreasing: ``model(isl)`` on ``grid`` (ISL_GRID), running max, log-log interpolation.

    ``model`` may be an array of the values at the grid nodes (a node table) instead of a function:
    those are made monotone from above (:func:`minorant`), a learned model's from below (running max).
    """

    def __init__(
        self,
        model: Callable[[np.ndarray], np.ndarray] | np.ndarray,
        linear: Callable[[np.ndarray], np.ndarray],
        grid: np.ndarray = ISL_GRID,
    ):
        self.model, self.linear, self.grid = model, linear, np.asarray(grid, dtype=float)
        if isinstance(model, np.ndarray):
            self.values = minorant(np.asarray(model, dtype=float))
        else:
            self.values = np.maximum.accumulate(model(self.grid))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        i, w, xc = _locate(self.grid, x)
        lv = np.log(self.values)
        out = np.exp(_lerp(lv[i], lv[i + 1], w))
        return out * np.where(xc != x, self.linear(x) / self.linear(xc), 1.0)


class MonotoneSurface:
    """f(batch, context) non-decreasing in both: lazy grid of nodes, running max over both axes.

    ``model`` may be an array (batch nodes x context nodes) of the values at the grid (a node table),
    made monotone from above (:func:`minorant`); a learned model's nodes get a running max.
    """

    def __init__(
        self,
        model: Model | np.ndarray,
        linear: Model,
        batch_grid: np.ndarray = BATCH_GRID,
        context_grid: np.ndarray = CONTEXT_GRID,
    ):
        self.model, self.linear = model, linear
        self.batch_grid = np.asarray(batch_grid, dtype=float)
        self.context_grid = np.asarray(context_grid, dtype=float)
        if isinstance(model, np.ndarray):
            self.raw = np.array(model, dtype=float)
            if self.raw.shape != (self.batch_grid.size, self.context_grid.size) or np.isnan(self.raw).any():
                raise ValueError("a node table must give a value at every (batch, context) node")
            self.raw = minorant(self.raw)
        else:
            self.raw = np.full((self.batch_grid.size, self.context_grid.size), np.nan)

    def _values(self, i_max: int, j_max: int) -> np.ndarray:
        block = self.raw[: i_max + 1, : j_max + 1]
        todo = np.isnan(block)
        if todo.any():
            bi, cj = np.nonzero(todo)
            block[bi, cj] = self.model(self.batch_grid[bi], self.context_grid[cj])
        return np.maximum.accumulate(np.maximum.accumulate(block, axis=0), axis=1)

    def __call__(self, batch: np.ndarray, context: np.ndarray) -> np.ndarray:
        i, wi, bc = _locate(self.batch_grid, batch)
        j, wj, cc = _locate(self.context_grid, context)
        lv = np.log(self._values(int(i.max()) + 1, int(j.max()) + 1))
        top = _lerp(lv[i, j], lv[i, j + 1], wj)
        bottom = _lerp(lv[i + 1, j], lv[i + 1, j + 1], wj)
        out = np.exp(_lerp(top, bottom, wi))
        # beyond the grid: the linear part's growth along that axis, taken at the other axis's first
        # node, so the factor depends on one axis only and the answer stays monotone in both
        b0, c0 = np.full_like(bc, self.batch_grid[0]), np.full_like(cc, self.context_grid[0])
        if np.any(bc != batch):
            out = out * np.where(bc != batch, self.linear(batch, c0) / self.linear(bc, c0), 1.0)
        if np.any(cc != context):
            out = out * np.where(cc != context, self.linear(b0, context) / self.linear(b0, cc), 1.0)
        return out
