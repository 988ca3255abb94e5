"""Capacity planning end to end on AIC: the issue's case, Dynamo's two rapid-mode cases, the CLI
document, band sizing and a scenario batch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from estimator.capacity_study import SharedWork, run_capacity
from estimator.capacity_types import Load, Sla
from estimator.cli import main
from estimator.sources.base import PerfSource, Stack
from estimator.spec import load_spec
from estimator.workload import fixed

SHARED = SharedWork()


def _plan(rate=None, budget=None, **study):
    spec = load_spec(None, **study)
    return run_capacity(spec, fixed(spec.isl, spec.osl), Load(request_rate=rate, gpu_budget=budget),
                        Sla.means(spec.ttft_ms, spec.itl_ms), shared=SHARED)  # fmt: skip


def test_issue_case_needs_three_gpus_in_plan_and_profile(capsys):
    study = {"model": "Qwen/Qwen3-30B-A3B", "system": "h100_sxm", "backend": "sglang"}
    study |= {"isl": 4000, "osl": 500, "ttft": 300, "itl": 25}
    assert _plan(rate=10, **study).result.best.total_gpus <= 3
    from estimator.pipeline import estimate

    profile = estimate(load_spec(None, request_rate=10, **study))
    assert profile.selection.sizing.total_gpus <= 3
    assert profile.deployment is not None and profile.deployment.total_gpus <= 3


@pytest.mark.parametrize("model,system,rate,dynamo_gpus", [
    ("meta-llama/Llama-3.1-8B", "h100_sxm", 62.7, 8),  # Dynamo rapid: disagg 5P TP1 + 3D TP1
    ("Qwen/Qwen3-32B", "h200_sxm", 9.5, 8),  # Dynamo rapid: agg TP8
])  # fmt: skip
def test_dynamo_rapid_cases(model, system, rate, dynamo_gpus):
    r = _plan(
        rate=rate, model=model, system=system, backend="vllm", isl=3000, osl=150, ttft=200, itl=20
    ).result
    assert r.best_of("agg") is not None and r.best_of("disagg") is not None
    assert r.best.total_gpus <= dynamo_gpus


def test_plan_json_document(capsys):
    rc = main(["plan", "--model", "meta-llama/Llama-3.1-8B", "--system", "h100_sxm", "--backend", "vllm",
               "--isl", "3000", "--osl", "150", "--ttft", "200", "--itl", "20", "--ttft-p90", "300",
               "--request-rate", "20", "--json", "--top", "5"])  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and 1 <= len(doc["fleets"]) <= 5
    f = doc["fleets"][0]
    for key in ("mode", "engines", "total_gpus", "usd_per_hour", "usd_per_million_output_tokens", "meets_sla",
                "ttft_ms", "itl_ms", "margins"):  # fmt: skip
        assert key in f
    assert f["mode"] in ("agg", "disagg") and f["meets_sla"]
    assert set(f["ttft_ms"]) == {"mean", "p50", "p90", "p99"} and "ttft_p90" in f["margins"]
    assert {"candidate", "replicas", "gpus_each"} <= set(f["engines"][0])
    assert sum(e["replicas"] * e["gpus_each"] for e in f["engines"]) == f["total_gpus"]
    assert f["usd_per_hour"] == pytest.approx(3.0 * f["total_gpus"])


class _Banded(PerfSource):
    """A hand-made source whose band's high edge is 40 % slower than its point value."""

    name = "banded"

    def prefill_ttft_ms(self, candidate, isl):
        return np.asarray(isl, float) * 0.03 / candidate.num_gpus

    def decode_itl_ms(self, candidate, batch, context):
        return (
            6.0 / candidate.num_gpus**0.5
            + 0.05 * np.asarray(batch, float) / candidate.num_gpus
            + 0 * np.asarray(context)
        )

    def kv_capacity_tokens(self, candidate):
        return 500_000 * candidate.num_gpus

    def prefill_ttft_band(self, candidate, isl):
        v = self.prefill_ttft_ms(candidate, isl)
        return v * 0.8, v * 1.4

    def decode_itl_band(self, candidate, batch, context):
        v = self.decode_itl_ms(candidate, batch, context)
        return v * 0.8, v * 1.4


