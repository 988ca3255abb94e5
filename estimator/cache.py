"""On-disk cache of whole profiles, so a repeated study answers without loading AIC.

The key covers everything that changes the answer: the study fields that feed the estimate,
the versions of sla-estimate, aiconfigurator-core and numpy, a hash of this package's source
files (a code change invalidates old entries), and the calibration file's bytes when one is used.
Output-only fields (output directory, plots, strictness) are not part of the key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from .spec import Spec

log = logging.getLogger(__name__)

_OUTPUT_ONLY = {"output_dir", "plots", "strict", "cache", "validate", "num_alternatives"}


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
        fields["model_config_sha256"] = hashlib.sha256((Path(spec.model) / "config.json").read_bytes()).hexdigest()
    fields["versions"] = {d: _version(d) for d in ("sla-estimate", "aiconfigurator-core", "numpy")}
    fields["code"] = _code_hash()
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:32]


def load_profile(spec: Spec) -> Any | None:
    """The cached Profile for ``spec`` (with the caller's output settings), or None."""
    path = cache_dir() / f"{profile_key(spec)}.pkl"
    try:
        with path.open("rb") as fh:
            profile = pickle.load(fh)
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - a corrupt cache entry is a miss, never an error
        log.warning("ignoring unreadable cache entry %s (%s)", path, exc)
        return None
    from dataclasses import replace

    return replace(profile, spec=spec)


def save_profile(profile: Any) -> None:
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{profile_key(profile.spec)}.pkl"
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with tmp.open("wb") as fh:
            pickle.dump(profile, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not write profile cache in %s (%s)", directory, exc)
