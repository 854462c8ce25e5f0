#!/usr/bin/env bash
# Allocations, context switches and system calls per request: the bare proxy
# against the router (a backend named directly, and a policy deciding), at one
# connection.
# Counts, not timings: they do not drift with a noisy machine, so they show a
# change on the hot path that a latency run cannot.
#
#   bench/allocs.sh [seconds per run, default 3]
#
# Allocations are counted with uprobes on each process's `free` (perf, as
# root): glibc's for the bare proxy, mimalloc's `mi_free` for the router
# (which needs `switchyard.debug` beside the program for the symbol); system
# calls with `strace -c`.
# Prints a Markdown table and puts it in bench/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
secs=${1:-3}
for tool in wrk perf strace; do
  if ! command -v "$tool" >/dev/null; then
    pkg=$tool; [ "$tool" = perf ] && pkg=linux-perf
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null || { echo "$tool is missing: apt-get install $pkg" >&2; exit 1; }
  fi
done
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
# SWITCHYARD_BIN counts another build of the router (an older commit, say).
if [ -n "${SWITCHYARD_BIN:-}" ]; then cargo build --release -p bare-proxy >/dev/null; else cargo build --release -p switchyard -p bare-proxy >/dev/null; fi
bin=$(realpath "${SWITCHYARD_BIN:-target/release/switchyard}")
bare=$(realpath target/release/bare-proxy)
libc=$(ldd "$bare" | awk '/libc.so/ {print $3}')
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; for group in probe_sy_allocs probe_libc_allocs; do perf probe -q -d "$group:*" 2>/dev/null; done; rm -rf "$work"' EXIT
for group in probe_sy_allocs probe_libc_allocs; do perf probe -q -d "$group:*" 2>/dev/null || true; done
perf probe -q -x "$bin" --add "probe_sy_allocs:sy_frees=mi_free" \
  || { echo "cannot probe mi_free in $bin (is switchyard.debug beside it?)" >&2; exit 1; }
perf probe -q -x "$libc" --add "probe_libc_allocs:libc_frees=free" || { echo "cannot probe free in $libc" >&2; exit 1; }

start() { # start NAME PROGRAM ARGS... ; sets $url_NAME and $pid_NAME
  local name=$1; shift
  "$@" >"$work/$name.out" 2>"$work/$name.err" &
  printf -v "pid_$name" '%s' $!
  for _ in $(seq 600); do [ -s "$work/$name.out" ] && break; sleep 0.1; done
  printf -v "url_$name" '%s' "$(awk '{print $NF; exit}' "$work/$name.out")"
}
start mock "$bin" mock-upstream --listen 127.0.0.1:0 --tokens 16
cat >"$work/router.toml" <<TOML
[[routes]]
model = "auto"
policy = "cheapest-healthy"
$(backend upstream "$url_mock/v1" gpt-bench)
TOML
RUST_LOG=warn start router "$bin" serve --config "$work/router.toml" --listen 127.0.0.1:0
start bare "$bare" 127.0.0.1:0 "$url_mock/v1"
for model in auto upstream; do
  cat >"$work/$model.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"$model","stream":false,"messages":[{"role":"user","content":"Summarise the plot of Hamlet in one line."}]}'
LUA
  wrk -t1 -c1 -d1s -s "$work/$model.lua" "$url_router/v1/chat/completions" >/dev/null
done
wrk -t1 -c1 -d1s -s "$work/upstream.lua" "$url_bare/v1/chat/completions" >/dev/null

switches() { cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ {n += $2} END {print n}'; }
count() { # count PID URL MODEL PROBE -> "allocations/request context-switches/request"
  local before out requests frees switched
  out=$(perf stat -x, -e "$4" -p "$1" -o "$work/stat.txt" -- wrk -t1 -c1 -d"${secs}s" -s "$work/$3.lua" "$2/v1/chat/completions")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  frees=$(awk -F, '/probe/ {print $1}' "$work/stat.txt")
  # Context switches in a run of their own: probes add some.
  before=$(switches "$1")
  out=$(wrk -t1 -c1 -d"${secs}s" -s "$work/$3.lua" "$2/v1/chat/completions")
  switched=$(( $(switches "$1") - before ))
  awk -v f="$frees" -v n="$requests" -v s="$switched" -v m="$(awk '/requests in/ {print $1}' <<<"$out")" 'BEGIN {printf "%.1f %.2f\n", f / n, s / m}'
}
read -r bare_allocs bare_cs <<<"$(count "$pid_bare" "$url_bare" upstream probe_libc_allocs:libc_frees)"
read -r direct_allocs direct_cs <<<"$(count "$pid_router" "$url_router" upstream probe_sy_allocs:sy_frees)"
read -r policy_allocs policy_cs <<<"$(count "$pid_router" "$url_router" auto probe_sy_allocs:sy_frees)"

syscalls() { # syscalls PID URL MODEL -> "N a request (name n, ...)": strace -c over a run
  local tracer out
  strace -c -f -p "$1" -o "$work/strace.txt" 2>/dev/null &
  tracer=$!
  sleep 0.5
  out=$(wrk -t1 -c1 -d"${secs}s" -s "$work/$3.lua" "$2/v1/chat/completions")
  kill -INT "$tracer"
  wait "$tracer" || true
  # Columns: % time, seconds, usecs/call, calls, [errors,] syscall.
  awk -v n="$(awk '/requests in/ {print $1}' <<<"$out")" '
    $NF == "total" {printf "total %.1f\n", $4 / n; next}
    $4 ~ /^[0-9]+$/ && $4 / n >= 0.05 {printf "%s %.2f\n", $NF, $4 / n}' "$work/strace.txt" \
    | sort -k2 -rn | awk '$1 == "total" {t = $2; next} {l = l (l ? ", " : "") $1 " " $2} END {printf "%s a request (%s)\n", t, l}'
}
bare_sys=$(syscalls "$pid_bare" "$url_bare" upstream)
direct_sys=$(syscalls "$pid_router" "$url_router" upstream)
policy_sys=$(syscalls "$pid_router" "$url_router" auto)

table=$(cat <<MD
## Allocations, context switches and system calls per request

\`bench/allocs.sh\`, $(date -u +%Y-%m-%d), $(nproc) cores, wrk at one connection for ${secs} s; counted with uprobes on \`free\` (glibc's for the bare proxy, mimalloc's for the router), the processes' context switches and \`strace -c\` (each in a run of its own). Counts do not drift with the machine's noise as latency does.

| path | allocations a request | context switches a request | system calls a request |
|---|---|---|---|
| bare hyper + reqwest + serde_json proxy | ${bare_allocs} | ${bare_cs} | ${bare_sys} |
| router, backend named directly | ${direct_allocs} | ${direct_cs} | ${direct_sys} |
| router, policy \`cheapest-healthy\` deciding (on the worker, in a fiber) | ${policy_allocs} | ${policy_cs} | ${policy_sys} |
MD
)
echo "$table"
set_section "$table"