def test_size_for_band_costs_more_gpus():
    spec = load_spec(
        None, model="meta-llama/Llama-3.1-8B", system="h100_sxm", isl=3000, osl=150, ttft=200, itl=20
    )
    shared = SharedWork()
    shared.sources[(Stack.from_spec(spec), spec.source)] = _Banded(Stack.from_spec(spec))
    st = run_capacity(
        spec, fixed(3000, 150), Load(request_rate=30), Sla.means(200, 20), size_for="band", shared=shared
    )
    assert st.point_result.best.total_gpus < st.result.best.total_gpus
    assert st.band_extra_gpus == st.result.best.total_gpus - st.point_result.best.total_gpus > 0


def test_scenarios_batch_writes_table_and_pareto(tmp_path, capsys):
    sc = tmp_path / "s.yaml"
    sc.write_text(
        "- {name: chat, model: meta-llama/Llama-3.1-8B, system: h100_sxm, backend: vllm, isl: 3000, osl: 150,"
        " ttft: 200, itl: 20, request_rate: 10}\n"
        "- {name: long, model: meta-llama/Llama-3.1-8B, system: h100_sxm, backend: vllm, isl: 8000, osl: 300,"
        " ttft_p90: 800, itl: 25, request_rate: 5, gpu_price: 2.0}\n"
    )
    rc = main(["plan", "--scenarios", str(sc), "-o", str(tmp_path / "out")])
    assert rc == 0
    import pandas as pd

    df = pd.read_csv(tmp_path / "out" / "plan.csv")
    assert list(df["scenario"]) == ["chat", "long"] and (df["total_gpus"] >= 1).all()
    assert (tmp_path / "out" / "plan.md").read_text().startswith("# Capacity plan")
    assert (tmp_path / "out" / "pareto.png").stat().st_size > 10_000


def test_csv_scenarios_and_gpu_budget(tmp_path, capsys):
    sc = tmp_path / "s.csv"
    sc.write_text(
        "name,model,system,backend,isl,osl,ttft,itl,gpu_budget,request_rate\n"
        "budget,meta-llama/Llama-3.1-8B,h100_sxm,vllm,3000,150,200,20,8,\n"
        "rate,meta-llama/Llama-3.1-8B,h100_sxm,sglang,3000,150,200,20,,12\n"
    )
    assert main(["plan", "--scenarios", str(sc), "-o", str(tmp_path), "--no-plots", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["scenario"] for r in rows] == ["budget", "rate"]
    assert rows[0]["total_gpus"] <= 8 and rows[0]["request_rate"] > 12
    assert rows[1]["load"] == "12 requests/s"


@pytest.mark.parametrize("argv,needle", [
    (["--model", "meta-llama/Llama-3.1-8B", "--system", "h100_sxm"], "give one of --request-rate"),
    (["--request-rate", "5", "--gpu-budget", "8"], "exactly one of"),
    (["--request-rate", "5", "--prefix-hit-rate", "1.5"], "prefix_hit_rate"),
    (["--request-rate", "5", "--size-for", "worst"], "size_for"),
])  # fmt: skip
def test_bad_plan_input_is_one_line_exit_2(capsys, argv, needle):
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


def test_bad_scenario_field(tmp_path, capsys):
    sc = tmp_path / "s.yaml"
    sc.write_text("- {model: meta-llama/Llama-3.1-8B, request_rate: 3, colour: red}\n")
    assert main(["plan", "--scenarios", str(sc)]) == 2
    assert "row 1: unknown field 'colour'" in capsys.readouterr().err


def test_scenarios_without_an_output_dir_write_nothing(tmp_path, capsys, monkeypatch):
    """No -o: the rows are printed and nothing lands in the working directory (it overwrote plan.csv)."""
    sc = tmp_path / "sc.csv"
    sc.write_text("name,model,system,isl,osl,ttft,itl,request_rate\n"
                  "a,Qwen/Qwen3-8B,h100_sxm,1000,100,500,50,2\n")  # fmt: skip
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["plan", "--scenarios", str(sc), "--no-plots"]) in (0, 1)
    assert list(work.iterdir()) == []
    assert "-o DIR writes" in capsys.readouterr().out
