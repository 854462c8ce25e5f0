#!/usr/bin/env bash
# Load benchmark: the mock upstream called directly against the same calls
# through the router, in one run, with wrk (Debian package `wrk`).
#
#   bench/load.sh [seconds per run, default 10]
#
# Prints a Markdown table and writes it to bench/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
cargo build --release -p switchyard -p bare-proxy >/dev/null
bin=target/release/switchyard
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

start() { # start NAME ARGS... ; sets $url_NAME from the address the process prints
  local name=$1; shift
  "${bin}" "$@" >"$work/$name.out" 2>"$work/$name.err" &
  for _ in $(seq 100); do [ -s "$work/$name.out" ] && break; sleep 0.1; done
  printf -v "url_$name" '%s' "$(awk '{print $NF; exit}' "$work/$name.out")"
}

start mock mock-upstream --listen 127.0.0.1:0 --tokens 16
cat >"$work/router.toml" <<TOML
[[routes]]
model = "auto"
policy = "cheapest-healthy"

[[backends]]
name = "upstream"
provider = "openai"
base_url = "$url_mock/v1"
model = "gpt-bench"
TOML
RUST_LOG=warn start router serve --config "$work/router.toml" --listen 127.0.0.1:0
bin=target/release/bare-proxy start bare 127.0.0.1:0 "$url_mock/v1"

script() { # script MODEL -> path of a wrk Lua script POSTing a chat request
  local f="$work/$1.lua"
  cat >"$f" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"$1","messages":[{"role":"user","content":"Summarise the plot of Hamlet in one line."}]}'
LUA
  echo "$f"
}

run() { # run URL MODEL CONNECTIONS -> "p50_us p99_us rps"
  local out; out=$(wrk -t1 -c"$3" -d"${secs}s" --latency -s "$(script "$2")" "$1/v1/chat/completions")
  echo "$out" | awk '
    function us(v) { if (v ~ /us$/) return v+0; if (v ~ /ms$/) return v*1000; if (v ~ /s$/) return v*1000000; return v }
    $1=="50%" {p50=us($2)} $1=="99%" {p99=us($2)} $1=="Requests/sec:" {rps=$2}
    /Non-2xx/ {bad=$NF}
    END { if (bad) { print "non-2xx answers: " bad > "/dev/stderr"; exit 1 } printf "%d %d %d\n", p50, p99, rps }'
}

# Warm up connections, caches and the policy's instances.
wrk -t1 -c8 -d2s -s "$(script auto)" "$url_router/v1/chat/completions" >/dev/null

read -r d50 d99 _ <<<"$(run "$url_mock" gpt-bench 1)"
read -r x50 x99 _ <<<"$(run "$url_bare" gpt-bench 1)"
read -r p50 p99 _ <<<"$(run "$url_router" auto 1)"
read -r b50 b99 _ <<<"$(run "$url_router" upstream 1)"
read -r _ _ drps <<<"$(run "$url_mock" gpt-bench 64)"
read -r _ _ prps <<<"$(run "$url_router" auto 64)"
read -r _ _ xrps <<<"$(run "$url_bare" gpt-bench 64)"

table=$(cat <<MD
Load benchmark, $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), wrk 1 thread, ${secs} s per run; mock upstream, router and wrk share the machine.

| path | p50 at c=1 | p99 at c=1 | added p50 | added p99 | requests/s at c=64 |
|---|---|---|---|---|---|
| direct to the mock upstream | ${d50} µs | ${d99} µs | | | ${drps} |
| bare hyper + reqwest + serde_json proxy (\`bench/bare-proxy\`) | ${x50} µs | ${x99} µs | $((x50 - d50)) µs | $((x99 - d99)) µs | ${xrps} |
| router, policy \`cheapest-healthy\` (model \`auto\`) | ${p50} µs | ${p99} µs | $((p50 - d50)) µs | $((p99 - d99)) µs | ${prps} |
| router, backend named directly (no policy) | ${b50} µs | ${b99} µs | $((b50 - d50)) µs | $((b99 - d99)) µs | |
MD
)
echo "$table" | tee bench/results.md
