#!/usr/bin/env bash
# The server under hostile clients and heavy load, as a user would check it
# (not timed tests): each scenario against a quiet baseline in the same run.
#
#   bench/stress.sh [seconds per measurement, default 8]
#
# 1. 5,000 concurrent slow streams (10 events, 1 s apart), through the router
#    and through the bare proxy (the floor of hyper + reqwest), then through
#    a router whose backend is over h2c: peak and after-load resident
#    memory, and a probe's time to the first event during the storm, direct
#    and through the proxy.
# 2. Slowloris: 3,000 connections that trickle a header byte now and then
#    while a normal client (c=8) runs: its p99 against its quiet p99.
# 3. An invalid-key flood (wrk, c=64 paced to about 10,000 requests a
#    second, wrong key) while a valid client (c=8) runs: its p99 against the
#    quiet p99, and the flood's rate.
# 4. Head of line: 4 MiB requests sent in a loop while a small-request
#    client (c=8) runs: its p99 against the quiet p99.
# 5. A 100 KB prompt against a 100 B prompt, c=1: the added p50 (router minus
#    direct, and bare proxy minus direct) of each, medians of five
#    interleaved rounds, and the router's CPU a request.
#
# Prints a Markdown table and writes it to bench/stress.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
secs=${1:-8}
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
ulimit -n 20000 2>/dev/null || true
[ "$(ulimit -n)" -ge 12000 ] || { echo "needs 12000 open files (ulimit -n)" >&2; exit 1; }
cargo build --release -p switchyard -p bare-proxy >/dev/null
bin=${SWITCHYARD_BIN:-target/release/switchyard}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

start() { # start NAME ARGS... ; sets $url_NAME and $pid_NAME
  local name=$1; shift
  "${bin}" "$@" >"$work/$name.out" 2>"$work/$name.err" &
  printf -v "pid_$name" '%s' "$!"
  for _ in $(seq 600); do [ -s "$work/$name.out" ] && break; sleep 0.1; done
  printf -v "url_$name" '%s' "$(awk '{print $NF; exit}' "$work/$name.out")"
}

start mock mock-upstream --listen 127.0.0.1:0 --tokens 8
cat >"$work/router.toml" <<TOML
[server]
max_body_bytes = 8388608
[[clients]]
name = "bench"
key = "sk-bench-valid-key"
[[routes]]
model = "auto"
policy = "cheapest-healthy"
$(backend upstream "$url_mock/v1" gpt-bench)
TOML
RUST_LOG=warn start router serve --config "$work/router.toml" --listen 127.0.0.1:0

lua() { # lua NAME MODEL STREAM KEY [PROMPT_BYTES] -> a wrk script
  local f="$work/$1.lua"
  cat >"$f" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $4"
local prompt = string.rep("a", ${5:-40})
wrk.body = '{"model":"$2","stream":$3,"messages":[{"role":"user","content":"' .. prompt .. '"}]}'
LUA
  echo "$f"
}
p50_p99() { # p50_p99 URL SCRIPT CONNECTIONS [SECONDS] -> "p50_us p99_us rps non2xx errors"
  wrk -t1 -c"$3" -d"${4:-$secs}s" --timeout 10s --latency -s "$2" "$1/v1/chat/completions" | wrk_stats
}
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

small=$(lua small auto false sk-bench-valid-key)
wrk -t1 -c8 -d2s -s "$small" "$url_router/v1/chat/completions" >/dev/null
read -r q50 q99 _ <<<"$(p50_p99 "$url_router" "$small" 8)"
rss_idle=$(rss_kb "$pid_router")

