"""Replay runner: answers probes from recorded measurements (tests, offline calibration).

Sources it reads (``ReplayRunner.from_paths``):
- our own ``MeasurementStore`` files (``*.jsonl``);
- AIC's ``silicon_sample.csv`` (``*.csv``: agg rows, deduplicated, see ``validate/silicon.py``);
- Dynamo profiling output directories: ``selected_prefill_interpolation/raw_data.npz``,
  ``selected_decode_interpolation/raw_data.npz`` and the per-point benchmark JSONs
  (``profile_export_aiperf.json`` / ``profile_export_genai_perf.json``) under ``prefill_tp4/``,
  ``decode_tep8/``-style directories. These files do not name the model or backend, so the caller
  gives the ``stack`` (and, for the npz files, which candidates were selected).

Matching: the probe key first; otherwise the nearest record of the same engine (stack, candidate)
and kind whose ISL, OSL (not for prefill) and concurrency each lie within a factor 1 + ``tolerance``
(default 10 %, at most ``MAX_TOLERANCE``: a looser match would store a record under a point it was not
measured at). Nothing close enough -> ``ProbeNotSupported`` (``can_measure`` says so before). Stacks
match on model, system and backend; version and quantisation only where both sides state them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

from estimator.candidates import Candidate, Mapping
from estimator.errors import MeasurementError, SpecError
from estimator.measurements import Measurement, MeasurementStore, Probe, ProbeKind
from estimator.sources.base import Stack

from .base import Capabilities, Runner

log = logging.getLogger(__name__)

DYNAMO_DECODE_OSL = 500  # Dynamo's decode sweep uses OSL 500: context y = isl + osl/2
_ENGINE_DIR = re.compile(r"^(prefill|decode)_(tp|tep|dep)(\d+)$", re.IGNORECASE)
_RESULT_FILES = ("profile_export_aiperf.json", "profile_export_genai_perf.json")
MAX_TOLERANCE = 0.5  # a replayed record answers a probe at most a factor 1.5 away in ISL, OSL, concurrency


def check_tolerance(value: object) -> float:
    """The replay tolerance, refused unless a number in (0, MAX_TOLERANCE]: beyond it a record would be
    stored under another point's label (a concurrency-405 probe answered by the concurrency-256 record)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_TOLERANCE:
        raise SpecError("runner_options.tolerance", f"must be a number in (0, {MAX_TOLERANCE:g}]: how far "
                        "(relative) a recorded point's ISL, OSL and concurrency may lie from a probe's to "
                        f"answer it; got {value!r}")  # fmt: skip
    return float(value)


def stacks_match(a: Stack, b: Stack) -> bool:
    if (a.model.lower(), a.system, a.backend) != (b.model.lower(), b.system, b.backend):
        return False
    return all(x is None or y is None or x == y for x, y in (
        (a.backend_version, b.backend_version), (a.gemm_quant, b.gemm_quant), (a.kvcache_quant, b.kvcache_quant)))  # fmt: skip


