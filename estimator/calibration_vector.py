"""The calibration model's prediction vectorised over observations and parameter vectors, for the fit.

``predict_ms`` (``estimator/calibration.py``) is the reference: one observation, named parameters. The
fit evaluates the same formula for every observation and, for Jacobians, many parameter vectors at
once; this module does that with numpy. Positions come from ``parameter_names`` (looked up by name
once), so nothing here depends on an order written by hand. ``tests/test_calibrate.py`` checks that
both agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .calibration import Observation
from .calibration_params import ENGINE_NAMES, SHARED_NAMES


class VectorModel:
    """log predictions of ``observations`` for parameter vectors over ``names`` (the fit's space)."""

    def __init__(self, observations: Sequence[Observation], names: Sequence[str]):
        names = list(names)
        self.n_params = len(names)
        self.at = {n: names.index(n) for n in SHARED_NAMES}
        # offsets of an engine without parameters point at an appended zero column
        self.off = {p: np.array([names.index(f"{p}[{o.engine}]") if f"{p}[{o.engine}]" in names else len(names)
                                 for o in observations]) for p in ENGINE_NAMES}  # fmt: skip
        self.log_isl = np.log([o.isl / 1024.0 for o in observations])
        self.log_batch = np.log([max(o.batch, 1.0) / 16.0 for o in observations])
        self.log_context = np.log([o.context / 2048.0 for o in observations])
        self.log_osl = np.log([max(o.osl, 1.0) / 1024.0 for o in observations])
        self.requests = np.array([o.requests for o in observations])
        self.agg = np.array([o.burst is not None and o.sync is not None for o in observations])
        self.agg_ttft = self.agg & np.array([o.kind == "ttft" for o in observations])
        self.phase_ttft = ~self.agg & np.array([o.kind == "ttft" for o in observations])

        def parts(which: str) -> np.ndarray:
            rows = [getattr(o, which) for o in observations]
            return np.array(
                [[r.prefill_ms, r.decode_ms, r.steps, r.attention_ms] if r is not None else [0.0] * 4
                 for r in rows]
            )

        self.steady, self.burst, self.sync = parts("steady"), parts("burst"), parts("sync")

    def log_pred(self, thetas: np.ndarray) -> np.ndarray:
        """(m, n) log predictions for ``thetas`` of shape (m, n_params)."""
        t = np.concatenate([np.atleast_2d(thetas), np.zeros((np.atleast_2d(thetas).shape[0], 1))], axis=1)

        def g(name: str) -> np.ndarray:
            return t[:, self.at[name]][:, None]

        def off(name: str) -> np.ndarray:
            return t[:, self.off[name]]

        a_p = np.exp(g("alpha_prefill") + off("delta_prefill") + g("beta_isl") * self.log_isl)
        a_d = np.exp(g("alpha_decode") + off("delta_decode") + g("beta_batch") * self.log_batch
                     + g("beta_context") * self.log_context)  # fmt: skip
        step = np.exp(g("log_step_ms") + off("delta_step"))
        over = np.exp(g("log_overhead_ms"))
        attention = np.exp(g("log_attention")) - 1.0

        def lat(x: np.ndarray) -> np.ndarray:
            return a_p * (x[:, 0] + attention * x[:, 3]) + a_d * x[:, 1] + step * x[:, 2]

        steady = lat(self.steady)
        z = np.stack([np.zeros_like(steady), g("logit_burst") + g("beta_burst_osl") * self.log_osl + 0 * steady,
                      g("logit_sync") + g("beta_sync_osl") * self.log_osl + 0 * steady])  # fmt: skip
        w = np.exp(z - z.max(axis=0))
        w /= w.sum(axis=0)
        mix = w[0] * steady + w[1] * lat(self.burst) + w[2] * lat(self.sync)
        mix = np.where(self.agg_ttft, mix * np.exp(g("alpha_ttft") + off("delta_ttft")), mix)
        prefill_step = step * (np.exp(g("log_prefill_step")) - 1) * self.steady[:, 2]
        steady = np.where(self.phase_ttft, steady + prefill_step, steady)
        pred = np.where(self.agg, mix, steady) + over * self.requests
        return np.log(np.maximum(pred, 1e-9))

    def log_jacobian(self, theta: np.ndarray, eps: float = 1e-6) -> np.ndarray:
        """(n, n_params) d log prediction / d parameter at ``theta`` (forward differences, one evaluation)."""
        stack = np.vstack([theta, theta + eps * np.eye(theta.size)])
        lp = self.log_pred(stack)
        return ((lp[1:] - lp[0]) / eps).T
