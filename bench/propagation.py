"""Propagation of a new policy version across a fleet pulling from one origin.

Starts N router processes (each its own policy directory and compiled-policy
cache, like separate nodes) polling one nginx origin (ETag, 304s), publishes
new versions, and times until each node's active digest (`/admin/policies`)
is the new one. Runs once per poll interval.

Each version is the policy with some functions edited (a read and write
back of a global at their start, a different number each round: the same
behaviour, new code), never seen before by any node:
- `few`: 1 % of the functions, as a source change makes a few functions
  new (the nodes' compilers reuse the rest: Cranelift's incremental cache);
- `all`: every function, as a new toolchain or dependency update would
  (the trampolines between the component and the host stay the same);
- `all-uncached`: every function, with the nodes' function cache off
  (`function_cache_mib = 0`): a whole compile, as before the cache.

    python3 bench/propagation.py BIN POLICY.wasm NODES ROUNDS few|all|all-uncached INTERVAL_MS...

Prints one JSON line per interval: p50/p99/max seconds over NODES x ROUNDS.
"""

import hashlib
import json
import random
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from edgelib import free_port, with_edited_functions

TOKEN = "bench-admin-token-0123456789"


def percentile(values, p):
    values = sorted(values)
    k = (len(values) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def publish(origin_dir, component):
    digest = "sha256:" + hashlib.sha256(component).hexdigest()
    name = digest.split(":")[1][:16] + ".wasm"
    with open(os.path.join(origin_dir, name), "wb") as f:
        f.write(component)
    index = json.dumps({"policies": [{"name": "p", "url": name, "digest": digest, "size": len(component)}]})
    tmp = os.path.join(origin_dir, ".index.json.tmp")
    with open(tmp, "w") as f:
        f.write(index)
    os.rename(tmp, os.path.join(origin_dir, "index.json"))
    return digest


def active_digest(admin):
    request = urllib.request.Request(admin + "/admin/policies", headers={"authorization": "Bearer " + TOKEN})
    with urllib.request.urlopen(request, timeout=5) as response:
        for p in json.load(response)["policies"]:
            if p["name"] == "p":
                return p["digest"]
    return None


def version(base, change, n):
    """Version `n` of the policy: functions edited `n + 1` times."""
    if change in ("all", "all-uncached"):
        pick = range
    else:
        pick = lambda count: random.Random(n).sample(range(count), max(1, count // 100))  # noqa: E731
    component, _, _ = with_edited_functions(base, pick, n + 1)
    return component


def compile_counts(admin):
    """The node's functions compiled anew and reused so far (its metrics)."""
    with urllib.request.urlopen(admin + "/metrics", timeout=5) as response:
        text = response.read().decode()
    counts = {"compiled": 0, "reused": 0}
    for line in text.splitlines():
        for result in counts:
            prefix = f'switchyard_policy_compiled_functions_total{{result="{result}"}} '
            if line.startswith(prefix):
                counts[result] = int(float(line[len(prefix):]))
    return counts


def run(binary, base, nodes, rounds, change, interval_ms, work):
    origin_dir = os.path.join(work, "origin")
    os.makedirs(origin_dir, exist_ok=True)
    # nginx's workers run as `nobody`: the origin's files must be readable.
    os.chmod(work, 0o755)
    port = free_port()
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1; daemon off; pid {work}/nginx.pid; error_log {work}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; server {{ listen 127.0.0.1:{port}; root {origin_dir}; etag on; }} }}
""")
    nginx = subprocess.Popen(["nginx", "-c", conf, "-p", work])
    procs = [nginx]
    try:
        publish(origin_dir, version(base, change, 0))
        admins = []
        for i in range(nodes):
            node = os.path.join(work, f"node{i}")
            os.makedirs(node, exist_ok=True)
            admin_port = free_port()
            with open(os.path.join(node, "switchyard.toml"), "w") as f:
                f.write(f"""[admin]
listen = "127.0.0.1:{admin_port}"
token = "{TOKEN}"
[policies]
source = "http://127.0.0.1:{port}/index.json"
dir = "pulled"
poll_interval_ms = {interval_ms}
function_cache_mib = {0 if change == "all-uncached" else 64}
[[routes]]
model = "auto"
policy = "p"
[[backends]]
name = "a"
provider = "mock"
""")
            env = dict(os.environ, XDG_CACHE_HOME=os.path.join(node, "cache"), RUST_LOG="warn")
            out = open(os.path.join(node, "out"), "w")
            procs.append(subprocess.Popen([binary, "serve", "--config", os.path.join(node, "switchyard.toml"), "--listen", "127.0.0.1:0"],
                                          stdout=out, stderr=subprocess.STDOUT, env=env))
            admins.append(f"http://127.0.0.1:{admin_port}")
        # Every node up and serving the first version.
        deadline = time.time() + 120
        for admin in admins:
            while True:
                try:
                    if active_digest(admin):
                        break
                except OSError:
                    pass
                if time.time() > deadline:
                    raise SystemExit(f"{admin} never served the policy")
                time.sleep(0.05)
        before = [compile_counts(a) for a in admins]
        samples = []
        for r in range(rounds):
            # Publish at a random phase of the nodes' poll cycles.
            time.sleep(interval_ms / 1000 * (0.5 + (r * 0.37) % 1))
            digest = publish(origin_dir, version(base, change, r + 1))
            published = time.perf_counter()
            seen = {}

            def watch(i, admin):
                while True:
                    try:
                        if active_digest(admin) == digest:
                            seen[i] = time.perf_counter() - published
                            return
                    except OSError:
                        pass
                    if time.perf_counter() - published > 60:
                        seen[i] = float("inf")
                        return
                    time.sleep(0.01)

            threads = [threading.Thread(target=watch, args=(i, a)) for i, a in enumerate(admins)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            samples.extend(seen.values())
        after = [compile_counts(a) for a in admins]
        per_version = {k: round(sum(a[k] - b[k] for a, b in zip(after, before)) / (nodes * rounds)) for k in ("compiled", "reused")}
        return {
            "compiled_per_version": per_version["compiled"],
            "reused_per_version": per_version["reused"],
            "change": change,
            "interval_ms": interval_ms,
            "nodes": nodes,
            "rounds": rounds,
            "p50_s": round(percentile(samples, 0.5), 3),
            "p99_s": round(percentile(samples, 0.99), 3),
            "max_s": round(max(samples), 3),
        }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()


def main():
    binary, policy, nodes, rounds, change = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    if change not in ("few", "all", "all-uncached"):
        raise SystemExit(f"change: few, all or all-uncached, not {change}")
    base = open(policy, "rb").read()
    for interval in sys.argv[6:]:
        work = tempfile.mkdtemp()
        try:
            print(json.dumps(run(binary, base, nodes, rounds, change, int(interval), work)), flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
