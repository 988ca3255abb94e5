"""Pytest plugin: a real vLLM CPU server on loopback for tests marked ``engine`` (shared/README.md §4).

Loaded from ``tests/conftest.py`` (``pytest_plugins = ["engine_server"]``) so that the session fixture
starts one server for all test modules. The server runs from the engine venv made by
``scripts/setup_engine_venv.sh``; ``SLA_ESTIMATE_ENGINE_PYTHON`` points at its python (default
``.venv-engine/bin/python``). Without it the engine tests skip locally and FAIL when ``CI=true``.
The server is started through ``LocalEngineRunner``, so the local-runner tests reuse it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_SERVER_DEV_MODE": "1",  # /server_info: the server says which engine (TP size) it runs
}
# served as "tiny-llama" (the tests' stack model); /v1/models gives the directory as its root
SERVER_ARGS = ("--max-model-len", "4096", "--dtype", "bfloat16", "--num-gpu-blocks-override", "64",
               "--served-model-name", "tiny-llama")  # fmt: skip
KV_CAPACITY_TOKENS = 8192  # 64 blocks x 128 tokens (vLLM CPU block size)
START_TIMEOUT_S = 600.0


def engine_python() -> Path:
    return Path(os.environ.get("SLA_ESTIMATE_ENGINE_PYTHON") or ROOT / ".venv-engine" / "bin" / "python")


def require_engine_python() -> Path:
    """The engine venv's python; skip (locally) or fail (CI=true) if it is missing."""
    py = engine_python()
    if py.is_file() and os.access(py, os.X_OK):
        return py
    message = f"engine venv python not found at {py}; run scripts/setup_engine_venv.sh"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama (vocab 2048, 2 layers), built offline by scripts/make_tiny_model.py."""
    py = require_engine_python()
    out = tmp_path_factory.mktemp("tiny-model")
    proc = subprocess.run(
        [str(py), str(ROOT / "scripts" / "make_tiny_model.py"), str(out)],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode:
        pytest.fail(f"make_tiny_model.py failed ({proc.returncode}): {proc.stderr[-2000:]}", pytrace=False)
    return out


@pytest.fixture(scope="session")
def vllm_engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A LocalEngineRunner serving the tiny model as TP1 (started once per session, stopped after)."""
    from estimator.candidates import Candidate, Mapping
    from validate.runners.local import LocalEngineRunner

    runner = LocalEngineRunner(
        str(tiny_model_dir),
        "vllm",
        python=str(require_engine_python()),
        extra_args=SERVER_ARGS,
        env=ENGINE_ENV,
        work_dir=tmp_path_factory.mktemp("engine"),
        start_timeout_s=START_TIMEOUT_S,
        timeout_s=60.0,
    )
    runner.start(Candidate(Mapping.TP, 1))
    pgid = runner.process_.pid
    yield runner
    runner.close()
    try:  # teardown check: close() must leave no process of the engine's group behind
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return
    pytest.fail(f"engine process group {pgid} still alive after close()", pytrace=False)


@pytest.fixture(scope="session")
def vllm_url(vllm_engine) -> str:
    return vllm_engine.base_url_
