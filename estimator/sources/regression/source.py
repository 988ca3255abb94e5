"""RegressionSource: the PerfSource answered by a learned model instead of AIC's kernel database.

Interchangeable with AIC wherever a source is taken (``--source regression:aic-distilled`` or
``regression:PATH``). It answers any model whose config.json we can read on any system whose peaks
we know (from the model file, else AIC's system YAML), so it also covers engines AIC refuses.
Bands are the model's log error (p90) around the point, of the rows that trained the coefficient group
that answers: in-sample for a stack in its training data (model, system, backend and quantisation),
leave-one-model-out for the others (the width a stack it has never seen should expect). An engine
the file holds a node table for (``nodes.py``, distilled files) is read from AIC's own answers at
the nodes instead, with the table's measured off-node error as its band.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ...candidates import Candidate
from ...errors import DataNotAvailable, NotFittedError, SourceError, SpecError
from ..base import PerfSource, Stack, as_positive_array
from .engine import EngineFeatures
from .files import MODELS_DIR, ModelFile, load_model_file
from .monotone import MonotoneCurve, MonotoneSurface
from .nodes import EngineTable, table_key
from .regressor import PHASES, PerfRegressor, TrainingSet, quant_id, stack_id

log = logging.getLogger(__name__)


class RegressionSource(PerfSource):
    """Learned step times. ``model``: a fitted file's path or bundled name; or call :meth:`fit`.

    Parameters
    ----------
    stack : what is served.
    model : str or None; loaded on first use.
    params : PerfRegressor settings used by :meth:`fit`.
    """

    name = "regression"

    def __init__(self, stack: Stack, model: str | None = None, params: dict[str, Any] | None = None):
        super().__init__(stack)
        self.model = model
        self.params = params

    @classmethod
    def from_file(cls, stack: Stack, mf: ModelFile) -> RegressionSource:
        """A source answering from an already loaded (or just assembled) model file."""
        src = cls(stack, mf.path)
        src.file_, src.regressor_ = mf, mf.regressor
        return src

    # ---- fit/predict contract -----------------------------------------------------------------
    def fit(self, data: TrainingSet) -> RegressionSource:
        self.regressor_ = PerfRegressor(**(self.params or {})).fit(data)
        self.file_ = None
        self._engines: dict[Candidate, Any] = {}
        self._bands: dict[str, dict[str, Any]] = {}
        return self

    def _fitted(self) -> PerfRegressor:
        if not hasattr(self, "regressor_"):
            if self.model is None:
                raise NotFittedError("RegressionSource has no model: call fit() or give a model file")
            self.file_: ModelFile | None = load_model_file(self.model)
            self.regressor_ = self.file_.regressor
        return self.regressor_

    def _engine(self, c: Candidate) -> dict[str, Any]:
        reg = self._fitted()
        engines = self.__dict__.setdefault("_engines", {})
        if c not in engines:
            self.check_supported(c)
            hardware = self.file_.hardware if self.file_ is not None else None
            try:
                ef = EngineFeatures.of(self.stack, c, hardware)
            except SpecError as exc:
                raise DataNotAvailable(f"regression cannot describe {self.stack.model}: {exc}") from exc
            backend = self.stack.backend

            def prefill(isl: np.ndarray) -> np.ndarray:
                return reg.predict("prefill", backend, *ef.prefill(isl))

            def prefill_lin(isl: np.ndarray) -> np.ndarray:
                return reg.predict_linear("prefill", backend, ef.prefill(isl)[0])

            def decode(b: np.ndarray, ctx: np.ndarray) -> np.ndarray:
                return reg.predict("decode", backend, *ef.decode(b, ctx))

            def decode_lin(b: np.ndarray, ctx: np.ndarray) -> np.ndarray:
                return reg.predict_linear("decode", backend, ef.decode(b, ctx)[0])

            engines[c] = {
                "features": ef,
                "prefill": MonotoneCurve(prefill, prefill_lin)
                if reg.has_residual("prefill")
                else prefill_lin,
                "decode": MonotoneSurface(decode, decode_lin) if reg.has_residual("decode") else decode_lin,
                "table": None,
            }
            t = self._table(c)
            if t is not None:
                engines[c]["table"] = t
                if t.prefill_ms is not None:
                    engines[c]["prefill"] = MonotoneCurve(t.prefill_ms, prefill_lin, t.isl)
                if t.decode_ms is not None:
                    engines[c]["decode"] = MonotoneSurface(t.decode_ms, decode_lin, t.batch, t.context)
        return engines[c]

    def _table(self, c: Candidate) -> EngineTable | None:
        return self.file_.table(table_key(self.stack, c.name)) if self.file_ is not None else None

    @staticmethod
    def _refused(e: dict[str, Any], quantity: str, c: Candidate) -> None:
        """AIC refused this quantity of a distilled engine: refuse it as AIC did."""
        t = e["table"]
        if t is not None and quantity in t.errors:
            raise DataNotAvailable(f"AIC cannot estimate {quantity} of {c.name}: {t.errors[quantity]}")

    def prefill_ttft_ms(self, candidate: Candidate, isl: Any) -> np.ndarray:
        isl = as_positive_array("isl", isl)
        e = self._engine(candidate)
        self._refused(e, "prefill", candidate)
        return _checked(e["prefill"](isl), candidate)

    def decode_itl_ms(self, candidate: Candidate, batch: Any, context: Any) -> np.ndarray:
        b, ctx = np.broadcast_arrays(as_positive_array("batch", batch), as_positive_array("context", context))
        e = self._engine(candidate)
        self._refused(e, "decode", candidate)
        return _checked(e["decode"](b.astype(float), ctx.astype(float)), candidate)

    def kv_capacity_tokens(self, candidate: Candidate) -> int:
        e = self._engine(candidate)
        self._refused(e, "kv", candidate)
        if e["table"] is not None and e["table"].kv_capacity_tokens is not None:
            return e["table"].kv_capacity_tokens
        return e["features"].kv_capacity(*self._fitted().kv_params(self.stack.backend))

    # ---- bands and provenance -----------------------------------------------------------------
    def _band_factor(self, phase: str, c: Candidate) -> float:
        """exp(p90 |log error|): the node table's off-node error for an engine read from it, else
        ``_band_error`` (in- or out-of-sample error of the coefficient group that answers)."""
        e = self._engine(c)
        prov = self.file_.provenance if self.file_ else {}
        if e["table"] is not None and (prov.get("table_check") or {}).get(phase):
            return float(np.exp(prov["table_check"][phase].get("log_abs_p90", 0.0)))
        return float(np.exp(self._band_error(phase)["log_abs_p90"]))

    def _trained(self) -> tuple[bool, str]:
        """Whether the stack is one the file was trained on (model, system, backend's coefficient group and
        quantisation together), and if not, what was not trained."""
        s = (self.file_.provenance if self.file_ else {}).get("training_summary") or {}
        st = self.stack
        quant = quant_id(st.gemm_quant, st.kvcache_quant)
        if stack_id(st.model, st.system, st.backend, quant) in s.get("stacks", {}):
            return True, ""
        parts = (("model", st.model, "models"), ("system", st.system, "systems"),
                 ("backend", st.backend, "backends"))  # fmt: skip
        missing = [f"{what} {v}" for what, v, key in parts if v not in s.get(key, {})]
        if missing:
            return False, ", ".join(missing) + " not trained"
        if "stacks" in s:
            return False, f"model, system and backend trained, but not together at quantisation {quant}"
        # an older file records no combinations: each part is trained; a distilled one at default quantisation
        if set(s.get("origins", {})) == {"aic"} and quant != quant_id(None, None):
            return False, f"distilled at default quantisation, not {quant}"
        return True, ""

    def _band_error(self, phase: str) -> dict[str, Any]:
        """The log error (p90 |log(pred / measured)|) the learned path's band uses, with where it came from.

        In-sample for a stack the file was trained on, else the cross-validated error; of the rows of the
        coefficient group that answers (the backend; every group's widest for the pooled fit); of this
        phase's rows, else the serving rows of the same phase (prefill: ttft, decode: tpot), else the
        widest kind the group has. An older file without per-group errors takes the wider of the phase's
        and its serving kind's error over all groups. Never silently zero: every fallback is a warning."""
        cache = self.__dict__.setdefault("_bands", {})
        if phase in cache:
            return cache[phase]
        prov = self.file_.provenance if self.file_ else {}
        trained, why = self._trained()
        st = self.stack
        warnings = [] if trained else [
            f"{st.model} on {st.system}/{st.backend} is outside the model's training data ({why}): "
            "out-of-sample band"
        ]
        scheme = "in_sample" if trained else "cv"
        if not trained and not prov.get("cv"):
            scheme = "in_sample"
            warnings.append("the model file has no cross-validated error (one model or system): the band is "
                            "its in-sample error, which understates it off the training data")  # fmt: skip
        kinds = (phase, {"prefill": "ttft", "decode": "tpot"}[phase])
        groups = prov.get(f"{scheme}_by_group")
        group = self.stack.backend if self.stack.backend in self._fitted().coef_ else None
        if groups:
            pool = [groups[group]] if group in groups else list(groups.values())
            picked = [_pick(errs, kinds) for errs in pool]
            got = max((p for p in picked if p is not None), default=None, key=lambda p: p[1])
            where = f"{scheme} {group or 'widest group (pooled fit)'}"
        else:  # older file: errors of all groups together
            errs = prov.get(scheme) or {}
            have = [(k, errs[k]["log_abs_p90"]) for k in kinds if k in errs]
            got = max(have, key=lambda p: p[1]) if have else _pick(errs, kinds)
            where = f"{scheme} (all groups)"
        if got is None:
            warnings.append(f"the model file records no {phase} error: zero-width band")
            out = {"log_abs_p90": 0.0, "from": "none", "warnings": warnings}
        else:
            if got[0] != phase:
                warnings.append(f"no {phase} rows in {where}: band from its {got[0]} error")
            out = {"log_abs_p90": float(got[1]), "from": f"{where} {got[0]}", "warnings": warnings}
        for w in warnings:
            log.info("regression band: %s", w)
        cache[phase] = out
        return out

    def prefill_ttft_band(self, candidate: Candidate, isl: Any) -> tuple[np.ndarray, np.ndarray]:
        v, f = self.prefill_ttft_ms(candidate, isl), self._band_factor("prefill", candidate)
        return v / f, v * f

    def decode_itl_band(
        self, candidate: Candidate, batch: Any, context: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        v, f = self.decode_itl_ms(candidate, batch, context), self._band_factor("decode", candidate)
        return v / f, v * f

    def source_spec(self) -> str:
        """``regression:NAME`` for a bundled model, ``regression:PATH`` for another file; a model fitted in
        memory has no spec (``regression``: make_source cannot rebuild it)."""
        if self.model is not None:
            self._fitted()  # the file is read on first use: the spec names the file it resolved to
        if getattr(self, "file_", None) is None or self.file_.path is None:
            return self.name
        path = Path(self.file_.path).resolve()
        bundled = path.parent == MODELS_DIR.resolve()
        return f"{self.name}:{path.stem if bundled else path}"

    def provenance(self) -> dict[str, Any]:
        self._fitted()
        out = {
            **super().provenance(),
            "model_file": None,
            "model_sha256": None,
            "fitted_in_memory": self.file_ is None,
        }
        if self.file_ is not None:
            p = self.file_.provenance
            out.update(model_file=self.file_.path, model_name=self.file_.name, model_sha256=self.file_.sha256,
                       training_sha256=p.get("training_sha256"), cv=p.get("cv"))  # fmt: skip
            bands = {ph: self._band_error(ph) for ph in PHASES}
            out["in_training_data"] = self._trained()[0]
            out["band_error"] = {ph: {k: b[k] for k in ("log_abs_p90", "from")} for ph, b in bands.items()}
            out["warnings"] = list(dict.fromkeys(w for b in bands.values() for w in b["warnings"]))
            # which engines were read from AIC's node tables (the rest from the learned path)
            engines = self.__dict__.get("_engines", {})
            out["node_table_engines"] = sorted(c.name for c, e in engines.items() if e["table"] is not None)
        return out


def _pick(errs: dict[str, Any], kinds: tuple[str, ...]) -> tuple[str, float] | None:
    """(kind, log_abs_p90) of the first of ``kinds`` the errors hold, else of the widest; None if none."""
    have = {k: float(e["log_abs_p90"]) for k, e in errs.items() if isinstance(e, dict) and "log_abs_p90" in e}
    for k in kinds:
        if k in have:
            return k, have[k]
    return max(have.items(), key=lambda p: p[1]) if have else None


def _checked(out: np.ndarray, c: Candidate) -> np.ndarray:
    if not np.all(np.isfinite(out)) or np.any(out <= 0):
        raise SourceError(f"regression produced a non-positive or non-finite latency for {c.name}")
    return out
