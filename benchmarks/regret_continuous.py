"""The continuous-concurrency protocol of ``decision_regret.py`` (stated in ``docs/decision_regret.md``).

A planner sets an engine's concurrency (max in-flight requests per worker) to any integer, not only to
the powers of two a benchmark measured. Here a decision picks an engine *and* a concurrency c anywhere
in that engine's measured range [c_min, c_max] at the group's ISL/OSL, on a log grid of
``PER_DOUBLING`` points per factor 2 (rounded to integers, the measured concurrencies included):

- prediction at c: the serving model at concurrency c on AIC's terms (``observations_at``: the same
  ``validate.calibrate.agg_terms`` path as a measured row), raw or through the k = 3 calibration;
- truth at c: TTFT and TPOT interpolated linearly in log-log between the engine's measured rows at the
  neighbouring measured concurrencies (``interpolate_loglog``), tokens/s/GPU computed from those. An
  interpolated value is not a measurement: it assumes the curve between two measured points is a power
  law, which holds for smooth TPOT but can miss a knee (e.g. TTFT when queueing starts) between them.

Curves are one (engine, backend version) at one ISL/OSL: two versions of one engine are two measured
sweeps. Repeats at one concurrency inside a curve (rows that differ in a column outside the family
key) are merged by their geometric mean.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from estimator.calibration import Observation
from estimator.errors import SlaEstimateError
from estimator.measurements import Measurement
from estimator.sources.base import PerfSource
from validate.calibrate import agg_terms

PER_DOUBLING = 16  # grid points per factor 2 of concurrency (a step of 4.4 %)
GRID_FORMAT = 1  # of the cached terms file; bump when ``observations_at`` changes
MAX_CONCURRENCY = 4096


def concurrency_grid(
    c_min: int, c_max: int, per_doubling: int = PER_DOUBLING, include: Iterable[int] = ()
) -> np.ndarray:
    """Integer concurrencies in [c_min, c_max]: round(2^(k / per_doubling)), the ends and ``include``."""
    if not 1 <= c_min <= c_max:
        raise ValueError(f"need 1 <= c_min <= c_max, got {c_min}, {c_max}")
    k = np.arange(0, math.ceil(per_doubling * math.log2(c_max)) + 1)
    g = np.round(2.0 ** (k / per_doubling)).astype(int)
    extra = [c for c in include if c_min <= c <= c_max]
    g = np.concatenate([g[(g >= c_min) & (g <= c_max)], [c_min, c_max], np.asarray(extra, dtype=int)])
    return np.unique(g)


def interpolate_loglog(
    measured_c: Sequence[float], measured_y: Sequence[float], c: Sequence[float]
) -> np.ndarray:
    """``y`` at concurrencies ``c``, linear in log y vs log c between the neighbouring measured points.

    ``measured_c`` strictly increasing, ``c`` inside [measured_c[0], measured_c[-1]] (no extrapolation).
    """
    mc = np.asarray(measured_c, dtype=float)
    my = np.asarray(measured_y, dtype=float)
    x = np.asarray(c, dtype=float)
    if mc.ndim != 1 or mc.shape != my.shape or mc.size < 2 or np.any(np.diff(mc) <= 0):
        raise ValueError("need >= 2 strictly increasing measured concurrencies, one value each")
    if np.any(my <= 0) or np.any(mc <= 0):
        raise ValueError("log-log interpolation needs positive values")
    if np.any(x < mc[0]) or np.any(x > mc[-1]):
        raise ValueError(f"concurrency outside the measured range [{mc[0]:g}, {mc[-1]:g}]")
    out = np.exp(np.interp(np.log(x), np.log(mc), np.log(my)))
    node = np.searchsorted(mc, x).clip(0, mc.size - 1)
    return np.where(mc[node] == x, my[node], out)  # a measured concurrency gives its measured value exactly


@dataclass(frozen=True, slots=True)
class Curve:
    """One engine's measured rows at one ISL/OSL (one backend version), sorted by concurrency."""

    family: str
    engine: str
    version: str
    isl: int
    osl: int
    concurrency: tuple[int, ...]
    ttft_ms: tuple[float, ...]
    tpot_ms: tuple[float, ...]

    def truth(self, c: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """Interpolated (TTFT ms, TPOT ms) at ``c`` (not a measurement: see the module doc)."""
        return (
            interpolate_loglog(self.concurrency, self.ttft_ms, c),
            interpolate_loglog(self.concurrency, self.tpot_ms, c),
        )


def curves_of(rows: Sequence[dict]) -> list[Curve]:
    """Curves of test rows (``targets.json`` entries) with >= 2 distinct concurrencies; repeats merged."""
    by: dict[tuple, dict[int, list[tuple[float, float]]]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    for r in rows:
        meas = {t["kind"]: t["measured_ms"] for t in r["targets"]}
        key = (r["family"], r["engine"], str(r.get("version") or ""), r["isl"], r["osl"])
        by[key][int(r["concurrency"])].append((meas["ttft"], meas["tpot"]))
    out = []
    for (fam, eng, ver, isl, osl), pts in sorted(by.items()):
        if len(pts) < 2:
            continue
        cs = sorted(pts)
        geo = [
            pts[c][0] if len(pts[c]) == 1 else np.exp(np.mean(np.log(np.array(pts[c])), axis=0)) for c in cs
        ]
        out.append(Curve(fam, eng, ver, isl, osl, tuple(cs), tuple(float(g[0]) for g in geo),
                         tuple(float(g[1]) for g in geo)))  # fmt: skip
    return out


def observations_at(source: PerfSource, m: Measurement, concurrency: int) -> list[Observation]:
    """(TTFT, TPOT) observations to predict of ``m``'s deployment at another ``concurrency``: the serving
    model's three regimes at that concurrency (``agg_terms``, the path of a measured agg row)."""
    probe = dataclasses.replace(m.probe, concurrency=int(concurrency))
    regimes = agg_terms(source, dataclasses.replace(m, probe=probe))
    p = probe
    return [
        Observation.agg(p.candidate.name, k, regimes, p.isl, p.osl, p.concurrency) for k in ("ttft", "tpot")
    ]


def grid_key(family: str, engine: str, isl: int, osl: int, c: int) -> str:
    return f"{family}|{engine}|{isl}|{osl}|{c}"


def grid_terms(
    rows: Sequence[dict], cache: Path, targets_format: int, log=print
) -> dict[str, list[dict] | None]:
    """Serving-model observations (as dicts) at every grid concurrency of every curve of ``rows`` (all
    rows: the split picks the range later), cached in ``cache``; None where AIC cannot estimate it."""
    doc: dict = {}
    if cache.exists():
        doc = json.loads(cache.read_text())
        if (doc.get("format"), doc.get("targets_format"), doc.get("per_doubling")) != (
            GRID_FORMAT,
            targets_format,
            PER_DOUBLING,
        ):
            doc = {}
    entries: dict[str, list[dict] | None] = doc.get("entries", {})
    wanted: dict[str, tuple[dict, int]] = {}
    for cv in curves_of(rows):
        mine = [r for r in rows if (r["family"], r["engine"], r["isl"], r["osl"]) == (cv.family, cv.engine, cv.isl,
                                                                                          cv.osl)]  # fmt: skip
        for c in concurrency_grid(cv.concurrency[0], cv.concurrency[-1], include=cv.concurrency):
            key = grid_key(cv.family, cv.engine, cv.isl, cv.osl, int(c))
            if key not in entries:
                wanted.setdefault(key, (mine[0], int(c)))
    if not wanted:
        return entries
    from estimator.sources.aic import AicSource
    from estimator.sources.base import Stack
    from validate.silicon import load_silicon  # the slow part: AIC engines and serving simulations

    measurements, _ = load_silicon()
    by_ids = {tuple(m.extra.get("row_ids", [])): m for m in measurements}
    sources: dict[Stack, AicSource] = {}
    log(f"computing serving-model terms at {len(wanted)} grid concurrencies (cached in {cache})")
    for n, (key, (row, c)) in enumerate(sorted(wanted.items(), key=lambda kv: kv[0])):
        m = by_ids[tuple(row["row_ids"])]
        p = m.probe
        stack = Stack(p.stack.model, p.stack.system, p.stack.backend, None, p.stack.gemm_quant)
        src = sources.setdefault(stack, AicSource(stack))
        try:
            entries[key] = [o.to_dict() for o in observations_at(src, m, c)]
        except SlaEstimateError:
            entries[key] = None
        if n % 2000 == 1999:
            log(f"  {n + 1}/{len(wanted)}")
            _write(cache, entries, targets_format)
    _write(cache, entries, targets_format)
    return entries


def _write(cache: Path, entries: dict, targets_format: int) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "format": GRID_FORMAT,
        "targets_format": targets_format,
        "per_doubling": PER_DOUBLING,
        "entries": entries,
    }
    cache.write_text(json.dumps(doc))
