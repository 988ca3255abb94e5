"""Files a study writes, in the layout Dynamo's SLA planner and profiler users expect.

``write_artifacts(profile, out_dir)`` writes::

    out_dir/
      report.json                                   every number, the choice, reasons, provenance
      final_config.yaml                             Dynamo 1.6: planner/profile ConfigMaps + v1beta1 DGD
                                                    (config_with_planner.yaml with dynamo_version 0.7)
      prefill_performance.png, decode_performance.png                      (plots=True)
      selected_prefill_interpolation/raw_data.npz   (+ prefill_*_interpolation.png)
      selected_decode_interpolation/raw_data.npz    (+ decode_*_interpolation.png)

For Dynamo 1.6 the npz files (and the profile-data ConfigMap) hold the planner data: points near the
workload where Dynamo's linear regressions reproduce our surfaces (``profile.planner_*_surface``);
plots and report.json keep the full surfaces. The deployment rendered is ``profile.deployment`` when
set (a sized fleet, agg or disagg), else the selected prefill + decode engines (``deployment_of``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from .atomic import atomic_output
from ..deployment import Deployment
from .npz import decode_raw_data, prefill_raw_data, write_decode_npz, write_prefill_npz
from .report import report_dict, summary_text, write_report

log = logging.getLogger(__name__)

CONFIG_WITH_PLANNER_FILE = "config_with_planner.yaml"
FINAL_CONFIG_FILE = "final_config.yaml"


def deployment_name(model: str, mode: str = "disagg") -> str:
    """A DNS-1123 name for the DynamoGraphDeployment, from the model's last path part."""
    slug = re.sub(r"[^a-z0-9]+", "-", Path(model.rstrip("/")).name.lower()).strip("-")
    return (slug[:48].rstrip("-") or "model") + f"-{mode}"


def deployment_of(profile: Any) -> Deployment:
    """``profile.deployment`` if a fleet was sized, else the selected prefill + decode engines."""
    dep = getattr(profile, "deployment", None)
    if dep is not None:
        return dep
    sel = profile.selection
    sizing = getattr(sel, "sizing", None)
    return Deployment.disagg(
        sel.best_prefill.candidate,
        sel.best_decode.candidate,
        sizing.prefill_replicas if sizing else 1,
        sizing.decode_replicas if sizing else 1,
    )


def planner_surfaces(profile: Any) -> tuple[Any, Any]:
    """The surfaces whose points go to Dynamo 1.6's planner (full surfaces when none were sampled)."""
    spec = profile.spec
    if getattr(spec, "dynamo_version", "1.6") == "0.7":
        return profile.prefill_surface, profile.decode_surface
    return (
        getattr(profile, "planner_prefill_surface", None) or profile.prefill_surface,
        getattr(profile, "planner_decode_surface", None) or profile.decode_surface,
    )


def _write_final_config(profile: Any, out_dir: Path) -> Path:
    """``final_config.yaml`` (Dynamo 1.6) for ``deployment_of(profile)``, rendered by ``artifacts.dynamo16``."""
    from .dynamo16 import final_config
    from .k8s import render_yaml

    spec = profile.spec
    dep = deployment_of(profile)
    p_surf, d_surf = planner_surfaces(profile)
    docs = final_config(
        dep,
        name=deployment_name(spec.model, dep.mode.value),
        model=spec.model,
        backend=spec.backend.value,
        ttft_ms=spec.ttft_ms,
        itl_ms=spec.itl_ms,
        prefill_raw=prefill_raw_data(p_surf),
        decode_raw=decode_raw_data(d_surf),
        planner_args=spec.planner_args,
        runtime_image=getattr(spec, "runtime_image", None),
        gpus_per_node=spec.gpus_per_node,
        max_gpu_budget=getattr(spec, "total_gpus", None),
        load_thresholds=profile.selection.bounds.load_thresholds(spec.isl),
        kv_router=getattr(spec, "kv_router", False),
        runtime_version_override=getattr(spec, "runtime_version_override", None),
        planner=getattr(spec, "planner", True),
    )
    path = out_dir / FINAL_CONFIG_FILE
    path.write_text(render_yaml(docs))
    return path


def _write_k8s(profile: Any, out_dir: Path) -> Path:
    """``config_with_planner.yaml`` for the selected engines (rendered by ``artifacts.k8s``)."""
    from .k8s import write_config_with_planner

    spec, sel = profile.spec, profile.selection
    dep = getattr(profile, "deployment", None)  # a disagg fleet from capacity planning picks the engines
    groups = {w.role.value: w for w in dep.workers} if dep is not None and dep.mode.value == "disagg" else {}
    p_group, d_group = groups.get("prefill"), groups.get("decode")
    return write_config_with_planner(
        out_dir / CONFIG_WITH_PLANNER_FILE,
        name=deployment_name(spec.model),
        namespace=None,
        model=spec.model,
        backend=spec.backend.value,
        prefill=p_group.candidate if p_group else sel.best_prefill.candidate,
        decode=d_group.candidate if d_group else sel.best_decode.candidate,
        ttft_ms=spec.ttft_ms,
        itl_ms=spec.itl_ms,
        prefill_raw=prefill_raw_data(profile.prefill_surface),
        decode_raw=decode_raw_data(profile.decode_surface),
        planner_args=spec.planner_args,
        prefill_replicas=p_group.replicas if p_group else 1,
        decode_replicas=d_group.replicas if d_group else 1,
        gpus_per_node=spec.gpus_per_node,
    )


@atomic_output  # staged, then moved into place whole: concurrent or interrupted writes never mix or tear
def write_artifacts(
    profile: Any, out_dir: str | Path, *, plots: bool = True, validation: Any = None
) -> list[Path]:
    """Write every output file of ``profile`` (a ``pipeline.Profile``) under ``out_dir``; return their paths.

    ``validation`` (optional, from ``validate``) is recorded in ``report.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    p_surf, d_surf = planner_surfaces(profile)
    legacy = getattr(profile.spec, "dynamo_version", "1.6") == "0.7"
    paths = [
        write_prefill_npz(p_surf, out),
        write_decode_npz(d_surf, out),
        _write_k8s(profile, out) if legacy else _write_final_config(profile, out),
    ]
    if plots:
        from .plots import write_plots

        paths += write_plots(profile, out)
    paths.append(write_report(profile, out, validation=validation))
    log.info("wrote %d files under %s", len(paths), out)
    return paths


__all__ = [
    "CONFIG_WITH_PLANNER_FILE",
    "FINAL_CONFIG_FILE",
    "deployment_name",
    "deployment_of",
    "planner_surfaces",
    "report_dict",
    "summary_text",
    "write_artifacts",
]