# 1. 5,000 slow streams (each 10 events, 1 s apart), through a second router
# and then through the bare proxy (hyper + reqwest, the floor); a probe's time
# to the first event, direct and through the proxy under the storm.
slow=$(lua slow "auto" true sk-bench-valid-key)
cat >"$work/slow-router.toml" <<TOML
[server]
max_connections = 12000
[[routes]]
model = "auto"
policy = "cheapest-healthy"
[[backends]]
name = "slow"
provider = "openai"
base_url = "$url_mock/v1"
model = "gpt-slow?gap_ms=1000"
stream_idle_timeout_ms = 10000
TOML
RUST_LOG=warn start srouter serve --config "$work/slow-router.toml" --listen 127.0.0.1:0
# The same router with its backend over h2c: one upstream connection for all.
sed 's/^stream_idle_timeout_ms = 10000$/&\nh2c = true/' "$work/slow-router.toml" >"$work/slow-router-h2c.toml"
RUST_LOG=warn start hrouter serve --config "$work/slow-router-h2c.toml" --listen 127.0.0.1:0
bin=target/release/bare-proxy start sbare 127.0.0.1:0 "$url_mock/v1" "gpt-slow?gap_ms=1000"
storm() { # storm PID URL NAME -> "idle_kib peak_kib after_kib streams ttft_direct_us ttft_proxy_us"
  local idle peak after done direct proxied
  idle=$(rss_kb "$1")
  wrk -t2 -c5000 -d"$((secs + 12))s" --timeout 30s -s "$slow" "$2/v1/chat/completions" >"$work/storm-$3.out" 2>&1 &
  local wrk_pid=$!
  sleep 6
  direct=$(first_event_us "$url_mock" "gpt-slow?gap_ms=1000" 40 "" leave)
  proxied=$(first_event_us "$2" "auto" 40 sk-bench-valid-key leave)
  wait "$wrk_pid" || true
  # The kernel's high-water mark of the proxy's resident memory.
  peak=$(awk '/VmHWM/ {print $2}' "/proc/$1/status")
  done=$(awk '/requests in/ {print $1}' "$work/storm-$3.out")
  sleep 5
  after=$(rss_kb "$1")
  echo "$idle $peak $after $done $direct $proxied"
}
read -r ri rp ra rdone rdirect rproxied <<<"$(storm "$pid_srouter" "$url_srouter" router)"
read -r bi bp ba bdone bdirect bproxied <<<"$(storm "$pid_sbare" "$url_sbare" bare)"
read -r hi hp ha hdone hdirect hproxied <<<"$(storm "$pid_hrouter" "$url_hrouter" h2c)"
kill "$pid_srouter" "$pid_sbare" "$pid_hrouter" 2>/dev/null || true

