#!/usr/bin/env bash
# Create the benchmark-only alibi-detect venv at bench/drift/.venv-alibi.
# Idempotent: does nothing when the stamp file is newer than requirements-alibi.txt.
# Usage: bash bench/drift/setup_alibi_env.sh [--force]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv-alibi"
REQS="$HERE/requirements-alibi.txt"
STAMP="$VENV/.installed.stamp"
PYTHON="${PYTHON:-python3.11}"

# Telemetry / network noise off (install time and for anything the venv runs later).
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export DO_NOT_TRACK=1 DISABLE_TELEMETRY=1
export TF_CPP_MIN_LOG_LEVEL=3
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

if [[ "${1:-}" == "--force" ]]; then
    rm -f "$STAMP"
fi

if [[ -f "$STAMP" && "$STAMP" -nt "$REQS" && -x "$VENV/bin/python" ]]; then
    echo "alibi env up to date: $VENV"
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi

# torch==2.14.1 comes from local disk (pip's global constraints cap torch at it).
"$VENV/bin/python" -m pip install -r "$REQS"

"$VENV/bin/python" - <<'PY'
import warnings
warnings.filterwarnings("ignore")
import alibi_detect, numpy, torch
from alibi_detect.cd import MMDDrift  # noqa: F401
assert numpy.__version__.startswith("1."), numpy.__version__
assert torch.__version__.split("+")[0] == "2.14.1", torch.__version__
print(f"alibi-detect {alibi_detect.__version__}, torch {torch.__version__}, numpy {numpy.__version__}")
PY

touch "$STAMP"
echo "alibi env ready: $VENV"
