"""A performance source corrected by measurements: the base source's terms through a fitted correction.

The correction itself (parameters, posterior, bands) is ``estimator/calibration.py``; this module
only turns the ``PerfSource`` questions into ``Observation`` queries of it, so selection, plots and
artifacts run on a calibrated source unchanged, with the correction's posterior as the band. Measured
KV capacities replace the base source's estimate. Joint draws (``latency_draws``) come from the
correction's posterior (``Correction.sample``): a shared phase scale moves every engine together.
Marginal probabilities (``prob_within``) are the exact CDF of the same predictive (``Predictive``: Student-t
in log), not the lognormal through the band's ends the default reads, which is thinner-tailed.
A calibration file records the full stack (model, system, backend, version, quantisation) and the base
source it was fitted on; loading it on another stack or another base source raises ``CalibrationError``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..calibration import Band, Correction, Observation, unique_keys
from ..candidates import Candidate
from ..confidence import check_targets
from ..errors import CalibrationError
from .base import LatencyQuery, PerfSource, Stack, as_positive_array, group_queries


class CalibratedSource(PerfSource):
    """``base`` corrected by ``correction``; ``kv_tokens`` maps engine names to measured KV capacity."""

    name = "calibrated"
    draws_are_joint: ClassVar[bool] = True

    def __init__(self, base: PerfSource, correction: Correction, kv_tokens: dict[str, int] | None = None):
        super().__init__(base.stack)
        self.base = base
        self.correction = correction
        self.kv_tokens = dict(kv_tokens or {})

    def _prefill(self, candidate: Candidate, isl: Any) -> list[Observation]:
        isl = as_positive_array("isl", isl)
        base = self.base.prefill_ttft_ms(candidate, isl)
        attention = self.base.prefill_attention_ms(candidate, isl)
        return [Observation.prefill(candidate.name, float(p), float(x), float(a))
                for p, x, a in zip(base, isl, attention, strict=True)]  # fmt: skip

    def _decode(self, candidate: Candidate, batch: Any, context: Any) -> list[Observation]:
        b, ctx = np.broadcast_arrays(as_positive_array("batch", batch), as_positive_array("context", context))
        base = self.base.decode_itl_ms(candidate, b, ctx)
        return [Observation.decode(candidate.name, float(d), float(n), float(c))
                for d, n, c in zip(base, b, ctx, strict=True)]  # fmt: skip

    def prefill_ttft_ms(self, candidate: Candidate, isl: Any) -> np.ndarray:
        return np.array([self.correction.predict(o) for o in self._prefill(candidate, isl)])

    def decode_itl_ms(self, candidate: Candidate, batch: Any, context: Any) -> np.ndarray:
        return np.array([self.correction.predict(o) for o in self._decode(candidate, batch, context)])

    def prefill_ttft_band(self, candidate: Candidate, isl: Any) -> tuple[np.ndarray, np.ndarray]:
        return _low_high(self.correction.bands(self._prefill(candidate, isl)))

    def decode_itl_band(
        self, candidate: Candidate, batch: Any, context: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        return _low_high(self.correction.bands(self._decode(candidate, batch, context)))

    def _observations(self, queries: Sequence[LatencyQuery]) -> list[Observation]:
        """One observation per query, in order, built per (engine, kind) in one vectorised base call."""
        obs: list[Observation | None] = [None] * len(queries)
        for (cand, kind), idx in group_queries(queries).items():
            qs = [queries[i] for i in idx]
            if kind == "ttft":
                made = self._prefill(cand, [q.isl for q in qs])
            else:
                made = self._decode(cand, [q.batch for q in qs], [q.context for q in qs])
            for i, o in zip(idx, made, strict=True):
                obs[i] = o
        return [o for o in obs if o is not None]

    def latency_draws(self, queries: Sequence[LatencyQuery], n: int, rng: np.random.Generator) -> np.ndarray:
        """Joint draws from the correction's posterior (``Correction.sample``), shape (n, len(queries))."""
        return self.correction.sample(self._observations(queries), n, rng)

    def prob_within(self, queries: Sequence[LatencyQuery], targets_ms: Any) -> np.ndarray:
        """P(latency <= target) per query from the correction's predictive itself (the draws' marginals):
        with the tails of a t of few dof a lognormal through the band's ends overstates P beyond 0.95."""
        targets = np.broadcast_to(check_targets(targets_ms), (len(queries),))
        preds = self.correction.predictive(self._observations(queries)) if queries else []
        return np.array([p.cdf(float(t)) for p, t in zip(preds, targets, strict=True)])

    def kv_capacity_tokens(self, candidate: Candidate) -> int:
        if candidate.name in self.kv_tokens:
            return int(self.kv_tokens[candidate.name])
        return self.base.kv_capacity_tokens(candidate)

    def provenance(self) -> dict[str, Any]:
        return {
            **super().provenance(),
            "base": self.base.provenance(),
            "calibration": {"n_points": self.correction.n_points, "engines": list(self.correction.engines),
                            "training_data_hash": self.correction.data_hash, **self.correction.meta},
            "measured_kv_tokens": self.kv_tokens,
        }  # fmt: skip

    # ---- persistence ------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the correction, the stack and the base source it was fitted on, as JSON."""
        doc = {**self.correction.to_dict(), "stack": self.stack.to_dict(),
               "base_source": self.base.source_spec(),
               "base_model_sha256": self.base.provenance().get("model_sha256"),
               "measured_kv_tokens": self.kv_tokens}  # fmt: skip
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(doc, indent=1, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path, base: PerfSource) -> CalibratedSource:
        """The calibration in ``path`` on ``base``; CalibrationError unless both the stack and the base
        source are the ones it was fitted for."""
        doc = read_calibration(path)
        recorded = str(doc["base_source"])
        if recorded.split(":", 1)[0] != base.name:
            raise CalibrationError(
                f"calibration {path} was fitted on the {recorded!r} source, not {base.source_spec()!r}"
            )
        sha, have = doc.get("base_model_sha256"), base.provenance().get("model_sha256")
        if sha != have and (sha or ":" in recorded):  # a learned model: the same file, byte for byte
            raise CalibrationError(
                f"calibration {path} was fitted on the model {recorded!r} (sha256 {str(sha)[:12]}), not "
                f"{base.source_spec()!r} (sha256 {str(have)[:12]})"
            )
        differ = stack_differences(Stack(**doc["stack"]), base.stack)
        if differ:
            raise CalibrationError(f"calibration {path} is for another stack: " + "; ".join(differ))
        kv = doc.get("measured_kv_tokens", {})
        if not isinstance(kv, dict) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                               for v in kv.values()):  # fmt: skip
            why = f"measured_kv_tokens must map engine names to positive integers, got {str(kv)[:80]}"
            raise CalibrationError(f"calibration {path}: {why}")
        return cls(base, Correction.from_dict(doc), dict(kv))


