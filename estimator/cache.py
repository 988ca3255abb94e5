"""On-disk cache of whole profiles, so a repeated study answers without loading AIC.

The key covers everything that changes the answer: the study fields that feed the estimate,
the versions of sla-estimate, aiconfigurator-core and numpy, a hash of this package's source
files (a code change invalidates old entries), and the calibration file's bytes when one is used.
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
    h = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def profile_key(spec: Spec) -> str:
    fields: dict[str, Any] = {k: v for k, v in spec.to_dict().items() if k not in _OUTPUT_ONLY}
    if spec.source not in ("aic", "roofline") and Path(spec.source).is_file():
        fields["source_sha256"] = hashlib.sha256(Path(spec.source).read_bytes()).hexdigest()
    if spec.source.startswith("regression:"):  # the fitted model file's bytes, wherever it lives
        from .sources.regression import resolve_model_path

        fields["source_sha256"] = hashlib.sha256(resolve_model_path(spec.source[11:]).read_bytes()).hexdigest()
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
