//! The books on the shared store: admission and settlement are one script
//! call each (one round trip), atomic on the server, on the server's clock.
//!
//! Keys of a scope (under the store's prefix, `q:SCOPE`):
//! - `q:SCOPE` (hash): `rt` and `tt`, the TATs of requests and tokens
//!   (a TAT in the past means what no key means).
//! - `q:SCOPE:lease` (sorted set): the requests in flight that will be
//!   settled, as `ID:NANO` (the reservation's id and its spend) scored by
//!   when the reservation expires. Its live members are the requests in
//!   flight and the spend reserved; expired ones (a node that died) are
//!   ignored, then swept.
//! - `q:SCOPE:d:DAY`, `q:SCOPE:m:MONTH`: nano-dollars spent, expiring
//!   after their window.
//!
//! Settlement removes the lease member first and applies only if it was
//! there, so a settlement sent twice (a pipeline retried after a lost
//! answer) counts once.
//!
//! A settlement rides in another call's pipeline, which may reach the store
//! after the same client's next admission (on another connection): the
//! admission names the leases of the node's settlements still on their way,
//! and the script does not count them against a concurrency limit.

use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use redis::{Cmd, Script};

use super::{unix_now, windows, Admitted, Ask, LimitState, RateHeaders, Reason, Refused, Use};
use crate::shared_store::{DeferredWrite, SharedError, SharedStore};

/// The scripts' sources, which the store loads again after a restart.
pub(super) const SCRIPTS: [&str; 2] = [ADMIT_SOURCE, SETTLE_SOURCE];

/// The admission script, by its hash.
static ADMIT: LazyLock<Script> = LazyLock::new(|| Script::new(ADMIT_SOURCE));

/// The settlement script, by its hash.
static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(SETTLE_SOURCE));

/// GCRA as in `gcra.rs`, every scope checked before any is taken from.
/// A scope that is settled later (tokens, concurrency, budget) holds a
/// lease: the member `ID:NANO` (its reservation) scored by its expiry.
///
/// Kept cheap on the server, where it runs in every request's round trip:
/// each `redis.call` costs about 2 µs, so there are as few as the books
/// need; numbers go to `redis.call` and back to the router as numbers, not
/// through Lua's slow `tostring`: times in the answer are whole
/// milliseconds, the budget fraction parts per million (Redis answers
/// integers). Leases of dead nodes are swept by one admission in
/// `PURGE_ONE_IN`, when the router asks; every read ignores them meanwhile.
/// The state and lease keys' expiry is renewed on every admission: a key
/// whose expiry lapsed while in use would lose its TATs or the leases of
/// requests in flight (and the settlements they wait for). Arguments after
/// the scopes' name leases whose settlement the node has sent: their
/// requests have ended, so a concurrency limit does not count them; a
/// budget still does until the settlement says what was spent.
const ADMIT_SOURCE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rid, tokens, nano, lease, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local purge = ARGV[6] == '1'
local member = rid .. ':' .. ARGV[3]
local settling = {}
for j = 7 + 5 * n, #ARGV do settling[ARGV[j]] = true end
local W, EPS = 60, 1e-9
local function ms(s) return math.ceil(s * 1000) end
local function take(tat, limit, units)
  if units > limit then return nil, -1 end
  local interval = W / limit
  local new = math.max(tat, now) + units * interval
  local ahead = new - now
  if ahead > W + EPS then return nil, ms(ahead - W) end
  return new, math.max(0, math.floor((W - ahead) / interval + EPS)), ms(ahead)
