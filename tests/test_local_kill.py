"""A SIGKILLed local validation leaves no engine process behind, and a later run reaps leftovers.

The fast tests use a stand-in engine (a python http server answering /health with a child process in
its group, like vLLM's API server and its EngineCore) started by a real LocalEngineRunner in a child
process that we SIGKILL. The ``engine`` test runs ``sla-estimate validate --runner local`` on the real
vLLM CPU server and SIGKILLs the CLI once the engine answers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from engine_server import ENGINE_ENV, SERVER_ARGS, require_engine_python

from validate.runners.local_process import EnginePidFile, process_start_time, reap_leftovers

ROOT = Path(__file__).resolve().parents[1]

# The stand-in engine: serves /health on --port, has a child that sleeps, ignores nothing.
FAKE_ENGINE = """
import http.server, subprocess, sys, time
port = int(sys.argv[sys.argv.index('--port') + 1])
subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b'ok')
    def log_message(self, *a):
        pass
http.server.HTTPServer(('127.0.0.1', port), H).serve_forever()
"""

# The killed parent: starts the engine through LocalEngineRunner, reports its pgid, then waits.
PARENT = """
import json, sys, time
from estimator.candidates import Candidate, Mapping
from validate.runners.local import LocalEngineRunner
engine_cmd, work, pid_file = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
r = LocalEngineRunner('m', command=engine_cmd, work_dir=work, start_timeout_s=60, pid_file=pid_file)
r.start(Candidate(Mapping.TP, 1))
print(r.process_.pid, flush=True)
time.sleep(300)
"""


LEFTOVER = """
import subprocess, sys
child = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); time.sleep(300)"
print(subprocess.Popen([sys.executable, '-c', child], start_new_session=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL).pid)
"""


def group_members(pgid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(d.name))
    return out


def wait_gone(pgid: int, timeout_s: float) -> list[int]:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        left = group_members(pgid)
        if not left:
            return []
        time.sleep(0.2)
    return group_members(pgid)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_sigkilled_parent_leaves_no_engine_process(tmp_path: Path):
    cmd = [sys.executable, "-c", FAKE_ENGINE]
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, json.dumps(cmd), str(tmp_path), str(tmp_path / "engines.pid")],
        stdout=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    try:
        pgid = int(parent.stdout.readline())
        assert len(wait_for_members(pgid, 2)) >= 2  # the engine and its child are up
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert wait_gone(pgid, 30) == []
    finally:
        parent.kill()
        parent.wait()


def wait_for_members(pgid: int, n: int, timeout_s: float = 30) -> list[int]:
    end = time.monotonic() + timeout_s
    while len(group_members(pgid)) < n and time.monotonic() < end:
        time.sleep(0.1)
    return group_members(pgid)


def test_leftover_engines_of_an_earlier_run_are_reaped_at_start_up(tmp_path: Path):
    # an "engine" that no watchdog guards (as if the whole session had been killed at once)
    # started through a launcher that exits, so (as after a kill -9) its parent is gone
    launcher = subprocess.run([sys.executable, "-c", LEFTOVER], capture_output=True, text=True, check=True)
    leftover_pgid = int(launcher.stdout)
    stranger = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True
    )
    try:
        wait_for_members(leftover_pgid, 2)
        pid_file = EnginePidFile(tmp_path / "engines.pid")
        pid_file.add(leftover_pgid, ["python", "-m", "vllm"], "http://127.0.0.1:1")
        # a recycled pid: recorded with another start time, so it must be left alone
        entries = [{**e, "owner": -1} for e in pid_file.entries()]  # written by an earlier process
        entries.append({"pgid": stranger.pid, "start_time": -1, "command": ["x"]})
        pid_file.path.write_text(json.dumps(entries))
        from validate.runners.local import LocalEngineRunner

        LocalEngineRunner("m", pid_file=pid_file.path)  # start-up reaps
        assert wait_gone(leftover_pgid, 20) == []
        assert stranger.poll() is None and process_start_time(stranger.pid) is not None
        assert [e["pgid"] for e in pid_file.entries()] == [stranger.pid]
        assert reap_leftovers(pid_file) == []
    finally:
        stranger.kill()
        stranger.wait()
        if group_members(leftover_pgid):
            os.killpg(leftover_pgid, signal.SIGKILL)


@pytest.mark.engine
def test_sigkilled_validate_local_on_real_vllm_leaves_no_engine(tiny_model_dir: Path, tmp_path: Path):
    py = require_engine_python()
    out = tmp_path / "out"
    extra = json.dumps(list(SERVER_ARGS))
    args = [
        sys.executable, "-m", "estimator.cli", "validate", "--model", "meta-llama/Llama-3.1-8B",
        "--system", "h100_sxm", "--gpus", "1", "--isl", "1000", "--osl", "100", "--budget", "2",
        "--runner", "local", "--runner-option", f"python={py}", "--runner-option", f"model={tiny_model_dir}",
        "--runner-option", f"extra_args={extra}", "--runner-option", "start_timeout_s=600",
        "-o", str(out), "--no-plots",
    ]  # fmt: skip
    cli = subprocess.Popen(
        args, env={**_env(), **ENGINE_ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    pgid = None
    try:
        end = time.monotonic() + 600
        while time.monotonic() < end and cli.poll() is None:
            entries = EnginePidFile(out / "engines.pid").entries()
            if entries:
                pgid, url = entries[0]["pgid"], entries[0]["url"]
                try:
                    if urllib.request.urlopen(url + "/health", timeout=2).status == 200:
                        break
                except OSError:
                    pass
            time.sleep(1)
        assert cli.poll() is None, cli.stderr.read()[-2000:]
        assert pgid is not None and len(group_members(pgid)) >= 2  # API server + EngineCore
        cli.send_signal(signal.SIGKILL)
        cli.wait()
        assert wait_gone(pgid, 60) == []
    finally:
        cli.kill()
        cli.wait()
        if pgid is not None and group_members(pgid):
            os.killpg(pgid, signal.SIGKILL)
