#!/usr/bin/env bash
# Create or update the project's virtual environment (.venv) with the CPU build of torch.
# Idempotent: does nothing when pyproject.toml has not changed since the last set-up.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=${MI_LLM_VENV:-.venv}
STAMP="$VENV/.mi-llm-setup"
WANT="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then exit 0; fi
echo "[setup] creating/updating $VENV (one-time, ~2 min)" >&2
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# CPU torch first and explicitly, so nothing later pulls a multi-GB CUDA build.
# On a machine without a local CPU wheel, set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu.
"$VENV/bin/python" -m pip install -q "torch==${MI_LLM_TORCH:-2.13.0}"
"$VENV/bin/python" -m pip install -q -e ".[dev]"
"$VENV/bin/python" -m ipykernel install --user --name mi-llm --display-name "mi-llm (.venv)" >/dev/null
echo "$WANT" > "$STAMP"
echo "[setup] done" >&2