class ReplayRunner(Runner):
    """Answers probes from a list of recorded measurements; ``skipped``: what its files held that it
    could not use, one ``"WHERE: reason"`` line each (``from_paths`` fills it; ``models fit`` reports it)."""

    name = "replay"

    def __init__(self, records: Iterable[Measurement], tolerance: float = 0.10, skipped: Iterable[str] = ()):
        self.records = list(records)
        self.tolerance = check_tolerance(tolerance)
        self.skipped = list(skipped)
        self._by_key = {m.probe.key: m for m in self.records}

    @classmethod
    def from_paths(
        cls,
        paths: Iterable[str | Path],
        *,
        stack: Stack | None = None,
        prefill_candidate: Candidate | None = None,
        decode_candidate: Candidate | None = None,
        tolerance: float = 0.10,
    ) -> ReplayRunner:
        check_tolerance(tolerance)  # before reading any file
        paths = [Path(p) for p in paths]
        if (prefill_candidate or decode_candidate) and not any(p.is_dir() for p in paths):
            given = "prefill_candidate" if prefill_candidate else "decode_candidate"
            raise SpecError(f"runner_options.{given}", "labels the engines of a Dynamo profiling "
                            "directory; none of the measurements given is one")  # fmt: skip
        records: list[Measurement] = []
        left_out: list[str] = []
        for p in paths:
            if p.is_dir():
                if stack is None:
                    raise MeasurementError(
                        f"{p}: a Dynamo profiling directory needs the stack (model, system, backend)"
                    )
                records += load_dynamo_dir(p, stack, prefill_candidate, decode_candidate)
            elif p.suffix == ".csv":
                from ..silicon import load_silicon

                got, skipped = load_silicon(p, report_other_modes=True)
                if skipped:
                    log.warning("%s: %d rows not used (e.g. row %s: %s)", p, len(skipped), skipped[0].row_id,
                                skipped[0].reason)  # fmt: skip
                left_out += [f"{p.name} row {s.row_id}: {s.reason}" for s in skipped]
                records += got
            elif p.is_file():
                store = MeasurementStore(p)
                got = store.load()
                if not got:
                    why = store.skipped[0] if store.skipped else f"{p}: empty"
                    raise MeasurementError(f"no usable measurement in {p} ({why})")
                left_out += store.skipped
                records += got
            else:
                raise MeasurementError(f"no recorded measurements at {p}")
        log.info("replay: %d records from %s", len(records), ", ".join(map(str, paths)))
        return cls(records, tolerance, left_out)

    @cached_property
    def fingerprint(self) -> str:
        """``replay sha256:…`` of the records it replays (what the files held, not where they lie): a rerun
        with other files re-measures the points stored from the old ones instead of reusing them."""
        h = hashlib.sha256()
        for m in self.records:
            h.update(json.dumps(m.to_dict(), sort_keys=True, default=str).encode() + b"\n")
        return f"{self.name} sha256:{h.hexdigest()[:16]}"

    def capabilities(self) -> Capabilities:
        """What it holds: the kinds, engines and models of its records (``can_measure`` also needs a near point)."""
        return Capabilities(
            kinds=frozenset(m.probe.kind for m in self.records),
            candidates=frozenset(m.probe.candidate for m in self.records),
            models=frozenset(m.probe.stack.model for m in self.records),
            why="the recorded measurements",
        )

    def can_measure(self, probe: Probe) -> str | None:
        reason = super().can_measure(probe)
        if reason is None and self._match(probe) is None:
            reason = (f"holds no recorded {probe.kind.value} point of {probe.candidate.name} on "
                      f"{probe.stack.system}/{probe.stack.backend} within {self.tolerance:.0%} of isl "
                      f"{probe.isl}, osl {probe.osl}, concurrency {probe.concurrency}")  # fmt: skip
        return reason

    def measure(self, probe: Probe) -> Measurement:
        self.require(probe)
        m = self._match(probe)
        # the runner that really measured it (a GPU-runner point trains its own coefficient group)
        extra = {**m.extra, "replayed_from": m.probe.to_dict(), "measured_by": m.measured_by}
        return dataclasses.replace(m, probe=probe, runner=self.name, extra=extra)

    def _match(self, probe: Probe) -> Measurement | None:
        return self._by_key.get(probe.key) or self._nearest(probe)  # the key includes the stack

    def _nearest(self, probe: Probe) -> Measurement | None:
        best, best_d = None, math.inf
        for m in self.records:
            q = m.probe
            if (
                q.kind is not probe.kind
                or q.candidate != probe.candidate
                or not stacks_match(q.stack, probe.stack)
            ):
                continue
            pairs = [(q.isl, probe.isl), (q.concurrency, probe.concurrency)]
            if probe.kind is not ProbeKind.PREFILL:
                pairs.append((q.osl, probe.osl))
            gaps = [abs(math.log(a / b)) for a, b in pairs]
            if max(gaps) > math.log1p(self.tolerance):
                continue
            d = sum(g * g for g in gaps)
            if d < best_d:
                best, best_d = m, d
        return best