# 2. Slowloris: 3,000 connections trickling a header byte every 2 s.
python3 - "$url_router" 3000 $((secs + 4)) <<'PY' &
import asyncio, sys, urllib.parse
url, n, secs = urllib.parse.urlparse(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
async def one():
    try:
        r, w = await asyncio.open_connection(url.hostname, url.port)
        w.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        for _ in range(int(secs / 2)):
            await asyncio.sleep(2)
            w.write(b"x")
            await w.drain()
    except Exception:
        pass
async def main():
    await asyncio.gather(*(one() for _ in range(n)))
asyncio.run(main())
PY
loris=$!
sleep 2
read -r l50 l99 _ <<<"$(p50_p99 "$url_router" "$small" 8)"
kill "$loris" 2>/dev/null || true

# 3. Invalid keys: a flood with a wrong key (about 10,000 requests a second:
# 64 connections, each pausing 6 ms between requests) while a valid client runs.
bad=$(lua bad auto false sk-wrong-key-000)
echo 'function delay() return 6 end' >>"$bad"
wrk -t1 -c64 -d"$((secs + 2))s" -s "$bad" "$url_router/v1/chat/completions" >"$work/flood.out" 2>&1 &
flood=$!
sleep 1
read -r f50 f99 _ <<<"$(p50_p99 "$url_router" "$small" 8)"
wait "$flood" || true
flood_rps=$(awk '/Requests\/sec/ {print int($2)}' "$work/flood.out")

# 4. Head of line: 4 MiB bodies in a loop while small requests run.
python3 -c "import json; print(json.dumps({'model': 'auto', 'messages': [{'role': 'user', 'content': 'x' * (4 << 20)}]}))" >"$work/big.json"
( end=$((SECONDS + secs + 2)); while [ $SECONDS -lt $end ]; do
    curl -s -o /dev/null -H 'content-type: application/json' -H 'authorization: Bearer sk-bench-valid-key' --data-binary @"$work/big.json" "$url_router/v1/chat/completions"
  done ) &
big=$!
sleep 1
read -r h50 h99 _ <<<"$(p50_p99 "$url_router" "$small" 8)"
wait "$big" || true

# 5. A 100 KB prompt against a 100 B one, c=1: five rounds, each path in
# turn (router, bare proxy, direct; 3 s each), the median over rounds of
# each added p50; and the router's CPU a request, steadier than latency on a
# shared machine.
bin=target/release/bare-proxy start pbare 127.0.0.1:0 "$url_mock/v1"
p100=$(lua p100 auto false sk-bench-valid-key 100)
p100k=$(lua p100k auto false sk-bench-valid-key 102400)
d100=$(lua d100 gpt-bench false x 100)
d100k=$(lua d100k gpt-bench false x 102400)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
for round in 1 2 3 4 5; do
  for size in 100 100k; do
    t0=$(ticks "$pid_router")
    read -r r _ rps _ <<<"$(p50_p99 "$url_router" "$work/p$size.lua" 1 3)"
    t1=$(ticks "$pid_router")
    read -r x _ <<<"$(p50_p99 "$url_pbare" "$work/d$size.lua" 1 3)"
    read -r m _ <<<"$(p50_p99 "$url_mock" "$work/d$size.lua" 1 3)"
    echo "$((r - m)) $((x - m)) $(awk "BEGIN {printf \"%d\", ($t1 - $t0) / $(getconf CLK_TCK) * 1e6 / ($rps * 3)}")" >>"$work/sizes-$size"
  done
done
for size in 100 100k; do
  for col in 1 2 3; do
    printf -v "s${size}_$col" '%s' "$(cut -d' ' -f"$col" "$work/sizes-$size" | median)"
  done
done
kill "$pid_pbare" 2>/dev/null || true

table=$(cat <<MD
Stress benchmark, $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); mock upstream, router and load share the machine; ${secs} s per measurement.

| scenario | quiet | under it | ratio |
|---|---|---|---|
| 5,000 slow streams (10 events 1 s apart), resident memory: router (mimalloc) | idle ${ri} KiB | peak ${rp} KiB ($(( (rp - ri) / 5000 )) KiB a stream); 5 s after ${ra} KiB; ${rdone} streams | |
| the same through the bare proxy (hyper + reqwest, glibc malloc): the floor | idle ${bi} KiB | peak ${bp} KiB ($(( (bp - bi) / 5000 )) KiB a stream); 5 s after ${ba} KiB; ${bdone} streams | router/bare $(awk "BEGIN {printf \"%.2f\", ($rp - $ri) / ($bp - $bi)}") |
| the same through the router, its backend over h2c (\`h2c = true\`: one upstream connection) | idle ${hi} KiB | peak ${hp} KiB ($(( (hp - hi) / 5000 )) KiB a stream); 5 s after ${ha} KiB; ${hdone} streams | |
| 5,000 slow streams: a probe's time to the first event, p50 of 40, direct then through the router | ${rdirect} µs | ${rproxied} µs | $(awk "BEGIN {printf \"%.2f\", $rproxied / $rdirect}") |
| the same, the router's backend over h2c | ${hdirect} µs | ${hproxied} µs | $(awk "BEGIN {printf \"%.2f\", $hproxied / $hdirect}") |
| the same through the bare proxy | ${bdirect} µs | ${bproxied} µs | $(awk "BEGIN {printf \"%.2f\", $bproxied / $bdirect}") |
| slowloris, 3,000 trickling connections: a normal client's p99 (c=8) | ${q99} µs | ${l99} µs | $(awk "BEGIN {printf \"%.2f\", $l99 / $q99}") |
| invalid-key flood (${flood_rps} req/s, c=64): a valid client's p99 (c=8) | ${q99} µs | ${f99} µs | $(awk "BEGIN {printf \"%.2f\", $f99 / $q99}") |
| 4 MiB requests in a loop: small requests' p99 (c=8) | ${q99} µs | ${h99} µs | $(awk "BEGIN {printf \"%.2f\", $h99 / $q99}") |
| added p50 at c=1 (router minus direct), median of 5 rounds: 100 B prompt, 100 KB prompt | ${s100_1} µs | ${s100k_1} µs | $(awk "BEGIN {d = $s100_1; if (d < 1) d = 1; printf \"%.2f\", $s100k_1 / d}") |
| the same through the bare proxy | ${s100_2} µs | ${s100k_2} µs | $(awk "BEGIN {d = $s100_2; if (d < 1) d = 1; printf \"%.2f\", $s100k_2 / d}") |
| the router's CPU a request at c=1 (user + system): 100 B prompt, 100 KB prompt | ${s100_3} µs | ${s100k_3} µs | $(awk "BEGIN {d = $s100_3; if (d < 1) d = 1; printf \"%.2f\", $s100k_3 / d}") |

Router resident memory before these runs: ${rss_idle} KiB (the stream storms ran on a second router and a bare proxy, whose figures are above).
MD
)
echo "$table" | tee bench/stress.md
