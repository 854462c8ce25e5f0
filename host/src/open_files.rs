//! The process's limit on open files, and the connections it allows.
//!
//! Every connection is a descriptor, and a client's request holds a second
//! one to its upstream. A service manager's default soft limit (often
//! 1,024) would end accepting at some 500 streams, with no answer to the
//! clients past it; the hard limit is usually far higher.

/// Descriptors kept for everything but the API listener's connections: the
/// admin listener's 64 connections, a shared store's pool (up to 64),
/// listeners, the runtime's own, log, policy and cache files, watches.
pub const RESERVED: u64 = 160;

/// Raises the soft limit on open files to the hard limit, as Go's runtime
/// does at start. Returns the limit now in force, or why it is unknown.
pub fn raise_to_hard_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// The API connections `limit` open files allow at once: two descriptors
/// each (the client's and its upstream's) past [`RESERVED`], at least one.
pub fn connections_allowed(limit: u64) -> usize {
    let pairs = limit.saturating_sub(RESERVED) / 2;
    usize::try_from(pairs).unwrap_or(usize::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_take_two_descriptors_past_the_reserve() {
        for (limit, allowed) in [(1024, 432), (300, 70), (RESERVED, 1), (0, 1), (1 << 20, 524_208)] {
            assert_eq!(connections_allowed(limit), allowed, "limit {limit}");
        }
    }
}
