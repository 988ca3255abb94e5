"""Files a study writes, in the layout Dynamo's SLA planner and profiler users expect.

``write_artifacts(profile, out_dir)`` writes::

    out_dir/
      report.json                                   every number, the choice, reasons, provenance
      config_with_planner.yaml                      ConfigMap + DynamoGraphDeployment (artifacts.k8s)
      prefill_performance.png, decode_performance.png                      (plots=True)
      selected_prefill_interpolation/raw_data.npz   (+ prefill_*_interpolation.png)
      selected_decode_interpolation/raw_data.npz    (+ decode_*_interpolation.png)
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from .atomic import atomic_output
from .npz import decode_raw_data, prefill_raw_data, write_decode_npz, write_prefill_npz
from .report import report_dict, summary_text, write_report

log = logging.getLogger(__name__)

CONFIG_WITH_PLANNER_FILE = "config_with_planner.yaml"


def deployment_name(model: str) -> str:
    """A DNS-1123 name for the DynamoGraphDeployment, from the model's last path part."""
    slug = re.sub(r"[^a-z0-9]+", "-", Path(model.rstrip("/")).name.lower()).strip("-")
    return (slug[:48].rstrip("-") or "model") + "-disagg"


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
    paths = [
        write_prefill_npz(profile.prefill_surface, out),
        write_decode_npz(profile.decode_surface, out),
        _write_k8s(profile, out),
    ]
    if plots:
        from .plots import write_plots

        paths += write_plots(profile, out)
    paths.append(write_report(profile, out, validation=validation))
    log.info("wrote %d files under %s", len(paths), out)
    return paths


__all__ = ["CONFIG_WITH_PLANNER_FILE", "deployment_name", "report_dict", "summary_text", "write_artifacts"]
