//! Cranelift's incremental compilation cache, kept in memory: compiling a
//! new version of a policy reuses the machine code of every function that
//! did not change (usually all but a few: the standard library, serde, the
//! SDK), so a fleet switches versions at a fraction of a full compile.
//!
//! Keys are Cranelift's hashes of a function's IR and the target's flags, so
//! an entry only ever stands for the same code. Entries are produced by this
//! process's own compiler; nothing is read from disk.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use wasmtime::CacheStore;

/// The default bound on what the cache holds, in bytes.
pub const DEFAULT_FUNCTION_CACHE_BYTES: u64 = 64 << 20;

/// Compiled functions by key, evicted (S3-FIFO: the least used first) past
/// a size in bytes.
pub struct FunctionCache {
    entries: quick_cache::sync::Cache<Vec<u8>, Arc<[u8]>, ByBytes>,
    reused: AtomicU64,
    compiled: AtomicU64,
}

/// What the cache has done since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FunctionCacheStats {
    /// Functions whose machine code came from the cache.
    pub reused: u64,
    /// Functions compiled (not in the cache), then kept.
    pub compiled: u64,
    /// Bytes held now.
    pub bytes: u64,
}

impl FunctionCache {
    /// A cache holding at most `max_bytes` of keys and compiled code.
    pub fn new(max_bytes: u64) -> Self {
        // A guess at the number of functions (2 KiB each); the tables grow as needed.
        let functions = usize::try_from(max_bytes >> 11).unwrap_or(usize::MAX).max(16);
        let entries = quick_cache::sync::Cache::with_weighter(functions, max_bytes, ByBytes);
        Self { entries, reused: AtomicU64::new(0), compiled: AtomicU64::new(0) }
    }

    /// Counts since start, and the bytes held now.
    pub fn stats(&self) -> FunctionCacheStats {
        FunctionCacheStats {
            reused: self.reused.load(Ordering::Relaxed),
            compiled: self.compiled.load(Ordering::Relaxed),
            bytes: self.entries.weight(),
        }
    }
}

/// An entry weighs its key and its code.
#[derive(Clone)]
struct ByBytes;

impl quick_cache::Weighter<Vec<u8>, Arc<[u8]>> for ByBytes {
    fn weight(&self, key: &Vec<u8>, code: &Arc<[u8]>) -> u64 {
        (key.len() + code.len()) as u64
    }
}

impl fmt::Debug for FunctionCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FunctionCache").field("entries", &self.entries.len()).finish()
    }
}

impl CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let code = self.entries.get(key)?;
        self.reused.fetch_add(1, Ordering::Relaxed);
        Some(Cow::Owned(code.to_vec()))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        // Cranelift inserts exactly what it had to compile.
        self.compiled.fetch_add(1, Ordering::Relaxed);
        self.entries.insert(key.to_vec(), value.into());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_entries_and_stays_within_its_size() {
        let cache = FunctionCache::new(10_000);
        assert!(cache.insert(b"a", vec![1; 100]));
        assert_eq!(cache.get(b"a").as_deref(), Some(&[1u8; 100][..]));
        assert_eq!(cache.get(b"b"), None);
        assert_eq!((cache.stats().reused, cache.stats().compiled), (1, 1));
        for i in 0..1000u32 {
            cache.insert(&i.to_le_bytes(), vec![0; 100]);
        }
        assert!(cache.stats().bytes <= 10_000, "{}", cache.stats().bytes);
        assert!(cache.stats().bytes >= 5_000, "kept too little: {}", cache.stats().bytes);
    }
}
