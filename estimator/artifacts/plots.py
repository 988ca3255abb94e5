"""The profile's PNG plots (matplotlib through ``plot_style``; decode maps in ``plot_decode``).

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
from ..surfaces import DecodeSweep, PrefillPoint, PrefillSurface, prefill_thpt_per_gpu
from .npz import DECODE_DIR, PREFILL_DIR
from .plot_decode import plot_decode_surfaces
from .plot_style import SELECTED as _SELECTED
from .plot_style import TARGET as _TARGET
from .plot_style import figure as _figure
from .plot_style import plain_log_axis as _plain_log_axis
from .plot_style import save as _save

log = logging.getLogger(__name__)


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
