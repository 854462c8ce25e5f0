#!/usr/bin/env bash
# Load benchmark: the mock upstream called directly against the same calls
# through the router, in one run, with wrk (Debian package `wrk`).
#
#   bench/load.sh [seconds per run, default 10]
#
# Prints a Markdown table and writes it to bench/results.md and bench/results.json.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
secs=${1:-10}
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
cargo build --release -p switchyard -p bare-proxy >/dev/null
# SWITCHYARD_BIN benchmarks another build of the router (an older commit, say) with this script.
bin=${SWITCHYARD_BIN:-target/release/switchyard}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

start() { # start NAME ARGS... ; sets $url_NAME from the address the process prints
  local name=$1; shift
  "${bin}" "$@" >"$work/$name.out" 2>"$work/$name.err" &
  # Up to a minute: compiling a Python or JavaScript policy takes seconds.
  for _ in $(seq 600); do [ -s "$work/$name.out" ] && break; sleep 0.1; done
  printf -v "url_$name" '%s' "$(awk '{print $NF; exit}' "$work/$name.out")"
}

start mock mock-upstream --listen 127.0.0.1:0 --tokens 16
start slow mock-upstream --listen 127.0.0.1:0 --tokens 16 --latency-ms 20
cat >"$work/router.toml" <<TOML
[[routes]]
model = "auto"
policy = "cheapest-healthy"
$(backend upstream "$url_mock/v1" gpt-bench)
$(backend slow-upstream "$url_slow/v1" gpt-slow)
TOML
RUST_LOG=warn start router serve --config "$work/router.toml" --listen 127.0.0.1:0
bin=target/release/bare-proxy start bare 127.0.0.1:0 "$url_mock/v1"

script() { # script MODEL [stream] -> path of a wrk Lua script POSTing a chat request
  local f="$work/$1-${2:-plain}.lua" stream=false
  [ "${2:-}" = stream ] && stream=true
  cat >"$f" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"$1","stream":$stream,"messages":[{"role":"user","content":"Summarise the plot of Hamlet in one line."}]}'
LUA
  echo "$f"
}

run_counted() { # run_counted URL MODEL CONNECTIONS [stream] [threads] -> "p50_us p99_us rps non2xx errors"
  wrk -t"${5:-1}" -c"$3" -d"${secs}s" --timeout 10s --latency -s "$(script "$2" "${4:-}")" "$1/v1/chat/completions" | wrk_stats
}

run() { # run URL MODEL CONNECTIONS [stream] -> "p50_us p99_us rps"; non-2xx answers are an error
  local p50 p99 rps bad errs
  read -r p50 p99 rps bad errs <<<"$(run_counted "$@")"
  if [ "$bad" -gt 0 ]; then echo "non-2xx answers: $bad" >&2; return 1; fi
  echo "$p50 $p99 $rps"
}

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
router_pid=$(pgrep -f "serve --config $work/router.toml" | head -1)
rss_idle=$(rss_kb "$router_pid")


# Warm up connections, caches and the policy's instances.
wrk -t1 -c8 -d2s -s "$(script auto)" "$url_router/v1/chat/completions" >/dev/null

# The c=1 and c=64 comparisons in interleaved rounds (this machine drifts by
# more than what is compared): each figure is the median over rounds, and
# the router against the bare proxy is also given round by round.
rounds=${LOAD_ROUNDS:-3}
# CPU time (user + sys) a proxy process spends per request: less shaken by a
# noisy machine than latency is.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
cpu_us_per_request() { # PID TICKS_BEFORE REQUESTS_PER_SECOND
  echo $(( ($(cpu_ticks "$1") - $2) * 1000000 / $(getconf CLK_TCK) / ($3 * secs) ))
}
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
bare_pid=$(pgrep -f "bare-proxy 127.0.0.1:0" | head -1)
: >"$work/rounds.txt"
for round in $(seq "$rounds"); do
  read -r rd50 rd99 _ <<<"$(run "$url_mock" gpt-bench 1)"
  read -r rx50 rx99 _ <<<"$(run "$url_bare" gpt-bench 1)"
  read -r rp50 rp99 _ <<<"$(run "$url_router" auto 1)"
  read -r rb50 rb99 _ <<<"$(run "$url_router" upstream 1)"
  t0=$(cpu_ticks "$bare_pid")
  read -r _ _ rxrps <<<"$(run "$url_bare" gpt-bench 64)"
  rxcpu=$(cpu_us_per_request "$bare_pid" "$t0" "$rxrps")
  t0=$(cpu_ticks "$router_pid")
  read -r _ _ rprps <<<"$(run "$url_router" auto 64)"
  rpcpu=$(cpu_us_per_request "$router_pid" "$t0" "$rprps")
  echo "$round $rd50 $rd99 $rx50 $rx99 $rp50 $rp99 $rb50 $rb99 $rxrps $rxcpu $rprps $rpcpu" >>"$work/rounds.txt"
