"""Checks of study fields that look at the world (the output directory, a calibration file) or merge
two sources of settings (the YAML ``validate:`` section under the flags). Used by ``spec.load_spec``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import SlaEstimateError, SpecError
from .study_file import as_text, read_json


def merge_validate(base: Any, top: Any, known: set[str]) -> Any:
    """Flags over the file's ``validate:`` section field by field (runner options key by key)."""
    if not isinstance(base, dict) and base not in (None, False, True):
        return base  # not a mapping: _validate_spec names it
    if not isinstance(top, dict):
        return base if top is True and isinstance(base, dict) else top
    if not isinstance(base, dict):
        return top
    merged = {**base, **{k: v for k, v in top.items() if k != "runner_options"}}
    if "runner_options" in top:
        opts = base.get("runner_options") or {}
        if not isinstance(opts, dict):
            raise SpecError(
                "validate.runner_options", f"expected a mapping of key: value, got {type(opts).__name__}"
            )
        merged["runner_options"] = {**opts, **top["runner_options"]}
        for key in top["runner_options"]:  # the file's shorthand (validate: {url: ...}) loses to the flag too
            if key not in known:
                merged.pop(key, None)
    if top.get("runner") not in (None, base.get("runner")):  # another runner: the file's options were its own
        merged = {k: v for k, v in merged.items() if k in known or k in top}
        merged["runner_options"] = dict(top.get("runner_options") or {})
    return merged


def output_dir_field(v: Any) -> str | None:
    """Refuse an output directory that cannot be one (a file, under a file, not writable) before any work."""
    if v is None:
        return None
    if isinstance(v, float):  # YAML 1.50 or 1.0e+308: the number's text is not what was written
        raise SpecError("output_dir", f"expected a path, got the number {v!r} (quote it)")
    path = Path(as_text("output_dir", v))
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        what = "is a file" if probe == path else f"is under {probe}, which is a file"
        raise SpecError("output_dir", f"{path} {what}")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise SpecError("output_dir", f"{probe} is not writable")
    return str(path)


def source_field(v: Any) -> str:
    """``aic``, ``roofline`` or a calibration JSON that really is one (checked here, applied later)."""
    name = as_text("source", v)
    if name in ("aic", "roofline") or not Path(name).is_file():
        return name  # an unknown name is refused by make_source, which lists the choices
    doc = read_json("source", name)
    if not isinstance(doc, dict) or "format_version" not in doc or "base_source" not in doc:
        kind = (
            "a report.json"
            if isinstance(doc, dict) and "selection" in doc
            else f"a JSON {type(doc).__name__}"
        )
        raise SpecError("source", f"{name} is {kind}, not a calibration file (from `sla-estimate validate`)")
    from .calibration import Correction

    try:
        Correction.from_dict(doc)
    except (KeyError, TypeError, ValueError, AttributeError, SlaEstimateError) as exc:
        raise SpecError(
            "source", f"{name} is not a usable calibration file ({type(exc).__name__}: {exc})"
        ) from None
    return name


__all__ = ["merge_validate", "output_dir_field", "source_field"]
