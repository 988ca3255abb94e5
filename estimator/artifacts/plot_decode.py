"""Maps of the selected decode engine over (active-KV fraction × context length): ITL and tokens/s/GPU.

``selected_decode_interpolation/decode_itl_interpolation.png`` and ``decode_throughput_interpolation.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..surfaces import DecodeSurface
from .plot_style import SELECTED, figure, pyplot, save


def _hull_grid(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, gx: np.ndarray, gy: np.ndarray
) -> np.ndarray | None:
    """Interpolate rows of equal ``y`` onto (gx, gy): linear in x along each row (NaN beyond its ends),
    then linear in y between neighbouring rows. The decode surface is sampled row by row, so this is
    its natural grid (and ~1000× cheaper than a Delaunay ``griddata``). None if it spans no area."""
    rows = np.unique(y)
    if rows.size < 2 or np.unique(x).size < 2:
        return None
    xs = gx[0]
    per_row = np.empty((rows.size, xs.size))
    for k, r in enumerate(rows):
        sel = y == r
        order = np.argsort(x[sel])
        rx, rz = x[sel][order], z[sel][order]
        per_row[k] = np.interp(xs, rx, rz, left=np.nan, right=np.nan) if rx.size > 1 else np.nan
    out = np.empty(gx.shape)
    for j in range(xs.size):
        col = per_row[:, j]
        ok = np.isfinite(col)
        out[:, j] = (
            np.interp(gy[:, j], rows[ok], col[ok], left=np.nan, right=np.nan) if ok.sum() > 1 else np.nan
        )
    return out


def plot_decode_surfaces(
    surface: DecodeSurface,
    context_tokens: int,
    out_dir: Path,
    itl_target_ms: float | None = None,
    only: str | None = None,
) -> list[Path]:
    """ITL and throughput maps over (KV usage, context length, log scale): colour = value, the sampled
    points on top, the workload's context row drawn, and the ITL target as a contour. Drawn in 2-D:
    a third of the cost of the former 3-D surfaces, and the target line is readable."""
    pyplot()
    from matplotlib import cm
    from matplotlib.ticker import FuncFormatter

    c = surface.candidate
    x = np.asarray(surface.kv_usage)
    ctx = np.asarray(surface.context_tokens, dtype=float)
    logy = np.log10(ctx)
    paths = []
    series = (
        ("decode_itl_interpolation.png", surface.itl_ms, "ITL (ms)", "Decode ITL", cm.coolwarm),
        (
            "decode_throughput_interpolation.png",
            surface.thpt_per_gpu,
            "tokens/s/GPU",
            "Decode throughput",
            cm.viridis,
        ),
    )
    gx, gy = np.meshgrid(np.linspace(0, x.max(), 48), np.linspace(logy.min(), logy.max(), 48))
    for name, z, zlabel, title, cmap in series:
        if only is not None and name != only:
            continue
        z = np.asarray(z)
        fig, ax = figure((8, 5.5))
        gz = _hull_grid(x, logy, z, gx, gy)
        if gz is None:  # one context row or one usage column: no area to draw, points only
            mappable = ax.scatter(x, logy, s=24, c=z, cmap=cmap, label="sampled points")
        else:  # the grid is regular in (usage, log10 context): an image, cheaper than a mesh
            masked = np.ma.masked_invalid(gz)
            extent = (0.0, float(x.max()), float(logy.min()), float(logy.max()))
            mappable = ax.imshow(
                masked, extent=extent, origin="lower", aspect="auto", cmap=cmap, vmin=z.min(), vmax=z.max()
            )
            ax.scatter(x, logy, s=5, c="k", label="sampled points")
            if (
                itl_target_ms is not None
                and name.startswith("decode_itl")
                and z.min() < itl_target_ms < z.max()
            ):
                ax.contour(
                    gx, gy, masked, levels=[itl_target_ms], colors="k", linewidths=1.5, linestyles="--"
                )
                ax.plot([], [], "k--", label=f"ITL target {itl_target_ms:g} ms")
        ax.axhline(
            np.log10(context_tokens),
            color=SELECTED,
            lw=1.5,
            ls=":",
            label=f"workload context {context_tokens} tokens",
        )
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{10**v:,.0f}"))
        ax.locator_params(nbins=6)
        fig.colorbar(mappable, ax=ax).set_label(zlabel)
        ax.set_xlabel("Active KV usage (fraction of capacity)")
        ax.set_ylabel("Context length (tokens, log scale)")
        ax.set_title(f"{title}, selected engine {c.name} (KV capacity {surface.kv_capacity_tokens:,} tokens)")
        ax.legend(fontsize=8, loc="upper right")
        paths.append(save(fig, out_dir / name))
    return paths


__all__ = ["plot_decode_surfaces"]