end
local out = {'ok'}
local takes = {}
for i = 0, n - 1 do
  local st, ls, dk, mk = KEYS[4*i+1], KEYS[4*i+2], KEYS[4*i+3], KEYS[4*i+4]
  local a = 7 + 5 * i
  local rpm, tpm, conc, daily, monthly = tonumber(ARGV[a]), tonumber(ARGV[a+1]), tonumber(ARGV[a+2]), tonumber(ARGV[a+3]), tonumber(ARGV[a+4])
  local take_r, take_t = false, false
  local rr, rs, tr, ts, frac = -1, 0, -1, 0, -1
  if rpm > 0 or tpm > 0 then
    local tats = redis.call('HMGET', st, 'rt', 'tt')
    if rpm > 0 then
      local new, rem, ahead = take(tonumber(tats[1]) or 0, rpm, 1)
      if not new then return {'requests', i, rem} end
      take_r, rr, rs = new, rem, ahead
    end
    if tpm > 0 then
      local tat = tonumber(tats[2]) or 0
      local new, rem, ahead = take(tat, tpm, tokens)
      if not new then
        local left = math.max(0, math.floor((W - math.max(0, tat - now)) / (W / tpm) + EPS))
        if rem < 0 then return {'too_large', i, -1, left} end
        return {'tokens', i, rem, left}
      end
      take_t, tr, ts = new, rem, ahead
    end
  end
  if conc > 0 or daily > 0 or monthly > 0 then
    local live = redis.call('ZRANGEBYSCORE', ls, now, '+inf')
    if conc > 0 and #live >= conc then
      local held = #live
      for _, m in ipairs(live) do if settling[m] then held = held - 1 end end
      if held >= conc then return {'concurrency', i, 1000} end
    end
    if daily > 0 or monthly > 0 then
      local reserved = 0
      for _, m in ipairs(live) do reserved = reserved + (tonumber(string.match(m, ':(%d+)$')) or 0) end
      local spent = redis.call('MGET', dk, mk)
      frac = 0
      for j, budget in ipairs({daily, monthly}) do
        if budget > 0 then
          local used = (tonumber(spent[j]) or 0) + reserved
          if used >= budget then return {'budget', i, -1} end
          frac = math.max(frac, (used + nano) / budget)
        end
      end
      frac = math.floor(frac * 1000000)
    end
  end
  takes[i] = {st, ls, take_r, take_t, tpm > 0 or conc > 0 or daily > 0 or monthly > 0}
  out[#out + 1] = rr; out[#out + 1] = rs
  out[#out + 1] = tr; out[#out + 1] = ts
  out[#out + 1] = frac
end
for i = 0, n - 1 do
  local st, ls, take_r, take_t, held = unpack(takes[i])
  if take_r and take_t then
    redis.call('HSET', st, 'rt', take_r, 'tt', take_t)
  elseif take_r then
    redis.call('HSET', st, 'rt', take_r)
  elseif take_t then
    redis.call('HSET', st, 'tt', take_t)
  end
  if take_r or take_t then redis.call('EXPIRE', st, 180) end
  if held then
    if purge then redis.call('ZREMRANGEBYSCORE', ls, '-inf', now) end
    redis.call('ZADD', ls, now + lease, member)
    redis.call('EXPIRE', ls, lease + 120)
  end
end
return out
";

/// One admission in this many sweeps its scopes' expired leases.
const PURGE_ONE_IN: u32 = 32;

/// Gives a reservation back and counts what was used: once, in each scope
/// that still holds its lease (a second settlement finds none). A spend
/// counter's expiry is set when the counter is made (its window is fixed).
/// Six `redis.call`s for two scopes with tokens and a budget (it was 11).
const SETTLE_SOURCE: &str = r"
local member, diff, used, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local applied = 0
for i = 0, n - 1 do
  local st, ls, dk, mk = KEYS[4*i+1], KEYS[4*i+2], KEYS[4*i+3], KEYS[4*i+4]
  local tpm, budget = tonumber(ARGV[5 + 2*i]), ARGV[6 + 2*i] == '1'
  if redis.call('ZREM', ls, member) == 1 then
    applied = 1
    if tpm > 0 and diff ~= 0 then
      -- A TAT that falls into the past means the same as now (GCRA takes the later).
      redis.call('HINCRBYFLOAT', st, 'tt', diff * 60 / tpm)
    end
    if budget and used > 0 then
      if redis.call('INCRBY', dk, used) == used then redis.call('EXPIRE', dk, 2 * 86400) end
      if redis.call('INCRBY', mk, used) == used then redis.call('EXPIRE', mk, 32 * 86400) end
    end
  end
end
return applied
";

/// An `EVALSHA` of `script` with `keys`; arguments follow.
fn evalsha(script: &Script, keys: &[String]) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len()).arg(keys);
    cmd
}

/// The four keys of each scope.
fn scope_keys(store: &SharedStore, ask: &Ask, keys: &mut Vec<String>) {
    let (day, month) = windows(unix_now());
    for scope in &ask.scopes {
        let base = store.key(&format!("q:{}", scope.key));
        let (lease, spent_day, spent_month) = (format!("{base}:lease"), format!("{base}:d:{day}"), format!("{base}:m:{month}"));
        keys.extend([base, lease, spent_day, spent_month]);
    }
}

/// At most this many settlements on their way are named to an admission
/// (the newest): a node under load has a few at a time.
const MAX_SETTLING_NAMED: usize = 64;

/// The books on the shared store, and the node's settlements of
/// concurrency-limited scopes that have not reached it yet.
pub(super) struct SharedBooks {
    store: Arc<SharedStore>,
    settling: Mutex<Vec<Settling>>,
}

/// A settlement on its way to the store.
struct Settling {
    /// Its lease member, `ID:NANO`.
    member: String,
    /// The scopes (their keys) whose concurrency it held.
    scopes: Vec<String>,
    write: DeferredWrite,
}

impl SharedBooks {
    pub(super) fn new(store: Arc<SharedStore>) -> Self {
        Self { store, settling: Mutex::default() }
    }

    /// The store.
    pub(super) fn store(&self) -> &Arc<SharedStore> {
        &self.store
    }

    /// Lease members of settlements still on their way in the scopes of
    /// `ask` that limit concurrency (those that have gone are forgotten).
    fn settling_for(&self, ask: &Ask) -> Vec<String> {
        // Most asks limit no concurrency: no lock on their path.
        if ask.scopes.iter().all(|scope| scope.limits.concurrency.is_none()) {
            return Vec::new();
        }
        let mut settling = self.settling.lock().unwrap_or_else(|p| p.into_inner());
        settling.retain(|s| s.write.on_its_way());
        let limited = |key: &String| ask.scopes.iter().any(|scope| scope.limits.concurrency.is_some() && scope.key == *key);
        let mut members: Vec<String> =
            settling.iter().rev().filter(|s| s.scopes.iter().any(limited)).take(MAX_SETTLING_NAMED).map(|s| s.member.clone()).collect();
        members.reverse();
        members
    }

    /// Admission on the store, with `along` in the same round trip (their
    /// replies follow): `Err` only when the store cannot answer.
    pub(super) async fn admit(&self, ask: &Ask, along: Vec<Cmd>) -> Result<(Result<Admitted, Refused>, Vec<redis::Value>), SharedError> {
        let settling = self.settling_for(ask);
        admit(&self.store, ask, &settling, along).await
    }

    /// Gives back what an admission may have taken when its answer was lost
    /// (a timeout after the store ran it): a settlement of nothing used, a
    /// no-op if the admission never ran.
    pub(super) fn release(&self, ask: &Ask) {
        self.settle(ask, Use { tokens: 0, nano_usd: 0 });
    }

    /// Settlement on the store, deferred to the next round trip (kept while
    /// the store is down; a reservation never settled expires with its lease).
    pub(super) fn settle(&self, ask: &Ask, used: Use) {
        let Some(write) = settle(&self.store, ask, used) else { return };
        let scopes: Vec<String> = ask.scopes.iter().filter(|s| s.limits.concurrency.is_some()).map(|s| s.key.clone()).collect();
        if !scopes.is_empty() {
            let settling = Settling { member: lease_member(ask), scopes, write };
            self.settling.lock().unwrap_or_else(|p| p.into_inner()).push(settling);
        }
    }
}

/// A reservation's member in its scopes' leases.
fn lease_member(ask: &Ask) -> String {
    format!("{}:{}", ask.id, ask.nano_usd)
}

/// Admission on the store, with `along` in the same round trip (their
/// replies follow); `settling` names leases whose settlement is on its way.
async fn admit(
    store: &SharedStore,
    ask: &Ask,
    settling: &[String],
    along: Vec<Cmd>,
) -> Result<(Result<Admitted, Refused>, Vec<redis::Value>), SharedError> {
    let mut keys = Vec::with_capacity(4 * ask.scopes.len());
    scope_keys(store, ask, &mut keys);
    let mut cmd = evalsha(&ADMIT, &keys);
    let purge = rand::random::<u32>().is_multiple_of(PURGE_ONE_IN);
    cmd.arg(&ask.id).arg(ask.tokens).arg(ask.nano_usd).arg(ask.lease.as_secs().max(1)).arg(ask.scopes.len()).arg(u8::from(purge));
    for scope in &ask.scopes {
        let l = &scope.limits;
        cmd.arg(l.rpm.unwrap_or(0))
            .arg(l.tpm.unwrap_or(0))
            .arg(l.concurrency.unwrap_or(0))
            .arg(scope.daily_nano())
            .arg(scope.monthly_nano());
    }
    cmd.arg(settling);
    let mut cmds = vec![cmd];
    cmds.extend(along);
    let mut values = store.call("admit", cmds).await?.into_iter();
    let reply = match values.next() {
        Some(redis::Value::Array(reply)) => reply,
        other => return Err(SharedError::Failed(format!("unexpected answer from the admission script: {other:?}"))),
    };
    let verdict = read_admission(ask, &reply)
        .ok_or_else(|| SharedError::Failed(format!("unexpected answer from the admission script: {reply:?}")))?;
    Ok((verdict, values.collect()))
}

/// The script's answer as the books' verdict: a word, then integers
/// (times in milliseconds, the budget fraction in parts per million).
fn read_admission(ask: &Ask, reply: &[redis::Value]) -> Option<Result<Admitted, Refused>> {
    let int = |i: usize| match reply.get(i)? {
        redis::Value::Int(n) => Some(*n),
        _ => None,
    };
    let number = |i: usize| int(i).map(|n| n as f64);
    let seconds = |i: usize| number(i).map(|ms| ms / 1000.0);
    let verdict = match reply.first()? {
        redis::Value::BulkString(word) => std::str::from_utf8(word).ok()?,
        redis::Value::SimpleString(word) => word.as_str(),
        _ => return None,
    };
    if verdict != "ok" {
        let scope = usize::try_from(int(1)?).ok()?;
        let limits = ask.scopes.get(scope)?.limits;
        let wait = seconds(2).filter(|w| *w >= 0.0);
        let mut headers = RateHeaders::default();
        let reason = match verdict {
            "requests" => {
                headers.requests = Some(LimitState { limit: u64::from(limits.rpm?), remaining: 0, reset_s: wait.unwrap_or(0.0) });
                Reason::Requests
            }
            "tokens" | "too_large" => {
                let remaining = number(3).unwrap_or(0.0) as u64;
                headers.tokens = Some(LimitState { limit: limits.tpm?, remaining, reset_s: wait.unwrap_or(0.0) });
                if verdict == "tokens" {
                    Reason::Tokens
                } else {
                    Reason::TooLarge
                }
            }
            "concurrency" => Reason::Concurrency,
            "budget" => Reason::Budget,
            _ => return None,
        };
        let retry_after = wait.map(Duration::from_secs_f64);
        return Some(Err(Refused { reason, scope, retry_after, headers }));
    }
    let mut admitted = Admitted::default();
    for (i, scope) in ask.scopes.iter().enumerate() {
        let at = 1 + 5 * i;
        let state = |limit: Option<u64>, remaining: f64, reset: f64| {
            limit.filter(|_| remaining >= 0.0).map(|limit| LimitState { limit, remaining: remaining as u64, reset_s: reset })
        };
        let requests = state(scope.limits.rpm.map(u64::from), number(at)?, seconds(at + 1)?);
        let tokens = state(scope.limits.tpm, number(at + 2)?, seconds(at + 3)?);
        admitted.headers.tighten(requests, tokens);
        // Parts per million, or -1 without a budget.
        let ppm = int(at + 4)?;
        if ppm >= 0 {
            admitted.budget_used = Some(admitted.budget_used.unwrap_or(0.0).max(ppm as f64 / 1e6));
        }
    }
    Some(Ok(admitted))
}

/// The settlement's deferred write, unless the scopes need none.
fn settle(store: &Arc<SharedStore>, ask: &Ask, used: Use) -> Option<DeferredWrite> {
    // Requests a minute alone need no settling.
    if !ask.scopes.iter().any(|s| s.limits.tpm.is_some() || s.limits.concurrency.is_some() || s.budget.is_some()) {
        return None;
    }
    let mut keys = Vec::with_capacity(4 * ask.scopes.len());
    scope_keys(store, ask, &mut keys);
    let mut cmd = evalsha(&SETTLE, &keys);
    let diff = used.tokens as i64 - ask.tokens as i64;
    cmd.arg(lease_member(ask)).arg(diff).arg(used.nano_usd).arg(ask.scopes.len());
    for scope in &ask.scopes {
        cmd.arg(scope.limits.tpm.unwrap_or(0)).arg(if scope.budget.is_some() { "1" } else { "0" });
    }
    Some(store.defer(cmd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LimitsConfig;
    use crate::quota::{Scope, ScopeKind};
    use redis::Value;

    fn ask() -> Ask {
        let scope = |key: &str, rpm, tpm| Scope {
            key: key.into(),
            kind: ScopeKind::Client,
            name: key.into(),
            limits: LimitsConfig { rpm: Some(rpm), tpm: Some(tpm), concurrency: None },
            budget: None,
        };
        Ask {
            id: "r".into(),
            scopes: vec![scope("a", 10, 1000), scope("b", 5, 500)],
            tokens: 100,
            nano_usd: 0,
            lease: Duration::from_secs(60),
        }
    }

    fn reply(word: &str, numbers: &[i64]) -> Vec<Value> {
        let mut reply = vec![Value::BulkString(word.as_bytes().to_vec())];
        reply.extend(numbers.iter().map(|n| Value::Int(*n)));
        reply
    }

    #[test]
    fn the_admission_scripts_answers_read_as_verdicts() {
        // Admitted: per scope, requests left and reset (ms), tokens left and reset (ms), budget (ppm or -1).
        let admitted = read_admission(&ask(), &reply("ok", &[9, 6000, 900, 6000, -1, 2, 48000, 100, 54000, 830_000])).unwrap().unwrap();
        let requests = admitted.headers.requests.unwrap();
        assert_eq!((requests.limit, requests.remaining, requests.reset_s), (5, 2, 48.0), "the tighter scope's");
        assert_eq!(admitted.headers.tokens.unwrap().remaining, 100);
        assert_eq!(admitted.budget_used, Some(0.83));

        let refused = read_admission(&ask(), &reply("requests", &[1, 1500])).unwrap().unwrap_err();
        assert_eq!((refused.reason, refused.scope, refused.retry_after), (Reason::Requests, 1, Some(Duration::from_millis(1500))));
        let refused = read_admission(&ask(), &reply("tokens", &[0, 250, 40])).unwrap().unwrap_err();
        assert_eq!((refused.reason, refused.headers.tokens.unwrap().remaining), (Reason::Tokens, 40));
        let refused = read_admission(&ask(), &reply("too_large", &[0, -1, 1000])).unwrap().unwrap_err();
        assert_eq!((refused.reason, refused.retry_after), (Reason::TooLarge, None));
        let refused = read_admission(&ask(), &reply("budget", &[0, -1])).unwrap().unwrap_err();
        assert_eq!((refused.reason, refused.retry_after), (Reason::Budget, None));

        for unreadable in [reply("ok", &[1, 2]), reply("what", &[0, 1]), reply("requests", &[7, 10]), vec![]] {
            assert!(read_admission(&ask(), &unreadable).is_none(), "{unreadable:?}");
        }
    }

    #[test]
    fn an_admission_names_the_settlements_on_their_way_in_its_concurrency_scopes() {
        let config = crate::config::SharedConfig { redis_url: Some("redis://127.0.0.1:1".into()), ..Default::default() };
        let store = Arc::new(SharedStore::new(&config, SCRIPTS.to_vec(), Arc::new(crate::metrics::Metrics::new())).unwrap());
        let books = SharedBooks::new(store.clone());
        let scope = |key: &str, concurrency: Option<u32>| Scope {
            key: key.into(),
            kind: ScopeKind::Client,
            name: key.into(),
            limits: LimitsConfig { rpm: None, tpm: Some(1000), concurrency },
            budget: None,
        };
        let ask = |id: &str, scopes: Vec<Scope>| Ask { id: id.into(), scopes, tokens: 10, nano_usd: 5, lease: Duration::from_secs(60) };
        let used = Use { tokens: 7, nano_usd: 3 };
        books.settle(&ask("r1", vec![scope("client:a", Some(1))]), used);
        books.settle(&ask("r2", vec![scope("client:b", Some(2)), scope("route:m:b", Some(1))]), used);
        // Tokens alone: its lease holds no concurrency.
        books.settle(&ask("r3", vec![scope("client:a", None)]), used);
        let named = |scopes| books.settling_for(&ask("next", scopes));
        let cases: [(Vec<Scope>, &[&str]); 5] = [
            (vec![scope("client:a", Some(1))], &["r1:5"]),
            (vec![scope("client:a", Some(1)), scope("route:m:b", Some(1))], &["r1:5", "r2:5"]),
            (vec![scope("client:b", Some(2))], &["r2:5"]),
            (vec![scope("client:c", Some(1))], &[]),
            // Without a concurrency limit nothing needs naming.
            (vec![scope("client:a", None)], &[]),
        ];
        for (scopes, expected) in cases {
            let keys: Vec<String> = scopes.iter().map(|s| s.key.clone()).collect();
            assert_eq!(named(scopes), expected, "{keys:?}");
        }
        // A settlement given up (the deferred queue full) is no longer named.
        for _ in 0..10_000 {
            let _ = store.defer(redis::cmd("PING"));
        }
        assert!(named(vec![scope("client:a", Some(1))]).is_empty());
        assert!(books.settling.lock().unwrap().is_empty(), "forgotten once gone");
    }
}
