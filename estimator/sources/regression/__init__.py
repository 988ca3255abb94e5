"""The learned regression source: roofline terms -> step times, fitted on measurements or AIC points."""

from __future__ import annotations

from .files import ModelFile, bundled_names, load_model_file, resolve_model_path
from .regressor import PerfRegressor, TrainingSet
from .source import RegressionSource

__all__ = [
    "ModelFile",
    "PerfRegressor",
    "RegressionSource",
    "TrainingSet",
    "bundled_names",
    "load_model_file",
    "resolve_model_path",
]
