"""LocalEngineRunner: command building, start-failure detection and process-group cleanup.

Start failures and readiness timeouts use short real processes (a python one-liner standing in for
the engine's launcher); the successful path and a real failed vLLM start use the engine venv.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from engine_server import ENGINE_ENV, KV_CAPACITY_TOKENS, SERVER_ARGS, require_engine_python

from estimator.candidates import Candidate, Mapping
from estimator.errors import EngineStartError, SpecError
from estimator.sources.base import Stack
from estimator.measurements import Probe, ProbeKind
from validate.runners.local import LocalEngineRunner, engine_command, start_failure_reason

TP1 = Candidate(Mapping.TP, 1)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_engine_commands_per_backend():
    kw = {"host": "127.0.0.1", "port": 8000, "python": "py"}
    assert engine_command("vllm", "m", Candidate(Mapping.TP, 4), **kw) == [
        "py",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "m",
        "--host",
        "127.0.0.1",
        "--port",
        "8000",
        "--tensor-parallel-size",
        "4",
    ]
    assert engine_command("vllm", "m", Candidate(Mapping.DEP, 8), **kw)[-5:] == [
        "--tensor-parallel-size",
        "1",
        "--data-parallel-size",
        "8",
        "--enable-expert-parallel",
    ]
    sg = engine_command("sglang", "m", Candidate(Mapping.TEP, 4), **kw)
    assert sg[:5] == ["py", "-m", "sglang.launch_server", "--model-path", "m"] and sg[-4:] == [
        "--tp",
        "4",
        "--ep-size",
        "4",
    ]
    trt = engine_command("trtllm", "m", Candidate(Mapping.TP, 2), extra_args=["--backend", "pytorch"], **kw)
    assert trt == [
        "trtllm-serve",
        "m",
        "--host",
        "127.0.0.1",
        "--port",
        "8000",
        "--tp_size",
        "2",
        "--backend",
        "pytorch",
    ]
    assert engine_command("vllm", "m", TP1, command=["vllm", "serve"], **kw)[:2] == ["vllm", "serve"]
    with pytest.raises(SpecError):
        engine_command("trtllm", "m", Candidate(Mapping.DEP, 4), **kw)
    with pytest.raises(SpecError):
        LocalEngineRunner("m", backend="tgi")


def test_start_failure_reason():
    oom = ["loading", "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "Traceback"]
    assert start_failure_reason(oom)[0] == "out_of_memory"
    kv = ["ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`"]
    assert start_failure_reason(kv)[0] == "out_of_memory"
    reason, line = start_failure_reason(["INFO start", "OSError: model dir not found", "  done"])
    assert (reason, line) == ("exited", "OSError: model dir not found")


def one_liner(code: str) -> list[str]:
    """A launcher that runs ``code``; the model and engine flags land in its sys.argv."""
    return [sys.executable, "-c", code]


def test_process_exit_during_start_is_reported_with_reason(tmp_path: Path):
    code = "import sys; print('loading weights'); print('torch.OutOfMemoryError: CUDA out of memory'); sys.exit(3)"
    runner = LocalEngineRunner("m", command=one_liner(code), work_dir=tmp_path, start_timeout_s=120)
    with pytest.raises(EngineStartError) as info:
        runner.start(TP1)
    exc = info.value
    assert (exc.reason, exc.exit_code) == ("out_of_memory", 3)
    assert "CUDA out of memory" in str(exc) and Path(exc.log_path).parent == tmp_path
    assert not runner.is_running()


def test_readiness_timeout_kills_the_process_group(tmp_path: Path):
    # ignores SIGTERM and has a child: stop() must SIGKILL the whole group
    pid_file = tmp_path / "pid"
    code = (
        "import os, signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    )
    runner = LocalEngineRunner(
        "m", command=one_liner(code), work_dir=tmp_path, start_timeout_s=1.5, stop_timeout_s=1.0
    )
    with pytest.raises(EngineStartError) as info:
        runner.start(TP1)
    assert info.value.reason == "timeout" and info.value.exit_code is None
    assert runner.process_ is None
    assert not group_alive(int(pid_file.read_text()))  # the engine and its child are gone


def test_stop_on_keyboard_interrupt_during_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    runner = LocalEngineRunner("m", command=one_liner("import time; time.sleep(120)"), work_dir=tmp_path)
    started: list[int] = []

    def interrupted(self, cand):  # Ctrl-C while waiting for /health
        started.append(self.process_.pid)
        raise KeyboardInterrupt

    monkeypatch.setattr(LocalEngineRunner, "_wait_ready", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runner.start(TP1)
    assert started and not group_alive(started[0])


# ---- the real vLLM server ------------------------------------------------------------------------------
@pytest.mark.engine
def test_local_runner_measures_through_real_vllm(vllm_engine: LocalEngineRunner):
    assert vllm_engine.is_running() and os.getpgid(vllm_engine.process_.pid) == vllm_engine.process_.pid
    stack = Stack(vllm_engine.model, "cpu", "vllm")
    m = vllm_engine.measure(Probe(ProbeKind.PREFILL, stack, TP1, isl=256, repeats=2))
    assert m.runner == "local" and m.ttft_ms > 0 and m.extra["prompt_tokens"] == 256
    assert m.kv_capacity_tokens == KV_CAPACITY_TOKENS
    assert "--tensor-parallel-size 1" in m.software["engine_command"]
    assert "--num-gpu-blocks-override 64" in m.software["engine_command"]
    assert Path(m.extra["engine_log"]).stat().st_size > 0
    assert vllm_engine.is_running()  # same candidate: no restart


@pytest.mark.engine
def test_real_vllm_start_with_bad_model_dir_fails_fast(tmp_path: Path):
    bad = tmp_path / "no-model"
    bad.mkdir()
    runner = LocalEngineRunner(
        str(bad),
        python=str(require_engine_python()),
        extra_args=SERVER_ARGS,
        env=ENGINE_ENV,
        work_dir=tmp_path,
        start_timeout_s=300,
    )
    with pytest.raises(EngineStartError) as info:
        runner.start(TP1)
    exc = info.value
    assert exc.reason == "exited" and exc.exit_code != 0  # detected by the exit, not the 300 s timeout
    assert str(bad) in "".join(exc.log_tail) and exc.log_tail
    assert not runner.is_running()


@pytest.mark.parametrize("visible, count", [("0,1", 2), ("3", 1), ("", 0), ("-1", 0)])
def test_visible_gpus_from_cuda_visible_devices(monkeypatch, visible, count):
    from validate.runners.local import visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert visible_gpus() == count


def test_local_runner_refuses_an_engine_larger_than_the_machine():
    from estimator.errors import ProbeNotSupported

    r = LocalEngineRunner("m", python=sys.executable, gpus=0)  # a CPU machine: TP1 only
    probe = Probe(ProbeKind.PREFILL, Stack("m", "cpu", "vllm"), Candidate(Mapping.TP, 2), isl=8)
    assert "at most 1 GPU (no GPU on this machine" in r.can_measure(probe)
    with pytest.raises(ProbeNotSupported):
        r.measure(probe)
    assert r.process_ is None  # nothing was started


def test_local_runner_refuses_another_model_without_starting_one():
    from estimator.errors import ProbeNotSupported

    r = LocalEngineRunner("/weights/llama8b", python=sys.executable, gpus=1, serves="meta-llama/Llama-3.1-8B")
    llama = Probe(ProbeKind.PREFILL, Stack("meta-llama/Meta-Llama-3.1-8B", "cpu", "vllm"), TP1, isl=8)
    assert r.can_measure(llama) is None  # the study's id, under its alias
    qwen = Probe(ProbeKind.PREFILL, Stack("Qwen/Qwen3-32B", "cpu", "vllm"), TP1, isl=8)
    reason = r.can_measure(qwen)
    assert "Qwen/Qwen3-32B" in reason and "serves=meta-llama/Llama-3.1-8B" in reason
    assert "/weights/llama8b" in reason
    with pytest.raises(ProbeNotSupported):
        r.measure(qwen)
    assert r.process_ is None  # nothing was started
    assert LocalEngineRunner("/weights/llama8b", gpus=1).can_measure(llama) is not None  # no serves: the path
