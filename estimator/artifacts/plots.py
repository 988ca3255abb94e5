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

_DPI = 100
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
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


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
    surface: PrefillSurface, isl: int, ttft_target_ms: float, out_dir: Path
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
    surface: DecodeSurface, context_tokens: int, out_dir: Path, itl_target_ms: float | None = None
) -> list[Path]:
    """ITL and throughput maps over (KV usage, context length, log scale): colour = value, the sampled
    points on top, the workload's context row drawn, and the ITL target as a contour. Drawn in 2-D:
    a third of the cost of the former 3-D surfaces, and the target line is readable."""
    _pyplot()
    from matplotlib import cm

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
    gx, gy = np.meshgrid(np.linspace(0, x.max(), 60), np.linspace(logy.min(), logy.max(), 60))
    for name, z, zlabel, title, cmap in series:
        z = np.asarray(z)
        fig, ax = _figure((8, 5.5))
        gz = _hull_grid(x, logy, z, gx, gy)
        if gz is None:  # one context row or one usage column: no area to draw, points only
            mappable = ax.scatter(x, ctx, s=24, c=z, cmap=cmap, label="sampled points")
        else:
            masked = np.ma.masked_invalid(gz)
            mappable = ax.pcolormesh(
                gx, 10**gy, masked, cmap=cmap, vmin=z.min(), vmax=z.max(), shading="auto"
            )
            ax.scatter(x, ctx, s=5, c="k", label="sampled points")
            if (
                itl_target_ms is not None
                and name.startswith("decode_itl")
                and z.min() < itl_target_ms < z.max()
            ):
                ax.contour(
                    gx, 10**gy, masked, levels=[itl_target_ms], colors="k", linewidths=1.5, linestyles="--"
                )
                ax.plot([], [], "k--", label=f"ITL target {itl_target_ms:g} ms")
        ax.axhline(
            context_tokens, color=_SELECTED, lw=1.5, ls=":", label=f"workload context {context_tokens} tokens"
        )
        ax.set_yscale("log")
        _plain_log_axis(ax.yaxis)
        fig.colorbar(mappable, ax=ax).set_label(zlabel)
        ax.set_xlabel("Active KV usage (fraction of capacity)")
        ax.set_ylabel("Context length (tokens, log scale)")
        ax.set_title(f"{title}, selected engine {c.name} (KV capacity {surface.kv_capacity_tokens:,} tokens)")
        ax.legend(fontsize=8, loc="upper right")
        paths.append(_save(fig, out_dir / name))
    return paths


def _decode_jobs(profile: Any, out: Path) -> list[Path]:
    spec = profile.spec
    return plot_decode_surfaces(
        profile.decode_surface, spec.decode_context_tokens, out / DECODE_DIR, spec.itl_ms
    )


def _other_jobs(profile: Any, out: Path) -> list[Path]:
    spec, sel = profile.spec, profile.selection
    paths = [
        plot_prefill_performance(
            profile.prefill_points, sel, spec.ttft_ms, spec.isl, out / "prefill_performance.png"
        ),
        plot_decode_performance(profile.decode_sweeps, sel, spec.itl_ms, out / "decode_performance.png"),
    ]
    return paths + plot_prefill_interpolation(
        profile.prefill_surface, spec.isl, spec.ttft_ms, out / PREFILL_DIR
    )


_PARTS = {"decode": _decode_jobs, "other": _other_jobs}
_WORKERS: list[Any] = []


def _serve(conn: Any) -> None:  # pragma: no cover - runs in the forked process
    """Import matplotlib now; draw one part of a profile when it arrives; report the files."""
    import os

    try:
        _pyplot()
        msg = conn.recv()
    except BaseException:  # noqa: BLE001 - the parent draws everything itself then
        os._exit(1)
    if msg is not None:
        profile, out, part = msg
        try:
            conn.send((True, [str(p) for p in _PARTS[part](profile, Path(out))]))
        except BaseException as exc:  # noqa: BLE001 - reported; the parent redraws this part
            conn.send((False, repr(exc)))
    os._exit(0)


class _PlotWorker:
    """A forked process that imports matplotlib while the estimate runs, then draws one part."""

    def __init__(self) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), daemon=True)
        self.proc.start()
        child.close()

    def submit(self, profile: Any, out: Path, part: str) -> bool:
        try:
            self.conn.send((profile, str(out), part))
            return True
        except (OSError, ValueError):
            return False

    def result(self) -> list[Path] | None:
        try:
            ok, payload = self.conn.recv()
        except (EOFError, OSError):
            ok, payload = False, "plot process exited"
        self.proc.join(timeout=30)
        if not ok:
            log.warning("plot process failed (%s); drawing its part here", payload)
            return None
        return [Path(p) for p in payload]


def prestart_plot_workers(count: int = 2) -> None:
    """Fork ``count`` plot processes now, before AI Configurator loads (no threads yet, so forking is
    safe), so that importing matplotlib, about a third of the plot cost, overlaps the estimate, and
    the figures are then drawn on two cores. ``write_plots`` uses them; unused ones die with us."""
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        return
    while len(_WORKERS) < count:
        _WORKERS.append(_PlotWorker())


def write_plots(profile: Any, out_dir: str | Path, *, parallel: bool = True) -> list[Path]:
    """All plots of a ``Profile``; returns the files written (the same files however they are drawn).

    With ``parallel``, the parts (the two decode maps; the other four figures) go to the
    processes ``prestart_plot_workers`` forked, or to one forked now for the decode part; completion
    is awaited, and a part whose process failed is drawn here.
    """
    out = Path(out_dir)
    parts = ["decode", "other"]
    workers: dict[str, Any] = {}
    if parallel:
        if not _WORKERS:
            _pyplot()  # imported once, before forking, so the child does not import it again
            prestart_plot_workers(1)
        for part in parts:
            if _WORKERS:
                w = _WORKERS.pop()
                if w.submit(profile, out, part):
                    workers[part] = w
    paths: list[Path] = []
    for part in parts:
        if part not in workers:
            paths += _PARTS[part](profile, out)
    for part, w in workers.items():
        got = w.result()
        paths += got if got is not None else _PARTS[part](profile, out)
    order = {p.name: i for i, p in enumerate(_ALL_FILES)}
    paths.sort(key=lambda p: order.get(p.name, len(order)))
    log.debug("wrote %d plots under %s", len(paths), out)
    return paths


_ALL_FILES = tuple(
    Path(n)
    for n in (
        "prefill_performance.png",
        "decode_performance.png",
        "prefill_ttft_interpolation.png",
        "prefill_throughput_interpolation.png",
        "decode_itl_interpolation.png",
        "decode_throughput_interpolation.png",
    )
)


__all__ = [
    "plot_decode_performance",
    "plot_decode_surfaces",
    "plot_prefill_interpolation",
    "plot_prefill_performance",
    "prestart_plot_workers",
    "write_plots",
]
