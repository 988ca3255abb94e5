"""write_artifacts on a real AI Configurator study: every file, Dynamo's exact npz layout, determinism,
report.json content and the CLI summary."""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from estimator import artifacts
from estimator.artifacts import npz, write_artifacts
from estimator.artifacts.report import REPORT_FILE, report_dict, summary_text
from estimator.errors import SlaEstimateError
from estimator.deployment import Deployment
from estimator.pipeline import estimate
from estimator.select import select
from estimator.spec import load_spec

NPZ_FILES = ("selected_prefill_interpolation/raw_data.npz", "selected_decode_interpolation/raw_data.npz")
PNG_FILES = (
    "prefill_performance.png",
    "decode_performance.png",
    "selected_prefill_interpolation/prefill_ttft_interpolation.png",
    "selected_prefill_interpolation/prefill_throughput_interpolation.png",
    "selected_decode_interpolation/decode_itl_interpolation.png",
    "selected_decode_interpolation/decode_throughput_interpolation.png",
)
OTHER_FILES = ("report.json", "final_config.yaml")


@pytest.fixture(scope="module")
def profile():
    """Llama-3.1-70B on h100_sxm with vLLM: TP1 cannot hold the weights (a rejection), TP2-TP8 compete."""
    spec = load_spec(
        model="meta-llama/Meta-Llama-3.1-70B",
        system="h100_sxm",
        backend="vllm",
        isl=3000,
        osl=150,
        ttft=200,
        itl=20,
        request_rate=5,
        num_alternatives=2,
    )
    return estimate(spec)


@pytest.fixture(scope="module")
def written(profile, tmp_path_factory):
    out = tmp_path_factory.mktemp("artifacts")
    return out, write_artifacts(profile, out)


def _rel(out: Path, paths: list[Path]) -> set[str]:
    return {p.relative_to(out).as_posix() for p in paths}


def test_every_file_is_written_and_returned(written):
    out, paths = written
    assert _rel(out, paths) == set(NPZ_FILES + PNG_FILES + OTHER_FILES)
    # hidden: .sla-estimate-artifacts.json, the set written (artifacts/atomic.py)
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name[0] != "."}
    assert on_disk == set(NPZ_FILES + PNG_FILES + OTHER_FILES)
    for name in PNG_FILES:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_prefill_npz_has_dynamos_keys_dtypes_and_units(written, profile):
    out, _ = written
    with np.load(out / NPZ_FILES[0]) as data:
        assert sorted(data.files) == sorted(npz.PREFILL_KEYS)
        isl, ttft, thpt = data["prefill_isl"], data["prefill_ttft"], data["prefill_thpt_per_gpu"]
    assert isl.dtype == np.int64 and ttft.dtype == np.float64 and thpt.dtype == np.float64
    assert isl.ndim == ttft.ndim == thpt.ndim == 1 and isl.shape == ttft.shape == thpt.shape
    assert np.all(np.diff(isl) > 0) and np.all(ttft > 0)
    cand = profile.planner_prefill_surface.candidate
    np.testing.assert_allclose(thpt, isl / ttft * 1000.0 / cand.num_gpus * cand.attention_dp_size, rtol=1e-9)
    np.testing.assert_array_equal(ttft, profile.planner_prefill_surface.ttft_ms)  # ms, as estimated
    i = int(np.flatnonzero(isl == profile.spec.isl)[0])  # the workload ISL is sampled
    point = next(p for p in profile.prefill_points if p.candidate == cand)  # the deployed engine's estimate
    assert ttft[i] == pytest.approx(point.ttft_ms)


