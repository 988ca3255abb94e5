"""How every plot looks and is saved; the only module that imports matplotlib (Agg backend, on first
use): margins, tick labels, PNG settings, and a warm-up draw for forked plot processes. Shared by
plots.py and plot_decode.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

DPI = 80
# Rendering cost, measured with cProfile on the 2-core VM: a second layout pass (bbox_inches="tight"),
# mathtext tick labels on log axes and zlib level 6 were most of it. Fixed margins, plain tick
# labels and a fast PNG level keep every figure under ~0.1 s of CPU.
MARGINS = {"left": 0.13, "right": 0.97, "bottom": 0.11, "top": 0.92}
SELECTED = "#d62728"
TARGET = "#555555"


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend; a missing install names the extra to add."""
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - matplotlib is a core dependency today
        raise ImportError(
            "plots need matplotlib: pip install 'sla-estimate[plot]' or pass --no-plots"
        ) from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, metadata={"Software": None}, pil_kwargs={"compress_level": 1})
    pyplot().close(fig)
    return path


def figure(figsize: tuple[float, float]) -> tuple[Any, Any]:
    fig, ax = pyplot().subplots(figsize=figsize)
    fig.subplots_adjust(**MARGINS)
    return fig, ax


def plain_log_axis(axis: Any) -> None:
    """Log scale with plain-number major labels and no minor labels (mathtext labels are slow)."""
    from matplotlib.ticker import FuncFormatter, NullLocator

    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    axis.set_minor_locator(NullLocator())  # each tick is two lines and a label: minor ones cost most


def warm_up() -> None:
    """Draw one throw-away figure with every element the real ones use (text, legend, log axes, a
    colour map, a contour, a colorbar, PNG encoding): the first draw in a process loads fonts and
    builds caches, which costs more than the figures themselves. ``plot_workers`` calls this before
    forking, so every figure process starts warm."""
    import io

    fig, ax = figure((8, 5.5))
    grid = np.arange(16.0).reshape(4, 4)
    ax.errorbar([1.0, 2.0], [1.0, 2.0], xerr=[[0.1, 0.1], [0.1, 0.1]], fmt="o", label="a")
    ax.annotate("TP1", (1.0, 1.0), xytext=(6, 6), textcoords="offset points")
    ax.fill_between([1.0, 2.0], [0.5, 1.5], [1.5, 2.5], alpha=0.2)
    mesh = ax.pcolormesh(np.arange(4.0), np.arange(1.0, 5.0), grid, shading="auto")
    ax.contour(np.arange(4.0), np.arange(1.0, 5.0), grid, levels=[7.5], linestyles="--")
    ax.axvline(1.5, ls="--", label="target")
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain_log_axis(ax.xaxis)
    plain_log_axis(ax.yaxis)
    fig.colorbar(mesh, ax=ax).set_label("ITL (ms)")
    ax.set_xlabel("x (tokens)")
    ax.set_title("warm-up")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.savefig(io.BytesIO(), format="png", dpi=DPI, pil_kwargs={"compress_level": 1})
    pyplot().close(fig)


__all__ = ["DPI", "MARGINS", "SELECTED", "TARGET", "figure", "plain_log_axis", "pyplot", "save", "warm_up"]
