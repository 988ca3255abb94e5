"""Decision regret on AIC's silicon_sample.csv: which deployment would each rule pick, and was it right?

Scenario (stated in ``docs/decision_regret.md``): a decision group is one model/system/backend/quantisation
at one ISL/OSL; its options are the measured (engine, concurrency) rows of the group. Several SLAs per
group come from the measured spread (TTFT and TPOT targets at quantiles of the options' measured values).
Each rule picks the option with the highest predicted output tokens/s/GPU that it believes meets the SLA:

- ``raw``: AIC through our serving model, point estimate (zero-width band);
- ``k3-point``: a k = 3 calibration (3 measured rows of every engine of the family), point estimate;
- ``k3-conf<L>``: the same calibration, option certified when P(TTFT <= T and TPOT <= P) >= L, estimated
  from joint draws of the calibration's posterior (``Correction.sample``: one parameter vector per draw moves
  the TTFT and TPOT of an option together; ``estimator/confidence.py``'s ``prob_all_met``); when none is
  certified, the most probable option;
- ``k3-conf<L>/ev``: the same certification; when none is certified, the option of highest expected usable
  throughput, P(meets) x predicted tokens/s/GPU (flagged uncertified either way);
- ``k3-conf<L>/product``: the previous rule, P(TTFT <= T) * P(TPOT <= P) from the 90 % bands (independent).

Every calibration's bands take the tail shape of the held-out errors of the *other* families
(``silicon_calibration.tails_without``, a Student-t over the standardised errors at k = 1-4), as
``validate`` takes the bundled one; ``--gaussian`` keeps the Gaussian bands of the previous version.

Scored on silicon: a pick that misses the SLA has regret 1 (it is not a usable deployment); otherwise
regret = 1 - its measured tokens/s/GPU / the best measured tokens/s/GPU among options meeting the SLA.
The training rows are never options. Rows are deduplicated first (``validate/silicon.py``).

A second protocol, *continuous concurrency* (``benchmarks/regret_continuous.py``), lets each rule set the
concurrency of an engine to any grid value in its measured range at the group's ISL/OSL: predictions at c
come from the serving model at c (through the same calibration and draws), the truth at c from the log-log
interpolation of the engine's measured (test) rows; ``--protocol measured`` skips it.

    python benchmarks/decision_regret.py [--splits 3] [--max-families N] [--protocol both|measured]

Reuses the AIC terms cache of ``benchmarks/silicon_calibration.py`` (``out/silicon_calibration/targets.json``)
and writes ``benchmarks/results/decision_regret.json`` (the tables) and ``out/decision_regret/picks.csv`` (every
pick, ~5 MB, not committed; ``picks_continuous.csv`` for the second protocol, whose serving-model terms are
cached in ``out/decision_regret/grid_terms.json``); prints the tables.
"""

from __future__ import annotations

import argparse
import collections
import csv
import importlib.util
import itertools
import json
import logging
import math
import random
import re
import sys
import time
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from estimator.calibration import Correction, Observation
from estimator.calibration_fit import Prior, fit
from estimator.confidence import NUM_DRAWS, prob_all_met, prob_within


