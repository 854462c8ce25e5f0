#!/usr/bin/env bash
# Limits, budgets and the response cache: what they add to a request, in
# one run, with wrk at one connection (p50 and p99):
#   - limits + budget + a cache miss, counted on the node, against the same
#     route and request with none of them (unique prompts: every request
#     misses);
#   - the same counted on Redis, against one Redis round trip
#     (redis-benchmark, one connection);
#   - a cache hit against nginx answering the same bytes directly (the HTTP
#     floor) and the bare proxy's round trip to that nginx; a streamed hit's
#     first event against nginx's (a Python client).
#
#   bench/limits.sh [seconds per run, default 10]
#
# Needs wrk, nginx and redis-server (Debian packages; installed when missing).
# Appends its table to bench/results.md (replacing an earlier one).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
secs=${1:-10}
for tool in wrk nginx redis-server; do
  if ! command -v "$tool" >/dev/null; then
    pkg=$tool; [ "$tool" = redis-server ] && pkg=redis-server
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null || { echo "$tool is missing: apt-get install $pkg" >&2; exit 1; }
  fi
done
cargo build --release -p switchyard -p bare-proxy >/dev/null
bin=${SWITCHYARD_BIN:-target/release/switchyard}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start() { # start NAME ARGS... ; sets $url_NAME from the address the process prints
  local name=$1; shift
  "${bin}" "$@" >"$work/$name.out" 2>"$work/$name.err" &
  # The serving address is the line that is not the admin listener's.
  for _ in $(seq 600); do grep -qv '^admin' "$work/$name.out" 2>/dev/null && break; sleep 0.1; done
  printf -v "url_$name" '%s' "$(awk '!/^admin/ {print $NF; exit}' "$work/$name.out")"
}

start mock mock-upstream --listen 127.0.0.1:0 --tokens 16
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done

# nginx answers any POST with the bytes of a chat completion (or a stream).
answer=$(curl -s "$url_mock/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model":"gpt-bench","messages":[{"role":"user","content":"Summarise the plot of Hamlet in one line."}]}')
stream=$(curl -s "$url_mock/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model":"gpt-bench","stream":true,"messages":[{"role":"user","content":"hi"}]}')
case "$answer$stream" in *"'"*|*'$'*|*'\'*) echo "the mock's answer has characters nginx's return would read" >&2; exit 1;; esac
nginx_port=$(free_port)
nginx_stream_port=$(free_port)
mkdir -p "$work/nginx"
cat >"$work/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $work/nginx;
  proxy_temp_path $work/nginx;
  fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx;
  scgi_temp_path $work/nginx;
  server {
    listen 127.0.0.1:$nginx_port;
    location / { default_type application/json; return 200 '$answer'; }
  }
  server {
    listen 127.0.0.1:$nginx_stream_port;
    location / { default_type text/event-stream; return 200 '$stream'; }
  }
}
CONF
nginx -c "$work/nginx.conf" -p "$work/nginx" &
for _ in $(seq 100); do curl -s -o /dev/null -X POST "http://127.0.0.1:$nginx_port/" && break; sleep 0.05; done
url_nginx="http://127.0.0.1:$nginx_port"
bin=target/release/bare-proxy start bare 127.0.0.1:0 "$url_nginx/v1"

router_toml() { # router_toml SHARED ADMIN_PORT -> a router config; SHARED is a [shared] section or empty
  cat <<TOML
[admin]
listen = "127.0.0.1:$2"
$1
[[backends]]
name = "upstream"
provider = "openai"
base_url = "$url_mock/v1"
model = "gpt-bench"
input_price = 2.5
output_price = 10.0

[[routes]]
model = "plain"
targets = ["upstream"]

[[routes]]
model = "limited"
targets = ["upstream"]
limits = { rpm = 100000000, tpm = 100000000000 }
cache = { ttl_s = 600, mode = "all" }

[[routes]]
model = "limits-only"
targets = ["upstream"]
limits = { rpm = 100000000, tpm = 100000000000 }

[[routes]]
model = "miss-only"
targets = ["upstream"]
cache = { ttl_s = 600, mode = "all" }

[[routes]]
model = "hit"
targets = ["upstream"]
cache = { ttl_s = 600, mode = "all" }

[[clients]]
name = "open"
key = "key-open-000"

[[clients]]
name = "limited"
key = "key-limited-0"
limits = { rpm = 100000000, tpm = 100000000000, concurrency = 1000 }
budget = { daily_usd = 1000000.0, monthly_usd = 10000000.0 }
TOML
}
local_admin=$(free_port)
shared_admin=$(free_port)
router_toml "" "$local_admin" >"$work/local.toml"
router_toml "[shared]
redis_url = \"redis://127.0.0.1:$redis_port\"" "$shared_admin" >"$work/shared.toml"
RUST_LOG=warn start local serve --config "$work/local.toml" --listen 127.0.0.1:0
RUST_LOG=warn start shared serve --config "$work/shared.toml" --listen 127.0.0.1:0

