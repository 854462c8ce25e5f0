"""Cold start: from exec to the first answered request, with a directory of
policies whose compiled artifacts are already cached (a restarted node).

    python3 bench/coldstart.py BIN POLICY.wasm POLICIES RUNS

Prints JSON: p50/p90/max ms over RUNS starts (after one start that fills
the artifact cache, not counted).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import http.client

from edgelib import free_port, with_custom_section


def first_answer(binary, config, env):
    port = free_port()
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "hi"}]})
    started = time.perf_counter()
    proc = subprocess.Popen([binary, "serve", "--config", config, "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    return (time.perf_counter() - started) * 1000
            except OSError:
                pass
            if time.perf_counter() - started > 60:
                raise SystemExit("no answer in 60 s")
            time.sleep(0.0005)
    finally:
        proc.terminate()
        proc.wait()


def main():
    binary, policy, count, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    base = open(policy, "rb").read()
    work = tempfile.mkdtemp()
    try:
        policies = os.path.join(work, "policies")
        os.makedirs(policies)
        for i in range(count):
            # Distinct components (a custom section each): one artifact each.
            with open(os.path.join(policies, f"p{i}.wasm"), "wb") as f:
                f.write(with_custom_section(base, b"bench", str(i).encode()))
        config = os.path.join(work, "switchyard.toml")
        with open(config, "w") as f:
            f.write('[policies]\ndir = "policies"\n[[routes]]\nmodel = "auto"\npolicy = "p0"\n'
                    '[[backends]]\nname = "a"\nprovider = "mock"\n')
        env = dict(os.environ, XDG_CACHE_HOME=os.path.join(work, "cache"), RUST_LOG="warn")
        first_answer(binary, config, env)  # fills the artifact cache
        times = sorted(first_answer(binary, config, env) for _ in range(runs))
        pick = lambda p: times[min(len(times) - 1, int(p * len(times)))]
        print(json.dumps({"policies": count, "runs": runs, "p50_ms": round(pick(0.5), 1), "p90_ms": round(pick(0.9), 1), "max_ms": round(times[-1], 1)}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
