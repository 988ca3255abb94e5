"""Performance sources behind one contract (see ``base.PerfSource``)."""

from __future__ import annotations

from pathlib import Path

from ..errors import CalibrationError, SpecError
from .base import LatencyQuery, PerfSource, Stack

SOURCE_NAMES = ("aic", "roofline")


def make_source(name: str, stack: Stack) -> PerfSource:
    """``aic``, ``roofline``, ``regression:NAME|PATH``, or a path to a fitted calibration JSON, applied on top
    of the base source the file records (CalibrationError when the file's stack or base source does not match)."""
    if name == "aic":
        from .aic import AicSource

        return AicSource(stack)
    if name == "roofline":
        from .roofline import RooflineSource

        return RooflineSource(stack)
    if name.startswith("regression:"):  # a fitted regression model: bundled name or file path
        from .regression import RegressionSource, resolve_model_path

        return RegressionSource(stack, str(resolve_model_path(name.removeprefix("regression:"))))
    if Path(name).is_file():
        from .calibrated import CalibratedSource, read_calibration

        base_name = str(read_calibration(name)["base_source"])
        # a regression model file's path ends in .json too: only another calibration is refused
        if base_name == CalibratedSource.name or (
            not base_name.startswith("regression:") and Path(base_name).suffix
        ):
            raise CalibrationError(f"calibration {name} is fitted on another calibration ({base_name!r})")
        if base_name == "regression":
            raise CalibrationError(f"calibration {name} records the regression source without its model "
                                   "file (written before calibration files named it, or fitted in memory): "
                                   "refit it")  # fmt: skip
        try:
            base = make_source(base_name, stack)
        except SpecError as exc:
            raise CalibrationError(f"calibration {name} records base source {base_name!r}: {exc}") from exc
        return CalibratedSource.load(name, base=base)
    raise SpecError("source", f"{name!r} is not one of {', '.join(SOURCE_NAMES)} nor a calibration file")


__all__ = ["SOURCE_NAMES", "LatencyQuery", "PerfSource", "Stack", "make_source"]
