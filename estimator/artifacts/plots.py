"""The profile's PNG plots; the only module that imports matplotlib (Agg backend, imported on first use).

Files (names as Dynamo's profiler writes them, so existing tooling finds them):

- ``prefill_performance.png``: TTFT vs prefill tokens/s/GPU of every candidate at the workload ISL.
- ``decode_performance.png``: ITL vs decode tokens/s/GPU of every candidate over concurrency.
- ``selected_prefill_interpolation/prefill_ttft_interpolation.png`` and
  ``prefill_throughput_interpolation.png``: the selected prefill engine over ISL.
- ``selected_decode_interpolation/decode_itl_interpolation.png`` and
  ``decode_throughput_interpolation.png``: maps of the selected decode engine over (active-KV
  fraction × context length, log axis) with the ITL target as a contour.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..select import Selection
from ..surfaces import DecodeSurface, DecodeSweep, PrefillPoint, PrefillSurface, prefill_thpt_per_gpu
from .npz import DECODE_DIR, PREFILL_DIR

log = logging.getLogger(__name__)

_DPI = 80
# Rendering cost, measured (benchmarks/profile_speed.py): a second layout pass (bbox_inches="tight"),
# mathtext tick labels on log axes and zlib level 6 were most of it. Fixed margins, plain tick
# labels and a fast PNG level keep every figure under ~0.1 s of CPU.
_MARGINS = {"left": 0.13, "right": 0.97, "bottom": 0.11, "top": 0.92}
_SELECTED = "#d62728"
_TARGET = "#555555"


def _pyplot() -> Any:
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


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, metadata={"Software": None}, pil_kwargs={"compress_level": 1})
    _pyplot().close(fig)
    return path


def _figure(figsize: tuple[float, float]) -> tuple[Any, Any]:
    fig, ax = _pyplot().subplots(figsize=figsize)
    fig.subplots_adjust(**_MARGINS)
    return fig, ax


def _plain_log_axis(axis: Any) -> None:
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

    fig, ax = _figure((8, 5.5))
    grid = np.arange(16.0).reshape(4, 4)
    ax.errorbar([1.0, 2.0], [1.0, 2.0], xerr=[[0.1, 0.1], [0.1, 0.1]], fmt="o", label="a")
    ax.annotate("TP1", (1.0, 1.0), xytext=(6, 6), textcoords="offset points")
    ax.fill_between([1.0, 2.0], [0.5, 1.5], [1.5, 2.5], alpha=0.2)
    mesh = ax.pcolormesh(np.arange(4.0), np.arange(1.0, 5.0), grid, shading="auto")
    ax.contour(np.arange(4.0), np.arange(1.0, 5.0), grid, levels=[7.5], linestyles="--")
    ax.axvline(1.5, ls="--", label="target")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_axis(ax.xaxis)
    _plain_log_axis(ax.yaxis)
    fig.colorbar(mesh, ax=ax).set_label("ITL (ms)")
    ax.set_xlabel("x (tokens)")
    ax.set_title("warm-up")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.savefig(io.BytesIO(), format="png", dpi=_DPI, pil_kwargs={"compress_level": 1})
    _pyplot().close(fig)


def _has_band(low: np.ndarray, high: np.ndarray) -> bool:
    return bool(np.any(np.abs(np.asarray(high) - np.asarray(low)) > 1e-9 * np.abs(np.asarray(high))))


def _ring_selected(ax: Any, x: float, y: float, label: str) -> None:
    """A hollow ring around the recommended point."""
    ax.scatter([x], [y], s=320, facecolors="none", edgecolors=_SELECTED, linewidths=2, label=label, zorder=5)


def plot_prefill_performance(
    points: tuple[PrefillPoint, ...], selection: Selection, ttft_target_ms: float, isl: int, path: Path
) -> Path:
    """One marker per candidate; the recommendation circled; the TTFT target as a vertical line."""
    fig, ax = _figure((8, 5.5))
    chosen = selection.best_prefill.candidate
    for p in sorted(points, key=lambda q: (q.candidate.mapping.value, q.candidate.num_gpus)):
        err = None
        if _has_band(np.array([p.ttft_low_ms]), np.array([p.ttft_high_ms])):
            err = [[p.ttft_ms - p.ttft_low_ms], [p.ttft_high_ms - p.ttft_ms]]
        ax.errorbar(p.ttft_ms, p.thpt_per_gpu, xerr=err, fmt="o", ms=8, capsize=4, label=p.candidate.name)
        ax.annotate(p.candidate.name, (p.ttft_ms, p.thpt_per_gpu), xytext=(6, 6), textcoords="offset points")
    best = selection.best_prefill.point
    _ring_selected(ax, best.ttft_ms, best.thpt_per_gpu, f"selected: {chosen.name}")
    ax.axvline(ttft_target_ms, color=_TARGET, ls="--", label=f"TTFT target {ttft_target_ms:g} ms")
    ax.set_xlabel("Time to first token, TTFT (ms)")
    ax.set_ylabel("Prefill throughput (tokens/s/GPU)")
    ax.set_title(f"Prefill performance at ISL {isl} (batch 1)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def plot_decode_performance(
    sweeps: tuple[DecodeSweep, ...], selection: Selection, itl_target_ms: float, path: Path
) -> Path:
    """One line per candidate over concurrency; each line's best point under the target marked."""
    fig, ax = _figure((8, 5.5))
    best_by_name = {c.candidate.name: c for c in selection.decode}
    chosen = selection.best_decode
    for s in sorted(sweeps, key=lambda q: (q.candidate.mapping.value, q.candidate.num_gpus)):
        b = best_by_name.get(s.candidate.name)
        label = f"{s.candidate.name} (KV {s.kv_capacity_tokens:,} tok)" + (
            f", best n={b.concurrency}" if b else ""
        )
        (line,) = ax.plot(s.itl_ms, s.thpt_per_gpu, "o-", ms=3, label=label)
        if _has_band(s.itl_low_ms, s.itl_high_ms):
            ax.fill_betweenx(s.thpt_per_gpu, s.itl_low_ms, s.itl_high_ms, color=line.get_color(), alpha=0.15)
        if b is not None:
            ax.plot([b.itl_ms], [b.thpt_per_gpu], "D", ms=8, color=line.get_color(), mec="k")
    _ring_selected(
        ax, chosen.itl_ms, chosen.thpt_per_gpu, f"selected: {chosen.candidate.name}, n={chosen.concurrency}"
    )
    ax.axvline(itl_target_ms, color=_TARGET, ls="--", label=f"ITL target {itl_target_ms:g} ms")
    ctx = sweeps[0].context_tokens if sweeps else 0
    ax.set_xlabel("Inter-token latency, ITL (ms)")
    ax.set_ylabel("Decode throughput (tokens/s/GPU)")
    ax.set_title(f"Decode performance over concurrency n (context {ctx} tokens)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def plot_prefill_interpolation(
    surface: PrefillSurface, isl: int, ttft_target_ms: float, out_dir: Path, only: str | None = None
) -> list[Path]:
    """TTFT and tokens/s/GPU of the selected prefill engine over ISL, with the band when calibrated."""
    c = surface.candidate
    band = _has_band(surface.ttft_low_ms, surface.ttft_high_ms)
    paths = []
    thpt_lo = prefill_thpt_per_gpu(c, surface.isl, surface.ttft_high_ms)  # slower prefill, lower throughput
    thpt_hi = prefill_thpt_per_gpu(c, surface.isl, surface.ttft_low_ms)
    series = (
        (
            "prefill_ttft_interpolation.png",
            surface.ttft_ms,
            surface.ttft_low_ms,
            surface.ttft_high_ms,
            "Time to first token, TTFT (ms)",
            "TTFT",
        ),
        (
            "prefill_throughput_interpolation.png",
            surface.thpt_per_gpu,
            thpt_lo,
            thpt_hi,
            "Prefill throughput (tokens/s/GPU)",
            "Throughput",
        ),
    )
    for name, y, lo, hi, ylabel, what in series:
        if only is not None and name != only:
            continue
        fig, ax = _figure((8, 5))
        ax.plot(surface.isl, y, "o-", ms=3, label=f"{c.name} estimate")
        if band:
            ax.fill_between(surface.isl, lo, hi, alpha=0.2, label="uncertainty band")
        ax.axvline(isl, color=_SELECTED, ls=":", label=f"workload ISL {isl}")
        if what == "TTFT":
            ax.axhline(ttft_target_ms, color=_TARGET, ls="--", label=f"TTFT target {ttft_target_ms:g} ms")
        ax.set_xscale("log")  # the grid is dense around the workload ISL and spans the model's context
        _plain_log_axis(ax.xaxis)
        if what == "TTFT":
            ax.set_yscale("log")
            _plain_log_axis(ax.yaxis)
        else:
            ax.set_ylim(bottom=0)
        ax.set_xlabel("Input sequence length, ISL (tokens, log scale)")
        ax.set_ylabel(ylabel + (", log scale" if what == "TTFT" else ""))
        ax.set_title(
            f"Prefill {what} vs ISL, selected engine {c.name} ({c.num_gpus} GPU{'s' * (c.num_gpus > 1)})"
        )
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        paths.append(_save(fig, out_dir / name))
    return paths


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
    _pyplot()
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
        fig, ax = _figure((8, 5.5))
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
            color=_SELECTED,
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
        paths.append(_save(fig, out_dir / name))
    return paths


