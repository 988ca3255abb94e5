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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ...errors import SourceError
from ...features import TERM_NAMES
from ...hardware import HardwareSpec
from ...study_file import unique_keys
from .checks import integer, number, obj, provenance, text
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

    def check_tables(self) -> None:
        """Decode every node table (``models show``: the file is checked whole, not engine by engine)."""
        for key in self.tables:
            self.table(key)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically (temp file + rename): an interrupted save never leaves half a model, and a
        failed one no temp file. The document is checked as a load would, so what is written loads."""
        path = Path(path)
        text = self.dumps()
        try:
            check_document(json.loads(text), path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        except OSError as exc:
            raise SourceError(f"cannot write regression model file {path}: {exc.strerror or exc}") from None
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            os.replace(tmp, path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise SourceError(f"cannot write regression model file {path}: {exc.strerror or exc}") from None
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
    """Stems of the model files in ``models/``, told from the other JSON there by their ``format``
    (read whole: keys are sorted, so the tag is not at the start)."""
    out = []
    for p in sorted(MODELS_DIR.glob("*.json")):
        try:
            doc = json.loads(p.read_bytes())
        except (OSError, ValueError, RecursionError):
            continue
        if isinstance(doc, dict) and doc.get("format") == FORMAT:
            out.append(p.stem)
    return out


_TOP = ("format", "format_version", "name", "term_names", "feature_names", "provenance", "hardware",
        "regressor")
_HW_FIELDS = tuple(f.name for f in fields(HardwareSpec))
_HW_NUMBERS = tuple(k for k in _HW_FIELDS if k not in ("system", "gpus_per_node"))
_HW_AT_LEAST_0 = ("fp8_flops", "fp4_flops", "collective_latency_s")  # 0 where the GPU lacks FP8/FP4


def check_document(doc: Any, path: Path) -> tuple[PerfRegressor, dict[str, HardwareSpec]]:
    """The parsed regressor and hardware of a model file's document, every field checked; a
    SourceError naming the file and the field otherwise."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        tag = doc.get("format") if isinstance(doc, dict) else None
        raise SourceError(f"{path}: not a regression model file (format {str(tag)[:60]!r})")
    version = doc.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise SourceError(f"{path}: model format version {version!r}, this sla-estimate reads "
                          f"{FORMAT_VERSION}: refit it with `sla-estimate models fit`")  # fmt: skip
    if doc.get("term_names") != list(TERM_NAMES) or doc.get("feature_names") != list(FEATURE_NAMES):
        raise SourceError(f"{path}: fitted on other features than this sla-estimate computes: refit it")
    try:
        obj("model file", doc, _TOP, ("tables",))
        name = text("name", doc["name"], empty=False)
        if not name.isprintable():
            raise ValueError(f"name: must be printable text, got {name[:40]!r}")
        provenance(doc["provenance"])
        hardware = {}
        for system, h in obj("hardware", doc["hardware"]).items():
            obj(f"hardware.{system}", h, _HW_FIELDS)
            if h["system"] != system:
                got = str(h["system"])[:40]
                raise ValueError(f"hardware.{system}.system: must be {system!r}, got {got!r}")
            integer(f"hardware.{system}.gpus_per_node", h["gpus_per_node"], lo=1)
            for k in _HW_NUMBERS:
                number(f"hardware.{system}.{k}", h[k], lo=0.0, positive=k not in _HW_AT_LEAST_0)
            hardware[system] = HardwareSpec.from_dict(h)
        for key, t in obj("tables", doc.get("tables", {})).items():
            obj(f"tables.{key}", t)  # decoded and checked on first use (``ModelFile.table``)
        reg = PerfRegressor.from_dict(doc["regressor"], len(FEATURE_NAMES))
    except (ValueError, SourceError) as exc:  # the checks name the field
        raise SourceError(f"{path}: corrupt regression model file ({exc})") from None
    except (KeyError, TypeError, IndexError, AttributeError) as exc:  # a shape no check foresaw
        raise SourceError(f"{path}: corrupt regression model file ({type(exc).__name__}: {exc})") from None
    return reg, hardware


def load_model_file(name_or_path: str) -> ModelFile:
    path = resolve_model_path(name_or_path)
    try:
        raw = path.read_bytes()
        doc = json.loads(raw, object_pairs_hook=unique_keys)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SourceError(f"{path}: not a readable regression model file ({exc})") from exc
    except ValueError as exc:  # a duplicate key
        raise SourceError(f"{path}: corrupt regression model file ({exc})") from None
    reg, hardware = check_document(doc, path)
    tables = dict(doc.get("tables", {}))
    digest = hashlib.sha256(raw).hexdigest()
    return ModelFile(doc["name"], reg, hardware, doc["provenance"], str(path), digest, tables)


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("numpy", "scipy", "scikit-learn", "aiconfigurator-core"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out