done
column() { awk -v c="$1" '{print $c}' "$work/rounds.txt" | median; }
d50=$(column 2); d99=$(column 3); x50=$(column 4); x99=$(column 5)
p50=$(column 6); p99=$(column 7); b50=$(column 8); b99=$(column 9)
xrps=$(column 10); bare_cpu=$(column 11); prps=$(column 12); router_cpu=$(column 13)
read -r _ _ drps <<<"$(run "$url_mock" gpt-bench 64)"
# Round by round: the router with its policy against the bare proxy.
per_round=$(awk '{printf "%s%+d µs, %.2f×", (NR > 1 ? "; " : ""), $6 - $4, $12 / $10}' "$work/rounds.txt")
rss_load=$(rss_kb "$router_pid")
read -r _ _ srps_direct <<<"$(run "$url_slow" gpt-slow 64)"
read -r _ _ srps_router <<<"$(run "$url_router" slow-upstream 64)"
read -r sd50 _ _ <<<"$(run "$url_mock" gpt-bench 64 stream)"
t0=$(cpu_ticks "$router_pid")
read -r sr50 _ srrps <<<"$(run "$url_router" upstream 64 stream)"
stream_cpu=$(cpu_us_per_request "$router_pid" "$t0" "$srrps")
chunks=19 # role chunk, 16 tokens, finish chunk, [DONE]
ttft_direct=$(first_event_us "$url_mock" gpt-bench 200)
ttft_bare=$(first_event_us "$url_bare" gpt-bench 200)
ttft_router=$(first_event_us "$url_router" upstream 200)
per_event=$(( (sr50 - sd50) / chunks ))
if [ "$per_event" -gt 0 ]; then per_event="+${per_event} µs per event"; else per_event="no added time per event measurable"; fi

# ---- Policies under load: guest calls on the workers (decide_on = "worker"), fuel budgets ----
# The same A/B strategy in Rust and in Python, each on its own route, at c=64;
# then 5,000 concurrent connections streaming through the Rust policy.
cargo build --release --target wasm32-wasip2 --manifest-path policies/Cargo.toml -p ab-test --target-dir target/guests >/dev/null 2>&1
mkdir -p "$work/policies"
cp target/guests/wasm32-wasip2/release/ab_test.wasm "$work/policies/ab-rust.wasm"
py_policy=no
if command -v componentize-py >/dev/null; then
  componentize-py -d wit -w policy componentize app -p policies/python/ab-test -o "$work/policies/ab-python.wasm" >/dev/null && py_policy=yes
fi
arms='{ arms = [{ name = "a", backend = "upstream", weight = 1 }, { name = "b", backend = "upstream-b", weight = 1 }] }'
cat >"$work/policies.toml" <<TOML
[policies]
dir = "policies"
[policies.config]
ab-rust = $arms
ab-python = $arms
[[routes]]
model = "ab-rust"
policy = "ab-rust"
[[routes]]
model = "ab-python"
policy = "ab-python"
[[routes]]
model = "auto"
policy = "cheapest-healthy"
$(backend upstream "$url_mock/v1" gpt-bench)
$(backend upstream-b "$url_mock/v1" gpt-bench-b)
TOML
RUST_LOG=warn start prouter serve --config "$work/policies.toml" --listen 127.0.0.1:0
# The second wording is that of routers before fail-closed routes (2026-11-30), for comparisons.
policy_failures() { grep -c -E "policy could not decide|policy failed, using the default order" "$work/prouter.err" || true; }

wrk -t1 -c8 -d2s -s "$(script ab-rust)" "$url_prouter/v1/chat/completions" >/dev/null
read -r ar50 ar99 arrps arbad _ <<<"$(run_counted "$url_prouter" ab-rust 64)"
ap50=-; ap99=-; aprps=-; apbad=-
if [ "$py_policy" = yes ]; then
  wrk -t1 -c8 -d2s -s "$(script ab-python)" "$url_prouter/v1/chat/completions" >/dev/null
  read -r ap50 ap99 aprps apbad _ <<<"$(run_counted "$url_prouter" ab-python 64)"
fi
failures_before_streams=$(policy_failures)
read -r st50 st99 strps stbad sterr <<<"$(run_counted "$url_prouter" auto 5000 stream 2)"
stream_failures=$(( $(policy_failures) - failures_before_streams ))

table=$(cat <<MD
Load benchmark, $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), wrk 1 thread, ${secs} s per run; mock upstream, router and wrk share the machine. The c=1 and c=64 figures of the first table are medians of ${rounds} interleaved rounds.

