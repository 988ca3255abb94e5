"""The engine process of the local runner: its command line, why it failed to start, and stopping it.

Split from the local runner so that the backend flag table and the process-group plumbing, which need
no server, can be read and tested apart from starting, waiting and measuring. ``engine_command`` spells
a candidate (TP n, TEP n, DEP n) in each backend's flags; ``start_failure_reason`` reads the tail of an
engine log; ``signal_group`` signals a whole process group. Engines registered with ``stop_at_exit``
are stopped at interpreter exit, so a crash or Ctrl-C never leaves one holding the GPUs.
"""

from __future__ import annotations

import atexit
import os
import re
import socket
import weakref
from collections.abc import Sequence
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
