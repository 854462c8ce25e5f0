#!/usr/bin/env bash
# The quality router's full evaluation: every held-out MMLU question through
# the compiled policy in the real runtime; the quality-cost curve, CPT(50 %)
# and CPT(80 %) against the random router and the oracle, as a Markdown table,
# bench/quality.json, bench/quality.md (also the last section of
# bench/results.md) and a plot, bench/quality.png (matplotlib).
#
#   bench/quality.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
python3 -c "import matplotlib" 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check matplotlib==3.11.2
cargo bench -q -p switchyard-tests --bench quality | tee bench/quality.md
python3 bench/quality_plot.py
# bench/results.md keeps one copy of this section, after load.sh's tables.
awk '/^## Quality router/ {exit} {print}' bench/results.md | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' >bench/results.md.new
printf '\n' >>bench/results.md.new
cat bench/quality.md >>bench/results.md.new
mv bench/results.md.new bench/results.md