def test_decode_npz_has_dynamos_keys_dtypes_and_units(written, profile):
    out, _ = written
    with np.load(out / NPZ_FILES[1]) as data:
        assert sorted(data.files) == sorted(npz.DECODE_KEYS)
        arrays = {k: data[k] for k in data.files}
    kv = arrays.pop("max_kv_tokens")
    assert kv.shape == (1,) and kv.dtype == np.int64 and kv[0] == profile.planner_decode_surface.kv_capacity_tokens
    shapes = {a.shape for a in arrays.values()}
    assert len(shapes) == 1 and len(next(iter(shapes))) == 1
    assert all(a.dtype == np.float64 and np.all(np.isfinite(a)) for a in arrays.values())
    x, y, itl, thpt = (
        arrays["x_kv_usage"],
        arrays["y_context_length"],
        arrays["z_itl"],
        arrays["z_thpt_per_gpu"],
    )
    assert np.all((x > 0) & (x <= 1.0)) and np.all(y >= 1) and np.all(itl > 0)
    # Dynamo's definitions: x = concurrency * context / max_kv_tokens, thpt = concurrency / ITL / GPUs
    concurrency = x * kv[0] / y
    np.testing.assert_allclose(concurrency, np.round(concurrency), atol=1e-6)
    gpus = profile.planner_decode_surface.candidate.num_gpus
    np.testing.assert_allclose(thpt, concurrency / itl * 1000.0 / gpus, rtol=1e-9)
    assert np.any(y == profile.spec.decode_context_tokens)  # the workload's context is a sampled row


def test_npz_is_deterministic(written, profile, tmp_path):
    out, _ = written
    write_artifacts(profile, tmp_path, plots=False)
    for name in NPZ_FILES:
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()
        with zipfile.ZipFile(out / name) as zf:  # no wall-clock timestamps inside
            assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_no_plots_writes_no_png(profile, tmp_path):
    paths = write_artifacts(profile, tmp_path, plots=False)
    assert not list(tmp_path.rglob("*.png"))
    assert _rel(tmp_path, paths) == set(NPZ_FILES + OTHER_FILES)


def test_read_back_and_bad_files(written, tmp_path):
    out, _ = written
    assert set(npz.read_prefill_npz(out)) == set(npz.PREFILL_KEYS)  # profile folder, subfolder or file
    assert set(npz.read_decode_npz(out / "selected_decode_interpolation")) == set(npz.DECODE_KEYS)
    bad = tmp_path / "raw_data.npz"
    np.savez(bad, prefill_isl=np.arange(3), prefill_ttft=np.ones(3))
    with pytest.raises(SlaEstimateError, match="prefill_thpt_per_gpu"):
        npz.read_prefill_npz(bad)
    bad.write_bytes(b"not a zip")
    with pytest.raises(SlaEstimateError, match="cannot read"):
        npz.read_decode_npz(bad)


def test_configmap_carries_the_npz_data(profile, tmp_path):
    """A disagg deployment carries its profile data (an agg one, as Dynamo's, has no profile ConfigMap)."""
    sel = profile.selection
    disagg = Deployment.disagg(sel.best_prefill.candidate, sel.best_decode.candidate)
    out = tmp_path / "disagg"
    write_artifacts(dataclasses.replace(profile, deployment=disagg), out, plots=False)
    docs = list(yaml.safe_load_all((out / "final_config.yaml").read_text()))
    cm = next(d for d in docs if d["metadata"]["name"].startswith("planner-profile-data-"))
    prefill = json.loads(cm["data"]["prefill_raw_data.json"])
    decode = json.loads(cm["data"]["decode_raw_data.json"])
    p, d = npz.read_prefill_npz(out), npz.read_decode_npz(out)
    assert {k: np.asarray(v) for k, v in prefill.items()}.keys() == p.keys()
    for k in npz.PREFILL_KEYS:
        np.testing.assert_array_equal(prefill[k], p[k])
    assert decode["max_kv_tokens"] == int(d["max_kv_tokens"][0])
    for k in npz.DECODE_KEYS[1:]:
        np.testing.assert_array_equal(decode[k], d[k])
    assert any(d["kind"] == "DynamoGraphDeployment" for d in docs)


