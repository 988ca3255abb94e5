"""A real vLLM server that stalls (SIGSTOP) and then dies (SIGKILL) while it streams: the endpoint runner
classifies them as EndpointTimeout and BadResponse (with the tokens it had received) and never hangs.

Starts its own real server (the session one must live on for other tests): ~60-90 s on 2 cores.
Signals come from a separate process that watches the server's own token counter.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from engine_server import ENGINE_ENV, SERVER_ARGS, require_engine_python

from estimator.candidates import Candidate, Mapping
from estimator.errors import BadResponse, EndpointTimeout
from estimator.sources.base import Stack
from estimator.measurements import Probe, ProbeKind
from validate.runners.endpoint import EndpointRunner
from validate.runners.local import LocalEngineRunner

TP1 = Candidate(Mapping.TP, 1)


# Runs in its own process: waits until the server has generated `min_tokens` more tokens (its own
# /metrics counter), then sends each (delay_s, signal) to the server's process group. Watching the
# server, not this process, keeps it correct when the busy-polling CPU engine starves the client.
_SIGNALLER = """
import os, re, sys, time, urllib.request
url, pgid, min_tokens, plan = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
def generated():
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    return sum(float(v) for v in re.findall(r"^vllm:generation_tokens_total[^ ]* ([0-9.e+]+)$", text, re.M))
start, deadline = generated(), time.monotonic() + 120
while generated() - start < min_tokens and time.monotonic() < deadline:
    time.sleep(0.05)
for step in plan:
    delay, sig = step.split(":")
    time.sleep(float(delay))
    os.killpg(pgid, int(sig))
"""


def _signaller(base_url: str, pgid: int, *plan: tuple[float, signal.Signals]) -> subprocess.Popen:
    steps = [f"{delay}:{int(sig)}" for delay, sig in plan]
    return subprocess.Popen([sys.executable, "-c", _SIGNALLER, base_url, str(pgid), "1000", *steps])


@pytest.mark.engine
def test_server_stalled_then_killed_mid_stream(tiny_model_dir: Path, tmp_path: Path):
    engine = LocalEngineRunner(
        str(tiny_model_dir), "vllm", python=str(require_engine_python()), extra_args=SERVER_ARGS,
        env=ENGINE_ENV, work_dir=tmp_path, start_timeout_s=600,
    )  # fmt: skip
    engine.start(TP1)
    pgid = engine.process_.pid
    helpers: list[subprocess.Popen] = []
    # one request of 64 + 4000 tokens streams for several seconds on this CPU server
    tiny = Stack("tiny-llama", "cpu", "vllm")
    probe = Probe(ProbeKind.AGG, tiny, TP1, isl=64, osl=4000, concurrency=1, repeats=3)
    try:
        url = engine.base_url_
        helpers.append(_signaller(url, pgid, (0, signal.SIGSTOP), (8, signal.SIGCONT)))
        with pytest.raises(EndpointTimeout) as timeout:
            EndpointRunner(url, timeout_s=3, warmup=0, candidate=TP1).measure(probe)
        helpers.pop().wait(timeout=60)  # the server runs again

        helpers.append(_signaller(url, pgid, (0, signal.SIGKILL)))
        with pytest.raises(BadResponse) as broken:
            EndpointRunner(url, timeout_s=30, warmup=0, candidate=TP1).measure(probe)
    finally:
        for h in helpers:
            h.wait(timeout=30)
        engine.close()
    # The signals land mid-stream on the server's side (1000 of 4000 tokens generated). What the client
    # has read by then depends on how much CPU the busy-polling engine left it, so the token counts are
    # reported, not required to be non-zero.
    assert "no data" in str(timeout.value) and 0 <= timeout.value.tokens_received < 4000
    err = broken.value
    assert any(w in str(err) for w in ("stream broken", "ended early", "cannot connect")), str(err)
    assert 0 <= err.tokens_received < 4000
    assert err.probe is probe
    assert all(v > 0 for vals in err.partial.values() for v in vals)  # finished repetitions are kept