| path | p50 at c=1 | p99 at c=1 | added p50 | added p99 | requests/s at c=64 |
|---|---|---|---|---|---|
| direct to the mock upstream | ${d50} µs | ${d99} µs | | | ${drps} |
| bare hyper + reqwest + serde_json proxy (\`bench/bare-proxy\`) | ${x50} µs | ${x99} µs | $((x50 - d50)) µs | $((x99 - d99)) µs | ${xrps} |
| router, policy \`cheapest-healthy\` (model \`auto\`) | ${p50} µs | ${p99} µs | $((p50 - d50)) µs | $((p99 - d99)) µs | ${prps} |
| router, backend named directly (no policy) | ${b50} µs | ${b99} µs | $((b50 - d50)) µs | $((b99 - d99)) µs | |

The router with its policy against the bare proxy, round by round (p50 at c=1 minus the bare proxy's; requests/s at c=64 over the bare proxy's): ${per_round}.

| more | direct | through the router |
|---|---|---|
| requests/s at c=64, upstream answering in 20 ms | ${srps_direct} | ${srps_router} |
| streams at c=64 (${chunks} events each), p50 of the whole stream | ${sd50} µs | ${sr50} µs (${per_event}) |
| time to the first event of a stream, c=1, p50 of 200 (Python client, a connection each, each stream read to its end) | ${ttft_direct} µs | ${ttft_router} µs (bare proxy: ${ttft_bare} µs) |
| CPU time (user + sys) of the proxy process per request at c=64 | bare proxy ${bare_cpu} µs | ${router_cpu} µs; per stream ${stream_cpu} µs |
| router resident memory | idle ${rss_idle} KiB | after the c=64 runs $(rss_kb "$router_pid") KiB |

Policies under load (a second router; guest calls on the workers serving the requests, default fuel budget):

| route | p50 at c=64 | p99 at c=64 | requests/s | non-2xx answers |
|---|---|---|---|---|
| \`ab-test\` in Rust | ${ar50} µs | ${ar99} µs | ${arrps} | ${arbad} |
| \`ab-test\` in Python (componentize-py) | ${ap50} µs | ${ap99} µs | ${aprps} | ${apbad} |
| \`cheapest-healthy\`, 5000 connections streaming (wrk, 2 threads) | ${st50} µs | ${st99} µs | ${strps} | ${stbad} (socket errors ${sterr}) |

Policy failures (budget, backstop or otherwise) logged by that router over all three runs: $(policy_failures) (during the streams: ${stream_failures}).
MD
)
echo "$table"
# This table replaces the file's head; the other scripts' sections (from the
# first `## `) stay.
python3 - "$table" <<'PY'
import os, sys
path = "bench/results.md"
old = open(path).read() if os.path.exists(path) else ""
rest = old[old.find("\n## ") + 1:] if "\n## " in old else ""
if not rest and os.path.exists("bench/quality.md"):
    rest = open("bench/quality.md").read()
open(path, "w").write(sys.argv[1].strip() + "\n\n" + rest)
PY
cat >bench/results.json <<JSON
{"date": "$(date -u +%FT%TZ)", "cores": $(nproc), "seconds_per_run": $secs,
 "c1": {"direct": {"p50_us": $d50, "p99_us": $d99}, "bare_proxy": {"p50_us": $x50, "p99_us": $x99},
        "router_policy": {"p50_us": $p50, "p99_us": $p99}, "router_direct_backend": {"p50_us": $b50, "p99_us": $b99}},
 "c64_rps": {"direct": $drps, "bare_proxy": $xrps, "router_policy": $prps},
 "c64_rps_20ms_upstream": {"direct": $srps_direct, "router": $srps_router},
 "c64_stream_p50_us": {"direct": $sd50, "router": $sr50, "events": $chunks},
 "stream_first_event_p50_us": {"direct": $ttft_direct, "bare_proxy": $ttft_bare, "router": $ttft_router},
 "cpu_us_per_request_c64": {"bare_proxy": $bare_cpu, "router": $router_cpu, "router_stream": $stream_cpu},
 "router_rss_kib": {"idle": $rss_idle, "after_load": $(rss_kb "$router_pid")},
 "policies_c64": {"ab_rust": {"p50_us": $ar50, "p99_us": $ar99, "rps": $arrps, "non_2xx": $arbad},
                  "ab_python": {"p50_us": "$ap50", "p99_us": "$ap99", "rps": "$aprps", "non_2xx": "$apbad"}},
 "streams_5000_connections": {"p50_us": $st50, "p99_us": $st99, "rps": $strps, "non_2xx": $stbad, "socket_errors": $sterr},
 "policy_failures": $(policy_failures)}
JSON
