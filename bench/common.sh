# Sourced by the bench scripts.

# backend NAME BASE_URL MODEL -> an OpenAI-compatible [[backends]] entry.
backend() {
  printf '[[backends]]\nname = "%s"\nprovider = "openai"\nbase_url = "%s"\nmodel = "%s"\n' "$1" "$2" "$3"
}

# wrk's --latency output on stdin -> "p50_us p99_us requests_per_second non2xx socket_errors".
wrk_stats() {
  awk '
    function us(v) { if (v ~ /us$/) return v+0; if (v ~ /ms$/) return v*1000; if (v ~ /s$/) return v*1000000; return v }
    $1=="50%" {p50=us($2)} $1=="99%" {p99=us($2)} $1=="Requests/sec:" {rps=$2}
    /Non-2xx/ {bad=$NF} /Socket errors/ {gsub(",", ""); errs=$4+$6+$8+$10}
    END { printf "%d %d %d %d %d\n", p50, p99, rps, bad+0, errs+0 }'
}

# first_event_us URL MODEL N [KEY] [drain|leave] -> the p50 time to the first
# SSE event of N streamed requests, one connection each, in µs (a Python
# client). Each stream is read to its end (drain, the default), as a client
# does: one left mid-body costs the router its upstream connection and the
# next request a new one; `leave` for streams too slow to read whole.
first_event_us() {
  python3 - "$1" "$2" "$3" "${4:-}" "${5:-drain}" <<'PY'
import http.client, json, sys, time, urllib.parse
url, model, n, key, drain = urllib.parse.urlparse(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5] == "drain"
body = json.dumps({"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
headers = {"content-type": "application/json"}
if key:
    headers["authorization"] = f"Bearer {key}"
times = []
for _ in range(n):
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, headers)
    response = conn.getresponse()
    while not response.readline().startswith(b"data:"):
        pass
    times.append(time.perf_counter() - start)
    if drain:
        response.read()
    conn.close()
times.sort()
print(int(times[len(times) // 2] * 1e6))
PY
}

# set_section MARKDOWN: puts a "## Title" section (its first line) into
# bench/results.md, in place of an earlier one of that title, else at the end;
# the rest of the file stays.
set_section() {
  python3 - "$1" <<'PY'
import sys
path = "bench/results.md"
text = open(path).read()
section = sys.argv[1].strip() + "\n"
start = text.find(section.splitlines()[0])
if start >= 0:
    end = text.find("\n## ", start + 1)
    text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
else:
    text = text.rstrip("\n") + "\n\n" + section
open(path, "w").write(text)
PY
}
