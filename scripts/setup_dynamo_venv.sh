#!/usr/bin/env bash
# Create the venv that runs NVIDIA Dynamo 1.6.1's own planner code on our output (`dynamo` tests).
#
#   scripts/setup_dynamo_venv.sh [DIR]     DIR defaults to .venv-dynamo in the repository root
#   DYNAMO_PROFILER=1 scripts/setup_dynamo_venv.sh   also the profiler's rapid-mode deps (benchmarks/dynamo_rapid.py)
#
# ai-dynamo==1.6.1 goes in --no-deps (its GPU/engine deps are not needed for the planner), with the few
# packages its planner modules import. Its `aisimulate==0.13.0` dependency is a download stub that fails
# offline; aisimulate is the renamed AI Configurator, so aiconfigurator-core==0.12.0 (and, for the
# profiler, aiconfigurator==0.12.0) plus an import alias (dynamo_venv/sla_estimate_aliases.py, loaded by a
# .pth file) stand in. The wheel imports a repo-root `deploy` package it does not ship: dynamo_venv/deploy
# is a stand-in. Idempotent: if DIR already imports what the tests use, it does nothing (no network).
# Point the tests at it with SLA_ESTIMATE_DYNAMO_PYTHON=DIR/bin/python (the default path is used if unset).
set -euo pipefail

DYNAMO_VERSION="1.6.1"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-$ROOT/.venv-dynamo}"
PY_BIN="${PYTHON:-python3.11}"
command -v "$PY_BIN" >/dev/null 2>&1 || PY_BIN=python3
PLANNER_DEPS=(
    "ai-dynamo-runtime==$DYNAMO_VERSION" "aiconfigurator-core==0.12.0" "pydantic>=2.5,<3" "pyyaml>=6"
    "numpy>=1.26" "scikit-learn>=1.4" "msgspec>=0.19" "kubernetes>=32.0.1,<33"
)
PROFILER_DEPS=("aiconfigurator==0.12.0" "pandas>=2.2" "zstandard>=0.23,<1" "transformers>=4.56" "tqdm" "aiohttp" "prometheus-client" "pyzmq" "redis")

check() {
    [ -x "$DIR/bin/python" ] && "$DIR/bin/python" - "$DYNAMO_VERSION" "${DYNAMO_PROFILER:-0}" <<'PY' >/dev/null 2>&1
import importlib.metadata as md, sys
assert md.version("ai-dynamo") == sys.argv[1], md.version("ai-dynamo")
from dynamo.planner.config.planner_config import PlannerConfig  # noqa: F401
from dynamo.planner.core.perf_model import DecodeRegressionModel, PrefillRegressionModel  # noqa: F401
from dynamo.planner.monitoring.perf_metrics import _convert_profiling_data_to_fpms  # noqa: F401
if sys.argv[2] == "1":
    import dynamo.profiler.profile_sla  # noqa: F401
PY
}

if check; then
    echo "dynamo venv OK: $DIR"
    exit 0
fi

echo "creating dynamo venv in $DIR (ai-dynamo==$DYNAMO_VERSION --no-deps + planner deps)"
[ -x "$DIR/bin/python" ] || "$PY_BIN" -m venv "$DIR"
PIP=("$DIR/bin/python" -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" --no-deps "ai-dynamo==$DYNAMO_VERSION" "ai-dynamo-runtime==$DYNAMO_VERSION"
"${PIP[@]}" "${PLANNER_DEPS[@]}"
if [ "${DYNAMO_PROFILER:-0}" = "1" ]; then
    "${PIP[@]}" "${PROFILER_DEPS[@]}"
fi
SITE="$("$DIR/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cp "$ROOT/scripts/dynamo_venv/sla_estimate_aliases.py" "$SITE/"
echo "import sla_estimate_aliases" > "$SITE/sla_estimate_aliases.pth"
rm -rf "$SITE/deploy" && cp -r "$ROOT/scripts/dynamo_venv/deploy" "$SITE/deploy"

if ! check; then
    echo "dynamo venv in $DIR does not import Dynamo's planner modules" >&2
    "$DIR/bin/python" -c "from dynamo.planner.config.planner_config import PlannerConfig" >&2 || true
    exit 1
fi
echo "dynamo venv ready: $DIR"
