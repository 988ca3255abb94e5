"""Our raw_data.npz files, read and interpolated exactly the way Dynamo's SLA planner does, give back the
source's own predictions at points that were not sampled.

The planner (``dynamo/planner/utils/perf_interpolation.py``) does:
- prefill: ``scipy.interpolate.interp1d(isl, ttft | thpt, kind="cubic")``, queries clamped to the ISL range;
- decode: ``griddata((x_kv_usage, y_context_length), z, method="cubic")`` onto a 100 x 100 grid
  (x in [0, 1], y in [0, max y]); NaN cells filled by ``method="nearest"``; a query (concurrency,
  context) reads the nearest cell; the best throughput under an ITL target scans the context's row
  from the highest KV usage down.
The classes below re-implement that behaviour (not import it: Dynamo is not a dependency).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.interpolate import griddata, interp1d

from estimator.artifacts.npz import (
    decode_raw_data,
    prefill_raw_data,
    read_decode_npz,
    read_prefill_npz,
    write_decode_npz,
    write_prefill_npz,
)
from estimator.pipeline import estimate
from estimator.sources import Stack, make_source
from estimator.spec import load_spec

RESOLUTION = 100


class PlannerPrefill:
    def __init__(self, data: dict):
        self.isl = np.asarray(data["prefill_isl"])
        self._ttft = interp1d(self.isl, np.asarray(data["prefill_ttft"]), kind="cubic")
        self._thpt = interp1d(self.isl, np.asarray(data["prefill_thpt_per_gpu"]), kind="cubic")

    def _clamp(self, isl: float) -> float:
        return max(self.isl.min(), min(isl, self.isl.max()))

    def ttft_ms(self, isl: float) -> float:
        return float(self._ttft(self._clamp(isl)))

    def thpt_per_gpu(self, isl: float) -> float:
        return float(self._thpt(self._clamp(isl)))


class PlannerDecode:
    def __init__(self, data: dict):
        x, y = np.asarray(data["x_kv_usage"]), np.asarray(data["y_context_length"])
        kv = data["max_kv_tokens"]
        self.max_kv_tokens = int(kv[0]) if np.ndim(kv) else int(kv)  # npz: 1-element array; JSON: scalar
        self.xi = np.linspace(0, 1, RESOLUTION)
        self.yi = np.linspace(0, y.max(), RESOLUTION)
        grid = np.meshgrid(self.xi, self.yi)
        self.itl = self._grid(x, y, np.asarray(data["z_itl"]), grid)
        self.thpt = self._grid(x, y, np.asarray(data["z_thpt_per_gpu"]), grid)

    @staticmethod
    def _grid(x: np.ndarray, y: np.ndarray, z: np.ndarray, grid: list) -> np.ndarray:
        g = griddata((x, y), z, tuple(grid), method="cubic")
        holes = np.isnan(g)
        g[holes] = griddata((x, y), z, tuple(grid), method="nearest")[holes]
        return g

    def _row(self, context: float) -> int:
        return int(np.clip(np.round((context - self.yi[0]) / (self.yi[1] - self.yi[0])), 0, RESOLUTION - 1))

    def _cell(self, concurrency: float, context: float) -> tuple[int, int]:
        usage = concurrency * context / self.max_kv_tokens
        ix = int(np.clip(np.round((usage - self.xi[0]) / (self.xi[1] - self.xi[0])), 0, RESOLUTION - 1))
        return self._row(context), ix

    def itl_ms(self, concurrency: float, context: float) -> float:
        return float(self.itl[self._cell(concurrency, context)])

    def thpt_per_gpu(self, concurrency: float, context: float) -> float:
        return float(self.thpt[self._cell(concurrency, context)])

    def best_thpt_per_gpu(self, itl_target_ms: float, context: float) -> tuple[float, float, float, float]:
        """(tokens/s/GPU, ITL ms, KV usage, row context): the highest usage whose ITL meets the target."""
        iy = self._row(context)
        for ix in range(RESOLUTION - 1, -1, -1):
            if self.itl[iy, ix] <= itl_target_ms:
                return (
                    float(self.thpt[iy, ix]),
                    float(self.itl[iy, ix]),
                    float(self.xi[ix]),
                    float(self.yi[iy]),
                )
        return float(self.thpt[iy, 0]), float(self.itl[iy, 0]), float(self.xi[0]), float(self.yi[iy])


@pytest.fixture(scope="module", params=["aic", "roofline"])
def study(request, tmp_path_factory):
    """A real Llama-3.1-8B / h100_sxm / vLLM study with one source, its npz files and the source itself."""
    spec = load_spec(
        model="meta-llama/Meta-Llama-3.1-8B",
        system="h100_sxm",
        backend="vllm",
        isl=3000,
        osl=150,
        ttft=200,
        itl=20,
        source=request.param,
    )
    source = make_source(request.param, Stack.from_spec(spec))
    profile = estimate(spec, source)
    out = tmp_path_factory.mktemp(f"npz_{request.param}")
    write_prefill_npz(profile.prefill_surface, out)
    write_decode_npz(profile.decode_surface, out)
    return profile, source, read_prefill_npz(out), read_decode_npz(out)


def _rel_err(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    return np.abs(np.asarray(got) / np.asarray(want) - 1.0)


def test_prefill_interpolation_reproduces_source_between_samples(study):
    profile, source, prefill, _ = study
    planner = PlannerPrefill(prefill)
    cand = profile.prefill_surface.candidate
    isl = planner.isl.astype(float)
    held_out = np.sqrt(isl[1:] * isl[:-1])  # geometric midpoints: never sampled
    assert held_out.size >= 10
    ttft = source.prefill_ttft_ms(cand, held_out)
    thpt = held_out / ttft * 1000.0 / cand.num_gpus * cand.attention_dp_size
    # AIC's prefill curve has small steps (kernel-table boundaries) that no cubic follows exactly.
    for err in (_rel_err([planner.ttft_ms(v) for v in held_out], ttft),
                _rel_err([planner.thpt_per_gpu(v) for v in held_out], thpt)):  # fmt: skip
        assert np.median(err) <= 0.02 and err.max() <= 0.08, (np.median(err), err.max())


def test_prefill_queries_are_clamped_to_the_sampled_range(study):
    _, _, prefill, _ = study
    planner = PlannerPrefill(prefill)
    assert planner.ttft_ms(1) == pytest.approx(prefill["prefill_ttft"][0])
    assert planner.ttft_ms(10**7) == pytest.approx(prefill["prefill_ttft"][-1])
    assert planner.thpt_per_gpu(10**7) == pytest.approx(prefill["prefill_thpt_per_gpu"][-1])


def test_prefill_grid_has_no_wide_gaps(study):
    _, _, prefill, _ = study
    isl = prefill["prefill_isl"].astype(float)
    assert np.all(isl[1:] / isl[:-1] <= 1.6)


def _decode_held_out_errors(study) -> tuple[np.ndarray, np.ndarray]:
    """Relative errors of the planner's (ITL, tokens/s/GPU) lookups against the source at unsampled points."""
    profile, source, _, decode = study
    planner = PlannerDecode(decode)
    cand = profile.decode_surface.candidate
    kv = planner.max_kv_tokens
    cell = planner.yi[1]
    got, want, got_t, want_t = [], [], [], []
    # Contexts at least 1.5 grid rows in (the planner snaps a query to its row; 0.5 row = ±cell/2 tokens) and
    # at least 8 requests (AIC rounds batch sizes, so fractional concurrencies would be a step function).
    for ctx in np.linspace(1.5 * cell, 0.9 * planner.yi[-1], 12).round():
        n_max = kv // (ctx + profile.spec.osl // 2)
        if n_max < 8:
            continue
        conc = np.unique(np.geomspace(8, n_max, 9).astype(int)).astype(float)
        itl = source.decode_itl_ms(cand, conc, np.full_like(conc, ctx))
        got += [planner.itl_ms(n, ctx) for n in conc]
        want += itl.tolist()
        got_t += [planner.thpt_per_gpu(n, ctx) for n in conc]
        want_t += (conc / itl * 1000.0 / cand.num_gpus).tolist()
    assert len(got) >= 40
    return _rel_err(got, want), _rel_err(got_t, want_t)