lua() { # lua MODEL KEY unique|same [stream] -> a wrk script
  local f="$work/$1-$3-${4:-plain}.lua" stream=false
  [ "${4:-}" = stream ] && stream=true
  cat >"$f" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $2"
local n = 0
local unique = "$3" == "unique"
request = function()
  n = n + 1
  local prompt = "Summarise the plot of Hamlet in one line."
  if unique then prompt = prompt .. " #$RANDOM$RANDOM-" .. n end
  local body = '{"model":"$1","stream":$stream,"messages":[{"role":"user","content":"' .. prompt .. '"}]}'
  return wrk.format(nil, nil, nil, body)
end
LUA
  echo "$f"
}
measure() { # measure URL MODEL KEY unique|same [stream] -> "p50 p99": the lower of two runs (a noisy machine); non-2xx is an error
  local p50 p99 rps bad errs best50=999999 best99=999999
  for _ in 1 2; do
    read -r p50 p99 rps bad errs <<<"$(wrk -t1 -c1 -d"${secs}s" --latency -s "$(lua "$2" "$3" "$4" "${5:-}")" "$1/v1/chat/completions" | wrk_stats)"
    if [ "$bad" -gt 0 ]; then echo "non-2xx answers from $1 ($2): $bad" >&2; kill -TERM $$; exit 1; fi
    [ "$p50" -lt "$best50" ] && best50=$p50
    [ "$p99" -lt "$best99" ] && best99=$p99
  done
  echo "$best50 $best99"
}

# Warm up: connections, the shared store's scripts, the hit's entry.
for url in "$url_local" "$url_shared"; do
  wrk -t1 -c1 -d1s -s "$(lua limited key-limited-0 unique)" "$url/v1/chat/completions" >/dev/null
  wrk -t1 -c1 -d1s -s "$(lua hit key-open-000 same)" "$url/v1/chat/completions" >/dev/null
done
curl -s -o /dev/null "$url_local/v1/chat/completions" -H 'content-type: application/json' -H 'authorization: Bearer key-open-000' \
  -d '{"model":"hit","stream":true,"messages":[{"role":"user","content":"hi"}]}'

# CPU time (user + sys) the router spends per request at 64 connections:
# steadier than a p50 on a noisy machine.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
cpu_per_request() { # cpu_per_request PID URL MODEL KEY -> µs of the router's CPU per request
  local t0 rps
  t0=$(cpu_ticks "$1")
  read -r _ _ rps _ _ <<<"$(wrk -t1 -c64 -d"${secs}s" --latency -s "$(lua "$3" "$4" unique)" "$2/v1/chat/completions" | wrk_stats)"
  echo $(( ($(cpu_ticks "$1") - t0) * 1000000 / $(getconf CLK_TCK) / (rps * secs) ))
}
local_pid=$(pgrep -f "serve --config $work/local.toml" | head -1)
cpu_plain=$(cpu_per_request "$local_pid" "$url_local" plain key-open-000)
cpu_limited=$(cpu_per_request "$local_pid" "$url_local" limited key-limited-0)
cpu_plain2=$(cpu_per_request "$local_pid" "$url_local" plain key-open-000)
cpu_limited2=$(cpu_per_request "$local_pid" "$url_local" limited key-limited-0)

