"""The profile cache holds data, never code: hostile, tampered, foreign, old or corrupt entries are
ignored with a warning and recomputed, and a cached answer equals a fresh one."""

from __future__ import annotations

import enum
import json
import logging
import pickle
from dataclasses import dataclass, field

import numpy as np
import pytest

from estimator import cache
from estimator.artifacts.report import report_dict
from estimator.codec import CodecError, decode, encode
from estimator.pipeline import estimate
from estimator.spec import load_spec

STUDY = {"model": "meta-llama/Llama-3.1-8B", "system": "h100_sxm", "max_gpus": 2, "isl": 2000, "osl": 100}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLA_ESTIMATE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def fresh():
    spec = load_spec(**STUDY)
    return spec, estimate(spec)


def _report(profile) -> str:
    r = report_dict(profile)
    r.pop("timings_s", None)
    return json.dumps(r, sort_keys=True, default=str)


def test_round_trip_equals_a_fresh_run(fresh):
    spec, profile = fresh
    cache.save_profile(profile)
    path = cache._entry_path(cache.profile_key(spec))
    raw = path.read_bytes()
    assert raw.startswith(b"{") and b"pickle" not in raw
    loaded = cache.load_profile(spec)
    assert loaded is not None and _report(loaded) == _report(profile)
    np.testing.assert_array_equal(loaded.decode_surface.itl_ms, profile.decode_surface.itl_ms)


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _hostile_entries(spec, fresh_profile, marker):
    """(name, writer) pairs: each writes one hostile or broken entry for ``spec``'s key."""
    key = cache.profile_key(spec)
    path = cache._entry_path(key)

    def pickle_as_json():
        path.write_bytes(pickle.dumps(_Marker(str(marker))))

    def pickle_legacy():
        path.with_suffix(".pkl").write_bytes(pickle.dumps(_Marker(str(marker))))

    def tampered_ttft():
        cache.save_profile(fresh_profile)
        doc = json.loads(path.read_text())
        doc["payload"]["prefill_points"][0]["ttft_ms"] = 0.001
        path.write_text(json.dumps(doc))

    def foreign_key():
        cache.save_profile(fresh_profile)
        doc = json.loads(path.read_text())
        other = cache._entry_path("0" * 32)
        doc_key = dict(doc, key="0" * 32)
        path.write_text(json.dumps(doc_key))
        other.write_text(json.dumps(doc))

    def old_version():
        cache.save_profile(fresh_profile)
        doc = json.loads(path.read_text())
        path.write_text(json.dumps(dict(doc, format_version=1)))

    def dict_of_another_version():
        path.write_text(json.dumps({"spec": {}, "selection": [1, 2]}))

    def truncated():
        cache.save_profile(fresh_profile)
        path.write_bytes(path.read_bytes()[:500])

    def not_utf8():
        path.write_bytes(b"\xff\xfe{}")

    def deep():
        path.write_text("[" * 100_000 + "]" * 100_000)

    return {f.__name__: f for f in (pickle_as_json, pickle_legacy, tampered_ttft, foreign_key, old_version,
                                    dict_of_another_version, truncated, not_utf8, deep)}  # fmt: skip


@pytest.mark.parametrize(
    "case",
    [
        "pickle_as_json",
        "pickle_legacy",
        "tampered_ttft",
        "foreign_key",
        "old_version",
        "dict_of_another_version",
        "truncated",
        "not_utf8",
        "deep",
    ],
)
def test_hostile_entry_runs_no_code_and_is_recomputed(case, fresh, tmp_path, caplog, capsys):
    from estimator.cli import main

    spec, profile = fresh
    marker = tmp_path / "pwned"
    cache.cache_dir().mkdir(parents=True, exist_ok=True)
    _hostile_entries(spec, profile, marker)[case]()
    with caplog.at_level(logging.WARNING, logger="estimator.cache"):
        assert cache.load_profile(spec) is None
    assert not marker.exists()
    assert any("cache entry" in r.getMessage() for r in caplog.records), case
    # the CLI recomputes, prints a real answer (not the tampered one) and rewrites a good entry
    args = [f"--{k.replace('_', '-')}={v}" for k, v in STUDY.items()]
    assert main([*args, "--json", "--no-plots"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert not marker.exists()
    assert report["selection"] == json.loads(_report(profile))["selection"]
    if case != "pickle_legacy":
        assert cache.load_profile(spec) is not None


class Color(enum.Enum):
    RED = "red"


@dataclass(frozen=True, slots=True)
class Inner:
    a: np.ndarray
    c: Color = Color.RED


@dataclass(frozen=True)
class Outer:
    inner: Inner
    items: tuple[Inner, ...]
    pair: tuple[int, str]
    maybe: float | None
    either: int | str
    table: dict[int, float] = field(default_factory=dict)
    free: dict[str, object] = field(default_factory=dict)
    added_later: str = "default"  # a field someone adds: no codec change needed


def test_codec_is_driven_by_type_hints():
    v = Outer(Inner(np.arange(6.0).reshape(2, 3)), (Inner(np.array([1, 2])),), (3, "x"), None, "s",
              {1: float("inf")}, {"k": [1, "a"]})  # fmt: skip
    data = json.loads(json.dumps(encode(v, Outer), allow_nan=False))
    back = decode(Outer, data)
    assert back.pair == (3, "x") and back.either == "s" and back.table == {1: float("inf")}
    np.testing.assert_array_equal(back.inner.a, v.inner.a)
    assert back.inner.a.shape == (2, 3) and back.items[0].a.dtype == v.items[0].a.dtype
    data.pop("added_later")
    assert decode(Outer, data).added_later == "default"
    for bad in ({**data, "surprise": 1}, {**data, "pair": [3]}, {**data, "inner": {"a": {"dtype": "|O",
                "shape": [1], "data": [1]}}}, {**data, "maybe": "0.1"}):  # fmt: skip
        with pytest.raises(CodecError):
            decode(Outer, bad)
    with pytest.raises(CodecError):
        encode(Outer(Inner(np.array(["x"])), (), (1, "a"), 1.0, 1), Outer)


def test_codec_handles_the_shared_deployment_type_unchanged():
    # a type another engineer may add to Profile: round-trips with no codec change
    from estimator.candidates import Candidate, Mapping
    from estimator.deployment import Deployment

    d = Deployment.disagg(Candidate(Mapping.TP, 2), Candidate(Mapping.TEP, 4), 3, 5)
    assert decode(Deployment, json.loads(json.dumps(encode(d, Deployment)))) == d
    data = encode(d, Deployment)
    data["workers"][0]["replicas"] = 0  # the type's own checks run on decode
    with pytest.raises(CodecError):
        decode(Deployment, data)
