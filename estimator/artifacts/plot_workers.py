"""Draw a profile's figures in parallel, in two forked processes, so plots cost little wall time.

Plotting is CPU-bound matplotlib work (importing it is about a third). ``prestart`` forks one process
early, before AI Configurator loads (no threads yet, so forking is safe): it imports matplotlib while
the estimate runs (and draws a throw-away figure: the first draw in a process loads fonts and caches),
then forks a sibling, which inherits all of it. ``draw_parallel`` sends each process three figures (the
pickled profile, the output directory, the names) down its own pipe and awaits every answer; figures
whose process failed, or did not answer in time, are drawn here, so the files are the same either way.
Processes that never get a job exit when our end of their pipe closes. (On a machine whose CPU share is
saturated the processes split one share, so only the total CPU counts: hence cheap figures, plots.py.)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from . import plot_style, plots

log = logging.getLogger(__name__)
_TIMEOUT_S = 300.0
_POOL: _Pool | None = None
# Three figures per process, balanced by measured cost (the decode maps are the dearest). Two processes
# use both cores of a small machine; a third cost more CPU (fork, copy-on-write, unpickling) than it saved.
GROUPS = (
    ("decode_itl_interpolation.png", "prefill_performance.png", "prefill_ttft_interpolation.png"),
    ("decode_throughput_interpolation.png", "decode_performance.png", "prefill_throughput_interpolation.png"),
)


def _serve(conn: Any) -> None:  # pragma: no cover - runs in a forked process
    """Draw the figures named in the one job that arrives (none if our end closes first)."""
    try:
        profile, out, names = conn.recv()
    except (EOFError, OSError):
        return
    try:
        conn.send((True, [str(p) for n in names for p in plots.FIGURES[n](profile, Path(out))]))
    except BaseException as exc:  # noqa: BLE001 - reported; the parent draws these figures
        conn.send((False, repr(exc)))


def _importer(ends: list[Any]) -> None:  # pragma: no cover - runs in a forked process
    status = 1
    try:
        import gc

        gc.disable()  # short-lived: matplotlib's many small objects would trigger collections for nothing
        plot_style.pyplot()
        plot_style.warm_up()
        gc.freeze()  # what the siblings inherit stays shared: no copy-on-write from collector passes
        siblings = []
        for k in range(1, len(ends)):
            pid = os.fork()
            if pid == 0:
                for j, c in enumerate(ends):
                    if j != k:
                        c.close()
                _serve(ends[k])
                os._exit(0)
            siblings.append(pid)
        for c in ends[1:]:
            c.close()
        _serve(ends[0])
        for pid in siblings:  # reaped here, so their CPU time adds up in the parent's rusage
            os.waitpid(pid, 0)
        status = 0
    finally:
        os._exit(status)


class _Pool:
    def __init__(self, count: int) -> None:
        import multiprocessing as mp

        pipes = [mp.Pipe() for _ in range(count)]
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child
            for mine, _ in pipes:
                mine.close()
            _importer([theirs for _, theirs in pipes])
        for _, theirs in pipes:
            theirs.close()
        self.conns = [mine for mine, _ in pipes]

    def close(self) -> None:
        for c in self.conns:
            c.close()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def _can_fork() -> bool:
    return hasattr(os, "fork") and hasattr(os, "waitpid")


def prestart() -> None:
    """Fork the plot processes now (call before AI Configurator loads); ``draw_parallel`` uses them."""
    global _POOL
    if _POOL is None and _can_fork():
        _POOL = _Pool(len(GROUPS))


def draw_parallel(profile: Any, out: Path) -> list[Path]:
    global _POOL
    if not _can_fork():
        return [p for draw in plots.FIGURES.values() for p in draw(profile, out)]
    pool, _POOL = _POOL or _Pool(len(GROUPS)), None
    sent = []
    for names, conn in zip(GROUPS, pool.conns):
        try:
            conn.send((profile, str(out), names))
            sent.append(True)
        except (OSError, ValueError):
            sent.append(False)
    drawn: dict[str, list[Path]] = {}
    for names, conn, ok in zip(GROUPS, pool.conns, sent):
        try:
            if ok and conn.poll(_TIMEOUT_S):
                good, payload = conn.recv()
                if good:
                    for n, p in zip(names, payload):
                        drawn[n] = [Path(p)]
                else:
                    log.warning(
                        "plot process for %s failed (%s); drawing them here", ", ".join(names), payload
                    )
        except (EOFError, OSError):
            log.warning("plot process for %s exited; drawing them here", ", ".join(names))
    paths: list[Path] = []
    for name, draw in plots.FIGURES.items():
        paths += drawn[name] if name in drawn else draw(profile, out)
    pool.close()
    return paths


__all__ = ["draw_parallel", "prestart"]
