"""Probe (what to measure) and Measurement (what was measured): one schema for every runner.

Records are JSON lines. ``MeasurementStore`` appends one line per finished point and fsyncs,
so a crash loses nothing already measured; a rerun skips probes whose key is already stored
from the same source (``validate/run.py``: ``extra["fingerprint"]``).
A torn last line (crash mid-write) is skipped with a warning, never fatal. A record that gives a key
twice, and a file whose first lines are no records at all (a report.json passed by mistake), are errors.
"""

from __future__ import annotations

import enum
import fcntl
import hashlib
import json
import logging
import math
import os
import platform
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from .candidates import Candidate
from .errors import MeasurementError, SpecError
from .sources.base import Stack
from .study_file import DuplicateKey, unique_keys

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


class ProbeKind(str, enum.Enum):
    PREFILL = "prefill"  # TTFT of one request of ISL tokens, batch 1, no prefix reuse
    DECODE = "decode"  # ITL at concurrency n and context length, prefill skipped (warm prefix cache)
    AGG = "agg"  # aggregated serving: TTFT and TPOT at concurrency c with ISL/OSL


@dataclass(frozen=True, slots=True)
class Probe:
    """One point to measure on one engine.

    prefill: ``isl`` (osl small, ignored). decode: ``concurrency`` requests with prompt ``isl`` and
    ``osl`` output tokens; the mean context is isl + osl/2. agg: ``concurrency`` clients, ``isl``/``osl``.
    """

    kind: ProbeKind
    stack: Stack
    candidate: Candidate
    isl: int
    osl: int = 1
    concurrency: int = 1
    repeats: int = 3
    reason: str = ""  # why the planner chose this point

    @property
    def context_tokens(self) -> int:
        return self.isl + self.osl // 2 if self.kind is not ProbeKind.PREFILL else self.isl

    @property
    def key(self) -> str:
        """Identity of the point (reason and repeats excluded): used to skip on resume."""
        ident = {
            "kind": self.kind.value,
            "stack": self.stack.to_dict(),
            "candidate": self.candidate.name,
            "isl": self.isl,
            "osl": self.osl if self.kind is not ProbeKind.PREFILL else 0,
            "concurrency": self.concurrency,
        }
        return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "stack": self.stack.to_dict(),
            "candidate": self.candidate.name,
            "isl": self.isl,
            "osl": self.osl,
            "concurrency": self.concurrency,
            "repeats": self.repeats,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Probe:
        return cls(
            kind=ProbeKind(d["kind"]),
            stack=Stack(**d["stack"]),
            candidate=Candidate.parse(d["candidate"]),
            isl=int(d["isl"]),
            osl=int(d.get("osl", 1)),
            concurrency=int(d.get("concurrency", 1)),
            repeats=int(d.get("repeats", 1)),
            reason=str(d.get("reason", "")),
        )


def hardware_summary() -> str:
    return f"{platform.node()} {platform.machine()} {platform.system()}"


