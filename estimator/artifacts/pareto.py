"""``pareto.png``: cost ($ per million output tokens) against latency (TTFT p90) of every fleet that
meets the SLA, one colour per scenario, agg and disagg with different markers, each scenario's
Pareto front (no fleet both cheaper and faster) joined by a line."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

PARETO_FILE = "pareto.png"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (lower is better), by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best_y = [], math.inf
    for i in order:
        if points[i][1] < best_y:
            front.append(i)
            best_y = points[i][1]
    return front


def write_pareto(rows: list[dict[str, Any]], out_dir: str | Path) -> Path:
    """``rows``: dicts with scenario, mode, usd_per_million_output_tokens, ttft_p90_ms, label."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    colours = plt.get_cmap("tab10")
    for k, name in enumerate(scenarios):
        mine = [r for r in rows if r["scenario"] == name and math.isfinite(r["ttft_p90_ms"])]
        if not mine:
            continue
        c = colours(k % 10)
        for mode, marker in (("agg", "o"), ("disagg", "s")):
            pts = [r for r in mine if r["mode"] == mode]
            ax.scatter([r["usd_per_million_output_tokens"] for r in pts], [r["ttft_p90_ms"] for r in pts],
                       marker=marker, color=c, alpha=0.7, s=28)  # fmt: skip
        xy = [(r["usd_per_million_output_tokens"], r["ttft_p90_ms"]) for r in mine]
        front = pareto_front(xy)
        ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], color=c, lw=1.2, label=name)
        best = mine[front[0]]
        ax.annotate(best["label"], xy[front[0]], fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.scatter([], [], marker="o", color="grey", label="agg")
    ax.scatter([], [], marker="s", color="grey", label="disagg")
    ax.set_xlabel("$ per million output tokens")
    ax.set_ylabel("TTFT p90 (ms)")
    ax.set_title("Fleets that meet the SLA: cost vs latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    path = Path(out_dir) / PARETO_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["PARETO_FILE", "pareto_front", "write_pareto"]