def _silicon_benchmark():
    """benchmarks/silicon_calibration.py as a module (AIC terms cache, raw estimate, leave-family-out prior)."""
    spec = importlib.util.spec_from_file_location(
        "silicon_calibration", ROOT / "benchmarks" / "silicon_calibration.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


SC = _silicon_benchmark()
sys.path.insert(0, str(ROOT / "benchmarks"))
import regret_continuous as RC

SLA_QUANTILES = (0.3, 0.6, 0.9)  # TTFT and TPOT targets at these quantiles of the group's measured values
LEVELS = (0.5, 0.8, 0.9, 0.95)
EV_LEVELS = (0.8, 0.9)  # levels also scored with the expected-throughput fallback
RELIABILITY: list[tuple[float, bool]] = []  # (joint P(meets) at k = 3, met on silicon) of every option x SLA
RELIABILITY_PRODUCT: list[tuple[float, bool]] = []  # the same with P(meets) as the product of the bands' P
DEPENDENCE: list[tuple[float, float, float]] = []  # per option: posterior corr of log TTFT/TPOT, log errors


# ---- the calibration API: used here and nowhere else in this script ----------------------------------
TAIL_KS = [1, 2, 3, 4]


def observation(d: dict) -> Observation:
    """One cached measured value with its source terms (``targets.json`` of silicon_calibration.py)."""
    return Observation.from_dict(d)


def calibrated_predictions(
    train: list[Observation], test: list[Observation], prior: dict, seed: str,
    tails: dict[str, tuple[float, float]] | None = None,
) -> tuple[list[tuple[float, float, float]], np.ndarray, Correction]:
    """(point, low, high) ms, 90 % band, of each test value after calibrating on ``train`` with ``prior``
    (and the predictive tail shape ``tails``), ``NUM_DRAWS`` joint draws of all test values from the
    calibration's posterior (rows: draws), and the calibration itself."""
    corr = fit(train, replace(Prior().updated(prior), tails=dict(tails or {})))
    return (*predictions(corr, test, seed), corr)


def predictions(
    corr: Correction, obs: list[Observation], seed: str
) -> tuple[list[tuple[float, float, float]], np.ndarray]:
    """(point, low, high) ms, 90 % band, of each value and ``NUM_DRAWS`` joint draws of them all."""
    bands = [(b.point_ms, b.low_ms, b.high_ms) for b in corr.bands(obs)]
    rng = np.random.default_rng(zlib.crc32(seed.encode()))
    return bands, corr.sample(obs, NUM_DRAWS, rng).astype(np.float32)


def num_gpus(engine: str) -> int:
    return int(re.search(r"(\d+)$", engine).group(1))  # TP4, TEP8, DEP8: n GPUs


def thpt_per_gpu(engine: str, concurrency: float, osl: float, ttft_ms: float, tpot_ms: float) -> float:
    """Output tokens/s/GPU of closed-loop clients: each request takes TTFT + (OSL - 1) TPOT."""
    return concurrency * osl * 1000.0 / (ttft_ms + (osl - 1) * tpot_ms) / num_gpus(engine)


def option_record(row: dict, pred: dict[str, tuple[float, float, float]], draws: np.ndarray) -> dict:
    meas = {t["kind"]: t["measured_ms"] for t in row["targets"]}
    raw = {t["kind"]: SC.raw_ms(observation(t)) for t in row["targets"]}
    e, c, osl = row["engine"], row["concurrency"], row["osl"]
    return {
        "engine": e, "concurrency": c,
        "meas_ttft": meas["ttft"], "meas_tpot": meas["tpot"],
        "meas_thpt": thpt_per_gpu(e, c, osl, meas["ttft"], meas["tpot"]),
        "raw_ttft": raw["ttft"], "raw_tpot": raw["tpot"], "raw_thpt": thpt_per_gpu(e, c, osl, raw["ttft"], raw["tpot"]),
        "cal_ttft": pred["ttft"], "cal_tpot": pred["tpot"],
        "cal_thpt": thpt_per_gpu(e, c, osl, pred["ttft"][0], pred["tpot"][0]),
        "cal_draws": draws,  # (NUM_DRAWS, 2): joint draws of (TTFT, TPOT)
    }  # fmt: skip


def p_meets(o: dict, ttft_t: float, tpot_t: float, joint: bool = True) -> float:
    """P(TTFT <= target and TPOT <= target) from the calibration: joint draws (default), or the product of
    the two probabilities read from the 90 % bands (``joint`` False: the independent reading)."""
    if joint:
        return prob_all_met(o["cal_draws"], [ttft_t, tpot_t])
    return float(prob_within(ttft_t, *o["cal_ttft"][1:]) * prob_within(tpot_t, *o["cal_tpot"][1:]))


def pick(
    options: list[dict], rule: str, ttft_t: float, tpot_t: float, joint_p: list[float] | None = None
) -> tuple[int, bool, float]:
    """(index of the pick, whether the rule certified it, the rule's P(meeting the SLA) for it).

    ``joint_p``: each option's ``p_meets(o, ttft_t, tpot_t)`` when the caller has computed it already."""
    base, _, variant = rule.partition("/")
    if base == "raw":
        prob = [float(o["raw_ttft"] <= ttft_t and o["raw_tpot"] <= tpot_t) for o in options]
        thpt = [o["raw_thpt"] for o in options]
        level = 1.0
        closeness = [max(o["raw_ttft"] / ttft_t, o["raw_tpot"] / tpot_t) for o in options]
    else:
        thpt = [o["cal_thpt"] for o in options]
        closeness = [max(o["cal_ttft"][0] / ttft_t, o["cal_tpot"][0] / tpot_t) for o in options]
        if base == "k3-point":
            prob = [float(o["cal_ttft"][0] <= ttft_t and o["cal_tpot"][0] <= tpot_t) for o in options]
            level = 1.0
        else:
            if joint_p is not None and variant != "product":
                prob = list(joint_p)
            else:
                prob = [p_meets(o, ttft_t, tpot_t, joint=variant != "product") for o in options]
            if base == "k3-expected":  # the most usable throughput on average: P(meets) x tokens/s/GPU
                i = int(np.argmax([p * t for p, t in zip(prob, thpt, strict=True)]))
                return i, True, prob[i]
            level = float(base.removeprefix("k3-conf"))
    ok = [i for i, p in enumerate(prob) if p >= level]
    if ok:
        i = max(ok, key=lambda i: thpt[i])
        return i, True, prob[i]
    # nothing certified: the point rules take the closest to the SLA (Dynamo's fallback), the probability
    # rules the most probable option, or ("/ev") the highest expected usable throughput; flagged uncertified
    if level == 1.0:
        i = int(np.argmin(closeness))
    elif variant == "ev":
        i = int(np.argmax([p * t for p, t in zip(prob, thpt, strict=True)]))
    else:
        i = int(np.argmax(prob))
    return i, False, prob[i]


def decisions(
    rows: list[dict],
    splits: int,
    min_rows: int,
    seed: int,
    max_families: int | None,
    grid: dict[str, list[dict] | None] | None = None,
    per_doubling: int = RC.PER_DOUBLING,
    gaussian: bool = False,
) -> tuple[list[dict], list[dict]]:
    """Decisions of the measured-options protocol, and of the continuous-concurrency one when ``grid`` (the
    serving-model observations at the grid concurrencies, ``regret_continuous.grid_terms``) is given."""
    fams: dict[str, list[dict]] = collections.defaultdict(list)
    for r in rows:
        fams[r["family"]].append(r)
    fam_thetas = SC._family_thetas(rows)
    # the tail shape of each family's bands, from the other families' held-out errors at k = 1-4 (the
    # Gaussian first pass of silicon_calibration.py, same splits: what the bundled shape is learned from)
    z = {} if gaussian else SC.standardised_errors(
        SC.evaluate(rows, TAIL_KS, splits, min_rows, seed, True, Prior().cv_folds)
    )
    names = sorted(fams)
    if max_families and len(names) > max_families:
        names = sorted(random.Random(seed).sample(names, max_families))
    rules = ("raw", "k3-point", *(f"k3-conf{lv:g}" for lv in LEVELS), *(f"k3-conf{lv:g}/ev" for lv in EV_LEVELS),
             "k3-conf0.9/product", "k3-expected")  # fmt: skip
    out, cont = [], []
    for fam in names:
        by_engine: dict[str, list[dict]] = collections.defaultdict(list)
        for r in fams[fam]:
            by_engine[r["engine"]].append(r)
        by_engine = {e: v for e, v in by_engine.items() if len(v) >= min_rows}
        if not by_engine:
            continue
        prior = SC._prior_without(fam_thetas, fam)
        for split in range(splits):
            rng = random.Random(f"{seed}|{fam}|3|{split}")  # the k = 3 split of silicon_calibration.py
            train, test = [], []
            for _, v in sorted(by_engine.items()):
                idx = list(range(len(v)))
                rng.shuffle(idx)
                train += [v[i] for i in idx[:3]]
                test += [v[i] for i in idx[3:]]
            flat = [observation(t) for r in test for t in r["targets"]]
            train_obs = [observation(t) for r in train for t in r["targets"]]
            tails = SC.tails_without(z, fam) if z else None
            seeded = f"{seed}|{fam}|{split}"
            band_list, draws, corr = calibrated_predictions(train_obs, flat, prior, seeded, tails)
            bands, col = iter(band_list), 0
            options_by_group: dict[tuple, list[dict]] = collections.defaultdict(list)
            for r in test:
                pred = {t["kind"]: next(bands) for t in r["targets"]}
                kinds = [t["kind"] for t in r["targets"]]
                cols = [col + kinds.index("ttft"), col + kinds.index("tpot")]
                col += len(kinds)
                o = option_record(r, pred, draws[:, cols])
                options_by_group[(r["isl"], r["osl"])].append(o)
                logs = np.log(o["cal_draws"].astype(float))
                DEPENDENCE.append((float(np.corrcoef(logs.T)[0, 1]), math.log(o["meas_ttft"] / pred["ttft"][0]),
                                   math.log(o["meas_tpot"] / pred["tpot"][0])))  # fmt: skip
            for (isl, osl), options in sorted(options_by_group.items()):
                if len(options) < 3:
                    continue
                out += score_group(fam, split, isl, osl, options, rules)
            if grid is not None:
                cont += continuous_family(fam, split, test, corr, grid, f"{seed}|{fam}|{split}", per_doubling)
    return out, cont


# ---- the continuous-concurrency protocol (benchmarks/regret_continuous.py) ---------------------------
CONTINUOUS_RULES = ("raw", "k3-point", *(f"k3-conf{lv:g}" for lv in LEVELS), "k3-expected")
RELIABILITY_CONTINUOUS: list[tuple[float, bool]] = []  # (joint P, meets on interpolated silicon), grid x SLA
CONT_HALF_WIDTH: list[
    tuple[float, float]
] = []  # per grid option: 90 % band half-width / point, TTFT and TPOT
CONT_SLOPES: list[
    tuple[float, float]
] = []  # per measured segment of a curve: d log TTFT, d log TPOT / d log c


def continuous_family(
    fam: str,
    split: int,
    test: list[dict],
    corr: Correction,
    grid: dict[str, list[dict] | None],
    seed: str,
    per_doubling: int = RC.PER_DOUBLING,
) -> list[dict]:
    """Every decision of one family and split: per ISL/OSL, the options are (curve, c) for every grid
    concurrency c in each curve's measured range (test rows only), predicted at c and scored on the
    log-log interpolation of the curve's measured rows."""
    by_group: dict[tuple[int, int], list[RC.Curve]] = collections.defaultdict(list)
    for cv in RC.curves_of(test):
        by_group[(cv.isl, cv.osl)].append(cv)
    out = []
    for (isl, osl), curves in sorted(by_group.items()):
        if sum(len(cv.concurrency) for cv in curves) < 3:
            continue
        obs, meta = [], []
        for cv in curves:
            lc = np.diff(np.log(cv.concurrency))
            CONT_SLOPES.extend(
                zip(np.diff(np.log(cv.ttft_ms)) / lc, np.diff(np.log(cv.tpot_ms)) / lc, strict=True)
            )
            cs = [int(c) for c in RC.concurrency_grid(cv.concurrency[0], cv.concurrency[-1], per_doubling, cv.concurrency)
                  if grid.get(RC.grid_key(fam, cv.engine, isl, osl, int(c)))]  # fmt: skip
            tt, tp = cv.truth(cs)
            for c, a, b in zip(cs, tt, tp, strict=True):
                o_t, o_p = (observation(d) for d in grid[RC.grid_key(fam, cv.engine, isl, osl, c)])
                obs += [o_t, o_p]
                meta.append((cv, c, float(a), float(b)))
        bands, draws = predictions(corr, obs, f"{seed}|{isl}|{osl}|continuous")
        options = []
        for j, (cv, c, a, b) in enumerate(meta):
            e = cv.engine
            raw_t, raw_p = SC.raw_ms(obs[2 * j]), SC.raw_ms(obs[2 * j + 1])
            pt, pp = bands[2 * j], bands[2 * j + 1]
            CONT_HALF_WIDTH.append(((pt[2] - pt[1]) / 2 / pt[0], (pp[2] - pp[1]) / 2 / pp[0]))
            options.append({
                "engine": e, "version": cv.version, "concurrency": c, "measured_point": c in cv.concurrency,
                "meas_ttft": a, "meas_tpot": b, "meas_thpt": thpt_per_gpu(e, c, osl, a, b),
                "raw_ttft": raw_t, "raw_tpot": raw_p, "raw_thpt": thpt_per_gpu(e, c, osl, raw_t, raw_p),
                "cal_ttft": pt, "cal_tpot": pp, "cal_thpt": thpt_per_gpu(e, c, osl, pt[0], pp[0]),
                "cal_draws": draws[:, [2 * j, 2 * j + 1]],
            })  # fmt: skip
        mt = np.concatenate([cv.ttft_ms for cv in curves])
        mp = np.concatenate([cv.tpot_ms for cv in curves])
        out += score_continuous_group(fam, split, isl, osl, options, mt, mp)
    return out


def score_continuous_group(
    fam: str, split: int, isl: int, osl: int, options: list[dict], mt: np.ndarray, mp: np.ndarray
) -> list[dict]:
    """Each SLA (quantiles of the curves' measured points) and rule, over the whole grid ("grid") and over
    the measured concurrencies of the same curves ("measured", the same decisions with the old options)."""
    out, seen = [], set()
    subsets = {"grid": list(range(len(options))),
               "measured": [i for i, o in enumerate(options) if o["measured_point"]]}  # fmt: skip
    for qt in SLA_QUANTILES:
        for qp in SLA_QUANTILES:
            ttft_t, tpot_t = float(np.quantile(mt, qt)), float(np.quantile(mp, qp))
            meets = [o["meas_ttft"] <= ttft_t and o["meas_tpot"] <= tpot_t for o in options]
            if not any(meets) or (ttft_t, tpot_t) in seen:  # the measured points are grid points
                continue
            seen.add((ttft_t, tpot_t))
            joint = [p_meets(o, ttft_t, tpot_t) for o in options]  # prob_all_met on the joint draws
            RELIABILITY_CONTINUOUS.extend(zip(joint, meets, strict=True))
            for name, idx in subsets.items():
                if not any(meets[i] for i in idx):  # non-monotone rows: only an interpolated point meets it
                    continue
                sub = [options[i] for i in idx]
                best = max(options[i]["meas_thpt"] for i in idx if meets[i])
                for rule in CONTINUOUS_RULES:
                    k, certified, p = pick(sub, rule, ttft_t, tpot_t, [joint[i] for i in idx])
                    i = idx[k]
                    o = options[i]
                    out.append({"family": fam, "split": split, "isl": isl, "osl": osl, "options": name,
                                "n_options": len(idx), "n_feasible": sum(meets[i] for i in idx),
                                "sla_ttft_ms": ttft_t, "sla_tpot_ms": tpot_t, "rule": rule,
                                "engine": o["engine"], "version": o["version"], "concurrency": o["concurrency"],
                                "measured_point": o["measured_point"], "certified": certified, "p_meets": p,
                                "meets_on_silicon": meets[i],
                                "excess": max(o["meas_ttft"] / ttft_t, o["meas_tpot"] / tpot_t) - 1.0,
                                "regret": (1.0 - o["meas_thpt"] / best) if meets[i] else 1.0,
                                "thpt_loss_if_met": (1.0 - o["meas_thpt"] / best) if meets[i] else None})  # fmt: skip
    return out


def score_group(
    fam: str, split: int, isl: int, osl: int, options: list[dict], rules: tuple[str, ...]
) -> list[dict]:
    out = []
    mt = np.array([o["meas_ttft"] for o in options])
    mp = np.array([o["meas_tpot"] for o in options])
    seen = set()
    for qt in SLA_QUANTILES:
        for qp in SLA_QUANTILES:
            ttft_t, tpot_t = float(np.quantile(mt, qt)), float(np.quantile(mp, qp))
            feasible = [
                i for i, o in enumerate(options) if o["meas_ttft"] <= ttft_t and o["meas_tpot"] <= tpot_t
            ]
            if not feasible or (ttft_t, tpot_t) in seen:
                continue
            seen.add((ttft_t, tpot_t))
            best = max(options[i]["meas_thpt"] for i in feasible)
            RELIABILITY.extend((p_meets(o, ttft_t, tpot_t), i in feasible) for i, o in enumerate(options))
            RELIABILITY_PRODUCT.extend(
                (p_meets(o, ttft_t, tpot_t, joint=False), i in feasible) for i, o in enumerate(options)
            )
            for rule in rules:
                i, certified, p = pick(options, rule, ttft_t, tpot_t)
                o = options[i]
                meets = i in feasible
                out.append({"family": fam, "split": split, "isl": isl, "osl": osl, "n_options": len(options),
                            "n_feasible": len(feasible), "sla_ttft_ms": ttft_t, "sla_tpot_ms": tpot_t,
                            "rule": rule, "engine": o["engine"], "concurrency": o["concurrency"],
                            "certified": certified, "p_meets": p, "meets_on_silicon": meets,
                            "regret": (1.0 - o["meas_thpt"] / best) if meets else 1.0,
                            "thpt_loss_if_met": (1.0 - o["meas_thpt"] / best) if meets else None})  # fmt: skip
    return out


def summarise(results: list[dict]) -> list[dict]:
    table = []
    for rule in dict.fromkeys(r["rule"] for r in results):
        rs = [r for r in results if r["rule"] == rule]
        regret = np.array([r["regret"] for r in rs])
        loss = np.array([r["thpt_loss_if_met"] for r in rs if r["thpt_loss_if_met"] is not None])
        table.append({
            "rule": rule, "decisions": len(rs),
            "miss_rate": float(np.mean([not r["meets_on_silicon"] for r in rs])),
            "mean_regret": float(regret.mean()), "median_regret": float(np.median(regret)),
            "median_loss_when_met": float(np.median(loss)) if loss.size else None,
            "mean_loss_when_met": float(loss.mean()) if loss.size else None,
            "uncertified_rate": float(np.mean([not r["certified"] for r in rs])),
            "miss_rate_certified": float(np.mean([not r["meets_on_silicon"] for r in rs if r["certified"]] or [0.0])),
        })  # fmt: skip
    return table


def dependence() -> dict:
    """How much TTFT and TPOT of one option move together: in the posterior draws and in the actual errors."""
    from scipy.stats import spearmanr

    d = np.array(DEPENDENCE)
    q = np.quantile(d[:, 0], [0.1, 0.5, 0.9])
    return {"options": len(d), "posterior_corr_p10_median_p90": [float(x) for x in q],
            "error_corr_pearson": float(np.corrcoef(d[:, 1], d[:, 2])[0, 1]),
            "error_corr_spearman": float(spearmanr(d[:, 1], d[:, 2]).statistic)}  # fmt: skip


def by_certification(
    results: list[dict], rules: tuple[str, ...] = ("k3-conf0.8", "k3-conf0.9", "k3-conf0.9/ev")
) -> list[dict]:
    """Each probability rule's certified and fallback decisions apart, and the point rule on the same ones."""
    key = ("family", "split", "isl", "osl", "sla_ttft_ms", "sla_tpot_ms")
    point = {tuple(r[k] for k in key): r for r in results if r["rule"] == "k3-point"}
    out = []
    for rule in rules:
        for cert in (True, False):
            rs = [r for r in results if r["rule"] == rule and r["certified"] is cert]
            if not rs:
                continue
            pt = [point[tuple(r[k] for k in key)] for r in rs]
            out.append({"rule": rule, "certified": cert, "decisions": len(rs),
                        "miss_rate": float(np.mean([not r["meets_on_silicon"] for r in rs])),
                        "mean_regret": float(np.mean([r["regret"] for r in rs])),
                        "point_miss_rate": float(np.mean([not r["meets_on_silicon"] for r in pt])),
                        "point_mean_regret": float(np.mean([r["regret"] for r in pt]))})  # fmt: skip
    return out


def reliability(
    pairs: list[tuple[float, bool]], bins: tuple[float, ...] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.97, 1.0001)
) -> list[dict]:
    """How often options met the SLA on silicon, per bin of the probability the calibration gave them."""
    p = np.array([x for x, _ in pairs])
    met = np.array([y for _, y in pairs], dtype=float)
    out = []
    for lo, hi in itertools.pairwise(bins):
        m = (p >= lo) & (p < hi)
        if m.any():
            out.append({"p_low": lo, "p_high": min(hi, 1.0), "options": int(m.sum()),
                        "mean_p": float(p[m].mean()), "met_on_silicon": float(met[m].mean())})  # fmt: skip
    return out


