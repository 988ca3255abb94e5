"""On-disk cache of whole profiles, so a repeated study answers without loading AIC.

The key covers everything that changes the answer: the study fields that feed the estimate,
the versions of sla-estimate, aiconfigurator-core and numpy, a hash of this package's source
files and of the data files bundled under ``models/`` (a code or bundled-model change invalidates old
entries), the regression model file's bytes, and for a calibration both its bytes and those of the
regression model file it was fitted on (its ``base_source``): a refitted model is a new answer.
Output-only fields (output directory, plots, strictness) are not part of the key.

Entries are data, never code: JSON written by ``codec.encode`` with the format version, the key and
a SHA-256 of the payload (it catches corruption and hand edits; anyone who can write the cache
directory can also write a matching checksum, but never run code through it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from .codec import CodecError, decode, encode
from .spec import Spec

log = logging.getLogger(__name__)

FORMAT = "sla-estimate-profile"
FORMAT_VERSION = 2  # 1 was a pickle
MAX_ENTRY_BYTES = 64 * 1024 * 1024
_OUTPUT_ONLY = {
    "output_dir", "plots", "strict", "cache", "validate", "num_alternatives",
    "dynamo_version", "runtime_image", "kv_router", "runtime_version_override",  # how artifacts are rendered
}  # fmt: skip


def cache_dir() -> Path:
    root = os.environ.get("SLA_ESTIMATE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sla-estimate"
    )
    return Path(root) / "profiles"


@cache
def _code_hash() -> str:
    """This package's source files and the bundled data files (``models/*.json``: regression models,
    calibration priors), which change answers as much as code does."""
    from .sources.regression.files import MODELS_DIR

    h = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    for path in sorted(MODELS_DIR.glob("*.json")):
        h.update(b"models/" + path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _regression_sha256(name: str) -> str | None:
    """SHA-256 of the model file ``regression:NAME|PATH`` names; None when there is none (make_source
    then says so: the key need not)."""
    from .errors import SourceError
    from .sources.regression import resolve_model_path

    try:
        return _sha256(resolve_model_path(name.removeprefix("regression:")))
    except (SourceError, OSError):
        return None


def _source_fields(source: str) -> dict[str, Any]:
    """What identifies the source's data: a model file's bytes, or a calibration's and its base model's."""
    if source in ("aic", "roofline"):
        return {}
    if source.startswith("regression:"):  # the fitted model file's bytes, wherever it lives
        return {"source_sha256": _regression_sha256(source)}
    path = Path(source)
    if not path.is_file():
        return {}
    out: dict[str, Any] = {"source_sha256": _sha256(path)}
    try:  # a calibration: the model file behind it can change while the calibration does not
        base = json.loads(path.read_bytes()).get("base_source")
    except (OSError, ValueError, AttributeError):
        base = None  # not a readable calibration: make_source reports it
    if isinstance(base, str) and base.startswith("regression:"):
        out["base_model_sha256"] = _regression_sha256(base)
    return out


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def profile_key(spec: Spec) -> str:
    fields: dict[str, Any] = {k: v for k, v in spec.to_dict().items() if k not in _OUTPUT_ONLY}
    fields.update(_source_fields(spec.source))
    if os.path.isdir(spec.model):
        fields["model_config_sha256"] = hashlib.sha256(
            (Path(spec.model) / "config.json").read_bytes()
        ).hexdigest()
    fields["versions"] = {d: _version(d) for d in ("sla-estimate", "aiconfigurator-core", "numpy")}
    fields["code"] = _code_hash()
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _canonical(payload: Any) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _entry_path(key: str) -> Path:
    return cache_dir() / f"{key}.json"


def load_profile(spec: Spec) -> Any | None:
    """The cached Profile for ``spec`` (with the caller's output settings), or None.

    An entry is used only if it is JSON of this format version, written under this key, with a
    matching checksum, and decodes into a Profile; anything else is ignored with a warning (recomputed).
    Old pickle entries are never opened.
    """
    from .pipeline import Profile

    key = profile_key(spec)
    path = _entry_path(key)
    legacy = path.with_suffix(".pkl")
    if legacy.exists():
        log.warning("ignoring old-format cache entry %s (pickles are never loaded); delete it", legacy)
    try:
        if path.stat().st_size > MAX_ENTRY_BYTES:
            raise ValueError(f"larger than {MAX_ENTRY_BYTES} bytes")
        doc = json.loads(path.read_bytes().decode("utf-8"))
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError("not a sla-estimate profile cache entry")
        if doc.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format version {doc.get('format_version')!r}, expected {FORMAT_VERSION}")
        if doc.get("key") != key:
            raise ValueError(f"written under key {doc.get('key')!r}, not {key}")
        if doc.get("sha256") != hashlib.sha256(_canonical(doc.get("payload"))).hexdigest():
            raise ValueError("checksum mismatch (modified or corrupt)")
        profile = decode(Profile, doc["payload"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError, CodecError) as exc:  # never fatal: a bad entry is a miss
        log.warning("ignoring cache entry %s (%s); recomputing", path, exc)
        return None
    from dataclasses import replace

    return replace(profile, spec=spec)


def save_profile(profile: Any) -> None:
    """Write ``profile`` as a checked JSON entry (atomically: a reader never sees half a file)."""
    from .pipeline import Profile

    directory = cache_dir()
    try:
        payload = encode(profile, Profile)
        key = profile_key(profile.spec)
        doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "key": key,
               "sha256": hashlib.sha256(_canonical(payload)).hexdigest(), "payload": payload}  # fmt: skip
        directory.mkdir(parents=True, exist_ok=True)
        path = _entry_path(key)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(_canonical(doc))
        os.replace(tmp, path)
    except (OSError, CodecError, ValueError) as exc:
        log.warning("could not write profile cache in %s (%s)", directory, exc)
