"""LocalEngineRunner: start a serving engine on this machine, measure it through EndpointRunner, stop it.

The engine runs in its own process group on a free port, with its output in a log file under
``work_dir``. A start that fails is reported within seconds: the process exited (exit code, the
telling log line, "out_of_memory" when the log says so) or ``/health`` never answered in time.
The process group gets SIGTERM, then SIGKILL, on ``close()``, on an exception and at interpreter exit.

This module starts, waits for and stops one engine; ``local_process`` holds its command line, the
start-failure reading of its log, process-group signals and the stop-at-exit registry.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import httpx

from estimator.candidates import Candidate
from estimator.errors import EngineStartError, ImplausibleMeasurement, MeasurementError, SpecError
from estimator.measurements import Measurement, Probe
from estimator.study_file import as_float

from .base import Capabilities, Runner
from .endpoint import EndpointRunner, request_options
from .local_process import (
    ENGINE_FLAGS,
    ERROR_LINE,
    OOM_PATTERNS,
    EnginePidFile,
    die_with_parent,
    engine_command,
    forget_at_exit,
    free_port,
    parallel_args,
    reap_leftovers,
    signal_group,
    start_failure_reason,
    start_watchdog,
    stop_at_exit,
)


def visible_gpus() -> int:
    """GPUs an engine started here can use: ``CUDA_VISIBLE_DEVICES`` if set, else ``nvidia-smi -L``'s count."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return len([d for d in env.split(",") if d.strip() and d.strip() != "-1"])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU ")) if out.returncode == 0 else 0


# the command-line helpers are re-exported from local_process: tests and callers import them from here
__all__ = [
    "ENGINE_FLAGS",
    "ERROR_LINE",
    "LOG_TAIL_LINES",
    "OOM_PATTERNS",
    "LocalEngineRunner",
    "engine_command",
    "free_port",
    "parallel_args",
    "start_failure_reason",
]

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 40


