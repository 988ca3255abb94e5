"""Fuzz the study loader: random YAML documents, random YAML-ish text and random flag values never
produce a traceback. Every outcome is a checked study (exit 0) or one line on stderr with exit 2.

The estimate itself is stubbed out (it is not what is fuzzed, and a real one takes seconds); the
flags, the YAML reader and ``load_spec`` run for real. Bounded and derandomized so CI is stable.
"""

from __future__ import annotations

import os
import tempfile
from datetime import timedelta

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from estimator import cli
from estimator.spec import Spec

FIELDS = ["model", "system", "backend", "backend_version", "isl", "osl", "ttft", "itl", "ttft_ms", "itl_ms",
          "gpus", "min_gpus", "max_gpus", "gpus_per_node", "gemm_quant", "kvcache_quant", "max_context_tokens",
          "request_rate", "source", "output_dir", "plots", "strict", "cache", "planner_args", "validate", "seed",
          "num_alternatives", "max_concurrency", "num_prefill_points"]  # fmt: skip
VALIDATE_FIELDS = ["runner", "measurements", "budget", "max_points_per_engine", "runner_options", "url"]
FUZZ = settings(
    max_examples=200,
    deadline=timedelta(seconds=5),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "nan", "inf", "-1", "0", "1e400", "3000", "2.5", "1,2,4", "vllm", "h100_sxm", "yes",
                     "false", "Qwen/Qwen3-32B", "meta-llama/Llama-3.1-8B", "a=b", "--planner-x=1", "/"]),
    st.text(max_size=20),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.sampled_from(VALIDATE_FIELDS), inner, max_size=4)
    ),
    max_leaves=12,
)
documents = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), values, max_size=6)
yamlish = st.lists(st.sampled_from(list("{}[]:,-&*!|>'\"#%@ \n\tab1.0\\") + ["isl", "gpus", "validate", "\xff"]),
                   max_size=60).map("".join)  # fmt: skip


@pytest.fixture
def no_estimate(monkeypatch):
    """main() up to a checked Spec; the estimate and measuring are stubbed (not what is fuzzed)."""

    def ok(spec, as_json):
        assert isinstance(spec, Spec)
        return 0

    monkeypatch.setattr(cli, "_run_profile", ok)
    monkeypatch.setattr(cli, "_run_validate", ok)


def _check(argv: list[str], capsys) -> None:
    rc = cli.main(argv)  # any exception but SlaEstimateError escapes here and fails the test
    err = capsys.readouterr().err
    assert rc in (0, 2), (rc, err)
    if rc == 2:
        assert err.count("\n") == 1 and err.startswith("sla-estimate: error: "), err


def _write(data: bytes) -> str:
    fd, path = tempfile.mkstemp(suffix=".yaml")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


@FUZZ
@given(doc=documents, command=st.sampled_from(["profile", "validate"]))
def test_random_yaml_documents(doc, command, no_estimate, capsys):
    try:
        text = yaml.safe_dump(doc, allow_unicode=True).encode()
    except (yaml.YAMLError, ValueError):
        return
    path = _write(text)
    try:
        _check([command, "--config", path], capsys)
    finally:
        os.unlink(path)


@FUZZ
@given(text=yamlish)
def test_random_yaml_text(text, no_estimate, capsys):
    path = _write(text.encode("utf-8").replace("\xff".encode(), b"\xff"))  # a raw non-UTF-8 byte
    try:
        _check(["--config", path], capsys)
    finally:
        os.unlink(path)


FLAGS = ["--isl", "--osl", "--ttft", "--itl", "--gpus", "--min-gpus", "--max-gpus", "--gpus-per-node",
         "--request-rate", "--system", "--backend", "--model", "--gemm-quant", "--num-alternatives",
         "--max-context-tokens", "--budget", "--runner", "--runner-option", "--measurements",
         "--planner-x", "--planner-"]  # fmt: skip


@FUZZ
@given(
    command=st.sampled_from(["profile", "validate", "models"]),
    pairs=st.lists(st.tuples(st.sampled_from(FLAGS), scalars.map(str)), max_size=4),
)
def test_random_flag_values(command, pairs, no_estimate, capsys):
    argv = [command]
    for flag, value in pairs:
        if "\x00" in value:
            continue
        argv += [f"{flag}={value}"]
    _check(argv, capsys)
