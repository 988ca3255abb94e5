"""Every bad input is a SpecError naming the field; good input becomes a checked Spec."""

import pytest

from estimator.errors import SpecError
from estimator.spec import DEFAULT_STUDY, Backend, load_spec


def test_default_study():
    spec = load_spec()
    assert spec.model == DEFAULT_STUDY["model"] and spec.backend is Backend.VLLM
    assert (spec.isl, spec.osl, spec.ttft_ms, spec.itl_ms) == (3000, 150, 200.0, 20.0)
    assert spec.gpu_counts == (1, 2, 4, 8)
    assert spec.max_context_tokens == 40960  # Qwen3-32B's own limit


def test_flags_override_yaml(tmp_path):
    cfg = tmp_path / "study.yaml"
    cfg.write_text("model: meta-llama/Llama-3.1-8B\nsystem: h100_sxm\nisl: 1000\nttft: 100\nmax_gpus: 4\n")
    spec = load_spec(cfg, isl=2000, backend="sglang")
    assert spec.model == "meta-llama/Meta-Llama-3.1-8B"  # alias resolved to the bundled id
    assert (spec.system, spec.isl, spec.ttft_ms, spec.backend) == ("h100_sxm", 2000, 100.0, Backend.SGLANG)
    assert spec.gpu_counts == (1, 2, 4)


def test_explicit_gpu_list_and_planner_args():
    flags = ["load-adjustment-interval=60", "--planner-load-predictor=arima"]
    spec = load_spec(gpus="4,1,2", planner_args=flags)
    assert spec.gpu_counts == (1, 2, 4)
    assert spec.planner_args == (("load-adjustment-interval", "60"), ("load-predictor", "arima"))
    with pytest.raises(SpecError, match="adjustment_interval: not a field"):  # checked when read, not written
        load_spec(planner_args=["adjustment-interval=60"])


def test_local_model_directory(tmp_path):
    (tmp_path / "config.json").write_text(
        '{"architectures": ["LlamaForCausalLM"], "hidden_size": 256, "num_attention_heads": 4,'
        ' "num_hidden_layers": 2, "num_key_value_heads": 2, "max_position_embeddings": 2048}'
    )
    spec = load_spec(model=str(tmp_path), isl=1000, osl=100)
    assert spec.model == str(tmp_path.resolve()) and spec.max_context_tokens == 2048


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"model": "no-such/model"}, "model"),
        ({"system": "h900"}, "system"),
        ({"backend": "tgi"}, "backend"),
        ({"isl": 40000, "osl": 1000}, "isl"),  # beyond Qwen3-32B's 40960 context
        ({"isl": 0}, "isl"),
        ({"isl": "abc"}, "isl"),
        ({"osl": 1.5}, "osl"),
        ({"ttft": 0}, "ttft_ms"),
        ({"itl": -3}, "itl_ms"),
        ({"itl": "nan"}, "itl_ms"),
        ({"min_gpus": 3, "max_gpus": 3}, "max_gpus"),
        ({"gpus": ""}, "gpus"),  # empty is not "not given": it would fall back to the range without a word
        ({"max_gpus": 16}, "max_gpus"),  # beyond gpus_per_node 8
        ({"gemm_quant": "fp7"}, "gemm_quant"),
        ({"bogus": 1}, "bogus"),
        ({"planner_args": ["novalue"]}, "planner_args"),
        ({"validate": {"runner": "magic"}}, "validate.runner"),
    ],
)
def test_bad_input_names_the_field(overrides, field):
    if field is None:
        load_spec(**overrides)
        return
    with pytest.raises(SpecError) as err:
        load_spec(**overrides)
    assert err.value.field == field
    assert "\n" not in str(err.value)


def test_malformed_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\nisl: 3\n")
    with pytest.raises(SpecError, match="malformed YAML"):
        load_spec(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match="mapping"):
        load_spec(lst)
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")


def test_validate_flags_override_the_file_field_by_field(tmp_path):
    cfg = tmp_path / "study.yaml"
    cfg.write_text(
        "validate:\n  runner: endpoint\n  url: http://file:1\n  budget: 2\n  runner_options: {repeats: 5}\n"
    )
    v = load_spec(cfg, validate={"runner_options": {"url": "http://flag:2"}}).validate
    assert v.runner == "endpoint" and v.budget == 2
    assert dict(v.runner_options) == {"url": "http://flag:2", "repeats": 5}
    v = load_spec(cfg, validate={"runner": "replay", "measurements": ["m.jsonl"]}).validate
    assert v.runner == "replay" and v.budget == 2 and v.runner_options == ()  # options were the endpoint's
    assert load_spec(cfg, validate=True).validate.option("url") == "http://file:1"


@pytest.mark.parametrize(
    "value, expected",
    [(3, 3), ("3", 3), (3.0, 3), ("3.0", 3), ("+4", 4), ("1e3", 1000)],
)
def test_integer_fields_accept_integral_values(value, expected):
    assert load_spec(isl=value, osl=10).isl == expected


@pytest.mark.parametrize(
    "value", ["nan", "inf", "-inf", "1e400", float("nan"), float("inf"), 10**400, "3.5", True, [3]]
)
def test_integer_fields_refuse_the_rest(value):
    with pytest.raises(SpecError) as err:
        load_spec(isl=value)
    assert err.value.field == "isl" and "\n" not in str(err.value)
