//! The books on the shared store: admission and settlement are one script
//! call each (one round trip), atomic on the server, on the server's clock.
//!
//! Keys of a scope (under the store's prefix, `q:SCOPE`):
//! - `q:SCOPE` (hash): `rt` and `tt`, the TATs of requests and tokens;
//!   `reserved`, the nano-dollars reserved by requests in flight; `r:ID`,
//!   each reservation's amount.
//! - `q:SCOPE:lease` (sorted set): reservation ids by expiry; its size is
//!   the requests in flight. Expired ones are dropped (and their amounts
//!   given back) by the next admission.
//! - `q:SCOPE:d:DAY`, `q:SCOPE:m:MONTH`: nano-dollars spent.
//!
//! Settlement is once per id (`q:settled:ID`), so a settlement retried
//! after a lost answer never counts twice.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{unix_now, windows, Admitted, Ask, LimitState, RateHeaders, Reason, Refused, Use};
use crate::shared_store::{SharedError, SharedStore};

/// GCRA as in `gcra.rs`, every scope checked before any is taken from.
static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rid, tokens, nano, lease, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local W, EPS = 60, 1e-9
local function take(tat, limit, units)
  if units > limit then return nil, -1 end
  local interval = W / limit
  local new = math.max(tat, now) + units * interval
  local ahead = new - now
  if ahead > W + EPS then return nil, ahead - W end
  return new, math.max(0, math.floor((W - ahead) / interval + EPS)), ahead
end
local out = {'ok'}
local takes = {}
for i = 0, n - 1 do
  local st, ls, dk, mk = KEYS[4*i+1], KEYS[4*i+2], KEYS[4*i+3], KEYS[4*i+4]
  local a = 6 + 5 * i
  local rpm, tpm, conc, daily, monthly = tonumber(ARGV[a]), tonumber(ARGV[a+1]), tonumber(ARGV[a+2]), tonumber(ARGV[a+3]), tonumber(ARGV[a+4])
  local expired = redis.call('ZRANGEBYSCORE', ls, '-inf', now)
  for _, r in ipairs(expired) do
    local amount = redis.call('HGET', st, 'r:' .. r)
    if amount then
      redis.call('HINCRBY', st, 'reserved', -tonumber(amount))
      redis.call('HDEL', st, 'r:' .. r)
    end
  end
  if #expired > 0 then redis.call('ZREMRANGEBYSCORE', ls, '-inf', now) end
  local take_r, take_t = false, false
  local rr, rs, tr, ts, frac = -1, 0, -1, 0, -1
  if rpm > 0 then
    local tat = tonumber(redis.call('HGET', st, 'rt') or '0')
    local new, rem, ahead = take(tat, rpm, 1)
    if not new then return {'requests', tostring(i), tostring(rem)} end
    take_r, rr, rs = new, rem, ahead
  end
  if tpm > 0 then
    local tat = tonumber(redis.call('HGET', st, 'tt') or '0')
    local new, rem, ahead = take(tat, tpm, tokens)
    if not new then
      local left = math.max(0, math.floor((W - math.max(0, tat - now)) / (W / tpm) + EPS))
      if rem < 0 then return {'too_large', tostring(i), '-1', tostring(left)} end
      return {'tokens', tostring(i), tostring(rem), tostring(left)}
    end
    take_t, tr, ts = new, rem, ahead
  end
  if conc > 0 and redis.call('ZCARD', ls) >= conc then return {'concurrency', tostring(i), '1'} end
  if daily > 0 or monthly > 0 then
    local reserved = tonumber(redis.call('HGET', st, 'reserved') or '0')
    frac = 0
    for _, pair in ipairs({{dk, daily}, {mk, monthly}}) do
      if pair[2] > 0 then
        local used = tonumber(redis.call('GET', pair[1]) or '0') + reserved
        if used >= pair[2] then return {'budget', tostring(i), '-1'} end
        frac = math.max(frac, (used + nano) / pair[2])
      end
    end
  end
  takes[i] = {st, ls, take_r, take_t}
  table.insert(out, tostring(rr)); table.insert(out, tostring(rs))
  table.insert(out, tostring(tr)); table.insert(out, tostring(ts))
  table.insert(out, tostring(frac))
end
for i = 0, n - 1 do
  local st, ls, take_r, take_t = takes[i][1], takes[i][2], takes[i][3], takes[i][4]
  if take_r then redis.call('HSET', st, 'rt', string.format('%.6f', take_r)) end
  if take_t then redis.call('HSET', st, 'tt', string.format('%.6f', take_t)) end
  redis.call('ZADD', ls, now + lease, rid)
  if nano > 0 then
    redis.call('HSET', st, 'r:' .. rid, nano)
    redis.call('HINCRBY', st, 'reserved', nano)
  end
  redis.call('EXPIRE', st, lease + 120)
  redis.call('EXPIRE', ls, lease + 120)
