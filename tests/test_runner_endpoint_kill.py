"""A real vLLM server killed while it streams: the endpoint runner reports a BadResponse with the
tokens it had received, and does not hang.

Starts its own real server (the session one must live on for other tests): ~60-90 s on 2 cores.
The kill comes from a separate process started when the first completion stream opens, so it does
not depend on thread scheduling in this process while the stream is being read.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from engine_server import ENGINE_ENV, SERVER_ARGS, require_engine_python
from estimator.candidates import Candidate, Mapping
from estimator.errors import BadResponse
from estimator.sources.base import Stack
from validate.measurement import Probe, ProbeKind
from validate.runners.endpoint import EndpointRunner
from validate.runners.local import LocalEngineRunner

TP1 = Candidate(Mapping.TP, 1)


@pytest.mark.engine
def test_server_killed_mid_stream(tiny_model_dir: Path, tmp_path: Path):
    engine = LocalEngineRunner(
        str(tiny_model_dir), "vllm", python=str(require_engine_python()), extra_args=SERVER_ARGS,
        env=ENGINE_ENV, work_dir=tmp_path, start_timeout_s=600,
    )  # fmt: skip
    base_url = engine.start(TP1)
    killers: list[subprocess.Popen] = []
    try:
        runner = EndpointRunner(base_url, timeout_s=30, warmup=0)
        stream = runner._stream

        async def stream_then_kill(*args, **kwargs):  # 1 s into the first stream (~8 s long), SIGKILL the server
            if not killers:
                killers.append(subprocess.Popen(["sh", "-c", f"sleep 1; kill -KILL -{engine.process_.pid}"]))
            return await stream(*args, **kwargs)

        runner._stream = stream_then_kill
        probe = Probe(ProbeKind.AGG, Stack("tiny", "cpu", "vllm"), TP1, isl=64, osl=4000, concurrency=1, repeats=3)
        with pytest.raises(BadResponse) as info:
            runner.measure(probe)
    finally:
        for k in killers:
            k.wait(timeout=30)
        engine.close()
    err = info.value
    assert "stream broken" in str(err) or "ended early" in str(err), str(err)
    assert 0 < err.tokens_received < 4000  # cut mid-way, not refused and not finished
    assert err.probe is probe and err.partial == {}  # no repetition had finished