# What limits and the cache add: the four routes in turn, four rounds, so
# that each is compared with the plain route measured next to it (this
# machine drifts by more than what is measured); the added p50 is the
# median over rounds of (route's p50 - plain's p50 in that round).
rounds=6
interleaved() { # interleaved URL -> "p50s base local limits miss" lines: the median p50, the lowest p99, the median added p50
  local runs="$work/runs.txt" m p50 p99 bad
  : >"$runs"
  for _ in $(seq "$rounds"); do
    for m in "plain key-open-000" "limited key-limited-0" "limits-only key-limited-0" "miss-only key-open-000"; do
      set -- $m
      read -r p50 p99 _ bad _ <<<"$(wrk -t1 -c1 -d"${secs}s" --latency -s "$(lua "$1" "$2" unique)" "$url/v1/chat/completions" | wrk_stats)"
      if [ "$bad" -gt 0 ]; then echo "non-2xx answers from $url ($1): $bad" >&2; kill -TERM $$; exit 1; fi
      echo "$1 $p50 $p99" >>"$runs"
    done
  done
  python3 - "$runs" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    model, p50, p99 = line.split()
    runs.setdefault(model, []).append((int(p50), int(p99)))
base = [p50 for p50, _ in runs["plain"]]
for model in ["plain", "limited", "limits-only", "miss-only"]:
    p50s = [p50 for p50, _ in runs[model]]
    added = statistics.median(p - b for p, b in zip(p50s, base))
    print(int(statistics.median(p50s)), min(p99 for _, p99 in runs[model]), int(added))
PY
}
{ read -r base50 base99 _; read -r local50 local99 local_added; read -r llim50 llim99 llim_added; read -r lmiss50 lmiss99 lmiss_added; } \
  < <(url=$url_local interleaved)
{ read -r sbase50 sbase99 _; read -r shared50 shared99 shared_added; read -r slim50 slim99 slim_added; read -r smiss50 smiss99 smiss_added; } \
  < <(url=$url_shared interleaved)
read -r nginx50 nginx99 <<<"$(measure "$url_nginx" hit key-open-000 same)"
read -r bare50 bare99 <<<"$(measure "$url_bare" hit key-open-000 same)"
read -r hit50 hit99 <<<"$(measure "$url_local" hit key-open-000 same)"
read -r shit50 shit99 <<<"$(measure "$url_shared" hit key-open-000 same)"
read -r snginx50 snginx99 <<<"$(measure "http://127.0.0.1:$nginx_stream_port" hit key-open-000 same stream)"
read -r shit_s50 shit_s99 <<<"$(measure "$url_local" hit key-open-000 same stream)"
redis_rtt=$(redis-benchmark -p "$redis_port" -c 1 -n 50000 -q -t ping 2>/dev/null | awk -F'p50=' '/PING_MBULK/ {print int($2 * 1000)}')
# The admission's round trip as the router itself timed it (mean, from its metrics).
admit_rtt=$(curl -s "http://127.0.0.1:$shared_admin/metrics" | awk '/^switchyard_shared_store_seconds_sum\{op="admit"\}/ {s=$2} /^switchyard_shared_store_seconds_count\{op="admit"\}/ {n=$2} END {if (n > 0) printf "%d", s / n * 1000000; else print "-"}')
set_rtt=$(redis-benchmark -p "$redis_port" -c 1 -n 20000 -q -r 1000000 SET bench:__rand_int__ x 2>/dev/null | tr '\r' '\n' | awk -F'p50=' '/requests per second/ {print int($2 * 1000)}' | tail -1)
# The yardstick of "one round trip": the router's own admission, caught with
# MONITOR and replayed by redis-benchmark at one connection (the script's
# work on the server included; a PING's round trip has none).
redis-cli -p "$redis_port" monitor >"$work/monitor.txt" &
monitor=$!
sleep 0.3
curl -s -o /dev/null "$url_shared/v1/chat/completions" -H 'content-type: application/json' -H 'authorization: Bearer key-limited-0' \
  -d '{"model":"limits-only","messages":[{"role":"user","content":"the admission to replay"}]}'