def _prefill_performance(profile: Any, out: Path) -> list[Path]:
    spec = profile.spec
    return [
        plot_prefill_performance(
            profile.prefill_points, profile.selection, spec.ttft_ms, spec.isl, out / "prefill_performance.png"
        )
    ]


def _decode_performance(profile: Any, out: Path) -> list[Path]:
    return [
        plot_decode_performance(
            profile.decode_sweeps, profile.selection, profile.spec.itl_ms, out / "decode_performance.png"
        )
    ]


def _prefill_interpolation(name: str) -> Any:
    def draw(profile: Any, out: Path) -> list[Path]:
        spec = profile.spec
        return plot_prefill_interpolation(
            profile.prefill_surface, spec.isl, spec.ttft_ms, out / PREFILL_DIR, name
        )

    return draw


def _decode_map(name: str) -> Any:
    def draw(profile: Any, out: Path) -> list[Path]:
        spec = profile.spec
        return plot_decode_surfaces(
            profile.decode_surface, spec.decode_context_tokens, out / DECODE_DIR, spec.itl_ms, name
        )

    return draw


# One entry per PNG, in the order write_plots returns them (plot_workers draws each in its own process).
FIGURES: dict[str, Any] = {
    "prefill_performance.png": _prefill_performance,
    "decode_performance.png": _decode_performance,
    "prefill_ttft_interpolation.png": _prefill_interpolation("prefill_ttft_interpolation.png"),
    "prefill_throughput_interpolation.png": _prefill_interpolation("prefill_throughput_interpolation.png"),
    "decode_itl_interpolation.png": _decode_map("decode_itl_interpolation.png"),
    "decode_throughput_interpolation.png": _decode_map("decode_throughput_interpolation.png"),
}


def write_plots(profile: Any, out_dir: str | Path, *, parallel: bool = True) -> list[Path]:
    """All plots of a ``Profile``; returns the files written (the same files however they are drawn).

    ``parallel``: one forked process per figure (``plot_workers``), awaited; sequential otherwise.
    """
    out = Path(out_dir)
    if parallel:
        from .plot_workers import draw_parallel

        paths = draw_parallel(profile, out)
    else:
        paths = [p for draw in FIGURES.values() for p in draw(profile, out)]
    log.debug("wrote %d plots under %s", len(paths), out)
    return paths


__all__ = [
    "FIGURES",
    "plot_decode_performance",
    "plot_decode_surfaces",
    "plot_prefill_interpolation",
    "plot_prefill_performance",
    "write_plots",
]