@dataclass(frozen=True, slots=True)
class Measurement:
    """The outcome of one probe. Latencies in ms, throughputs in tokens/s/GPU; None where not measured.

    Repetitions and their spread (the same meaning for every runner): a runner measures a probe
    ``probe.repeats`` times (the endpoint: requests for prefill, waves of ``concurrency`` requests for
    decode, requests per client for agg; the GPU runner: at least its ``min_iters`` timed steps).
    ``samples[f]`` holds one value per repetition of field ``f`` (``ttft_ms``, ``itl_ms``, ``tpot_ms``,
    ``thpt_per_gpu``; an agg probe's ``itl_ms`` is its ``tpot_ms`` and is sampled under that name);
    ``f`` is their mean and ``ttft_std_ms`` / ``itl_std_ms`` their sample standard deviation (n - 1):
    the noise of ONE repetition, so the standard error of the stored mean is
    ``std / sqrt(len(samples[f]))``. None where fewer than two repetitions were made or the source
    recorded none (replayed Dynamo or AIC data): the spread is unknown then, not zero.
    ``extra["server_check"]`` (endpoint, local, k8s) compares the client's numbers with the server's own.
    """

    probe: Probe
    runner: str
    ttft_ms: float | None = None
    ttft_std_ms: float | None = None
    itl_ms: float | None = None
    itl_std_ms: float | None = None
    tpot_ms: float | None = None
    thpt_per_gpu: float | None = None  # prefill: input tok/s/GPU; decode/agg: output tok/s/GPU
    kv_capacity_tokens: int | None = None
    samples: dict[str, list[float]] = field(default_factory=dict)
    hardware: str = field(default_factory=hardware_summary)
    software: dict[str, str] = field(default_factory=dict)
    measured_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def measured_by(self) -> str:
        """The runner that measured it: a replayed record says ``replay`` and keeps its own in ``extra``."""
        return str(self.extra.get("measured_by") or self.runner)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "probe"}
        return {"schema": SCHEMA_VERSION, "key": self.probe.key, "probe": self.probe.to_dict(), **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measurement:
        known = {f.name for f in fields(cls)} - {"probe"}
        return cls(probe=Probe.from_dict(d["probe"]), **{k: v for k, v in d.items() if k in known})


_LATENCIES = ("ttft_ms", "itl_ms", "tpot_ms", "thpt_per_gpu")
_SPREADS = ("ttft_std_ms", "itl_std_ms")


def measurement_problem(m: Measurement) -> str | None:
    """Why ``m`` must not calibrate anything (NaN/inf/zero/negative latency, a string, ISL <= 0), or None."""
    p = m.probe
    for name in ("isl", "osl", "concurrency", "repeats"):
        v = getattr(p, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            return f"probe {name} must be an integer >= 1, got {v!r}"
    for name in _LATENCIES + _SPREADS:
        v = getattr(m, name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"{name} must be a number, got {type(v).__name__} {str(v)[:40]!r}"
        if not math.isfinite(v) or (v <= 0 if name in _LATENCIES else v < 0):
            return f"{name} must be finite and {'> 0' if name in _LATENCIES else '>= 0'}, got {v!r}"
    kv = m.kv_capacity_tokens
    if kv is not None and (isinstance(kv, bool) or not isinstance(kv, int) or kv < 0):
        return f"kv_capacity_tokens must be an integer >= 0, got {kv!r}"
    if not isinstance(m.samples, dict):
        return "samples must be a mapping of name: [values]"
    for name, vals in m.samples.items():
        if not isinstance(vals, list) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in vals
        ):
            return f"samples[{name!r}] must be a list of finite numbers"
    return None


def usable(records: Iterable[Measurement], where: str = "") -> list[Measurement]:
    """The records fit to calibrate with; each one dropped is named in a warning."""
    out = []
    for m in records:
        why = measurement_problem(m)
        if why is None:
            out.append(m)
        else:
            p = m.probe
            log.warning("%signoring %s %s isl %s record (%s)", f"{where}: " if where else "", p.kind.value,
                        p.candidate.name, p.isl, why)  # fmt: skip
    return out


_HELD: set[str] = set()  # lock files this process holds
NOT_A_STORE_LINES = 3  # that many unreadable lines before any record: the file is no measurement store
MAX_WARNINGS = 5  # skipped lines warned one by one; the rest in one summary line


class _Unreadable(ValueError):
    """A line that is no record (torn, not UTF-8, not JSON, not a measurement)."""


class StoreBusy(MeasurementError):
    """Another run holds the measurement store: measuring the same points twice is refused."""


def _lines(fh: BinaryIO, path: Path) -> Iterator[bytes]:
    """The lines of ``fh``; a read error (e.g. ``/proc/self/mem``, a disk error) is a MeasurementError."""
    try:
        yield from fh
    except OSError as exc:
        raise MeasurementError(f"cannot read {path}: {exc.strerror}") from None


class MeasurementStore:
    """Append-only JSON-lines file of measurements; safe to resume after a crash.

    A line that is torn, not UTF-8, not a record, or a record with unusable values (NaN, a string
    latency, ISL <= 0) is skipped with a warning naming ``file:line``; the rest still loads. A record
    with a duplicate key, or ``NOT_A_STORE_LINES`` unreadable lines before the first record, raise
    ``MeasurementError`` (nothing is guessed; a torn line is one line).
    ``exclusive()`` holds an flock on ``<file>.lock`` so a second run into the same store fails at once.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.skipped: list[str] = []  # "file:line: why" for each line the last load() skipped
        self._warnings: list[tuple[int, str]] = []  # (line, why) of the first skipped lines

    def _skip(self, lineno: int, why: str) -> None:
        self.skipped.append(f"{self.path}:{lineno}: {why}")
        if len(self.skipped) <= MAX_WARNINGS:  # warned after the load: a file that is no store warns nothing
            self._warnings.append((lineno, why))

    def _record(self, lineno: int, raw: bytes) -> Measurement | None:
        """The record on one line, None for a blank one; ``_Unreadable`` when the line is no record."""
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Unreadable(f"a line that is not UTF-8 (byte {exc.start + 1})") from None
        if not line.strip():
            return None
        try:
            return Measurement.from_dict(json.loads(line, object_pairs_hook=unique_keys))
        except DuplicateKey as exc:
            raise MeasurementError(f"{self.path}:{lineno}: a record with a {exc}") from None
        except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
            raise _Unreadable(f"unreadable record ({type(exc).__name__}: {str(exc)[:120]})") from None

    def __iter__(self) -> Iterator[Measurement]:
        return iter(self.load())

    def load(self) -> list[Measurement]:
        if not self.path.exists():
            return []
        out: list[Measurement] = []
        self.skipped, self._warnings = [], []
        unreadable = 0  # lines that are no record at all
        try:
            fh = self.path.open("rb")
        except OSError as exc:
            raise MeasurementError(f"cannot read {self.path}: {exc.strerror}") from None
        with fh:
            for lineno, raw in enumerate(_lines(fh, self.path), 1):
                try:
                    m = self._record(lineno, raw)
                except _Unreadable as exc:
                    self._skip(lineno, str(exc))
                    unreadable += 1
                    if unreadable >= NOT_A_STORE_LINES and not out:  # fail before a warning per line
                        first, first_why = self._warnings[0]
                        raise MeasurementError(f"{self.path} is not a measurement store (one JSON record per "
                                               f"line): line {first}: {first_why}")
                    continue
                if m is None:
                    continue
                why = measurement_problem(m)
                if why:
                    self._skip(lineno, f"record ({why})")
                    continue
                out.append(m)
        for lineno, why in self._warnings:
            log.warning("%s:%d: skipping %s", self.path, lineno, why)
        if len(self.skipped) > MAX_WARNINGS:
            log.warning("%s: %d more lines skipped", self.path, len(self.skipped) - MAX_WARNINGS)
        return out

    def keys(self) -> set[str]:
        return {m.probe.key for m in self.load()}

    @contextmanager
    def exclusive(self) -> Iterator[MeasurementStore]:
        """Hold the store for one run; another run (any process) gets ``StoreBusy`` naming its pid."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        key = os.path.abspath(lock_path)
        if key in _HELD:  # this process holds it already (the CLI around the workflow): re-entrant
            yield self
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = lock_path.open("a+")
        except OSError as exc:
            raise SpecError("output_dir", f"cannot create {lock_path}: {exc.strerror}") from None
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                raise StoreBusy(
                    f"{self.path} is being measured by another run ({holder}); wait for it to finish "
                    "(a rerun then measures only what is missing) or use another --output-dir"
                ) from None
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} on {platform.node()}\n")
            fh.flush()
            _HELD.add(key)
            try:
                yield self
            finally:
                _HELD.discard(key)
                fh.seek(0)
                fh.truncate()
                fcntl.flock(fh, fcntl.LOCK_UN)

    def append(self, m: Measurement) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(m.to_dict(), sort_keys=True, default=_json_default)
        with self.path.open("a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # appends from several processes never interleave
            fh.seek(0, os.SEEK_END)
            if fh.tell() > 0:  # heal a torn last line so the new record starts on its own line
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")
            fh.write(line.encode() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())

    def extend(self, ms: Iterable[Measurement]) -> None:
        for m in ms:
            self.append(m)


def _json_default(o: Any) -> Any:
    if isinstance(o, enum.Enum):
        return o.value
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
