"""``sla-estimate models``: list bundled models, and fit / distill / show regression model files.

sla-estimate models                          # Hugging Face ids AIC bundles (usable offline)
sla-estimate models fit --measurements PATH ... -o models/NAME.json
sla-estimate models distill --model M --system S --backend B ... -o models/NAME.json
sla-estimate models show NAME|PATH           # provenance and cross-validated error
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import SpecError

_COMMON_MODELS = ("meta-llama/Meta-Llama-3.1-8B", "meta-llama/Meta-Llama-3.1-70B", "Qwen/Qwen3-32B",
                  "Qwen/Qwen3-30B-A3B", "deepseek-ai/DeepSeek-V3")  # fmt: skip
_SYSTEMS = ("h100_sxm", "h200_sxm", "b200_sxm")
_BACKENDS = ("vllm", "sglang", "trtllm")


def add_models_parser(sub: Any) -> None:
    models = sub.add_parser("models", help="list bundled models; fit, distill or show regression models")
    msub = models.add_subparsers(dest="models_command", parser_class=type(models))
    fit = msub.add_parser("fit", help="fit a regression model on recorded measurements")
    fit.add_argument("--measurements", action="append", required=True,
                     help="measurements.jsonl, silicon_sample.csv or a Dynamo profile dir (repeatable)")  # fmt: skip
    fit.add_argument("--stack", help="model=...,system=...,backend=... for Dynamo profile dirs")
    fit.add_argument("--prefill-candidate", help="selected prefill engine of a Dynamo dir, e.g. TP2")
    fit.add_argument("--decode-candidate", help="selected decode engine of a Dynamo dir, e.g. TP4")
    _fit_flags(fit)
    dist = msub.add_parser("distill", help="fit a regression model on points generated from AIC")
    dist.add_argument("--model", action="append", help=f"repeatable (default: {', '.join(_COMMON_MODELS)})")
    dist.add_argument("--system", action="append", help="repeatable (default: h100_sxm, h200_sxm, b200_sxm)")
    dist.add_argument("--backend", action="append", help="repeatable (default: vllm, sglang, trtllm)")
    dist.add_argument("--no-tables", action="store_true",
                      help="no node tables of AIC's answers for the distilled engines (learned path only)")  # fmt: skip
    _fit_flags(dist)
    show = msub.add_parser("show", help="provenance and measured error of a regression model")
    show.add_argument("name", help="bundled name (e.g. aic-distilled) or path to a model file")
    show.add_argument("--json", action="store_true", help="print the provenance as JSON")


def _fit_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", "-o", required=True, help="model file to write (JSON)")
    p.add_argument("--name", help="model name recorded in the file (default: the file stem)")
    p.add_argument(
        "--no-residual", action="store_true", help="linear roofline terms only (no boosted residual)"
    )
    p.add_argument("--group-by", choices=("model", "system"), default="model", help="cross-validation folds")
    p.add_argument("--max-iter", default=150, help="boosting rounds of the residual (default 150)")
    p.add_argument("--max-leaf-nodes", default=15, help="leaves per residual tree (default 15)")
    p.add_argument("--max-depth", default=6, help="depth limit of the residual trees (default 6)")


def run_models(ns: argparse.Namespace) -> int:
    cmd = getattr(ns, "models_command", None)
    if cmd is None:
        from .model import bundled_models

        print("\n".join(bundled_models()))
        return 0
    if cmd == "show":
        return _show(ns)
    return _fit(ns)


_STACK_FIELDS = ("model", "system", "backend", "backend_version", "gemm_quant", "kvcache_quant")


def _parse_stack(text: str | None) -> Any:
    """``model=...,system=...,backend=...[,backend_version=...,gemm_quant=...,kvcache_quant=...]``, checked
    and normalised as ``load_spec`` does (model id resolved, backend/system/quantisation from their choices),
    so a Dynamo dir trains the same coefficient group and stack as a study of it would use."""
    from .model import resolve_model_name
    from .sources.base import Stack
    from .spec import KNOWN_SYSTEMS, KV_QUANT_MODES, QUANT_MODES, Backend
    from .study_file import as_choice, as_text

    if not text:
        return None
    try:
        kv = dict(item.split("=", 1) for item in text.split(","))
    except ValueError:
        raise SpecError("stack", f"expected model=...,system=...,backend=..., got {text!r}") from None
    kv = {k.strip(): v.strip() for k, v in kv.items()}
    unknown = sorted(set(kv) - set(_STACK_FIELDS))
    if unknown:
        raise SpecError("stack", f"unknown field {unknown[0]!r} (fields: {', '.join(_STACK_FIELDS)})")
    missing = [k for k in ("model", "system", "backend") if not kv.get(k)]
    if missing:
        raise SpecError("stack", f"{missing[0]} is required (model=...,system=...,backend=...), got {text!r}")
    gemm, kvq, version = (kv.get(k) or None for k in ("gemm_quant", "kvcache_quant", "backend_version"))
    try:
        model = resolve_model_name(as_text("stack model", kv["model"]))
    except SpecError as exc:
        raise SpecError("stack", str(exc)) from None
    return Stack(
        model=model,
        system=as_choice("stack system", kv["system"], KNOWN_SYSTEMS),
        backend=Backend(as_choice("stack backend", kv["backend"], tuple(b.value for b in Backend))).value,
        backend_version=as_text("stack backend_version", version) if version else None,
        gemm_quant=as_choice("stack gemm_quant", gemm, QUANT_MODES) if gemm else None,
        kvcache_quant=as_choice("stack kvcache_quant", kvq, KV_QUANT_MODES) if kvq else None,
    )


def _fit(ns: argparse.Namespace) -> int:
    from .errors import MeasurementError
    from .sources.base import Stack
    from .sources.regression.data import aic_check_points, aic_rows, aic_tables, measurement_rows
    from .sources.regression.fitting import fit_model_file
    from .sources.regression.trees import MAX_DEPTH, MAX_LEAVES, MAX_TREES
    from .study_file import as_int

    # everything the user gave is checked before a fit of minutes: sklearn's own errors are tracebacks
    params = {
        "residual": not ns.no_residual,
        "max_iter": as_int("max-iter", ns.max_iter, 1, MAX_TREES),
        "max_leaf_nodes": as_int("max-leaf-nodes", ns.max_leaf_nodes, 2, MAX_LEAVES),
        "max_depth": as_int("max-depth", ns.max_depth, 1, MAX_DEPTH),
    }
    output = _check_output(ns.output)
    name = ns.name if ns.name is not None else output.stem
    if not name.strip() or not name.isprintable():
        raise SpecError("name", f"must be non-empty printable text, got {name!r}")
    tables, checks = None, None
    if ns.models_command == "fit":
        from validate.runners.replay import ReplayRunner

        _refuse_empty(ns, ("measurements", "stack", "prefill_candidate", "decode_candidate"))
        _dynamo_flags_need_a_dir(ns)

        from .candidates import Candidate

        try:
            runner = ReplayRunner.from_paths(
                ns.measurements, stack=_parse_stack(ns.stack),
                prefill_candidate=Candidate.parse(ns.prefill_candidate) if ns.prefill_candidate else None,
                decode_candidate=Candidate.parse(ns.decode_candidate) if ns.decode_candidate else None,
            )  # fmt: skip
        except ValueError as exc:
            raise SpecError("candidate", str(exc)) from None
        except MeasurementError as exc:
            raise SpecError("measurements", str(exc)) from None
        data, skipped = measurement_rows(runner.records)
        skipped = runner.skipped + skipped  # rows the files held but the replay could not use, then records
        sources = [str(p) for p in ns.measurements]
        notes = "fitted on measurements"
    else:
        from .model import resolve_model_name
        from .spec import KNOWN_SYSTEMS, Backend
        from .study_file import as_choice

        models = _once("model", [resolve_model_name(m) for m in (ns.model or _COMMON_MODELS)])
        systems = _once("system", [as_choice("system", s, KNOWN_SYSTEMS) for s in ns.system or _SYSTEMS])
        backends = _once("backend", [as_choice("backend", b, tuple(x.value for x in Backend))
                                     for b in ns.backend or _BACKENDS])  # fmt: skip
        stacks = [Stack(m, s, b) for m in models for s in systems for b in backends]
        data, skipped = aic_rows(stacks)
        if not ns.no_tables:
            tables = aic_tables(stacks)
            checks = aic_check_points(stacks, tables)
        sources = [f"aic:{s.model}@{s.system}/{s.backend}" for s in stacks]
        notes = "distilled from AIC (aiconfigurator-core SILICON data, current backend versions)"
    if len(data) < 2 * len(set(data.backend.tolist())) + 2:
        raise SpecError("measurements", f"only {len(data)} usable rows ({len(skipped)} left out: "
                        f"{'; '.join(skipped[:3])})")  # fmt: skip
    reasons = left_out_reasons(skipped)
    why = "; ".join(f"{n} {r}" for r, n in reasons.items())
    mf = fit_model_file(data, name, params=params, group_by=ns.group_by,
                        notes=notes + (f"; {len(skipped)} rows/records left out: {why}" if skipped else ""),
                        sources=sources, tables=tables, table_checks=checks,
                        left_out={"total": len(skipped), "reasons": reasons})  # fmt: skip
    path = mf.save(output)
    print(f"wrote {path}: {len(data)} rows ({len(skipped)} left out{': ' + why if skipped else ''})")
    for note in mf.provenance.get("warnings", []):
        print(f"warning: {note}")
    print(_error_table(mf.provenance))
    if tables:
        print(_table_check(mf.provenance))
    return 0


def _refuse_empty(ns: argparse.Namespace, flags: tuple[str, ...]) -> None:
    """An empty flag value would read as not given (an empty path as the current directory): refused."""
    for flag in flags:
        value = getattr(ns, flag)
        for item in value if isinstance(value, list) else [value]:
            if item is not None and not item.strip():
                raise SpecError(flag.replace("_", "-"), "empty value")


def _dynamo_flags_need_a_dir(ns: argparse.Namespace) -> None:
    """--stack and the candidates label what a Dynamo profiling directory leaves out; jsonl and csv records
    name their own stack and engine, so without such a directory the flags would be ignored: refused."""
    if any(Path(p).is_dir() for p in ns.measurements):
        return
    for flag in ("stack", "prefill_candidate", "decode_candidate"):
        if getattr(ns, flag) is not None:
            why = "applies only to a Dynamo profiling directory; none of the --measurements is one"
            own = " (jsonl and csv records name their own stack and engine)"
            raise SpecError(flag.replace("_", "-"), why + own)


def _check_output(text: str) -> Path:
    """The model file to write, checked before the fit: not a directory nor a device, in a folder a file
    can be created in (probed with a temp file, removed at once; ``save`` creates missing folders)."""
    if not text.strip():
        raise SpecError("output", "empty path")
    path = Path(text)
    try:
        if path.exists() and not path.is_file():
            raise SpecError("output", f"{text} is {'a directory' if path.is_dir() else 'not a regular file'}")
        folder = path.parent
        while not folder.exists():
            folder = folder.parent
        if not folder.is_dir():
            raise SpecError("output", f"cannot write {text}: {folder} is not a directory")
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SpecError("output", f"cannot write {text}: {exc.strerror or exc}") from None
    return path


def _once(field: str, values: list[str]) -> list[str]:
    """Repeated flags as given, each value once (a value given twice is a mistake, not a weight)."""
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise SpecError(field, f"{twice[0]!r} given twice")
    return values


def left_out_reasons(skipped: list[str]) -> dict[str, int]:
    """How many rows were left out for each reason, most frequent first: a ``"WHERE: reason (detail)"``
    line counts under its reason without the place and the parenthesised detail."""
    import re

    counts: dict[str, int] = {}
    for line in skipped:
        reason = re.sub(r"\s*\([^()]*\)", "", line.split(": ", 1)[-1]).strip() or line
        counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _error_table(prov: dict[str, Any]) -> str:
    lines = [f"cross-validated error ({prov.get('cv_scheme', '?')}):"]
    for kind, e in sorted((prov.get("cv") or {}).items()):
        lines.append(
            f"  {kind:8} {e['rows']:6d} rows  median {e['median_abs_pct']:6.1f} %  p90 {e['p90_abs_pct']:6.1f} %"
        )
    return "\n".join(lines)


def _table_check(prov: dict[str, Any]) -> str:
    t = prov.get("tables") or {}
    head = (f"node tables: {t.get('engines', 0)} engines ({t.get('refused_by_aic', 0)} with quantities AIC "
            "refuses); read-out against AIC off the nodes:")  # fmt: skip
    lines = [head]
    for kind, e in sorted((prov.get("table_check") or {}).items()):
        if isinstance(e, dict):
            lines.append(f"  {kind:8} {e['rows']:6d} points  median {e['median_abs_pct']:6.2f} %  "
                         f"p90 {e['p90_abs_pct']:6.2f} %  max {e['max_abs_pct']:6.2f} %")  # fmt: skip
    return "\n".join(lines)


def _show(ns: argparse.Namespace) -> int:
    from .sources.regression import load_model_file

    mf = load_model_file(ns.name)
    mf.check_tables()  # the whole file is checked, node tables too, before it is shown as usable
    if ns.json:
        print(json.dumps({"name": mf.name, "path": mf.path, "sha256": mf.sha256, **mf.provenance}, indent=2))
        return 0
    p = mf.provenance
    s = p.get("training_summary", {})
    print(f"{mf.name}: {mf.path}")
    print(f"  sha256 {mf.sha256}")
    print(f"  created {p.get('created_utc')}; {p.get('notes', '')}")
    print(f"  training data sha256 {p.get('training_sha256')}: {s.get('rows')} rows {s.get('kinds')}")
    print(f"  systems {', '.join(s.get('systems', {}))}; backends {', '.join(s.get('backends', {}))}")
    print(f"  models ({len(s.get('models', {}))}): {', '.join(list(s.get('models', {}))[:8])}"
          + (" ..." if len(s.get("models", {})) > 8 else ""))  # fmt: skip
    print(f"  residual trees: {', '.join(mf.regressor.trees_) or 'none'}; packages {p.get('packages')}")
    left = p.get("left_out") or {}
    if left.get("total"):
        reasons = "; ".join(f"{n} {r}" for r, n in left.get("reasons", {}).items())
        print(f"  left out: {left['total']} ({reasons})")
    for note in p.get("warnings", []):
        print(f"  warning: {note}")
    print(_error_table(p))
    if mf.tables:
        print(_table_check(p))
    return 0
