"""Score some stacks with phase evidence frozen before they were measured (a clean out-of-sample test).

``calibration_heldout.py`` learns each stack's prior from the other stacks in ``models/measurements/``;
once a stack is in the evidence file, the priors of later runs have seen it. This script instead takes an
evidence file from before (e.g. from git history) and scores the named stacks' records against it, with the
same splits and scores as ``calibration_heldout.py``. Format-1 files come from before the architecture
class was recorded, when every entry taught every stack: their entries are read as of the scored stack's
class, so the run reproduces what that code did. Prints one table row per stack, split and phase, and the
rows pooled over the stacks.

    git show 0bcee4d:models/calibration_phase_evidence.json > /tmp/evidence_5_stacks.json
    python benchmarks/heldout_frozen_prior.py --evidence /tmp/evidence_5_stacks.json \\
        --model Qwen/Qwen3-0.6B Qwen/Qwen3-30B-A3B
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import calibration_heldout as ch

from estimator.phase_prior import DeploymentEvidence
from estimator.sources.aic import AicSource
from validate.calibrate import is_moe


def load_evidence(path: Path, moe: bool) -> list[DeploymentEvidence]:
    """The file's deployments; those of a format-1 file get the class ``moe`` (they transferred to all); a
    file before format 3 has no ``log_attention`` fit, which then keeps the generic prior."""
    doc = json.loads(path.read_text())
    version = doc.get("format_version")
    if version not in (1, 2, 3):
        raise SystemExit(f"error: {path}: evidence format {version!r} is not 1, 2 or 3")
    entries = [{"moe": moe, **d} if version == 1 else d for d in doc["deployments"]]
    return [DeploymentEvidence.from_dict(d, allow_missing=version < 3) for d in entries]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--evidence", required=True, help="a phase evidence file, e.g. from git history")
    ap.add_argument("--model", nargs="+", required=True, help="the stacks to score, by model id")
    ap.add_argument("--measurements", default=str(ROOT / "models" / "measurements"))
    ap.add_argument("--random-splits", type=int, default=20)
    ap.add_argument("--test-only", default="", help="a glob of record files to score apart (e.g. '*_far_*')")
    args = ap.parse_args(argv)
    # far points (files matching --test-only) are a test set: scored as their own rows, never picked by a
    # split; without --test-only they are left out (the study-grid protocol this table was made for)
    stacks, _, far = ch.load_records(Path(args.measurements), args.test_only or "*_far_*")
    grid = {st: [m for m in rs if m.probe.key not in far] for st, rs in stacks.items()}
    if not args.test_only:
        stacks, far = grid, set()
    chosen = {st: rs for st, rs in stacks.items() if st.model in args.model}
    missing = set(args.model) - {st.model for st in chosen}
    if missing:
        print(f"error: no GPU-runner records of {sorted(missing)} under {args.measurements}", file=sys.stderr)
        return 2
    print("| stack | split | phase | n | held-out median | max | coverage | median half-width | sharpness |")
    print("|---|---|---|---|---|---|---|---|---|")
    pooled: dict[tuple[str, str], list[dict]] = {}
    for stack, records in sorted(chosen.items(), key=lambda kv: str(kv[0])):
        base = AicSource(stack)
        evidence = load_evidence(Path(args.evidence), is_moe(stack))
        pickable = grid[stack]  # a split never measures a far point
        splits = {"planner": ch.score(base, records, ch.planner_pick(stack, base, pickable), evidence, far),
                  "hand-picked": ch.score(base, records, ch.hand_pick(pickable), evidence, far)}  # fmt: skip
        for i in range(args.random_splits):
            rng = random.Random(f"{stack}|{i}")  # the seeds of calibration_heldout.py
            picks = ch.random_pick(pickable, rng)
            splits.setdefault("random", []).extend(ch.score(base, records, picks, evidence, far))
        for name, rows in splits.items():
            for phase in ("prefill", "decode"):
                for is_far in (False, True) if far else (False,):
                    rs = [r for r in rows if r["phase"] == phase and r["far"] == is_far]
                    if not rs:
                        continue
                    label = stack.model.split("/")[-1] + (", far points" if is_far else "")
                    pooled.setdefault((name, phase, is_far), []).extend(rs)
                    _print(label, name, phase, ch.summarise(rs), args.random_splits)
    for (name, phase, is_far), rs in pooled.items():
        label = "**pooled**" + (", far points" if is_far else "")
        _print(label, name, phase, ch.summarise(rs), args.random_splits)
    return 0


def _print(label: str, split: str, phase: str, s: dict, n_random: int) -> None:
    split = split if split != "random" else f"{n_random} random"
    cells = [label, split, phase, str(s["n"]), f"{s['median_pct']:.1f} %", f"{s['max_pct']:.1f} %",
             f"{100 * s['coverage']:.0f} %", f"±{s['median_half_width_pct']:.1f} %", f"{s['sharpness']:.2f}"]
    print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
