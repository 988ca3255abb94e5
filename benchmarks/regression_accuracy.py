"""Accuracy and coverage of the regression source next to raw AIC, on real measurements.

Data: AIC's ``silicon_sample.csv`` (aggregated serving, deduplicated: exact copies dropped, repeats
merged, see ``validate/silicon.py``) and the GPU-runner records in ``models/measurements/``.
Sources compared on the same rows:

- ``aic``: AIC's kernel estimates through the serving model (``estimator/serving.py``), uncalibrated;
- ``regression LOMO`` / ``LOSO``: the linear roofline-term regression fitted on all measured rows
  except those of the held-out model (or system), then scored on it;
- ``aic-distilled``: the bundled surrogate distilled from AIC (never fitted on measurements).

Errors are absolute relative errors in % (median, p90). Coverage: rows each source can estimate at
all, and the regression's error on the rows AIC cannot estimate. Also compares, on AIC's own points
for the common stacks, three designs: linear terms only, boosted trees on log(measured / roofline),
and linear terms plus a boosted residual (leave-one-model-out).

    python benchmarks/regression_accuracy.py [--cache out/regression_cache]

Prints the tables; writes benchmarks/results/regression_accuracy.json and the generated block of docs/regression.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from estimator.errors import SlaEstimateError
from estimator.measurements import MeasurementStore, ProbeKind
from estimator.serving import predict_agg
from estimator.sources.aic import AicSource
from estimator.sources.base import Stack
from estimator.sources.regression import RegressionSource, TrainingSet
from estimator.sources.regression.data import aic_rows, measurement_rows
from estimator.sources.regression.fitting import cross_validate, predict_rows
from validate.silicon import load_silicon

ROOT = Path(__file__).resolve().parents[1]
COMMON_MODELS = ("meta-llama/Meta-Llama-3.1-8B", "meta-llama/Meta-Llama-3.1-70B", "Qwen/Qwen3-32B",
                 "Qwen/Qwen3-30B-A3B", "deepseek-ai/DeepSeek-V3")  # fmt: skip
DISTILL_STACKS = [Stack(m, s, b) for m in COMMON_MODELS for s in ("h100_sxm", "h200_sxm", "b200_sxm")
                  for b in ("vllm", "sglang", "trtllm")]  # fmt: skip


def _save_set(path: Path, d: TrainingSet, extra: dict[str, np.ndarray]) -> None:
    arrays = {k: getattr(d, k) for k in ("kind", "backend", "model", "system", "design", "features", "y_ms",
                                         "origin", "kv_backend", "kv_rows")}  # fmt: skip
    np.savez(path, **arrays, **{f"x_{k}": v for k, v in extra.items()})


def _load_set(path: Path) -> tuple[TrainingSet, dict[str, np.ndarray]]:
    with np.load(path) as z:
        names = (
            "kind",
            "backend",
            "model",
            "system",
            "design",
            "features",
            "y_ms",
            "origin",
            "kv_backend",
            "kv_rows",
        )
        d = TrainingSet(**{k: z[k] for k in names})
        return d, {k[2:]: z[k] for k in z.files if k.startswith("x_")}


def _records() -> tuple[list, int, int]:
    silicon, not_representable = load_silicon()
    runs = sorted((ROOT / "models/measurements").glob("*.jsonl"))
    return (
        silicon + [m for f in runs for m in MeasurementStore(f).load()],
        len(silicon),
        len(not_representable),
    )


def measured_rows(cache: Path, parts: tuple[int, int] = (0, 1)) -> tuple[TrainingSet, dict[str, np.ndarray]]:
    """Regression rows of every silicon config and GPU-runner point, with AIC's prediction for each row.

    Cached in ``cache``; configurations missing from the cache (new records, or ones the regression
    could not describe before) are computed and added. ``parts=(k, n)``: only configurations i with
    i % n == k, into their own file (run n processes, then once without ``parts`` to merge).
    """
    if parts[1] > 1:
        path = cache / f"measured_rows.part{parts[0]}of{parts[1]}.npz"
    else:
        _merge_parts(cache)
    path = path if parts[1] > 1 else cache / "measured_rows.npz"
    records, n_silicon, n_not_repr = _records()
    ids = np.array([f"{m.probe.key}|{m.ttft_ms}|{m.itl_ms}|{m.tpot_ms}" for m in records], dtype=str)
    old, extra = _load_set(path) if path.exists() else (None, {})
    cached_ids = extra.get("ids", np.array([], dtype=str))
    if old is not None and (cached_ids.size == 0 or not np.array_equal(cached_ids, ids[: cached_ids.size])):
        old, extra = None, {}  # the cached configurations are not today's first records: recompute
    done = set(extra["config"].tolist()) if old is not None else set()
    todo = [i for i in range(len(records)) if i not in done and i % parts[1] == parts[0]]
    if old is not None and todo == sorted(int(i) for i in extra.get("skipped", np.array([], dtype=int))):
        return old, extra
    parts, config, engine, aic = ([old] if old is not None else []), [], [], []
    aic_why = collections.Counter(json.loads(str(extra["aic_why"])) if old is not None else {})
    reg_why, skipped = collections.Counter(), []
    sources: dict[Stack, AicSource] = {}
    for i in todo:
        m = records[i]
        p = m.probe
        rows, why = measurement_rows([m], origin="silicon" if i < n_silicon else "gpu-runner")
        if why:
            reg_why[why[0].split(": ", 1)[-1][:70]] += 1
            skipped.append(i)
            continue
        stack = Stack(p.stack.model, p.stack.system, p.stack.backend, None, p.stack.gemm_quant)
        src = sources.setdefault(stack, AicSource(stack))
        try:
            if p.kind is ProbeKind.AGG:
                pred = list(predict_agg(src, p.candidate, p.concurrency, p.isl, p.osl))
            elif p.kind is ProbeKind.PREFILL:
                pred = [float(src.prefill_ttft_ms(p.candidate, [p.isl])[0])]
            else:
                pred = [float(src.decode_itl_ms(p.candidate, [p.concurrency], [p.context_tokens])[0])]
        except SlaEstimateError as exc:
            aic_why[_reason(str(exc))] += 1
            pred = [np.nan] * len(rows)
        parts.append(rows)
        config += [i] * len(rows)
        engine += [p.candidate.name] * len(rows)
        aic += pred
    data = TrainingSet.concat(parts)
    prev = (extra["config"], extra["engine"], extra["aic"]) if old is not None else ([], [], [])
    extra = {
        "config": np.concatenate([prev[0], np.array(config, dtype=int)]).astype(int),
        "engine": np.concatenate([prev[1], np.array(engine, dtype=str)]).astype(str),
        "aic": np.concatenate([prev[2], np.array(aic, dtype=float)]).astype(float),
        "ids": ids,  # which record each configuration index is (a new file shifts the indices)
        "not_representable": np.array([n_not_repr]),
        "skipped": np.array(skipped, dtype=int),
        "aic_why": np.array(json.dumps(dict(aic_why))),
        "reg_why": np.array(json.dumps(dict(reg_why))),
    }
    cache.mkdir(parents=True, exist_ok=True)
    _save_set(path, data, extra)
    return data, extra


def _merge_parts(cache: Path) -> None:
    """Fold part files written by parallel runs into the main cache (configurations in index order)."""
    files = sorted(cache.glob("measured_rows.part*.npz"))
    main = cache / "measured_rows.npz"
    if not files:
        return
    loaded = [_load_set(f) for f in ([main] if main.exists() else []) + files]
    data = TrainingSet.concat([d for d, _ in loaded])
    config = np.concatenate([e["config"] for _, e in loaded]).astype(int)
    order = np.argsort(config, kind="stable")
    data = data.subset(order)
    extra = {"config": config[order],
             "engine": np.concatenate([e["engine"] for _, e in loaded]).astype(str)[order],
             "aic": np.concatenate([e["aic"] for _, e in loaded]).astype(float)[order],
             "not_representable": loaded[0][1]["not_representable"],
             "skipped": np.sort(np.concatenate([e.get("skipped", np.array([], dtype=int)) for _, e in loaded])).astype(int),
             "aic_why": np.array(json.dumps(sum((collections.Counter(json.loads(str(e["aic_why"]))) for _, e in loaded),
                                                collections.Counter()))),
             "reg_why": np.array(json.dumps(sum((collections.Counter(json.loads(str(e["reg_why"]))) for _, e in loaded),
                                                collections.Counter())))}  # fmt: skip
    _save_set(main, data, extra)
    for f in files:
        f.unlink()


def _reason(msg: str) -> str:
    low = msg.lower()
    for key, label in (("flops", "no FLOPs for the quantisation"), ("unknown model", "model not bundled"),
                       ("divide", "mapping does not divide"), ("not available", "kernel data missing"),
                       ("unsupported", "unsupported configuration")):  # fmt: skip
        if key in low:
            return label
    return msg.splitlines()[0].split(": ", 1)[-1][:60]


def distilled_predictions(
    data: TrainingSet, extra: dict[str, np.ndarray], cache: Path, silicon: bool
) -> np.ndarray:
    """The bundled AIC-distilled surrogate on the measured rows (through the serving model for agg rows).

    ``silicon`` False: the GPU-runner rows only (the silicon rows take minutes of serving replays).
    """
    from estimator.sources.regression import load_model_file

    # keyed by the rows too: new records change which rows there are (a stale file did not fit them)
    model = load_model_file("aic-distilled").sha256[:12]
    path = cache / f"distilled_{model}_{data.digest()[:12]}_{int(silicon)}.npy"
    if path.exists():
        return np.load(path)
    records, _, _ = _records()
    out = np.full(len(data), np.nan)
    sources: dict[Stack, RegressionSource] = {}
    for i in np.unique(extra["config"]):
        m, rows = records[i], np.nonzero(extra["config"] == i)[0]
        p = m.probe
        if p.kind is ProbeKind.AGG and not silicon:
            continue
        src = sources.setdefault(p.stack, RegressionSource(p.stack, "aic-distilled"))
        try:
            if p.kind is ProbeKind.AGG:
                out[rows] = predict_agg(src, p.candidate, p.concurrency, p.isl, p.osl)
            elif p.kind is ProbeKind.PREFILL:
                out[rows] = src.prefill_ttft_ms(p.candidate, [p.isl])
            else:
                out[rows] = src.decode_itl_ms(p.candidate, [p.concurrency], [p.context_tokens])
        except SlaEstimateError:
            pass
    np.save(path, out)
    return out


def design_comparison(adata: TrainingSet, variants: dict, cache: Path, workers: int) -> list:
    """Leave-one-model-out error of each design on AIC's points (cached by the rows' digest)."""
    path = cache / f"designs_{adata.digest()[:12]}.json"
    if path.exists():
        return [(n, {k: tuple(v) for k, v in e.items()}) for n, e in json.loads(path.read_text())]
    rows = []
    for name, params in variants.items():
        pred = _parallel_cv(adata, params, workers)
        rows.append(
            (
                name,
                {k: _err(pred[adata.kind == k], adata.y_ms[adata.kind == k]) for k in ("prefill", "decode")},
            )
        )
    path.write_text(json.dumps(rows))
    return rows


def _fold(data: TrainingSet, params: dict, group: str) -> np.ndarray:
    from estimator.sources.regression import PerfRegressor

    test = data.model == group
    return predict_rows(PerfRegressor(**params).fit(data.subset(~test)), data.subset(test))


def _parallel_cv(data: TrainingSet, params: dict, workers: int) -> np.ndarray:
    """Leave-one-model-out predictions, one process per fold (same numbers as ``cross_validate``)."""
    from concurrent.futures import ProcessPoolExecutor

    pred = np.full(len(data), np.nan)
    groups = np.unique(data.model)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for g, p in zip(
            groups, pool.map(_fold, [data] * len(groups), [params] * len(groups), groups), strict=True
        ):
            pred[data.model == g] = p
    return pred


def _err(pred: np.ndarray, y: np.ndarray) -> tuple[int, float, float]:
    ok = np.isfinite(pred)
    if not ok.any():
        return 0, float("nan"), float("nan")
    rel = np.abs(pred[ok] / y[ok] - 1.0) * 100.0
    return int(ok.sum()), float(np.median(rel)), float(np.percentile(rel, 90))


def _table(title: str, kinds: tuple[str, ...], rows: list[tuple[str, dict[str, tuple]]]) -> list[str]:
    head = "| source | " + " | ".join(f"{k} rows | {k} median % | {k} p90 % " for k in kinds) + "|"
    lines = [f"**{title}**", "", head, "|---|" + "---|---|---|" * len(kinds)]
    for name, errs in rows:
        cells = " | ".join(f"{errs[k][0]} | {errs[k][1]:.1f} | {errs[k][2]:.1f}" for k in kinds)
        lines.append(f"| {name} | {cells} |")
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--cache", default=str(ROOT / "out/regression_cache"), help="row caches (delete to recompute)"
    )
    ap.add_argument("--skip-variants", action="store_true", help="skip the design comparison on AIC points")
    ap.add_argument(
        "--workers", type=int, default=os.cpu_count() or 2, help="processes for the design comparison"
    )
    ap.add_argument(
        "--distilled-on-silicon", action="store_true", help="also score aic-distilled on silicon rows"
    )
    args = ap.parse_args()
    logging.getLogger("aiconfigurator_core").setLevel(logging.ERROR)
    cache = Path(args.cache)
    t0 = time.perf_counter()
    data, extra = measured_rows(cache)
    lomo, _ = cross_validate(data, {"residual": False}, "model")
    loso, _ = cross_validate(data, {"residual": False}, "system")
    distilled = distilled_predictions(data, extra, cache, args.distilled_on_silicon)
    aic = extra["aic"]
    out: dict = {"meta": {"machine": f"{platform.node()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
                          "python": platform.python_version()}}  # fmt: skip
    md: list[str] = []
    sil = data.origin == "silicon"
    gpu = data.origin == "gpu-runner"
    aic_ok = np.isfinite(aic)
    # ---- coverage ---------------------------------------------------------------------------
    configs = np.unique(extra["config"][sil]).size
    aic_configs = np.unique(extra["config"][sil & aic_ok]).size
    not_repr = int(extra["not_representable"][0])
    reg_why = json.loads(str(extra["reg_why"]))
    n_sil_reg_skip = sum(v for k, v in reg_why.items())
    total = configs + n_sil_reg_skip + not_repr
    cov = {"silicon_configs": total, "not_representable_layout": not_repr,
           "regression_estimable": configs, "aic_estimable": aic_configs,
           "regression_left_out": reg_why, "aic_not_estimable": json.loads(str(extra["aic_why"]))}  # fmt: skip
    out["coverage"] = cov
    md += ["**Coverage on silicon_sample.csv (aggregated rows, deduplicated configurations)**", "",
           f"- configurations: {total}; parallel layout not TP/TEP/DEP (no source can take them): {not_repr}",
           f"- AIC estimates {aic_configs}; not estimable: "
           + ", ".join(f"{k} ({v})" for k, v in sorted(cov["aic_not_estimable"].items(), key=lambda kv: -kv[1])),
           f"- regression estimates {configs}; left out: "
           + (", ".join(f"{k} ({v})" for k, v in reg_why.items()) or "none"), ""]  # fmt: skip

    # ---- silicon accuracy -------------------------------------------------------------------
    def errs(pred: np.ndarray, mask: np.ndarray, kinds: tuple[str, ...]) -> dict[str, tuple]:
        return {k: _err(pred[mask & (data.kind == k)], data.y_ms[mask & (data.kind == k)]) for k in kinds}

    agg = ("ttft", "tpot")
    both = sil & aic_ok
    rows = [("AIC (raw, serving model)", errs(aic, both, agg)), ("regression, leave-one-model-out", errs(lomo, both, agg)),
            ("regression, leave-one-system-out", errs(loso, both, agg)),
            ("aic-distilled (no measurements)", errs(distilled, both, agg))][: 4 if args.distilled_on_silicon else 3]  # fmt: skip
    md += _table("silicon_sample.csv, rows both AIC and the regression estimate", agg, rows)
    out["silicon_common"] = {n: e for n, e in rows}
    only = sil & ~aic_ok
    rows = [("regression, leave-one-model-out", errs(lomo, only, agg)),
            ("regression, leave-one-system-out", errs(loso, only, agg)),
            ("aic-distilled (no measurements)", errs(distilled, only, agg))][: 3 if args.distilled_on_silicon else 2]  # fmt: skip
    md += _table("silicon_sample.csv, rows AIC cannot estimate", agg, rows)
    out["silicon_aic_cannot"] = {n: e for n, e in rows}
    # ---- GPU runner -------------------------------------------------------------------------
    phases = ("prefill", "decode")
    engine = extra["engine"]
    loeo = np.full(len(data), np.nan)
    for e in np.unique(engine[gpu]):
        test = gpu & (engine == e)
        from estimator.sources.regression import PerfRegressor

        reg = PerfRegressor(residual=False).fit(data.subset(~test))
        loeo[test] = predict_rows(reg, data.subset(test))
    rows = [("AIC (raw)", errs(aic, gpu, phases)), ("regression, leave-one-model-out", errs(lomo, gpu, phases)),
            ("regression, leave-one-system-out", errs(loso, gpu, phases)),
            ("regression, leave-one-engine-out (TP1 <-> TP2)", errs(loeo, gpu, phases)),
            ("aic-distilled (no measurements)", errs(distilled, gpu, phases))]  # fmt: skip
    md += _table("GPU runner (every GPU-runner record in models/measurements/: docs/calibration_heldout.md lists them)",
                 phases, rows)  # fmt: skip
    out["gpu_runner"] = {n: e for n, e in rows}
    # ---- design comparison on AIC points ----------------------------------------------------
    if not args.skip_variants:
        path = cache / "aic_rows.npz"
        if path.exists():
            adata, _ = _load_set(path)
        else:
            adata, _ = aic_rows(DISTILL_STACKS)
            cache.mkdir(parents=True, exist_ok=True)
            _save_set(path, adata, {})
        variants = {"linear roofline terms": {"residual": False},
                    "boosted trees on log(AIC / roofline)": {"residual": True, "base": "roofline"},
                    "linear terms + boosted residual": {"residual": True}}  # fmt: skip
        rows = design_comparison(adata, variants, cache, args.workers)
        md += _table(f"Designs, leave-one-model-out on AIC's own points ({len(adata)} points, "
                     f"{len(DISTILL_STACKS)} stacks)", phases, rows)  # fmt: skip
        out["designs_on_aic"] = {n: e for n, e in rows}
    out["meta"]["seconds"] = round(time.perf_counter() - t0, 1)
    md.append(f"Generated by `python benchmarks/regression_accuracy.py` on {out['meta']['machine']} "
              f"({out['meta']['date']}, {out['meta']['seconds']} s).")  # fmt: skip
    text = "\n".join(md) + "\n"
    print(text)
    (ROOT / "benchmarks/results/regression_accuracy.json").write_text(json.dumps(out, indent=2) + "\n")
    write_section(ROOT / "docs/regression.md", "accuracy", text)


def write_section(path: Path, name: str, text: str) -> None:
    """Replace the generated block between <!-- NAME:start --> and <!-- NAME:end --> (appended if absent)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    doc = path.read_text() if path.exists() else ""
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in doc and end in doc:
        doc = doc[: doc.index(start)] + block + doc[doc.index(end) + len(end) :]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    path.write_text(doc)


if __name__ == "__main__":
    main()