end
return out
",
    )
});

/// Gives back a reservation and counts what was used, once per id.
static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', 86400) then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rid, diff, used, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 0, n - 1 do
  local st, ls, dk, mk = KEYS[4*i+2], KEYS[4*i+3], KEYS[4*i+4], KEYS[4*i+5]
  local tpm, budget = tonumber(ARGV[5 + 2*i]), ARGV[6 + 2*i] == '1'
  local amount = redis.call('HGET', st, 'r:' .. rid)
  if amount then
    redis.call('HINCRBY', st, 'reserved', -tonumber(amount))
    redis.call('HDEL', st, 'r:' .. rid)
  end
  redis.call('ZREM', ls, rid)
  if tpm > 0 and diff ~= 0 then
    local tat = tonumber(redis.call('HGET', st, 'tt') or '0')
    redis.call('HSET', st, 'tt', string.format('%.6f', math.max(tat + diff * 60 / tpm, now)))
  end
  if budget and used > 0 then
    redis.call('INCRBY', dk, used)
    redis.call('EXPIRE', dk, 2 * 86400)
    redis.call('INCRBY', mk, used)
    redis.call('EXPIRE', mk, 32 * 86400)
  end
end
return 1
",
    )
});

/// Adds the four keys of each scope to `invocation`.
fn scope_keys(store: &SharedStore, ask: &Ask, invocation: &mut redis::ScriptInvocation<'_>) {
    let (day, month) = windows(unix_now());
    for scope in &ask.scopes {
        let base = store.key(&format!("q:{}", scope.key));
        invocation.key(&base).key(format!("{base}:lease")).key(format!("{base}:d:{day}")).key(format!("{base}:m:{month}"));
    }
}

/// Admission on the store: `Err` only when the store cannot answer.
pub(super) async fn admit(store: &SharedStore, ask: &Ask) -> Result<Result<Admitted, Refused>, SharedError> {
    let mut invocation = ADMIT.prepare_invoke();
    scope_keys(store, ask, &mut invocation);
    invocation.arg(&ask.id).arg(ask.tokens).arg(ask.nano_usd).arg(ask.lease.as_secs().max(1)).arg(ask.scopes.len());
    for scope in &ask.scopes {
        let l = &scope.limits;
        invocation
            .arg(l.rpm.unwrap_or(0))
            .arg(l.tpm.unwrap_or(0))
            .arg(l.concurrency.unwrap_or(0))
            .arg(scope.daily_nano())
            .arg(scope.monthly_nano());
    }
    let reply: Vec<String> = store.call("admit", |mut c| async move { invocation.invoke_async(&mut c).await }).await?;
    read_admission(ask, &reply).ok_or_else(|| SharedError::Failed(format!("unexpected answer from the admission script: {reply:?}")))
}

/// The script's answer as the books' verdict.
fn read_admission(ask: &Ask, reply: &[String]) -> Option<Result<Admitted, Refused>> {
    let number = |i: usize| reply.get(i).and_then(|v| v.parse::<f64>().ok());
    let verdict = reply.first()?.as_str();
    if verdict != "ok" {
        let scope = number(1)? as usize;
        let limits = ask.scopes.get(scope)?.limits;
        let wait = number(2).filter(|w| *w >= 0.0);
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
        let requests = state(scope.limits.rpm.map(u64::from), number(at)?, number(at + 1)?);
        let tokens = state(scope.limits.tpm, number(at + 2)?, number(at + 3)?);
        admitted.headers.tighten(requests, tokens);
        let fraction = number(at + 4)?;
        if fraction >= 0.0 {
            admitted.budget_used = Some(admitted.budget_used.unwrap_or(0.0).max(fraction));
        }
    }
    Some(Ok(admitted))
}

/// Settlement on the store, tried three times a second apart (the store
/// may be coming back); a reservation never settled expires with its lease.
pub(super) async fn settle(store: &SharedStore, ask: &Ask, used: Use) {
    for attempt in 0..3 {
        let mut invocation = SETTLE.prepare_invoke();
        invocation.key(store.key(&format!("q:settled:{}", ask.id)));
        scope_keys(store, ask, &mut invocation);
        let diff = used.tokens as i64 - ask.tokens as i64;
        invocation.arg(&ask.id).arg(diff).arg(used.nano_usd).arg(ask.scopes.len());
        for scope in &ask.scopes {
            invocation.arg(scope.limits.tpm.unwrap_or(0)).arg(if scope.budget.is_some() { "1" } else { "0" });
        }
        let done: Result<i64, _> = store.call("settle", |mut c| async move { invocation.invoke_async(&mut c).await }).await;
        if done.is_ok() {
            return;
        }
        if attempt < 2 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    tracing::warn!(reservation = %ask.id, "could not settle on the shared store; the reservation expires with its lease");
}
