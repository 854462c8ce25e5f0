#!/usr/bin/env bash
# At the edge: the release binary's size, cold start with ten policies
# already compiled (a restarted node), and how fast a new policy version
# reaches a fleet of N routers polling one origin (nginx: ETag, 304s), at the
# default poll interval (2 s) and at 250 ms. Appends its section to
# bench/results.md (replacing an earlier one).
#
#   bench/edge.sh [nodes, default 10] [rounds, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
nodes=${1:-10}
rounds=${2:-10}
if ! command -v nginx >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null || { echo "nginx is missing: apt-get install nginx" >&2; exit 1; }
fi
rustup target add wasm32-wasip2 >/dev/null 2>&1
cargo build --release -p switchyard >/dev/null
cargo build --release -p switchyard-tests >/dev/null # the guests
bin=target/release/switchyard
policy=target/guests/wasm32-wasip2/release/cheapest_healthy.wasm
size=$(stat -c %s "$bin")
size_symbols=$(stat -c %s "$bin.debug") # build-support/link-gcc moves them there
mb() { python3 -c "print(f'{$1 / 1e6:.1f} MB')"; }

sync # the build's writes, flushed before they land on the measurement
cold=$(python3 bench/coldstart.py "$bin" "$policy" 10 20)
echo "cold start: $cold"
# A typical new version (a few functions new) at both intervals, a full
# recompile at 250 ms; then one node alone, without ten compiles sharing two
# cores.
propagation=$(python3 bench/propagation.py "$bin" "$policy" "$nodes" "$rounds" few 2000 250
  python3 bench/propagation.py "$bin" "$policy" "$nodes" "$rounds" all 250
  python3 bench/propagation.py "$bin" "$policy" "$nodes" "$rounds" all-uncached 250
  python3 bench/propagation.py "$bin" "$policy" 1 "$rounds" few 250
  python3 bench/propagation.py "$bin" "$policy" 1 "$rounds" all-uncached 250)
echo "$propagation"
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
row() { python3 -c 'import json,sys; r=json.loads(sys.argv[1]); counts = "(no cache)" if r["change"] == "all-uncached" else "%s / %s" % (r["compiled_per_version"], r["reused_per_version"]); print("| %s | %s | %s ms | %s | %s s | %s s | %s s |" % (r["nodes"], {"few": "1 % of functions", "all": "every function", "all-uncached": "every function, function cache off"}[r["change"]], r["interval_ms"], counts, r["p50_s"], r["p99_s"], r["max_s"]))' "$1"; }
table="## Edge: binary, cold start, propagation

\`bench/edge.sh\` on this machine ($(nproc) cores), one run.

- Binary (\`cargo build --release\`): $(mb "$size") ($size bytes); its symbols beside it in \`switchyard.debug\`: $(mb "$size_symbols").
- Cold start, from exec to the first answered chat request, ten policies in the directory with their compiled artifacts cached (a restarted node; each policy instantiated and probed at load): p50 $(field "$cold" p50_ms) ms, p90 $(field "$cold" p90_ms) ms, max $(field "$cold" max_ms) ms over $(field "$cold" runs) starts.
- Propagation: ${nodes} router processes, each with its own policy directory and compiled-policy cache, poll one nginx origin. A new version of \`cheapest-healthy\` ($(stat -c %s "$policy") bytes, $(python3 -c 'import sys; sys.path.insert(0, "bench"); from edgelib import with_edited_functions; print(with_edited_functions(open(sys.argv[1], "rb").read(), lambda n: [])[2])' "$policy") functions) is published ${rounds} times; each version has functions no node has compiled before (\`bench/propagation.py\`: a read and write back of a global added at their start, a different number each round): 1 % of them, as a source change would, or every one, as a toolchain or dependency update would. The time until a node's \`/admin/policies\` shows the new digest, over nodes x ${rounds} samples:

| nodes | edited | poll interval | compiled / reused (per node and version) | p50 | p99 | max |
|---|---|---|---|---|---|---|
$(while read -r line; do row "$line"; done <<<"$propagation")

A node compiles only the functions it has not compiled before (Cranelift's incremental cache, in memory, \`[policies] function_cache_mib\`, 64 by default); \`compiled / reused\` is what the nodes' metrics (\`switchyard_policy_compiled_functions_total\`) counted, trampolines and glue included. A whole compile of this component takes about 100 ms of wall time on this machine (\`switchyard policy check --no-cache\`); ten nodes compiling all of a new version at once share two cores, which is most of the time above the poll interval in the function-cache-off row. Nodes of a real fleet compile on their own cores: the one-node lines.
"
set_section "$table"
echo "$table"