def test_report_round_trips_with_every_candidate_rejection_and_alternative(written, profile):
    out, _ = written

    def no_nan(token: str) -> None:
        raise AssertionError(f"report.json holds {token}")

    report = json.loads((out / REPORT_FILE).read_text(), parse_constant=no_nan)
    assert report == json.loads(json.dumps(report))
    assert report["spec"] == profile.spec.to_dict()
    assert report["provenance"]["packages"]["aiconfigurator-core"] == "0.12.0"
    assert report["provenance"]["packages"]["numpy"] == np.__version__
    assert report["provenance"]["source"]["source"] == "aic"
    assert report["created_utc"].endswith("+00:00")
    assert [c["name"] for c in report["candidates"]] == [c.name for c in profile.candidates]
    for c in report["candidates"]:
        assert c["prefill"]["ttft_ms"] > 0 and c["kv_capacity_tokens"] > 0
        assert len(c["decode"]["itl_ms"]) == len(c["decode"]["concurrency"]) >= 2
    assert [r["name"] for r in report["rejections"]] == ["TP1"]
    assert "do not fit" in report["rejections"][0]["reason"]
    sel = profile.selection
    assert [c["candidate"] for c in report["selection"]["prefill"]] == [c.candidate.name for c in sel.prefill]
    assert [c["candidate"] for c in report["selection"]["decode"]] == [c.candidate.name for c in sel.decode]
    assert len(report["selection"]["prefill"]) == 3  # TP2, TP4, TP8 ranked
    assert report["planner_bounds"]["prefill_queue_upper"] == sel.bounds.prefill_queue_upper
    assert report["sizing"]["total_gpus"] == sel.sizing.total_gpus
    assert report["sla"]["met"] is sel.sla_met
    assert set(report["timings_s"]) >= {"total"}
    assert len(report["surfaces"]["decode"]["itl_ms"]) == len(profile.decode_surface.itl_ms)


def test_summary_text_names_engines_bounds_alternatives_and_rejections(profile):
    sel = profile.selection
    text = summary_text(profile)
    t = sel.bounds.load_thresholds(profile.spec.isl)
    queue = f"{t['prefill_scale_up_queue_tokens']}/{t['prefill_scale_down_queue_tokens']} tokens per engine"
    assert f"prefill_scale_up/down_queue_tokens = {queue}" in text
    kv = f"{t['decode_scale_up_kv_rate']:g}/{t['decode_scale_down_kv_rate']:g} %"
    assert f"decode_scale_up/down_kv_rate = {kv}" in text
    assert f"Prefill engine: {sel.best_prefill.candidate.name} " in text
    assert f"Decode engine:  {sel.best_decode.candidate.name} " in text
    assert f"= {sel.sizing.total_gpus} GPUs" in text
    assert text.count("prefill #") == min(2, len(sel.prefill) - 1)  # spec.num_alternatives = 2
    assert "TP1 (1 GPU): weights do not fit" in text
    assert ("SLA: met" in text) is sel.sla_met and "WARNING" not in text


def test_summary_warns_loudly_when_the_sla_is_missed(profile):
    spec = dataclasses.replace(profile.spec, ttft_ms=5.0, itl_ms=1.0)
    missed = select(
        list(profile.prefill_points),
        list(profile.decode_sweeps),
        ttft_target_ms=5.0,
        itl_target_ms=1.0,
        isl=spec.isl,
        osl=spec.osl,
    )
    bad = dataclasses.replace(profile, spec=spec, selection=missed)
    text = summary_text(bad)
    assert "WARNING: THE SLA IS NOT MET" in text and "[misses TTFT]" in text and "[misses ITL]" in text
    for w in missed.warnings:
        assert w in text
    report = report_dict(bad)
    assert report["sla"]["met"] is False and report["warnings"] == list(missed.warnings)


def test_public_names():
    for name in artifacts.__all__:
        assert hasattr(artifacts, name), name
    assert artifacts.deployment_name("meta-llama/Meta-Llama-3.1-70B") == "meta-llama-3-1-70b-disagg"
    assert artifacts.deployment_name("/models/My_Model/") == "my-model-disagg"


