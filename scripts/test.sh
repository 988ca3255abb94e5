#!/usr/bin/env bash
# The test command (README and .ci/run): install sla-estimate with its test extras, set up the
# real vLLM CPU server venv for the engine tests, then run the whole suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python3 -m pip install --quiet --disable-pip-version-check "torch==2.13.0" -e ".[test]"
bash scripts/setup_engine_venv.sh "${SLA_ESTIMATE_ENGINE_VENV:-$PWD/.venv-engine}"
export SLA_ESTIMATE_ENGINE_PYTHON="${SLA_ESTIMATE_ENGINE_VENV:-$PWD/.venv-engine}/bin/python"
bash scripts/setup_dynamo_venv.sh  # .venv-dynamo: Dynamo 1.6.1 for the `dynamo` tests

set +e
python3 -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then  # pytest's "no tests collected" (e.g. a -k filter matching nothing) is not a failure
    echo "pytest collected no tests" >&2
    rc=0
fi
exit "$rc"
