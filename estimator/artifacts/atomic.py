"""Write a study's files so that an output directory always holds one whole, untorn set.

``atomic_output`` wraps a writer ``fn(profile, out_dir, ...) -> list[Path]``: the writer fills a
staging directory inside ``out_dir`` (same file system, so renames are atomic), then, holding an
exclusive ``flock`` on ``out_dir`` itself, every file is renamed into place and the files a
previous study wrote there but this one did not (recorded in ``.sla-estimate-artifacts.json``) are
removed. Two profiles into one directory therefore leave the complete set of whichever finished
last, never a mix and never a half-written PNG; a crash leaves the previous set and a staging
directory, which the next write removes. Files the writer does not produce (``measurements.jsonl``,
``calibration.json``) are never touched.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import SpecError

MANIFEST_FILE = ".sla-estimate-artifacts.json"
STAGING_PREFIX = ".staging-"
STALE_STAGING_S = 3600.0


def prepare_dir(out_dir: str | Path) -> Path:
    """Create ``out_dir``; a path that cannot be a directory is a one-line SpecError naming it."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise SpecError("output_dir", f"{out} exists and is not a directory") from None
    except NotADirectoryError:
        raise SpecError("output_dir", f"{out} is under a file, not a directory") from None
    except OSError as exc:
        raise SpecError("output_dir", f"cannot create {out}: {exc.strerror}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise SpecError("output_dir", f"{out} is not writable")
    return out


@contextmanager
def dir_lock(out: Path) -> Iterator[None]:
    """Exclusive flock on the output directory itself (blocks until another writer has moved its files in)."""
    try:
        fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise SpecError("output_dir", f"cannot lock {out}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _clean_stale_staging(out: Path) -> None:
    now = time.time()
    for d in out.glob(STAGING_PREFIX + "*"):
        try:
            if d.is_dir() and now - d.stat().st_mtime > STALE_STAGING_S:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def _commit(stage: Path, out: Path, written: list[Path]) -> list[Path]:
    """Move every staged file into ``out`` under the lock; return ``written`` as final paths."""
    rel = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
    manifest = out / MANIFEST_FILE
    with dir_lock(out):
        try:
            old = json.loads(manifest.read_text()) if manifest.is_file() else []
        except (OSError, ValueError):
            old = []
        for name in rel:
            dest = out / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / name, dest)
        for name in set(old if isinstance(old, list) else []) - set(rel):
            if isinstance(name, str) and ".." not in Path(name).parts and not Path(name).is_absolute():
                (out / name).unlink(missing_ok=True)
        tmp = manifest.with_name(f"{MANIFEST_FILE}.{os.getpid()}")
        tmp.write_text(json.dumps(rel))
        os.replace(tmp, manifest)
    root = stage.resolve()
    return [out / Path(p).resolve().relative_to(root) for p in written]


def atomic_output(fn: Callable[..., list[Path]]) -> Callable[..., list[Path]]:
    """Decorator for ``write_artifacts(profile, out_dir, ...)``: stage, then move the whole set into place."""

    @functools.wraps(fn)
    def wrapper(profile: Any, out_dir: str | Path, *args: Any, **kwargs: Any) -> list[Path]:
        out = prepare_dir(out_dir)
        _clean_stale_staging(out)
        try:
            stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
        except OSError as exc:
            raise SpecError("output_dir", f"cannot write in {out}: {exc.strerror}") from None
        try:
            written = fn(profile, stage, *args, **kwargs)
            return _commit(stage, out, written)
        except OSError as exc:
            raise SpecError("output_dir", f"writing {out} failed: {exc.strerror or exc}") from None
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    return wrapper


__all__ = ["MANIFEST_FILE", "atomic_output", "dir_lock", "prepare_dir"]