# The top-level keys ``save`` writes: ``Correction.to_dict``'s and the stack, base source and KV capacities.
CALIBRATION_KEYS = frozenset({
    "format_version", "feature_names", "engines", "parameters", "covariance", "noise", "engine_prior_sd",
    "n_points", "training_data_hash", "meta", "residual_field", "phase_field",
    "stack", "base_source", "base_model_sha256", "measured_kv_tokens",
})  # fmt: skip


def read_calibration(path: str | Path) -> dict[str, Any]:
    """The JSON document of a calibration file, with its stack and base source checked present."""
    try:
        doc = json.loads(Path(path).read_text(), object_pairs_hook=unique_keys)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, CalibrationError) as exc:
        raise CalibrationError(f"cannot read calibration {path}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("stack"), dict) or not doc.get("base_source"):
        raise CalibrationError(f"calibration {path} does not record its stack and base source")
    unknown = sorted(set(doc) - CALIBRATION_KEYS)
    if unknown:  # a misspelt or foreign key would be ignored without a word
        raise CalibrationError(f"calibration {path}: unknown key {unknown[0][:80]!r}")
    try:
        Stack(**doc["stack"])
    except TypeError as exc:
        raise CalibrationError(f"calibration {path} has a malformed stack: {exc}") from exc
    return doc


def stack_differences(recorded: Stack, wanted: Stack) -> list[str]:
    """'field: recorded vs wanted' for every field of the stack that differs (model names case-insensitive)."""
    out = []
    for k, a in recorded.to_dict().items():
        b = getattr(wanted, k)
        same = (a or "").lower() == (b or "").lower() if k == "model" else a == b
        if not same:
            out.append(f"{k} {a!r} vs {b!r}")
    return out


def _low_high(bands: list[Band]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([b.low_ms for b in bands]), np.array([b.high_ms for b in bands])
