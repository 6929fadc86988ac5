#!/usr/bin/env bash
# Create .venv with diffpress and its test dependencies. Idempotent: reinstalls only when
# pyproject.toml changes. Torch: a CPU build by default (DIFFPRESS_TORCH overrides the pip spec,
# e.g. DIFFPRESS_TORCH=torch to take whatever build pip picks on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
stamp=.venv/.diffpress-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  .venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q "${DIFFPRESS_TORCH:-torch==2.13.0}"
  .venv/bin/pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi
