"""A prior for prefill/decode calibrations learned from other deployments measured the same way.

Why: with 2 points per phase and engine, a fit cannot tell a phase scale from a slope and a fixed cost,
and its own residuals say almost nothing about the model's misfit. Other deployments measured by the
same runner, each fitted on all its points, do say it (empirical Bayes across deployments, as the agg
calibration learns its prior from the other silicon families):
- the shape parameters (``TRANSFERRED``: the ISL/batch/context slopes and the prefill step ratio) get the
  median and robust spread of their fitted values; ARD is then off, since a per-fit relevance estimate
  from 2 points is noise where the other deployments have already said how far the slopes vary;
- the misfit becomes a discrepancy field (``phase_field``) whose hyperparameters maximise the marginal
  likelihood of those deployments' residuals.
- the levels (``LEVELS``: the prefill and decode scales and the step cost) get the same, with a wider floor
  on the spread: with 2 decode points a fit cannot split a step between the decode scale and the fixed
  cost, and the split it guessed alone missed by up to 9 % one grid step away, 95 % on bad designs
  (docs/calibration_heldout.md).
``DeploymentEvidence`` is what one deployment
contributes; it is JSON data, so a bundled file can carry it (``validate.calibrate``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from .calibration import Observation
from .calibration_fit import Prior, fit, prior_from_fits
from .calibration_params import SharedParameters
from .phase_field import FieldPoint, learn_kernel

TRANSFERRED = ("beta_isl", "beta_batch", "beta_context", "log_prefill_step")
MIN_SD = 0.03  # floor of a learned spread (log units): two or three deployments cannot say less
# The phase levels: what the prefill and decode terms are scaled by and the fixed step cost. With 2 decode
# points the fit cannot split a step between the decode scale and the fixed cost; other deployments say
# how far those levels vary. Their floor is wider: a deployment unlike the others (new hardware, another
# runner version) should move them with its own points, not be held near the others.
LEVELS = ("alpha_prefill", "alpha_decode", "log_step_ms")
LEVEL_MIN_SD = 0.2
# The attention's scale relative to the rest of prefill gets the same wide floor: most deployments in the
# evidence share one system and runner, whose attention kernels miss AIC's alike (H200: -0.2 ± 0.05);
# another system's can miss otherwise (H100 TP2's curve wants +0.5). Two prefill points at short ISL
# barely see attention, so its spread is what widens the band where attention dominates (long ISL).
WIDE_SPREAD = (*LEVELS, "log_attention")


@dataclass(frozen=True)
class DeploymentEvidence:
    """One deployment's prefill/decode points fitted together: its shared parameters and its residuals."""

    name: str  # model|system|backend
    shared: SharedParameters
    residuals: tuple[FieldPoint, ...]
    moe: bool  # the model's architecture class: evidence transfers only within a class (``same_class``)
    # shared parameters an older evidence file did not fit (their defaults stand in): never learned from
    missing: frozenset[str] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "moe": self.moe,
            "shared": asdict(self.shared),
            "residuals": [asdict(p) for p in self.residuals],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], allow_missing: bool = False) -> DeploymentEvidence:
        """``allow_missing``: an older file's fit without some shared parameters (e.g. ``log_attention``)
        is read with those marked ``missing``; otherwise such a fit is refused (ValueError)."""
        known = set(SharedParameters.__dataclass_fields__)
        missing = frozenset(known - set(d["shared"]))
        if missing and not allow_missing:
            raise ValueError(f"evidence {d['name']!r}: shared parameters missing: {sorted(missing)}")
        shared = SharedParameters(**{k: float(v) for k, v in d["shared"].items() if k in known})
        if not isinstance(d["moe"], bool):
            raise ValueError(f"evidence {d['name']!r}: 'moe' must be true or false, not {d['moe']!r}")
        return cls(str(d["name"]), shared, tuple(FieldPoint(**p) for p in d["residuals"]), d["moe"], missing)


def deployment_evidence(
    name: str, observations: Sequence[Observation], prior: Prior, moe: bool
) -> DeploymentEvidence:
    """Fit ``observations`` (one deployment's prefill/decode points) with ``prior``, noise from the residuals."""
    obs = [o for o in observations if not o.is_agg and o.measured_ms and o.measured_ms > 0]
    corr = fit(obs, replace(prior, cv_folds=0, discrepancy_weight=0.0, phase_kernel={}), residual_field=False)
    res = tuple(FieldPoint(o.engine, o.kind, o.isl, o.batch, o.context, math.log(o.measured_ms / corr.predict(o)),
                           o.noise_sd) for o in obs)  # fmt: skip
    return DeploymentEvidence(name, corr.mean.shared, res, moe)


def same_class(evidence: Sequence[DeploymentEvidence], name: str, moe: bool) -> list[DeploymentEvidence]:
    """The evidence that may teach deployment ``name``: the *other* deployments of its architecture class.

    Why: a dense and an MoE model misfit the correction's form in different ways (an MoE step reads more
    experts as the batch grows), so a dense deployment's residuals say nothing about an MoE curve and an
    MoE's would widen every dense band. With no deployment of the class, the calibration keeps the
    generic prior and estimates its noise from its own points."""
    return [e for e in evidence if e.name != name and e.moe == moe]


def learned_prior(evidence: Sequence[DeploymentEvidence], prior: Prior) -> Prior:
    """``prior`` with what ``evidence`` (other deployments) says: the field per kind, where some deployment
    has 3 points of it, and the ``TRANSFERRED`` and ``LEVELS`` parameters, where two or more deployments
    are there."""
    groups: dict[tuple[str, str], list[FieldPoint]] = {}
    for ev in evidence:
        for p in ev.residuals:
            groups.setdefault((ev.name, p.engine), []).append(p)
    kernel = {}
    for kind in ("ttft", "tpot"):
        try:
            hyper, n = learn_kernel(list(groups.values()), kind)
        except ValueError:
            continue
        kernel[kind] = (hyper, float(n))
    fits = [ev.shared for ev in evidence]
    unfitted = frozenset().union(*(ev.missing for ev in evidence))  # keep the prior's: nothing learned them
    shared = {k: v for k, v in prior_from_fits(fits, prior, MIN_SD).items() if k in TRANSFERRED}
    shared |= {k: v for k, v in prior_from_fits(fits, prior, LEVEL_MIN_SD).items() if k in WIDE_SPREAD}
    shared = {k: v for k, v in shared.items() if k not in unfitted}
    out = prior.updated(shared) if shared else prior
    return replace(out, phase_kernel=kernel, ard_iterations=0 if shared else out.ard_iterations)
