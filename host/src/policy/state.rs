//! Policy state (contract 0.2's `state-get`, `state-set`, `state-add`):
//! small values the router keeps for a policy, by its name, shared by all
//! its instances and versions on this node. Instances are pooled and
//! recycled, so guest memory is no place for what a policy learns.
//! Bounded per policy; over a bound a write fails with the reason, and
//! expired entries are dropped first.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 << 10;
/// Most keys a policy keeps.
pub const MAX_KEYS: usize = 10_000;
/// Most bytes (keys and values) a policy keeps.
pub const MAX_BYTES: usize = 16 << 20;

/// One policy's state.
#[derive(Debug, Default)]
pub struct PolicyState {
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<String, Entry>,
    /// Bytes of keys and values held.
    bytes: usize,
}

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|at| now < at)
    }
}

impl Entries {
    fn remove(&mut self, key: &str) {
        if let Some(old) = self.map.remove(key) {
            self.bytes -= key.len() + old.value.len();
        }
    }

    fn purge_expired(&mut self, now: Instant) {
        let expired: Vec<String> = self.map.iter().filter(|(_, e)| !e.live(now)).map(|(k, _)| k.clone()).collect();
        for key in expired {
            self.remove(&key);
        }
    }

    /// Puts `value` at `key` when the bounds allow it.
    fn put(&mut self, key: &str, value: Vec<u8>, expires: Option<Instant>, now: Instant) -> Result<(), String> {
        if key.len() > MAX_KEY_BYTES {
            return Err(format!("a state key is at most {MAX_KEY_BYTES} bytes; this one has {}", key.len()));
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(format!("a state value is at most {MAX_VALUE_BYTES} bytes; this one has {}", value.len()));
        }
        let old = self.map.get(key).map_or(0, |e| key.len() + e.value.len());
        let fits = |e: &Self| {
            let keys = e.map.len() + usize::from(!e.map.contains_key(key));
            keys <= MAX_KEYS && e.bytes - old + key.len() + value.len() <= MAX_BYTES
        };
        if !fits(self) {
            self.purge_expired(now);
            let old_now = self.map.get(key).map_or(0, |e| key.len() + e.value.len());
            let keys = self.map.len() + usize::from(!self.map.contains_key(key));
            if keys > MAX_KEYS || self.bytes - old_now + key.len() + value.len() > MAX_BYTES {
                return Err(format!("the policy's state is full ({MAX_KEYS} keys, {MAX_BYTES} bytes at most)"));
            }
        }
        self.remove(key);
        self.bytes += key.len() + value.len();
        self.map.insert(key.to_owned(), Entry { value, expires });
        Ok(())
    }
}

impl PolicyState {
    /// The value at `key`, if set and not expired.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let mut entries = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        match entries.map.get(key) {
            Some(e) if e.live(now) => Some(e.value.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Sets `key` to `value`, expiring after `ttl` if given.
    pub fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), String> {
        let mut entries = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        entries.put(key, value, ttl.map(|t| now + t), now)
    }

    /// Adds `delta` to the counter at `key` (8 bytes, little-endian; 0 when
    /// unset or expired) and answers the new value. A counter keeps its
    /// expiry.
    pub fn add(&self, key: &str, delta: i64) -> Result<i64, String> {
        let mut entries = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let (current, expires) = match entries.map.get(key).filter(|e| e.live(now)) {
            None => (0, None),
            Some(e) => match <[u8; 8]>::try_from(e.value.as_slice()) {
                Ok(bytes) => (i64::from_le_bytes(bytes), e.expires),
                Err(_) => return Err(format!("the state key `{key}` holds {} bytes, not a counter (8 bytes)", e.value.len())),
            },
        };
        let next = current.checked_add(delta).ok_or_else(|| format!("the counter `{key}` would overflow"))?;
        entries.put(key, next.to_le_bytes().to_vec(), expires, now)?;
        Ok(next)
    }

    /// Keys and bytes held (expired entries included until purged).
    pub fn usage(&self) -> (usize, usize) {
        let entries = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (entries.map.len(), entries.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_counters_and_expiry() {
        let s = PolicyState::default();
        assert_eq!(s.get("a"), None);
        s.set("a", b"hello".to_vec(), None).unwrap();
        assert_eq!(s.get("a").as_deref(), Some(&b"hello"[..]));
        assert_eq!((s.add("n", 5), s.add("n", -2)), (Ok(5), Ok(3)));
        assert!(s.add("a", 1).unwrap_err().contains("not a counter"));
        s.set("t", vec![1], Some(Duration::from_millis(1))).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(s.get("t"), None);
        assert_eq!(s.usage(), (2, 1 + 5 + 1 + 8));
        s.set("n", i64::MAX.to_le_bytes().to_vec(), None).unwrap();
        assert!(s.add("n", 1).unwrap_err().contains("overflow"));
    }

    #[test]
    fn bounds_refuse_with_the_reason_and_expired_entries_make_room() {
        let s = PolicyState::default();
        assert!(s.set(&"k".repeat(MAX_KEY_BYTES + 1), vec![], None).unwrap_err().contains("key is at most"));
        assert!(s.set("big", vec![0; MAX_VALUE_BYTES + 1], None).unwrap_err().contains("value is at most"));
        for i in 0..MAX_KEYS {
            s.set(&format!("k{i}"), vec![], if i == 0 { Some(Duration::from_millis(1)) } else { None }).unwrap();
        }
        s.set("k1", vec![7], None).expect("replacing a key needs no new room");
        std::thread::sleep(Duration::from_millis(5));
        s.set("new", vec![], None).expect("the expired key made room");
        assert!(s.set("one-more", vec![], None).unwrap_err().contains("state is full"));
        // 16 MiB in all, keys included: 255 largest values fit, a 256th does not.
        let s = PolicyState::default();
        for i in 0..MAX_BYTES / MAX_VALUE_BYTES - 1 {
            s.set(&format!("v{i}"), vec![0; MAX_VALUE_BYTES], None).unwrap();
        }
        assert!(s.set("last", vec![0; MAX_VALUE_BYTES], None).unwrap_err().contains("state is full"));
    }
}