class LocalEngineRunner(Runner):
    """Runs ``backend`` on ``model`` locally, one candidate at a time (restarted when the candidate changes).

    ``python`` runs the launcher module (default: this interpreter); ``command`` replaces the launcher
    (e.g. ``["vllm", "serve"]``). ``extra_args`` go to the engine unchanged; ``env`` is added to ours.
    ``gpus``: how many GPUs an engine may take here; None counts them (``CUDA_VISIBLE_DEVICES``, else
    ``nvidia-smi -L``); with none, the engine runs on the CPU and only one-GPU candidates (TP1) apply.
    ``serves``: the model as the study names it, where ``model`` is a path to its weights (default:
    ``model``); probes of any other model are refused.
    """

    name: ClassVar[str] = "local"

    def __init__(
        self,
        model: str,
        backend: str = "vllm",
        *,
        python: str | None = None,
        command: Sequence[str] | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        start_timeout_s: float = 900.0,
        stop_timeout_s: float = 15.0,
        timeout_s: float = 60.0,
        warmup: int = 1,
        repeats: int | None = None,
        tokenizer: str = "auto",
        pid_file: str | os.PathLike[str] | None = None,
        gpus: int | None = None,
        serves: str | None = None,
    ):
        if backend not in ENGINE_FLAGS:
            raise SpecError("backend", f"{backend!r} is not one of {sorted(ENGINE_FLAGS)}")
        self.model = model
        self.serves = serves or model
        self.backend = backend
        self.python = python or sys.executable
        self.command = command
        self.extra_args = tuple(extra_args)
        self.env = dict(env or {})
        self.work_dir = work_dir
        self.host = host
        self.port = port
        self.start_timeout_s = as_float("runner_options.start_timeout_s", start_timeout_s)
        self.stop_timeout_s = as_float("runner_options.stop_timeout_s", stop_timeout_s)
        # the endpoint runner is built only once the engine is up: its settings are checked now
        self.timeout_s, self.warmup, self.repeats = request_options(timeout_s, warmup, repeats)
        self.tokenizer = tokenizer
        self.gpus = gpus
        self.process_: subprocess.Popen | None = None
        self.candidate_: Candidate | None = None
        self.base_url_: str | None = None
        self.log_path_: Path | None = None
        self.command_: list[str] | None = None
        self._endpoint: EndpointRunner | None = None
        self.watchdog_: subprocess.Popen | None = None
        self.pid_file = EnginePidFile(pid_file) if pid_file else None
        if self.pid_file is not None:  # engines a killed earlier run of this output directory left behind
            reap_leftovers(self.pid_file)

    # ---- Runner ----------------------------------------------------------------------------------
    def capabilities(self) -> Capabilities:
        """Every kind, any candidate it can start, of the one model it starts: at most the machine's GPUs
        (one on a CPU-only machine)."""
        if self.gpus is None:
            self.gpus = visible_gpus()
        where = f"{self.gpus} GPUs on this machine" if self.gpus else "no GPU on this machine: a CPU engine"
        return Capabilities(frozenset(self.kinds), max_gpus=max(1, self.gpus), why=where,
                            models=frozenset({self.serves}), models_why=self._models_why())  # fmt: skip

    def _models_why(self) -> str:
        if self.serves == self.model:
            return "the model this runner starts"
        return f"runner option serves={self.serves}: the model of the weights at {self.model}"

    def measure(self, probe: Probe) -> Measurement:
        self.require(probe)  # any candidate and kind: it starts whatever is asked
        if self.candidate_ != probe.candidate or not self.is_running():
            self.start(probe.candidate)
        try:
            return self._label(self._endpoint.measure(probe))
        except ImplausibleMeasurement as exc:  # the record kept aside is this runner's too
            exc.measurement = self._label(exc.measurement)
            raise
        except MeasurementError as exc:
            if not self.is_running():
                exc.add_note(f"engine exited with code {self.process_.returncode}; log: {self.log_path_}")
            raise

    def _label(self, m: Measurement) -> Measurement:
        software = {**m.software, "backend": self.backend, "engine_command": " ".join(self.command_)}
        return dataclasses.replace(
            m, runner=self.name, software=software, extra={**m.extra, "engine_log": str(self.log_path_)}
        )

    def close(self) -> None:
        self.stop()

    # ---- process ---------------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self.process_ is not None and self.process_.poll() is None

    def start(self, candidate: Candidate) -> str:
        """Start the engine for ``candidate`` (stopping any other) and wait until /health answers."""
        self.stop()
        port = self.port or free_port(self.host)
        work = Path(self.work_dir) if self.work_dir else Path(tempfile.mkdtemp(prefix="sla-engine-"))
        work.mkdir(parents=True, exist_ok=True)
        self.log_path_ = work / f"{self.backend}-{candidate.name}-{port}.log"
        self.command_ = engine_command(
            self.backend,
            self.model,
            candidate,
            host=self.host,
            port=port,
            python=self.python,
            command=self.command,
            extra_args=self.extra_args,
        )
        self.base_url_ = f"http://{self.host}:{port}"
        log.info(
            "starting %s %s: %s (log %s)",
            self.backend,
            candidate.name,
            " ".join(self.command_),
            self.log_path_,
        )
        with self.log_path_.open("ab") as out:
            try:
                self.process_ = subprocess.Popen(
                    self.command_,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, **self.env},
                    cwd=work,
                    start_new_session=True,
                    preexec_fn=die_with_parent(os.getpid()),  # noqa: PLW1509 - SIGTERM when we die, even by SIGKILL
                )
            except OSError as exc:
                raise EngineStartError(f"cannot run {self.command_[0]}: {exc}") from exc
        stop_at_exit(self)
        self.watchdog_ = start_watchdog(self.process_.pid)  # kills the engine's whole group if we are killed
        if self.pid_file is not None:
            self.pid_file.add(self.process_.pid, self.command_, self.base_url_)
        self.candidate_ = candidate
        try:
            self._wait_ready(candidate)
        except BaseException:  # includes KeyboardInterrupt: never leave an engine behind
            self.stop()
            raise
        self._endpoint = EndpointRunner(
            self.base_url_,
            timeout_s=self.timeout_s,
            warmup=self.warmup,
            repeats=self.repeats,
            tokenizer=self.tokenizer,
            candidate=candidate,  # the engine it just started: the endpoint refuses any other
            serves=self.serves,  # and the model
        )
        return self.base_url_

    def _wait_ready(self, candidate: Candidate) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        with httpx.Client(timeout=2.0) as http:
            while True:
                code = self.process_.poll()
                if code is not None:
                    raise self._exit_error(candidate, code)
                try:
                    if http.get(self.base_url_ + "/health").status_code == 200:
                        log.info("%s %s ready at %s", self.backend, candidate.name, self.base_url_)
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    exc = EngineStartError(
                        f"{self.backend} {candidate.name} not ready within "
                        f"{self.start_timeout_s:g} s; log: {self.log_path_}"
                    )
                    exc.reason, exc.exit_code, exc.log_tail, exc.log_path = (
                        "timeout",
                        None,
                        self.log_tail(),
                        self.log_path_,
                    )
                    raise exc
                time.sleep(0.5)

    def _exit_error(self, candidate: Candidate, code: int) -> EngineStartError:
        tail = self.log_tail()
        reason, line = start_failure_reason(tail)
        exc = EngineStartError(
            f"{self.backend} {candidate.name} exited with code {code} during start "
            f"({reason}): {line[:300]}; log: {self.log_path_}"
        )
        exc.reason, exc.exit_code, exc.log_tail, exc.log_path = reason, code, tail, self.log_path_
        return exc

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        if self.log_path_ is None or not self.log_path_.exists():
            return []
        with self.log_path_.open(errors="replace") as fh:
            return list(deque(fh, maxlen=lines))

    def stop(self) -> None:
        """SIGTERM to the engine's process group, SIGKILL after ``stop_timeout_s``. Idempotent."""
        proc, self.process_ = self.process_, None
        self._endpoint = None
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the engine leads its own group
        signal_group(pgid, signal.SIGTERM)
        try:
            proc.wait(self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("engine pid %d ignored SIGTERM for %g s; killing", pgid, self.stop_timeout_s)
            signal_group(pgid, signal.SIGKILL)
            proc.wait()
        for sig in (0, signal.SIGKILL):  # children still exiting: give them the grace time, then kill
            deadline = time.monotonic() + self.stop_timeout_s
            while signal_group(pgid, sig) and time.monotonic() < deadline:
                time.sleep(0.2)
        forget_at_exit(self)
        watchdog, self.watchdog_ = self.watchdog_, None
        if watchdog is not None:  # it exits by itself once the group is gone
            try:
                watchdog.wait(5.0)
            except subprocess.TimeoutExpired:
                watchdog.kill()
                watchdog.wait()
        if self.pid_file is not None:
            self.pid_file.remove(pgid)
