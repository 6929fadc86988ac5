#!/usr/bin/env bash
# The main job: compress the built-in digits model with INT8 and INT4 weights, evaluate each against
# the uncompressed model at identical seeds, and write side-by-side grids under out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
for preset in w8a16-int8 w4a16-int4; do
  echo "== diffpress compress builtin:digits --preset $preset --out out/digits-$preset --overwrite --eval"
  .venv/bin/diffpress compress builtin:digits --preset "$preset" --out "out/digits-$preset" --overwrite --eval --quiet
  echo
done