def print_table(table: list[dict]) -> None:
    print("| rule | decisions | SLA missed on silicon | mean regret | median regret | mean loss when met "
          "| nothing certified | missed among certified |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for t in table:
        print(f"| {t['rule']} | {t['decisions']} | {t['miss_rate']:.1%} | {t['mean_regret']:.1%} | "
              f"{t['median_regret']:.1%} | {t['mean_loss_when_met']:.1%} | {t['uncertified_rate']:.1%} | "
              f"{t['miss_rate_certified']:.1%} |")  # fmt: skip


def usable_rows(rows: list[dict], min_rows: int) -> list[dict]:
    """Rows of the engines that take part (>= ``min_rows`` rows in their family)."""
    n = collections.Counter((r["family"], r["engine"]) for r in rows)
    return [r for r in rows if n[(r["family"], r["engine"])] >= min_rows]


def continuous_summary(cont: list[dict], per_doubling: int) -> dict:
    """Tables of the continuous protocol: over the grid, and over the measured points of the same curves."""
    out: dict = {}
    for name in ("grid", "measured"):
        rs = [r for r in cont if r["options"] == name]
        out[name] = {"decision_groups": len({(r["family"], r["isl"], r["osl"]) for r in rs}),
                     "families": len({r["family"] for r in rs}), "table": summarise(rs),
                     "by_certification": by_certification(rs, ("k3-conf0.8", "k3-conf0.9"))}  # fmt: skip
    grid_rs = [r for r in cont if r["options"] == "grid"]
    out["grid"]["mean_options_per_decision"] = float(np.mean([r["n_options"] for r in grid_rs]))
    out["grid"]["picks_at_measured_concurrency"] = {
        rule: float(np.mean([r["measured_point"] for r in grid_rs if r["rule"] == rule]))
        for rule in CONTINUOUS_RULES
    }
    out["grid"]["miss_rate_beyond_5pct"] = {  # a miss by a hair counts as a total loss in the regret
        rule: float(np.mean([r["excess"] > 0.05 for r in grid_rs if r["rule"] == rule]))
        for rule in CONTINUOUS_RULES
    }
    point_miss = [r["excess"] for r in grid_rs if r["rule"] == "k3-point" and not r["meets_on_silicon"]]
    out["grid"]["k3_point_miss_excess_median"] = float(np.median(point_miss)) if point_miss else None
    key = ("family", "split", "isl", "osl", "sla_ttft_ms", "sla_tpot_ms")
    point = {tuple(r[k] for k in key): r for r in grid_rs if r["rule"] == "k3-point"}
    ratio = [r["concurrency"] / p["concurrency"] for r in grid_rs if r["rule"] == "k3-conf0.9" and r["certified"]
             for p in [point[tuple(r[k] for k in key)]] if (p["engine"], p["version"]) == (r["engine"], r["version"])]  # fmt: skip
    out["grid"]["conf09_certified_same_curve_as_point"] = {
        "decisions": len(ratio), "concurrency_ratio_p25_median_p75": [float(x) for x in np.quantile(ratio, [0.25, 0.5, 0.75])]
    }  # fmt: skip
    hw, sl = np.array(CONT_HALF_WIDTH), np.array(CONT_SLOPES)
    out["grid"]["band_half_width_median"] = {
        "ttft": float(np.median(hw[:, 0])),
        "tpot": float(np.median(hw[:, 1])),
    }
    out["loglog_slope_p25_median_p75"] = {
        kind: [float(x) for x in np.quantile(sl[:, i], [0.25, 0.5, 0.75])]
        for i, kind in enumerate(("ttft", "tpot"))
    }
    out["reliability"] = reliability(RELIABILITY_CONTINUOUS)
    out["per_doubling"] = per_doubling
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets-cache", default=str(ROOT / "out" / "silicon_calibration" / "targets.json"))
    ap.add_argument("--out", default=str(ROOT / "out" / "decision_regret"), help="where picks.csv goes")
    ap.add_argument("--summary", default=str(ROOT / "benchmarks" / "results" / "decision_regret.json"))
    ap.add_argument("--splits", type=int, default=3)
    ap.add_argument(
        "--min-rows", type=int, default=5, help="engines with fewer rows are left out (3 train + 2)"
    )
    ap.add_argument("--max-families", type=int, default=None, help="subsample families (seeded) to save time")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--protocol",
        choices=("both", "measured"),
        default="both",
        help="measured: the measured-options protocol only (no serving-model terms at other concurrencies)",
    )
    ap.add_argument(
        "--grid-cache",
        default=str(ROOT / "out" / "decision_regret" / "grid_terms.json"),
        help="serving-model terms at the continuous protocol's grid concurrencies (computed once)",
    )
    ap.add_argument(
        "--per-doubling",
        type=int,
        default=RC.PER_DOUBLING,
        help=f"grid points per factor 2 of concurrency, a divisor of {RC.PER_DOUBLING} (the cached grid)",
    )
    ap.add_argument(
        "--gaussian", action="store_true", help="Gaussian bands (no tail shape learned from other families)"
    )
    args = ap.parse_args(argv)
    if args.per_doubling < 1 or RC.PER_DOUBLING % args.per_doubling:
        print(
            f"error: --per-doubling must divide {RC.PER_DOUBLING}, got {args.per_doubling}", file=sys.stderr
        )
        return 2
    logging.basicConfig(level=logging.WARNING)
    t0 = time.time()
    rows, _ = SC.build_targets(Path(args.targets_cache))
    grid = None
    if args.protocol == "both":
        rows_used = usable_rows(rows, args.min_rows)
        grid = RC.grid_terms(rows_used, Path(args.grid_cache), SC.TARGETS_FORMAT)
    t1 = time.time()
    results, cont = decisions(
        rows, args.splits, args.min_rows, args.seed, args.max_families, grid, args.per_doubling, args.gaussian
    )
    table = summarise(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "picks.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(results[0]))
        w.writeheader()
        w.writerows(results)
    groups = {(r["family"], r["isl"], r["osl"]) for r in results}
    summary = {"decision_groups": len(groups), "families": len({r["family"] for r in results}),
               "decisions_per_rule": table[0]["decisions"], "splits": args.splits, "min_rows": args.min_rows,
               "max_families": args.max_families, "sla_quantiles": SLA_QUANTILES, "table": table, "reliability": reliability(RELIABILITY),
               "reliability_product": reliability(RELIABILITY_PRODUCT), "dependence": dependence(),
               "by_certification": by_certification(results),
               "continuous": continuous_summary(cont, args.per_doubling) if cont else None,
               "seconds": {"aic_terms": round(t1 - t0, 1), "decisions": round(time.time() - t1, 1)},
               "command": "python benchmarks/decision_regret.py " + " ".join(argv or sys.argv[1:])}  # fmt: skip
    Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
    Path(args.summary).write_text(json.dumps(summary, indent=1))
    print(f"{len(groups)} decision groups (model/system/backend/quant x ISL/OSL) in {summary['families']} families, "
          f"{args.splits} splits, {table[0]['decisions']} decisions per rule")  # fmt: skip
    print_table(table)
    for key, what in (("reliability", "joint draws"), ("reliability_product", "product of the bands' P")):
        print(f"\nreliability of P(meets SLA) at k = 3 ({what}), every option x SLA:")
        print("| P | options | mean P | met on silicon |")
        print("|---|---|---|---|")
        for b in summary[key]:
            print(f"| {b['p_low']:.2f}-{b['p_high']:.2f} | {b['options']} | {b['mean_p']:.2f} | "
                  f"{b['met_on_silicon']:.2f} |")  # fmt: skip
    print("\ncertified and fallback decisions apart, with the point rule on the same decisions:")
    print("| rule | picks | decisions | SLA missed | mean regret | k3-point missed | k3-point mean regret |")
    print("|---|---|---|---|---|---|---|")
    for b in summary["by_certification"]:
        print(f"| {b['rule']} | {'certified' if b['certified'] else 'fallback'} | {b['decisions']} | "
              f"{b['miss_rate']:.1%} | {b['mean_regret']:.1%} | {b['point_miss_rate']:.1%} | {b['point_mean_regret']:.1%} |")  # fmt: skip
    if cont:
        cs = summary["continuous"]
        for name, what in (
            ("grid", f"continuous concurrency ({args.per_doubling} grid points per factor 2)"),
            ("measured", "the same curves, measured concurrencies only"),
        ):
            print(f"\n{what}: {cs[name]['decision_groups']} decision groups in {cs[name]['families']} families, "
                  f"{cs[name]['table'][0]['decisions']} decisions per rule")  # fmt: skip
            print_table(cs[name]["table"])
        print("grid picks at a measured concurrency / missing the SLA by more than 5 %: " + ", ".join(
            f"{rule} {cs['grid']['picks_at_measured_concurrency'][rule]:.0%} / {cs['grid']['miss_rate_beyond_5pct'][rule]:.1%}"
            for rule in CONTINUOUS_RULES))  # fmt: skip
        g, sl = cs["grid"], cs["loglog_slope_p25_median_p75"]
        q = g["conf09_certified_same_curve_as_point"]["concurrency_ratio_p25_median_p75"]
        print(f"k3-point misses exceed the target by a median {g['k3_point_miss_excess_median']:.1%}; "
              f"certified k3-conf0.9 picks on the point pick's curve ({g['conf09_certified_same_curve_as_point']['decisions']}): "
              f"concurrency {q[1]:.2f}x the point pick's (25-75 %: {q[0]:.2f}-{q[2]:.2f}); median 90 % band half-width "
              f"TTFT ±{g['band_half_width_median']['ttft']:.0%}, TPOT ±{g['band_half_width_median']['tpot']:.0%}; "
              f"measured log-log slope vs concurrency (25/50/75 %): TTFT {sl['ttft'][0]:.2f}/{sl['ttft'][1]:.2f}/{sl['ttft'][2]:.2f}, "
              f"TPOT {sl['tpot'][0]:.2f}/{sl['tpot'][1]:.2f}/{sl['tpot'][2]:.2f}")  # fmt: skip
        print(
            "\ncontinuous: certified and fallback decisions apart, with the point rule on the same decisions:"
        )
        for b in cs["grid"]["by_certification"]:
            print(f"| {b['rule']} | {'certified' if b['certified'] else 'fallback'} | {b['decisions']} | "
                  f"{b['miss_rate']:.1%} | {b['mean_regret']:.1%} | {b['point_miss_rate']:.1%} | "
                  f"{b['point_mean_regret']:.1%} |")  # fmt: skip
        print(
            "\ncontinuous: reliability of P(meets SLA) at k = 3 over grid options x SLA (interpolated silicon):"
        )
        for b in cs["reliability"]:
            print(f"| {b['p_low']:.2f}-{b['p_high']:.2f} | {b['options']} | {b['mean_p']:.2f} | "
                  f"{b['met_on_silicon']:.2f} |")  # fmt: skip
        with (out / "picks_continuous.csv").open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(cont[0]))
            w.writeheader()
            w.writerows(cont)
    dep = summary["dependence"]
    p10, med, p90 = dep["posterior_corr_p10_median_p90"]
    print(f"\nTTFT and TPOT of one option ({dep['options']} options x splits): posterior corr of the logs "
          f"median {med:.3f} (10-90 %: {p10:.3f} to {p90:.3f}); actual log errors: Pearson "
          f"{dep['error_corr_pearson']:.3f}, Spearman {dep['error_corr_spearman']:.3f}")  # fmt: skip
    print(
        f"AIC terms {t1 - t0:.0f} s, decisions {time.time() - t1:.0f} s; wrote {args.summary} and {out / 'picks.csv'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