sleep 0.3
kill "$monitor"
mapfile -d '' -t admission < <(python3 - "$work/monitor.txt" <<'PY'
import shlex, sys
line = next(l for l in open(sys.argv[1]) if '"EVALSHA"' in l)
sys.stdout.write("\0".join(shlex.split(line.split("] ", 1)[1])))
PY
)
[ "${#admission[@]}" -gt 0 ] || { echo "no admission reached the store to replay" >&2; exit 1; }
admit_script_rtt=$(redis-benchmark -p "$redis_port" -c 1 -n 20000 -q "${admission[@]}" 2>/dev/null | tr '\r' '\n' | awk -F'p50=' '/requests per second/ {print int($2 * 1000)}' | tail -1)
first_byte_us() { # first_byte_us URL MODEL N stream|plain -> p50 µs to the first body byte, a new connection per request (a Python client)
  python3 - "$@" <<'PY'
import http.client, json, sys, time, urllib.parse
url, model, n, how = urllib.parse.urlparse(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
body = json.dumps({"model": model, "stream": how == "stream", "messages": [{"role": "user", "content": "hi"}]})
headers = {"content-type": "application/json", "authorization": "Bearer key-open-000"}
times = []
for _ in range(n):
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.connect()
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, headers)
    response = conn.getresponse()
    response.read(1)
    times.append(time.perf_counter() - start)
    conn.close()
times.sort()
print(int(times[len(times) // 2] * 1e6))
PY
}
curl -s -o /dev/null "$url_local/v1/chat/completions" -H 'content-type: application/json' -H 'authorization: Bearer key-open-000' \
  -d '{"model":"hit","stream":false,"messages":[{"role":"user","content":"hi"}]}'
fb_nginx_plain=$(first_byte_us "$url_nginx" hit 500 plain)
fb_hit_plain=$(first_byte_us "$url_local" hit 500 plain)
fb_nginx_stream=$(first_byte_us "http://127.0.0.1:$nginx_stream_port" hit 500 stream)
fb_hit_stream=$(first_byte_us "$url_local" hit 500 stream)

table=$(cat <<MD
## Limits, budgets and the response cache

\`bench/limits.sh\`, $(date -u +%Y-%m-%d), $(nproc) cores, wrk 1 connection; mock upstream, nginx, Redis, routers and wrk share the machine. Routes with limits or a cache: ${rounds} rounds of ${secs} s runs, each route in turn; p50 is the median of the rounds, p99 the lowest, and "added" the median over rounds of the route's p50 minus the plain route's in the same round. The rest: the lower p50 (and p99) of two ${secs} s runs.

| path | p50 | p99 | added p50 |
|---|---|---|---|
| router, no limits, no cache (unique prompts) | ${base50} µs | ${base99} µs | |
| router, key limits (rpm, tpm, concurrency) + budget + route limits + cache miss, on the node | ${local50} µs | ${local99} µs | ${local_added} µs |
| of which: limits + budget alone | ${llim50} µs | ${llim99} µs | ${llim_added} µs |
| of which: a cache miss alone (looked up, then stored) | ${lmiss50} µs | ${lmiss99} µs | ${lmiss_added} µs |
| the router's CPU per request at c=64, no limits → limits + budget + route limits + cache miss (two rounds) | ${cpu_plain} µs, ${cpu_plain2} µs | ${cpu_limited} µs, ${cpu_limited2} µs | +$((cpu_limited - cpu_plain)) µs, +$((cpu_limited2 - cpu_plain2)) µs |
| router on Redis, no limits, no cache | ${sbase50} µs | ${sbase99} µs | |
| router on Redis, the same limits, budget and cache miss | ${shared50} µs | ${shared99} µs | ${shared_added} µs (one round trip: the admission script and the cache read in one pipeline; the router timed its admissions at ${admit_rtt} µs mean; redis-benchmark's PING at c=1: ${redis_rtt} µs p50, SET ${set_rtt} µs) |
| of which: limits + budget alone | ${slim50} µs | ${slim99} µs | ${slim_added} µs |
| one round trip of that admission alone (the router's \`EVALSHA\` replayed by redis-benchmark, c=1) | ${admit_script_rtt} µs | | |
| of which: a cache miss alone | ${smiss50} µs | ${smiss99} µs | ${smiss_added} µs |
| nginx answering the same bytes directly | ${nginx50} µs | ${nginx99} µs | |
| bare proxy to that nginx | ${bare50} µs | ${bare99} µs | $((bare50 - nginx50)) µs over nginx |
| router, cache hit | ${hit50} µs | ${hit99} µs | $((hit50 - nginx50)) µs over nginx |
| router on Redis, cache hit (the node's copy) | ${shit50} µs | ${shit99} µs | $((shit50 - nginx50)) µs over nginx |
| nginx answering a stream's bytes directly | ${snginx50} µs | ${snginx99} µs | |
| router, streamed cache hit (the whole stream) | ${shit_s50} µs | ${shit_s99} µs | $((shit_s50 - snginx50)) µs over nginx |
| first byte of the first answer on a new connection, plain (Python client, p50 of 500) | nginx ${fb_nginx_plain} µs | hit ${fb_hit_plain} µs | $((fb_hit_plain - fb_nginx_plain)) µs |
| first byte of the answer, streamed (the same) | nginx ${fb_nginx_stream} µs | hit ${fb_hit_stream} µs | $((fb_hit_stream - fb_nginx_stream)) µs |
MD
)
echo "$table"
set_section "$table"