# ---- Dynamo profiling output -----------------------------------------------------------------
def load_dynamo_dir(
    root: Path, stack: Stack, prefill: Candidate | None = None, decode: Candidate | None = None
) -> list[Measurement]:
    """Measurements from a Dynamo profiler output directory (npz files and per-point JSONs)."""
    out: list[Measurement] = []
    pf = root / "selected_prefill_interpolation" / "raw_data.npz"
    if pf.exists():
        if prefill is None:
            raise MeasurementError(f"{pf}: say which prefill candidate was selected (e.g. TP2)")
        out += _prefill_npz(pf, stack, prefill)
    dc = root / "selected_decode_interpolation" / "raw_data.npz"
    if dc.exists():
        if decode is None:
            raise MeasurementError(f"{dc}: say which decode candidate was selected (e.g. TP4)")
        out += _decode_npz(dc, stack, decode)
    for engine_dir in sorted(d for d in root.iterdir() if d.is_dir() and _ENGINE_DIR.match(d.name)):
        out += _point_jsons(engine_dir, stack)
    if not out:
        raise MeasurementError(f"{root}: no Dynamo raw_data.npz or per-point benchmark JSON found")
    return out


def _npz(path: Path) -> dict:
    """The arrays of a Dynamo ``raw_data.npz``; a truncated, corrupt or pickled file names the path."""
    import zipfile
    import zlib

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: np.asarray(z[k], dtype=float) for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile, zlib.error) as exc:
        raise MeasurementError(f"cannot read {path}: {type(exc).__name__}: {str(exc)[:200]}") from None


def _columns(path: Path, z: dict, names: tuple[str, ...]) -> list:
    missing = [n for n in names if n not in z]
    if missing:
        raise MeasurementError(f"{path}: missing array {missing[0]!r}")
    cols = [z[n].ravel() for n in names]
    if len({c.size for c in cols}) != 1:
        raise MeasurementError(f"{path}: arrays {', '.join(names)} differ in length")
    return cols


def _kept(records: list[Measurement], path: Path) -> list[Measurement]:
    from estimator.measurements import usable

    return usable(records, str(path))


def _record(probe: Probe, source: Path, **values) -> Measurement:
    return Measurement(probe=probe, runner="replay", hardware=probe.stack.system, measured_at="",
                       extra={"source": str(source)}, **values)  # fmt: skip


def _prefill_npz(path: Path, stack: Stack, cand: Candidate) -> list[Measurement]:
    z = _npz(path)
    out = []
    for isl, ttft, thpt in zip(*_columns(path, z, ("prefill_isl", "prefill_ttft", "prefill_thpt_per_gpu")), strict=True):
        if not (math.isfinite(isl) and isl >= 1):
            log.warning("%s: skipping prefill row with ISL %r", path, float(isl))
            continue
        probe = Probe(ProbeKind.PREFILL, stack, cand, isl=round(float(isl)))
        out.append(_record(probe, path, ttft_ms=float(ttft), thpt_per_gpu=float(thpt)))
    return _kept(out, path)


def _decode_npz(path: Path, stack: Stack, cand: Candidate, osl: int = DYNAMO_DECODE_OSL) -> list[Measurement]:
    """x = kv usage, y = context = isl + osl/2: concurrency = x·max_kv/y, isl = y − osl/2."""
    z = _npz(path)
    (kv,) = _columns(path, z, ("max_kv_tokens",))
    if kv.size < 1 or not math.isfinite(kv[0]) or kv[0] < 1:
        raise MeasurementError(f"{path}: max_kv_tokens must be a positive number")
    max_kv = int(kv[0])
    out = []
    names = ("x_kv_usage", "y_context_length", "z_itl", "z_thpt_per_gpu")
    for x, y, itl, thpt in zip(*_columns(path, z, names), strict=True):
        if not (math.isfinite(x) and math.isfinite(y) and x > 0 and y > osl / 2):
            log.warning("%s: skipping decode row with kv usage %r, context %r", path, float(x), float(y))
            continue
        conc = max(1, round(float(x) * max_kv / float(y)))
        isl = max(1, round(float(y) - osl / 2))
        probe = Probe(ProbeKind.DECODE, stack, cand, isl=isl, osl=osl, concurrency=conc)
        out.append(
            _record(probe, path, itl_ms=float(itl), thpt_per_gpu=float(thpt), kv_capacity_tokens=max_kv)
        )
    return _kept(out, path)


