"""``sla-estimate``: parse flags (and an optional YAML study) into a Spec, run the pipeline, write artifacts.

Exit codes: 0 ok; 1 ``--strict`` and the SLA is not met; 2 bad input or a failed study (one line on
stderr); 130 interrupted; 141 (128 + SIGPIPE, what a shell shows for a tool the signal ends) when the
reader of stdout went away, e.g. ``| head -1``: quietly, as Python's docs advise ("Note on SIGPIPE").
Only SlaEstimateError is caught: anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .errors import SlaEstimateError, SpecError

log = logging.getLogger("estimator")
COMMANDS = ("profile", "validate", "plan", "models")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line with exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"sla-estimate: error: {message}\n")


def _study_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("study (flags override the --config file; unset fields use the default study)")
    g.add_argument("--config", help="YAML file with study fields (same names as the flags, snake_case)")
    g.add_argument("--model", help="AIC bundled Hugging Face id or a local directory with config.json")
    g.add_argument("--system", help="AIC system name, e.g. h100_sxm, h200_sxm, b200_sxm")
    g.add_argument("--backend", help="vllm | sglang | trtllm")
    g.add_argument("--backend-version", help="AIC data version (default: AIC's current)")
    g.add_argument("--isl", help="input sequence length, tokens")
    g.add_argument("--osl", help="output sequence length, tokens")
    g.add_argument("--ttft", help="TTFT target, ms")
    g.add_argument("--itl", help="ITL target, ms")
    g.add_argument("--min-gpus", help="smallest GPUs per engine (powers of two in [min, max])")
    g.add_argument("--max-gpus", help="largest GPUs per engine")
    g.add_argument("--gpus", help="explicit comma-separated GPUs per engine, e.g. 1,2,4")
    g.add_argument("--gpus-per-node", help="GPUs per node (engines never span nodes)")
    g.add_argument("--gemm-quant", help="override GEMM quantisation (e.g. fp8, bfloat16)")
    g.add_argument("--kvcache-quant", help="override KV-cache quantisation (e.g. fp8)")
    g.add_argument("--max-context-tokens", help="cap the context the surfaces span (default: the model's)")
    g.add_argument("--request-rate", help="requests/s to size prefill/decode replicas for")
    g.add_argument("--source", help="aic (default) | roofline | regression:NAME|PATH | path to a calibration JSON")
    g.add_argument("--num-alternatives", help="alternatives to print per phase (default 3)")
    c = p.add_argument_group("decisions under uncertainty")
    c.add_argument(
        "--confidence", metavar="LEVEL",
        help="pick the best engine (plan: size the cheapest fleet) whose probability of meeting every "
             "target, from the source's own predictive (a calibration's posterior), is >= LEVEL, e.g. 0.9",
    )  # fmt: skip
    o = p.add_argument_group("output")
    o.add_argument(
        "--output-dir", "-o",
        help="write report.json, the Dynamo artifacts (final_config.yaml; 0.7: config_with_planner.yaml), "
             "npz and plots here",
    )  # fmt: skip
    o.add_argument("--no-plots", dest="plots", action="store_const", const=False, help="skip PNG files")
    o.add_argument("--strict", action="store_const", const=True, help="exit 1 when the SLA is not met")
    o.add_argument(
        "--no-cache", dest="cache", action="store_const", const=False, help="ignore the profile cache"
    )
    o.add_argument("--json", action="store_true", help="print report.json to stdout instead of the summary")
    o.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    d = p.add_argument_group("Dynamo hand-over")
    d.add_argument("--dgdr", help="read the study from a DynamoGraphDeploymentRequest (nvidia.com/v1beta1) YAML")
    d.add_argument("--dynamo-version", help="artifact layout: 1.6 (final_config.yaml, default) | 0.7 (legacy)")
    d.add_argument("--runtime-image", help="image tag (e.g. 1.6.1) or reference whose registry/tag every image uses")
    p.epilog = (
        "Planner flags: any --planner-<field>=<value> goes into planner_config.json (Dynamo 1.6) "
        "or to the Planner as --<field>=<value> (--dynamo-version 0.7)."
    )


def _validate_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("validation")
    g.add_argument("--runner", help="replay | endpoint | local | k8s | gpu (default replay)")
    g.add_argument(
        "--measurements", action="append", help="recorded measurements for the replay runner (repeatable)"
    )
    g.add_argument("--budget", help="points to measure in total (default 8)")
    g.add_argument("--max-points-per-engine", help="points per engine (default 4)")
    g.add_argument(
        "--until-confident", nargs="?", const="0.9", metavar="LEVEL",
        help="measure one point at a time, re-ranking with bands, until the recommendation is this sure "
        "(default 0.9) or the budget is spent",
    )  # fmt: skip
    g.add_argument(
        "--tie-tolerance", metavar="FRACTION",
        help="with --until-confident: an engine whose tokens/s/GPU is within this fraction of the best's "
        "counts as right (default 0.02)",
    )  # fmt: skip
    g.add_argument(
        "--runner-option", action="append", default=[], metavar="KEY=VALUE",
        help="runner setting, e.g. url=http://host:8000, namespace=dynamo, python=/path/bin/python",
    )  # fmt: skip


def _plan_help(plan: argparse.ArgumentParser) -> None:
    """`plan` shares the study flags; its help leaves out those it refuses (``cli_plan._NOT_FOR_PLAN``, with
    the reason when given) and says what its -o and --json produce."""
    from .cli_plan import _NOT_FOR_PLAN

    for action in plan._actions:
        if action.dest in _NOT_FOR_PLAN:
            action.help = argparse.SUPPRESS
        elif action.dest == "output_dir":
            action.help = "write plan.json, plan.csv, plan.md and pareto.png here"
        elif action.dest == "json":
            action.help = "print the plan document (JSON) instead of the table"
    plan.epilog = None
    for group in plan._action_groups:
        if group.title == "Dynamo hand-over":
            group.description = None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sla-estimate", description="Simulator-first SLA profiler for LLM serving.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    prof = sub.add_parser("profile", help="estimate, select and write artifacts (default command)")
    _study_flags(prof)
    val = sub.add_parser("validate", help="profile, measure a few points, calibrate, then recommend")
    _study_flags(val)
    _validate_flags(val)
    plan = sub.add_parser("plan", help="capacity planning: ranked agg/disagg fleets for a load, with cost")
    _study_flags(plan)
    from .cli_plan import add_plan_flags

    add_plan_flags(plan)
    _plan_help(plan)
    from .cli_models import add_models_parser

    add_models_parser(sub)  # models: list, fit, distill, show (estimator/cli_models.py)
    return parser


def _split_planner_args(extra: list[str]) -> list[str]:
    """``--planner-x=v`` / ``--planner-x v`` -> ``x=v``; anything else is an unknown flag."""
    out, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--planner-"):
            raise SpecError(arg.split("=")[0].lstrip("-"), "unknown flag")
        flag = arg[len("--planner-") :]
        if not flag.partition("=")[0].strip():
            raise SpecError(
                "planner_args", f"{arg[:60]!r} has an empty flag name (use --planner-<flag>=<value>)"
            )
        if "=" in flag:
            out.append(flag)
        elif i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            out.append(f"{flag}={extra[i + 1]}")
            i += 1
        else:
            out.append(f"{flag}=true")
        i += 1
    return out


def _overrides(ns: argparse.Namespace, planner: list[str]) -> dict[str, Any]:
    keys = (
        "model", "system", "backend", "backend_version", "isl", "osl", "ttft", "itl", "min_gpus", "max_gpus",
        "gpus", "gpus_per_node", "gemm_quant", "kvcache_quant", "max_context_tokens", "request_rate", "source",
        "num_alternatives", "output_dir", "plots", "strict", "cache", "confidence",
        "dgdr", "dynamo_version", "runtime_image",
    )  # fmt: skip
    out = {k: getattr(ns, k, None) for k in keys}
    empty = next((k for k, v in out.items() if isinstance(v, str) and not v.strip()), None)
    if empty is not None:  # an empty value would fall back to the default without a word
        raise SpecError(empty, "empty value")
    if planner:
        out["planner_args"] = planner
    if ns.command == "validate":
        v: dict[str, Any] = {}
        for key in ("runner", "measurements", "budget", "max_points_per_engine", "until_confident",
                    "tie_tolerance"):
            if getattr(ns, key, None) is not None:
                v[key] = getattr(ns, key)
        opts = {}
        for item in ns.runner_option:
            if "=" not in item:
                raise SpecError("runner_option", f"expected KEY=VALUE, got {item!r}")
            k, _, val = item.partition("=")
            opts[k.strip()] = val
        if opts:
            v["runner_options"] = opts
        out["validate"] = v or True
    return out


def _run_profile(spec: Any, as_json: bool) -> int:
    from . import cache as profile_cache
    from .pipeline import estimate

    t0 = time.perf_counter()
    if spec.plots and spec.output_dir:  # plot processes import matplotlib while the estimate runs
        from .artifacts.plot_workers import prestart

        prestart()
    profile = profile_cache.load_profile(spec) if spec.cache else None
    cached = profile is not None
    if profile is None:
        profile = estimate(spec)
        if spec.cache:
            profile_cache.save_profile(profile)
    return _finish(profile, as_json, t0, cached)


def _finish(profile: Any, as_json: bool, t0: float, cached: bool, validation: Any = None) -> int:
    from .artifacts import write_artifacts
    from .artifacts.report import report_dict, summary_text

    spec = profile.spec
    if spec.output_dir:
        write_artifacts(profile, Path(spec.output_dir), plots=spec.plots, validation=validation)
    if as_json:
        import json

        print(json.dumps(report_dict(profile, validation=validation), indent=2))
    else:
        print(summary_text(profile, validation=validation))
        where = f"; wrote {spec.output_dir}" if spec.output_dir else ""
        print(f"({'cached, ' if cached else ''}{time.perf_counter() - t0:.2f} s{where})")
    return 1 if spec.strict and not _load_met(profile.selection, spec.request_rate) else 0


def _load_met(sel, request_rate: float | None) -> bool:
    """The engines meet the SLA, and a sized fleet meets it at the rate asked (not a GPU budget's less)."""
    z = sel.sizing
    if z is None:
        return sel.sla_met
    return sel.sla_met and z.meets_sla and (not request_rate or z.request_rate >= request_rate * (1 - 1e-9))


def _run_validate(spec: Any, as_json: bool) -> int:
    from validate.workflow import DEFAULT_OUTPUT_DIR, run_validation

    from .measurements import MeasurementStore

    t0 = time.perf_counter()
    store = MeasurementStore(Path(spec.output_dir or DEFAULT_OUTPUT_DIR) / "measurements.jsonl")
    with store.exclusive():  # one run per output directory, from the estimate to the last artifact
        calibrated_profile, result = run_validation(spec)
        return _finish(calibrated_profile, as_json, t0, cached=False, validation=result)


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI; a closed stdout (``| head -1``) ends it quietly with 141, not a BrokenPipeError traceback."""
    try:
        rc = _main(argv)
        sys.stdout.flush()  # a pipe closed early fails here, inside the handler, not at interpreter exit
        return rc
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE


EXIT_BROKEN_PIPE = 128 + 13  # 128 + SIGPIPE


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush of what is left buffered cannot fail."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test's capture): nothing to flush
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["profile", *argv]
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(ns, "verbose", False) else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if ns.command == "models":
            from .cli_models import run_models

            if extra:
                raise SpecError(extra[0].split("=")[0].lstrip("-") or extra[0], "unknown flag for `models`")
            return run_models(ns)
        if ns.command == "plan":
            from .cli_plan import run_plan

            if _split_planner_args(extra):  # plan writes no planner config: a planner flag is refused
                raise SpecError("planner_args", "`plan` writes no planner config (--planner-* flags)")
            return run_plan(ns)
        from .spec import load_spec

        spec = load_spec(ns.config, **_overrides(ns, _split_planner_args(extra)))
        if ns.command == "validate":
            return _run_validate(spec, ns.json)
        return _run_profile(spec, ns.json)
    except SlaEstimateError as exc:
        one_line = (
            str(exc).encode("unicode_escape", "backslashreplace").decode("ascii")
            if not str(exc).isprintable()
            else str(exc)
        )
        print(f"sla-estimate: error: {one_line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sla-estimate: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
