"""The engine process of the local runner: its command line, why it failed to start, and stopping it.

Split from the local runner so that the backend flag table and the process-group plumbing, which need
no server, can be read and tested apart from starting, waiting and measuring. ``engine_command`` spells
a candidate (TP n, TEP n, DEP n) in each backend's flags; ``start_failure_reason`` reads the tail of an
engine log; ``signal_group`` signals a whole process group. Engines registered with ``stop_at_exit``
are stopped at interpreter exit, so a crash or Ctrl-C never leaves one holding the GPUs.

A SIGKILL runs no exit handler, so three more guards cover it: ``die_with_parent`` (the engine's
``preexec_fn``) asks the kernel for SIGTERM when its parent dies (PR_SET_PDEATHSIG); ``start_watchdog``
runs a tiny process outside the engine's group that, once the parent is gone, sends the whole group
SIGTERM and then SIGKILL (the engine's own children, which the parent-death signal does not reach);
and ``EnginePidFile`` records each engine (pgid and start time) in the output directory, so the next
run reaps what a kill -9 of the whole session left (``reap_leftovers``).
"""

from __future__ import annotations

import atexit
import ctypes
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from estimator.candidates import Candidate
from estimator.candidates import Mapping as ParallelMapping
from estimator.errors import SpecError

# How each backend is launched and how it spells parallelism. "ep" is a bare switch when ep_size is False.
ENGINE_FLAGS: dict[str, dict] = {
    "vllm": {
        "launch": ["-m", "vllm.entrypoints.openai.api_server"],
        "model": "--model",
        "tp": "--tensor-parallel-size",
        "dp": "--data-parallel-size",
        "ep": "--enable-expert-parallel",
        "ep_size": False,
        "dp_attention": None,
    },
    "sglang": {
        "launch": ["-m", "sglang.launch_server"],
        "model": "--model-path",
        "tp": "--tp",
        "dp": "--dp",
        "ep": "--ep-size",
        "ep_size": True,
        "dp_attention": "--enable-dp-attention",
    },
    "trtllm": {
        "launch": None,
        "command": ["trtllm-serve"],
        "model": None,
        "tp": "--tp_size",
        "dp": None,
        "ep": "--ep_size",
        "ep_size": True,
        "dp_attention": None,
    },
}
OOM_PATTERNS = re.compile(
    r"out of memory|OutOfMemoryError|No available memory for the cache blocks|Not enough memory"
    r"|larger than the available KV cache memory|CUDA_ERROR_OUT_OF_MEMORY|insufficient memory",
    re.IGNORECASE,
)
ERROR_LINE = re.compile(r"error|exception|failed|traceback", re.IGNORECASE)


log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1
try:
    _LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: a preexec_fn should not load libraries
except OSError:  # pragma: no cover - not Linux/glibc
    _LIBC = None


class Stoppable(Protocol):
    def stop(self) -> None: ...


_LIVE: weakref.WeakSet[Stoppable] = weakref.WeakSet()


def parallel_args(backend: str, cand: Candidate) -> list[str]:
    """Engine flags for ``cand`` (TP n, TEP n, DEP n) in ``backend``'s spelling."""
    f = ENGINE_FLAGS[backend]
    n = str(cand.num_gpus)
    ep = [f["ep"], n] if f["ep_size"] else [f["ep"]]
    if cand.mapping is ParallelMapping.TP:
        return [f["tp"], n]
    if cand.mapping is ParallelMapping.TEP:
        return [f["tp"], n, *ep]
    if backend == "vllm":
        return [f["tp"], "1", f["dp"], n, *ep]
    if backend == "sglang":
        return [f["tp"], n, f["dp"], n, f["dp_attention"], *ep]
    raise SpecError(
        "candidate",
        f"{cand.name} on {backend} needs attention DP in its engine config; pass it with extra_args",
    )


