"""Reading a study file safely, and the strict parsers every study field goes through.

A study file is small, plain data. ``read_yaml`` refuses, in one line naming the file (and line):
files over ``MAX_STUDY_BYTES``, bytes that are not UTF-8, malformed YAML and any tag beyond plain
data (``!!python/...``), duplicate keys, nesting deeper than ``MAX_DEPTH``, and documents whose
aliases expand to more than ``MAX_NODES`` values (alias bombs, anywhere in the document) — measured
on the node graph before anything is built, so a bomb is refused in milliseconds. Size, item count and
bracket depth are checked on the text before the (slow, recursive) parser sees it. ``read_document`` is
the same reader for a document of any shape (a list of scenarios), with its limits scaled.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml

from .errors import SpecError

MAX_STUDY_BYTES = 64 << 10  # 64 KiB: a study is a few dozen lines
MAX_ITEMS = 5_000  # lines + commas before parsing (PyYAML parses ~10k values/s: bound the time too)
MAX_NODES = 20_000  # values after alias expansion
MAX_DEPTH = 32
MAX_TEXT = 4096  # characters in one string field
TRUE_WORDS = ("true", "yes")
FALSE_WORDS = ("false", "no")


class _StudyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML keeps the last one silently)."""

    field = "config"  # the field errors name

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise SpecError(
                    self.field, f"a mapping key at line {key_node.start_mark.line + 1} is not a scalar"
                ) from None
            if key in seen:
                raise SpecError(
                    self.field,
                    f"duplicate key {str(key)[:80]!r} at line {key_node.start_mark.line + 1} "
                    f"(first at line {seen[key]}) in {self.name}",
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: yaml.Node, path: str, field: str, max_nodes: int) -> None:
    """Count values with aliases expanded and the nesting depth; raise past the limits."""
    sizes: dict[int, int] = {}
    depths: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in sizes:
            continue
        children = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        if not done:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            continue
        sizes[id(node)] = 1 + sum(sizes.get(id(c), 0) for c in children)
        depths[id(node)] = 1 + max((depths.get(id(c), 0) for c in children), default=0)
        if sizes[id(node)] > max_nodes:
            raise SpecError(field, f"{path} expands to more than {max_nodes} values (aliases?); refused")
        if depths[id(node)] > MAX_DEPTH:
            raise SpecError(field, f"{path} nests deeper than {MAX_DEPTH} levels; refused")


def _flow_depth(text: str) -> int:
    """Deepest nesting of [ and { outside quotes and comments (the parser recurses per level)."""
    depth = deepest = 0
    quote = ""
    prev = "\n"
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if quote:
            if c == quote:
                quote = ""
            elif c == "\\" and quote == '"':
                i += 1
        elif c in "'\"":
            quote = c
        elif c == "#" and prev in " \t\n":
            j = text.find("\n", i)
            i = n if j < 0 else j
            c = "\n"
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth = max(0, depth - 1)
        elif c == "\n":
            quote = ""
        prev = c
        i += 1
    return deepest


def read_document(path: str | Path, field: str = "config", scale: int = 1) -> Any:
    """A small YAML (or JSON) document of any shape, read as safely as a study file; None when empty.

    ``scale`` multiplies the size limits: a file of scenarios holds many studies.
    """
    p = Path(path)
    max_bytes, max_items, max_nodes = MAX_STUDY_BYTES * scale, MAX_ITEMS * scale, MAX_NODES * scale
    try:
        size = p.stat().st_size
        if not p.is_file():
            raise SpecError(field, f"{path} is not a file")
        if size > max_bytes:
            raise SpecError(field, f"{path} is {size} bytes; a {field} file may hold at most {max_bytes}")
        data = p.read_bytes()
    except OSError as exc:
        raise SpecError(field, f"cannot read {path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SpecError(field, f"{path} line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x})") from None
    items = text.count("\n") + text.count(",")
    if items > max_items:
        raise SpecError(field, f"{path} holds more than {max_items} lines and items; refused")
    if _flow_depth(text) > MAX_DEPTH:
        raise SpecError(field, f"{path} nests deeper than {MAX_DEPTH} levels; refused")
    loader = _StudyLoader(text)
    loader.name = str(path)
    loader.field = field
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, str(path), field, max_nodes)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SpecError(field, f"malformed YAML in {path}{where}") from None
    except RecursionError:
        raise SpecError(field, f"{path} nests deeper than {MAX_DEPTH} levels; refused") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a study file into a mapping of fields; anything unsafe or malformed is a SpecError."""
    doc = read_document(path)
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise SpecError("config", f"{path} must hold a mapping of study fields, got {type(doc).__name__}")
    bad = [k for k in doc if not isinstance(k, str)]
    if bad:
        raise SpecError("config", f"{path}: field names must be strings, got {bad[0]!r}")
    return doc


class DuplicateKey(ValueError):
    """A key given twice in one JSON object."""


def unique_keys(pairs: list[tuple[str, Any]], error: type[Exception] = DuplicateKey) -> dict[str, Any]:
    """``json.loads``'s ``object_pairs_hook``: a key given twice raises ``error`` (json keeps the last one
    silently, and which one counts is not ours to guess)."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise error(f"duplicate key {str(k)[:80]!r}")
        out[k] = v
    return out


