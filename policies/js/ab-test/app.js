// `ab-test` in JavaScript: the same strategy, config and labels as the Rust
// policy in policies/ab-test, so both put every user in the same arm.
//
// Build:  node ../build.mjs . ab-test.wasm
// Check:  switchyard policy check ab-test.wasm --backends backends.json --config config.json
//
// WIT names arrive camelCased (`keyName`); u64 values (`seed`) are BigInt.

const BUCKETS = 10000n;
const MASK = (1n << 64n) - 1n;
let state = null;

// FNV-1a 64 of the UTF-8 bytes, modulo `buckets` (as the Rust SDK's hash_bucket).
function fnv1aBucket(key, buckets) {
  let h = 0xcbf29ce484222325n;
  for (const b of new TextEncoder().encode(key)) {
    h ^= BigInt(b);
    h = (h * 0x100000001b3n) & MASK;
  }
  return h % buckets;
}

// The first float of the Rust SDK's SeedRng (SplitMix64) for `seed`.
function seedF64(seed) {
  let z = (seed + 0x9e3779b97f4a7c15n) & MASK;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK;
  z ^= z >> 31n;
  return Number(z >> 11n) / 2 ** 53;
}

function armAt(arms, point) {
  let upto = 0;
  for (let i = 0; i < arms.length; i++) {
    upto += arms[i].weight;
    if (point < upto) return i;
  }
  return arms.map((a) => a.weight > 0).lastIndexOf(true);
}

export function init(config, backends) {
  let cfg;
  try {
    cfg = JSON.parse(config);
  } catch (e) {
    throw `invalid config: ${e.message}`;
  }
  const arms = cfg.arms ?? [];
  if (arms.length === 0) throw 'invalid config: `arms` is empty';
  const names = new Set(backends.map((b) => b.name));
  for (const arm of arms) {
    if (!names.has(arm.backend)) throw `invalid config: arm \`${arm.name}\` names \`${arm.backend}\`, which is not a configured backend`;
    if (typeof arm.weight !== 'number' || !(arm.weight >= 0)) throw `invalid config: arm \`${arm.name}\` has weight ${arm.weight}`;
  }
  const total = arms.reduce((s, a) => s + a.weight, 0);
  if (total <= 0) throw "invalid config: the arms' weights add up to 0";
  state = { arms, total, sticky: cfg.sticky ?? true };
  // No features asked for: `observe` is never called.
  return {};
}

export function route(request) {
  const { arms, total, sticky } = state;
  const identity = request.caller.user ?? request.caller.keyName;
  let chosen, how;
  if (sticky && identity) {
    chosen = armAt(arms, (Number(fnv1aBucket(identity, BUCKETS)) / Number(BUCKETS)) * total);
    how = 'sticky';
  } else {
    chosen = armAt(arms, seedF64(BigInt(request.seed)) * total);
    how = 'random';
  }
  const arm = arms[chosen];
  const targets = [{ backend: arm.backend }, ...arms.filter((a) => a.backend !== arm.backend).map((a) => ({ backend: a.backend }))];
  const labels = [{ key: 'arm', value: arm.name }, { key: 'assignment', value: how }];
  return { tag: 'route', val: { targets, labels } };
}

export function observe(outcome) {}