def engine_command(
    backend: str,
    model: str,
    cand: Candidate,
    *,
    host: str,
    port: int,
    python: str,
    command: Sequence[str] | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The argv that starts ``backend`` serving ``model`` as ``cand`` on host:port."""
    if backend not in ENGINE_FLAGS:
        raise SpecError("backend", f"{backend!r} is not one of {sorted(ENGINE_FLAGS)}")
    f = ENGINE_FLAGS[backend]
    prefix = list(command) if command else (f.get("command") or [python, *f["launch"]])
    model_args = [f["model"], model] if f["model"] else [model]
    return [
        *prefix,
        *model_args,
        "--host",
        host,
        "--port",
        str(port),
        *parallel_args(backend, cand),
        *extra_args,
    ]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_failure_reason(lines: Sequence[str]) -> tuple[str, str]:
    """("out_of_memory" | "exited", the most telling log line) from the last lines of an engine log."""
    for line in reversed(lines):
        if OOM_PATTERNS.search(line):
            return "out_of_memory", line.strip()
    for line in reversed(lines):
        if ERROR_LINE.search(line) and not line.lstrip().startswith("File "):
            return "exited", line.strip()
    return "exited", next((ln.strip() for ln in reversed(lines) if ln.strip()), "(no output)")


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False if the group no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM):
    """A ``preexec_fn``: the child gets ``sig`` when the thread that started it exits (Linux prctl).

    Start engines from the main thread: the kernel ties the signal to the creating thread.
    """

    def preexec() -> None:
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


_WATCHDOG = """
import os, signal, sys, time
parent, pgid, grace = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
def alive():
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
while alive():
    if os.getppid() != parent:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                sys.exit(0)
            end = time.monotonic() + wait
            while alive() and time.monotonic() < end:
                time.sleep(0.1)
        sys.exit(0)
    time.sleep(0.2)
"""


def start_watchdog(pgid: int, grace_s: float = 10.0) -> subprocess.Popen:
    """A process outside the engine's group that kills the group once this process is gone."""
    return subprocess.Popen(
        [sys.executable, "-I", "-c", _WATCHDOG, str(os.getpid()), str(pgid), str(grace_s)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


class EnginePidFile:
    """Engines of this output directory (pgid, start time, command), so a later run can reap leftovers."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def entries(self) -> list[dict]:
        try:
            data = json.loads(self.path.read_bytes().decode("utf-8"))
        except (OSError, ValueError):
            return []
        return (
            [e for e in data if isinstance(e, dict) and isinstance(e.get("pgid"), int)]
            if isinstance(data, list)
            else []
        )

    def _write(self, entries: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(entries))
        os.replace(tmp, self.path)

    def add(self, pgid: int, command: list[str], url: str) -> None:
        entry = {"pgid": pgid, "start_time": process_start_time(pgid), "owner": os.getpid(),
                 "command": command[:3], "url": url}  # fmt: skip
        self._write([e for e in self.entries() if e["pgid"] != pgid] + [entry])

    def remove(self, pgid: int) -> None:
        self._write([e for e in self.entries() if e["pgid"] != pgid])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def reap_leftovers(pid_file: EnginePidFile, grace_s: float = 10.0) -> list[int]:
    """Stop engine groups an earlier (killed) run left behind; return the pgids stopped.

    A group counts as ours if its leader still has the recorded start time, or if the leader is gone
    but the group still exists (Linux never reuses a pid while a group of that id lives).
    """
    reaped = []
    for e in pid_file.entries():
        pgid = e["pgid"]
        if e.get("owner") == os.getpid() or not _group_alive(pgid):
            continue
        started = process_start_time(pgid)
        if started is not None and started != e.get("start_time"):
            continue  # the pid now belongs to another process
        log.warning(
            "stopping engine process group %d left by an earlier run (%s)",
            pgid,
            " ".join(e.get("command", [])),
        )
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            signal_group(pgid, sig)
            end = time.monotonic() + wait
            while _group_alive(pgid) and time.monotonic() < end:
                time.sleep(0.1)
        reaped.append(pgid)
    for pgid in reaped:
        pid_file.remove(pgid)
    return reaped


def stop_at_exit(runner: Stoppable) -> None:
    """Call ``runner.stop()`` at interpreter exit; held weakly, so the runner can still be collected."""
    _LIVE.add(runner)


def forget_at_exit(runner: Stoppable) -> None:
    """Undo ``stop_at_exit`` once the runner's engine is stopped."""
    _LIVE.discard(runner)


@atexit.register
def _stop_all() -> None:
    for runner in list(_LIVE):
        runner.stop()
