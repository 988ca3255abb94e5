"""Performance sources behind one contract (see ``base.PerfSource``)."""

from __future__ import annotations

from pathlib import Path

from ..errors import SpecError
from .base import PerfSource, Stack

SOURCE_NAMES = ("aic", "roofline")


def make_source(name: str, stack: Stack) -> PerfSource:
    """``aic``, ``roofline``, ``regression:NAME|PATH``, or a path to a fitted calibration JSON (on top of AIC)."""
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
        from .aic import AicSource
        from .calibrated import CalibratedSource

        return CalibratedSource.load(name, base=AicSource(stack))
    raise SpecError("source", f"{name!r} is not one of {', '.join(SOURCE_NAMES)} nor a calibration file")


__all__ = ["SOURCE_NAMES", "PerfSource", "Stack", "make_source"]
