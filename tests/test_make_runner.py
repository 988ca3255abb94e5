"""Every runner can be chosen from a study (flags or YAML); options are checked and typed."""

from __future__ import annotations

import pytest

from estimator.errors import SpecError
from estimator.spec import load_spec
from validate.runners import make_runner


def _spec(tmp_path, runner: str, options: str) -> object:
    cfg = tmp_path / "study.yaml"
    cfg.write_text(
        "model: meta-llama/Llama-3.1-8B\nsystem: h100_sxm\n"
        f"validate:\n  runner: {runner}\n  budget: 4\n  runner_options:\n{options}"
    )
    return load_spec(cfg)


def test_endpoint_from_yaml(tmp_path):
    spec = _spec(
        tmp_path, "endpoint", "    url: http://127.0.0.1:9\n    timeout_s: '12.5'\n    repeats: '2'\n"
    )
    r = make_runner(spec)
    assert (r.name, r.base_url, r.timeout_s, r.repeats) == ("endpoint", "http://127.0.0.1:9", 12.5, 2)
    assert spec.validate.budget == 4


def test_endpoint_engine_from_the_candidate_option(tmp_path):
    r = make_runner(_spec(tmp_path, "endpoint", "    url: http://127.0.0.1:9\n    candidate: TEP8\n"))
    assert r.candidate is not None and (r.candidate.mapping.value, r.candidate.num_gpus) == ("TEP", 8)
    assert [c.name for c in r.capabilities().candidates] == ["TEP8"]  # nothing listens: the option decides


def test_local_gpus_option_limits_the_candidates(tmp_path):
    r = make_runner(_spec(tmp_path, "local", "    python: /usr/bin/python3\n    gpus: '2'\n"))
    assert r.gpus == 2 and r.capabilities().max_gpus == 2


def test_local_gets_model_and_backend_from_the_study(tmp_path):
    r = make_runner(_spec(tmp_path, "local", "    python: /usr/bin/python3\n    start_timeout_s: '30'\n"))
    assert r.name == "local" and r.backend == "vllm" and r.start_timeout_s == 30.0
    assert r.model == "meta-llama/Meta-Llama-3.1-8B"


def test_k8s_and_gpu_construct_without_touching_anything(tmp_path):
    pytest.importorskip("kubernetes")
    k = make_runner(_spec(tmp_path, "k8s", "    namespace: dynamo\n    mode: plain\n"))
    assert (k.name, k.namespace, k.mode) == ("k8s", "dynamo", "plain")
    g = make_runner(_spec(tmp_path, "gpu", "    device: cpu\n    tp_size: '1'\n"))
    assert (g.name, g.device, g.tp_size, g.model) == ("gpu", "cpu", 1, "meta-llama/Meta-Llama-3.1-8B")


@pytest.mark.parametrize(
    "runner, options, field",
    [
        ("endpoint", "    timeout_s: '3'\n", "runner_options.url"),
        ("endpoint", "    url: http://x\n    timeout_s: soon\n", "runner_options.timeout_s"),
        ("local", "    colour: red\n", "runner_options.colour"),
        ("endpoint", "    url: http://x\n    candidate: XP3\n", "runner_options.candidate"),
        ("replay", "    prefill_candidate: XP3\n", "measurements"),
    ],
)
def test_bad_runner_options_name_the_field(tmp_path, runner, options, field):
    with pytest.raises(SpecError) as err:
        make_runner(_spec(tmp_path, runner, options))
    assert err.value.field == field