def test_decode_itl_interpolation_reproduces_source_at_held_out_points(study):
    err, _ = _decode_held_out_errors(study)
    assert np.median(err) <= 0.03 and np.quantile(err, 0.9) <= 0.06, (np.median(err), np.quantile(err, 0.9))


def test_decode_throughput_interpolation_reproduces_source_at_held_out_points(study):
    _, err = _decode_held_out_errors(study)
    # tokens/s/GPU ~ 1/context at fixed KV usage: a cubic in (usage, context) follows it less well than ITL
    assert np.median(err) <= 0.03 and np.quantile(err, 0.9) <= 0.10, (np.median(err), np.quantile(err, 0.9))


def test_planner_best_decode_throughput_under_itl_target(study):
    """The planner's decode sizing lookup at context ISL + OSL/2 finds a point that meets the ITL target
    and whose throughput matches the source's best at the grid row the planner reads."""
    profile, source, _, decode = study
    spec = profile.spec
    planner = PlannerDecode(decode)
    cand = profile.decode_surface.candidate
    thpt, itl, usage, row_ctx = planner.best_thpt_per_gpu(spec.itl_ms, spec.isl + spec.osl / 2)
    assert itl <= spec.itl_ms
    assert 0.0 < usage <= 1.0

    def source_best(ctx: float) -> float:
        n = np.arange(1, planner.max_kv_tokens // ctx + 1, dtype=float)
        itl_ms = source.decode_itl_ms(cand, n, np.full_like(n, ctx))
        ok = itl_ms <= spec.itl_ms
        return float(np.max(n[ok] / itl_ms[ok] * 1000.0 / cand.num_gpus))

    assert thpt == pytest.approx(source_best(row_ctx), rel=0.05)
    # The row the planner reads lies up to half a grid step (max context / 198 tokens) from the workload's
    # context; at equal KV usage a shorter context holds more requests, so the answer runs optimistic.
    assert thpt == pytest.approx(source_best(spec.isl + spec.osl / 2), rel=0.25)
    assert thpt >= 0.95 * profile.selection.best_decode.thpt_per_gpu


def test_configmap_json_interpolates_like_the_npz(study):
    """The planner's fallback reads prefill/decode_raw_data.json (max_kv_tokens a scalar): same answers."""
    profile, _, prefill, decode = study
    p_json = json.loads(json.dumps(prefill_raw_data(profile.prefill_surface)))
    d_json = json.loads(json.dumps(decode_raw_data(profile.decode_surface)))
    assert isinstance(d_json["max_kv_tokens"], int)
    a, b = PlannerPrefill(prefill), PlannerPrefill(p_json)
    assert [a.ttft_ms(v) for v in (100, 3000, 50_000)] == [b.ttft_ms(v) for v in (100, 3000, 50_000)]
    c, d = PlannerDecode(decode), PlannerDecode(d_json)
    assert np.array_equal(c.itl, d.itl) and np.array_equal(c.thpt, d.thpt)