def _point_jsons(engine_dir: Path, stack: Stack) -> list[Measurement]:
    """One record per benchmark JSON under ``prefill_tp4/`` or ``decode_tp4/`` (aiperf or genai-perf).

    An unreadable file (torn, not UTF-8) is skipped with a warning; one that parses but has another
    structure than a benchmark result is a ``MeasurementError`` naming the file."""
    phase, mapping, n = _ENGINE_DIR.match(engine_dir.name).groups()  # type: ignore[union-attr]
    cand = Candidate(Mapping(mapping.upper()), int(n))
    out = []
    for f in sorted(p for name in _RESULT_FILES for p in engine_dir.rglob(name)):
        if f.parent.name.endswith("_warmup") or "_warmup" in str(f.relative_to(engine_dir)):
            continue  # Dynamo's decode warm-up run (fills the prefix cache), not a measurement
        try:
            doc = json.loads(f.read_bytes().decode("utf-8"))
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or not UTF-8
            log.warning("skipping unreadable benchmark result %s (%s)", f, exc)
            continue
        if not isinstance(doc, dict):
            raise MeasurementError(f"{f}: malformed benchmark result: a JSON {type(doc).__name__}, "
                                   "not an object")
        name = str(f.relative_to(engine_dir))
        isl = _from_name(r"isl(\d+)", name) or _avg(doc, "input_sequence_length", f)
        osl = _from_name(r"osl(\d+)", name) or _avg(doc, "output_sequence_length", f) or 1
        conc = _from_name(r"_n(\d+)", name) or _concurrency(doc, f) or 1
        if not isl or not math.isfinite(isl) or isl < 1 or not math.isfinite(osl) or not math.isfinite(conc):
            log.warning("skipping %s: no usable ISL in its path or content", f)
            continue
        main = "time_to_first_token" if phase.lower() == "prefill" else "inter_token_latency"
        value = _avg(doc, main, f)
        if not value:  # absent or 0 (a TTFT of 0 has no throughput either)
            log.warning("skipping %s: no usable %s average", f, main)
            continue
        if phase.lower() == "prefill":
            probe = Probe(ProbeKind.PREFILL, stack, cand, isl=int(isl), osl=int(osl), concurrency=int(conc))
            out.append(_record(probe, f, ttft_ms=value, thpt_per_gpu=isl / value * 1000 / cand.num_gpus
                               * cand.attention_dp_size))  # fmt: skip
        else:
            thpt = _avg(doc, "output_token_throughput", f)
            probe = Probe(ProbeKind.DECODE, stack, cand, isl=int(isl), osl=int(osl), concurrency=int(conc))
            out.append(_record(probe, f, itl_ms=value, ttft_ms=_avg(doc, "time_to_first_token", f),
                               thpt_per_gpu=None if thpt is None else thpt / cand.num_gpus))  # fmt: skip
    return _kept(out, engine_dir)


def _from_name(pattern: str, name: str) -> int | None:
    m = re.search(pattern, name)
    return int(m.group(1)) if m else None


def _get(doc: dict, path: str, f: Path) -> object:
    """``doc`` at the dotted ``path``, None where a level is absent; a level that is not an object is a
    malformed result (``MeasurementError`` naming the file), never read as "absent"."""
    v: object = doc
    keys = path.split(".")
    for i, key in enumerate(keys):
        if v is None:
            return None
        if not isinstance(v, dict):
            raise MeasurementError(f"{f}: malformed benchmark result: {'.'.join(keys[:i])} is "
                                   f"{type(v).__name__} {str(v)[:40]!r}, not an object")  # fmt: skip
        v = v.get(key)
    return v


def _number(v: object, path: str, f: Path) -> float | None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
        raise MeasurementError(f"{f}: malformed benchmark result: {path} is {str(v)[:40]!r}, not a number")
    return None if v is None else float(v)


def _avg(doc: dict, metric: str, f: Path) -> float | None:
    """The metric's average (ms where a time: older genai-perf exports give ns), None where absent."""
    v = _number(_get(doc, f"{metric}.avg", f), f"{metric}.avg", f)
    if v is None:
        return None
    return v * 1e-6 if doc[metric].get("unit") == "ns" else v


def _concurrency(doc: dict, f: Path) -> int | None:
    """The load generator's concurrency (aiperf ``loadgen``, genai-perf ``perf_analyzer.stimulus``)."""
    for path in ("input_config.loadgen.concurrency", "input_config.perf_analyzer.stimulus.concurrency"):
        c = _number(_get(doc, path, f), path, f)
        if c is not None:
            if not (math.isfinite(c) and c >= 1 and c == int(c)):
                raise MeasurementError(f"{f}: malformed benchmark result: {path} is {c!r}, "
                                       "not an integer >= 1")
            return int(c)
    return None