def read_json(field: str, path: str | Path, max_bytes: int = 64 << 20) -> Any:
    """A JSON file users hand us (calibration, model config): size, UTF-8 and syntax errors name the file."""
    import json

    p = Path(path)
    try:
        if p.stat().st_size > max_bytes:
            raise SpecError(field, f"{path} is larger than {max_bytes} bytes")
        data = p.read_bytes()
    except OSError as exc:
        raise SpecError(field, f"cannot read {path}: {exc.strerror}") from None
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SpecError(field, f"{path} line {line}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise SpecError(field, f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise SpecError(field, f"{path}: JSON nested too deeply") from None


# ---- strict parsers: every study field goes through one ------------------------------------------
def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def as_int(name: str, v: Any, lo: int = 1, hi: int | None = None) -> int:
    """An integer in [lo, hi] from an int, an integral float or its text (ASCII only); NaN/inf/1e400 are
    errors."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise SpecError(name, f"expected an integer, got {_show(v)}")
    if isinstance(v, str) and not v.isascii():  # int() and float() take ٣ and ３ too
        raise SpecError(name, f"expected an integer in ASCII digits, got {_show(v)}")
    if isinstance(v, int):
        i = v
    else:
        try:
            i = int(v) if isinstance(v, str) and v.strip().lstrip("+-").isdigit() else None
            f = float(v) if i is None else float(i)
        except (ValueError, OverflowError):
            raise SpecError(name, f"expected an integer, got {_show(v)}") from None
        if not math.isfinite(f):
            raise SpecError(name, f"must be a finite integer, got {_show(v)}")
        if i is None:
            if f != int(f):
                raise SpecError(name, f"expected an integer, got {_show(v)}")
            i = int(f)
    if i < lo or (hi is not None and i > hi):
        raise SpecError(name, f"{_show(i)} is out of range [{lo}, {hi if hi is not None else '∞'}]")
    return i


def as_float(name: str, v: Any, positive: bool = True, hi: float | None = None) -> float:
    """A finite number (> 0 unless ``positive`` is False, ≤ ``hi`` when given); text in ASCII only."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise SpecError(name, f"expected a number, got {_show(v)}")
    if isinstance(v, str) and not v.isascii():
        raise SpecError(name, f"expected a number in ASCII digits, got {_show(v)}")
    try:
        f = float(v)
    except (ValueError, OverflowError):
        raise SpecError(name, f"expected a number, got {_show(v)}") from None
    if not math.isfinite(f):
        raise SpecError(name, f"must be finite, got {_show(v)}")
    if positive and not f > 0:
        raise SpecError(name, f"must be > 0, got {_show(v)}")
    if hi is not None and f > hi:
        raise SpecError(name, f"{f:g} is beyond the bound of {hi:g}")
    return f


NULL_IS_NO_VALUE = "null is not a value; remove the key to use the default"


def refuse_nulls(doc: dict[str, Any], nullable: Collection[str] = (), prefix: str = "") -> None:
    """YAML reads ``key:`` and ``key: null`` as None, which would read as "not given" and fall back to the
    default without a word: refused for every key but those whose value may be none (``nullable``)."""
    for k, v in doc.items():
        if v is None and k not in nullable:
            raise SpecError(f"{prefix}{k}", NULL_IS_NO_VALUE)


def as_bool(name: str, v: Any) -> bool:
    """true/false (YAML booleans, or the words true/false/yes/no in any case); anything else is an error."""
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return v.strip().lower() in TRUE_WORDS
    raise SpecError(name, f"expected true or false, got {_show(v)}")


def as_text(name: str, v: Any, max_len: int = MAX_TEXT) -> str:
    """A non-empty string (numbers are accepted as their text, e.g. a version 0.11)."""
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise SpecError(name, f"expected a string, got {type(v).__name__}")
    if isinstance(v, float) and not math.isfinite(v):  # YAML .nan / .inf: no name, path or version
        raise SpecError(name, f"expected a string, got {v!r}")
    s = str(v)
    if not s.strip():
        raise SpecError(name, "is empty")
    if len(s) > max_len or "\x00" in s:
        raise SpecError(name, f"is not a plausible value ({len(s)} characters)")
    return s


def as_choice(name: str, v: Any, allowed: tuple[str, ...]) -> str:
    s = as_text(name, v, 64).lower()
    if s not in allowed:
        raise SpecError(name, f"{_show(v)} is not one of {', '.join(allowed)}")
    return s


__all__ = ["MAX_DEPTH", "MAX_ITEMS", "MAX_NODES", "MAX_STUDY_BYTES", "NULL_IS_NO_VALUE", "as_bool",
           "as_choice", "as_float", "as_int", "as_text", "read_document", "read_json", "read_yaml",
           "refuse_nulls"]  # fmt: skip
