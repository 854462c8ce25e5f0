"""`ab-test` in Python: the same strategy, config and labels as the Rust
policy in policies/ab-test, so both put every user in the same arm.

Build:  componentize-py -d ../../../wit -w policy componentize app -o ab-test.wasm
Check:  switchyard policy check ab-test.wasm --backends backends.json --config config.json
"""

import json
import struct

import wit_world
from componentize_py_types import Err
from wit_world.imports import types

BUCKETS = 10_000

# componentize-py makes a new WitWorld object per call: state lives here.
STATE = {}


def fnv1a_bucket(key: str, buckets: int) -> int:
    """FNV-1a 64 of the UTF-8 bytes, modulo `buckets` (as the Rust SDK's hash_bucket)."""
    h = 0xCBF29CE484222325
    for b in key.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h % buckets if buckets else 0


def seed_f64(seed: int) -> float:
    """The first float of the Rust SDK's SeedRng (SplitMix64) for `seed`."""
    z = (seed + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    z ^= z >> 31
    return (z >> 11) / float(1 << 53)


def arm_at(arms, point):
    upto = 0.0
    for i, arm in enumerate(arms):
        upto += arm["weight"]
        if point < upto:
            return i
    return max(i for i, a in enumerate(arms) if a["weight"] > 0)


def reject(status, message):
    return types.Decision_Reject(types.Rejection(status, message))


class WitWorld(wit_world.WitWorld):
    def init(self, config: str, backends) -> None:
        try:
            cfg = json.loads(config)
        except ValueError as e:
            raise Err(f"invalid config: {e}")
        arms = cfg.get("arms") or []
        if not arms:
            raise Err("invalid config: `arms` is empty")
        names = {b.name for b in backends}
        for arm in arms:
            if arm.get("backend") not in names:
                raise Err(f"invalid config: arm `{arm.get('name')}` names `{arm.get('backend')}`, which is not a configured backend")
            if not isinstance(arm.get("weight"), (int, float)) or arm["weight"] < 0:
                raise Err(f"invalid config: arm `{arm.get('name')}` has weight {arm.get('weight')}")
        total = float(sum(a["weight"] for a in arms))
        if total <= 0:
            raise Err("invalid config: the arms' weights add up to 0")
        STATE.update(arms=arms, total=total, sticky=cfg.get("sticky", True), backends=list(backends))
        return types.Features(0)

    def route(self, request):
        arms, total = STATE["arms"], STATE["total"]
        identity = request.caller.user or request.caller.key_name
        if STATE["sticky"] and identity:
            chosen, how = arm_at(arms, fnv1a_bucket(identity, BUCKETS) / BUCKETS * total), "sticky"
        else:
            chosen, how = arm_at(arms, seed_f64(request.seed) * total), "random"
        arm = arms[chosen]
        targets = [types.Target(arm["backend"], None)]
        targets += [types.Target(a["backend"], None) for a in arms if a["backend"] != arm["backend"]]
        labels = [types.Tag("arm", arm["name"]), types.Tag("assignment", how)]
        return types.Decision_Route(types.Route(targets, labels))

    def observe(self, outcome) -> None:
        """Not asked for (init answers no features): never called."""