def test_decode_surface_plot_survives_a_collapsed_grid(profile, tmp_path):
    """A small KV cache can leave a single context row: no area to triangulate, the points are still drawn."""
    from estimator.artifacts.plots import plot_decode_surfaces

    s = profile.decode_surface
    row = s.context_tokens == s.context_tokens[0]
    one_row = dataclasses.replace(
        s,
        **{
            f: getattr(s, f)[row]
            for f in (
                "kv_usage",
                "context_tokens",
                "concurrency",
                "itl_ms",
                "thpt_per_gpu",
                "itl_low_ms",
                "itl_high_ms",
            )
        },
    )
    paths = plot_decode_surfaces(one_row, int(s.context_tokens[0]), tmp_path)
    assert [p.name for p in paths] == ["decode_itl_interpolation.png", "decode_throughput_interpolation.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


class _ValidationResult:
    """Stand-in for validate's result type: the report needs only ``to_dict`` and ``summary_text``."""

    def to_dict(self) -> dict:
        return {"points": 3, "ttft_error": np.float64(0.12)}

    def summary_text(self) -> str:
        return "Validation: 3 points measured"


def test_band_and_validation_appear_in_summary_and_report(profile, tmp_path):
    sel = profile.selection
    p0 = dataclasses.replace(sel.prefill[0].point, ttft_low_ms=1.0, ttft_high_ms=2.0)
    banded = dataclasses.replace(
        sel, prefill=(dataclasses.replace(sel.prefill[0], point=p0), *sel.prefill[1:])
    )
    prof = dataclasses.replace(profile, selection=banded)
    text = summary_text(prof, validation=_ValidationResult())
    assert "(band 1.0-2.0)" in text and text.rstrip().endswith("Validation: 3 points measured")
    write_artifacts(prof, tmp_path, plots=False, validation=_ValidationResult())
    report = json.loads((tmp_path / REPORT_FILE).read_text())
    assert report["validation"] == {"points": 3, "ttft_error": 0.12}
    assert report["selection"]["prefill"][0]["ttft_low_ms"] == 1.0


def test_surfaces_describe_the_deployed_fleet(profile):
    """At 5 req/s the fewest-GPU fleet is agg TP8 x 2 (not the TP4 prefill pick): Dynamo's data must be TP8's."""
    (group,) = profile.deployment.workers
    assert group.candidate != profile.selection.best_prefill.candidate
    for surface in (profile.prefill_surface, profile.decode_surface,
                    profile.planner_prefill_surface, profile.planner_decode_surface):  # fmt: skip
        assert surface.candidate == group.candidate


def test_the_summary_says_what_is_deployed_when_the_fleet_uses_other_engines(profile):
    """At 5 req/s the fleet is agg TP8 x 2, not the disagg picks of the headline: the line under the
    headline says so (a reader of the headline alone would deploy other engines than -o writes)."""
    text = summary_text(profile)
    (line,) = [ln for ln in text.splitlines() if ln.startswith("Deployed:")]
    assert profile.selection.sizing.describe() in line
    assert "its engines, not the ones above, are what -o writes" in line
    order = [text.index(s) for s in ("Decode engine:", "Deployed:", "Load-based planner thresholds")]
    assert order == sorted(order)


def test_the_summary_rounds_the_sized_rate_and_the_report_keeps_it(profile):
    """A rate solved for (a GPU budget's, a DGDR concurrency's) printed as "Sizing at 13.4564 requests/s"."""
    z = dataclasses.replace(profile.selection.sizing, request_rate=13.4564)
    odd = dataclasses.replace(profile, selection=dataclasses.replace(profile.selection, sizing=z))
    text = summary_text(odd)
    assert "Sizing at 13.46 requests/s (" in text and "(sized for 13.46 requests/s" in text
    assert "13.4564" not in text
    assert report_dict(odd)["sizing"]["request_rate"] == 13.4564
