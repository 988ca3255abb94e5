"""Fitted regression models as JSON files (data, never pickles), with their provenance.

A file holds: ``format`` and ``format_version``; the term and feature names the model expects;
the training data's SHA-256 and summary; package versions; the cross-validated error; the hardware
records of the trained systems (so answering never reads AIC's files); the regressor itself; and,
for distilled files, optional node tables (``nodes.py``: AIC's answers for the distilled engines).
Floats are written with Python's shortest exact repr, so load -> save reproduces the same bytes.
Anything unreadable or from another format version is a ``SourceError`` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import SourceError
from ...features import TERM_NAMES
from ...hardware import HardwareSpec
from .engine import FEATURE_NAMES
from .nodes import EngineTable
from .regressor import PerfRegressor

FORMAT = "sla-estimate/regression-model"
FORMAT_VERSION = 1
MODELS_DIR = Path(__file__).resolve().parents[3] / "models"


@dataclass(frozen=True)
class ModelFile:
    """A fitted regressor and everything needed to trust it."""

    name: str
    regressor: PerfRegressor
    hardware: dict[str, HardwareSpec]
    provenance: dict[str, Any] = field(default_factory=dict)  # training hash/summary, packages, cv, notes
    path: str | None = None
    sha256: str | None = None
    tables: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # nodes.table_key -> EngineTable.to_dict()
    _parsed: dict[str, EngineTable] = field(default_factory=dict, repr=False, compare=False)

    def table(self, key: str | None) -> EngineTable | None:
        """The node table of one engine, decoded on first use (a profile needs a few of hundreds)."""
        if key is None or key not in self.tables:
            return None
        if key not in self._parsed:
            try:
                self._parsed[key] = EngineTable.from_dict(self.tables[key])
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise SourceError(f"{self.path}: corrupt regression model file (node table {key}: "
                                  f"{type(exc).__name__}: {exc})") from exc  # fmt: skip
        return self._parsed[key]

    def to_dict(self) -> dict[str, Any]:
        tables = {"tables": dict(sorted(self.tables.items()))} if self.tables else {}
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "term_names": list(TERM_NAMES),
            "feature_names": list(FEATURE_NAMES),
            "provenance": self.provenance,
            "hardware": {k: v.to_dict() for k, v in sorted(self.hardware.items())},
            "regressor": self.regressor.to_dict(),
            **tables,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")) + "\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically (temp file + rename): an interrupted save never leaves half a model."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as fh:
            fh.write(self.dumps())
        os.replace(tmp, path)
        return path


def resolve_model_path(name_or_path: str) -> Path:
    """A file path, or the name of a model bundled in ``models/`` (``aic-distilled``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    bundled = MODELS_DIR / f"{name_or_path.removesuffix('.json')}.json"
    if bundled.is_file() and os.sep not in name_or_path:
        return bundled
    raise SourceError(
        f"no regression model {name_or_path!r}: not a file, nor one of {', '.join(bundled_names())}"
    )


def bundled_names() -> list[str]:
    out = []
    for p in sorted(MODELS_DIR.glob("*.json")):
        try:
            with p.open() as fh:
                head = fh.read(200)
        except OSError:
            continue
        if FORMAT in head:
            out.append(p.stem)
    return out


def load_model_file(name_or_path: str) -> ModelFile:
    path = resolve_model_path(name_or_path)
    try:
        raw = path.read_bytes()
        doc = json.loads(raw)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"{path}: not a readable regression model file ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SourceError(
            f"{path}: not a regression model file (format {doc.get('format') if isinstance(doc, dict) else None!r})"
        )
    if doc.get("format_version") != FORMAT_VERSION:
        raise SourceError(f"{path}: model format version {doc.get('format_version')!r}, this sla-estimate reads "
                          f"{FORMAT_VERSION}: refit it with `sla-estimate models fit`")  # fmt: skip
    if doc.get("term_names") != list(TERM_NAMES) or doc.get("feature_names") != list(FEATURE_NAMES):
        raise SourceError(f"{path}: fitted on other features than this sla-estimate computes: refit it")
    try:
        reg = PerfRegressor.from_dict(doc["regressor"])
        if reg.n_features_ != len(FEATURE_NAMES):
            raise ValueError(f"{reg.n_features_} features, expected {len(FEATURE_NAMES)}")
        hardware = {k: HardwareSpec.from_dict(v) for k, v in doc["hardware"].items()}
        provenance = dict(doc["provenance"])
        name = str(doc["name"])
        tables = dict(doc.get("tables", {}))
        if not all(isinstance(v, dict) for v in tables.values()):
            raise ValueError("node tables must be objects")
    except (KeyError, TypeError, ValueError, AttributeError, SourceError) as exc:
        raise SourceError(f"{path}: corrupt regression model file ({type(exc).__name__}: {exc})") from exc
    return ModelFile(name, reg, hardware, provenance, str(path), hashlib.sha256(raw).hexdigest(), tables)


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("numpy", "scipy", "scikit-learn", "aiconfigurator-core"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out
