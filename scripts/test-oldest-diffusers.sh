#!/usr/bin/env bash
# The diffusers-integration tests against the oldest diffusers pyproject.toml admits (diffusers>=X),
# in a second environment (.venv-oldest-diffusers). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
oldest=$(grep -oE '"diffusers>=[0-9.]+' pyproject.toml | cut -d= -f2)
env=.venv-oldest-diffusers
python=${PYTHON:-python3}
[[ -x $env/bin/python ]] || "$python" -m venv "$env"
stamp=$env/.diffpress-installed
want="$(sha256sum pyproject.toml | cut -c1-16) $oldest"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  $env/bin/python -c "import torch" 2>/dev/null || $env/bin/pip install -q "${DIFFPRESS_TORCH:-torch==2.13.0}"
  $env/bin/pip install -q -e ".[dev]" "diffusers==$oldest"
  echo "$want" > "$stamp"
fi
echo "diffusers $($env/bin/python -c 'import diffusers; print(diffusers.__version__)') in $env"
exec $env/bin/python -m pytest -q tests/test_diffusers_backend.py tests/test_peft_lora.py "$@"
