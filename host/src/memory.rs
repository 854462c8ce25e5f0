//! The process's allocator, mimalloc, and giving its free memory back to
//! the system once the load that needed it has passed.
//!
//! mimalloc frees empty pages and returns them to the system (after its
//! purge delay) only from within its own calls, and a page's blocks freed by
//! other threads are counted free only when the thread that owns the page
//! next collects. An idle router allocates almost nothing, so after 5,000
//! streams had ended it still held 188 MiB (idle: 18 MiB) until the next
//! requests came. Two things keep that from happening:
//! - [`on_worker_park`] makes each runtime thread collect, at most once a
//!   second, as it goes idle;
//! - [`configure`] keeps a thread from taking back, on a free, a page it had
//!   let go of: a worker that did so as a storm ended, then slept, held
//!   the page and every block the other threads freed in it (100-114 MiB of
//!   5,000 streams' memory, in 4 runs of 4, until that worker woke again).
//!   Left ownerless, a page goes back as soon as its last block is freed,
//!   by whichever thread frees it.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// mimalloc's `mi_option_page_reclaim_on_free` (v3's `mi_option_t`), which
/// libmimalloc-sys does not name; a test pins the number to its neighbours.
const PAGE_RECLAIM_ON_FREE: libmimalloc_sys::mi_option_t = 35;

/// The environment variable by which mimalloc's user sets that option; when
/// set, it is left alone.
const PAGE_RECLAIM_ON_FREE_ENV: &str = "MIMALLOC_PAGE_RECLAIM_ON_FREE";

/// Sets the allocator's options for a long-running server; call it first in
/// `main`, before any thread starts. Free a page's blocks and that page goes
/// back to the allocator's arena, not to the thread that let go of it
/// (`page_reclaim_on_free = -1`; mimalloc's default lets a thread reclaim its
/// own pages). Measured: requests/s and CPU a request at 1 and 64
/// connections did not move beyond noise (bench/memory.md).
pub fn configure() {
    if std::env::var_os(PAGE_RECLAIM_ON_FREE_ENV).is_none() {
        set_option(PAGE_RECLAIM_ON_FREE, -1);
    }
}

#[allow(unsafe_code, reason = "an FFI call with no pointers; the one way to set a mimalloc option")]
fn set_option(option: libmimalloc_sys::mi_option_t, value: std::ffi::c_long) {
    // SAFETY: `mi_option_set` takes an option number and a value; it ignores a
    // number out of range, and options are plain words read by each call.
    unsafe { libmimalloc_sys::mi_option_set(option, value) }
}

/// How often a thread collects at most: mimalloc's purge delay, so that
/// pages freed by one collection are returned by the next.
const COLLECT_EVERY: Duration = Duration::from_secs(1);

thread_local! {
    static LAST_COLLECT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// For the runtime's `on_thread_park`: when this thread last collected a
/// second or more ago, frees its empty pages and returns to the system what
/// was freed a purge delay ago. Idle workers wake at least once a second
/// (the server's heartbeat), so memory freed by a storm goes back within a
/// few seconds of its end; under load the check is one clock read a park.
pub fn on_worker_park() {
    let now = Instant::now();
    let due = LAST_COLLECT.with(|last| match last.get() {
        Some(at) if now.duration_since(at) < COLLECT_EVERY => false,
        _ => {
            last.set(Some(now));
            true
        }
    });
    if due {
        collect_this_thread();
    }
}

/// Frees this thread's empty pages and purges what has waited its delay.
#[allow(unsafe_code, reason = "an FFI call with no preconditions; the one way to ask mimalloc to collect")]
fn collect_this_thread() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any
    // thread at any time; on a thread whose mimalloc heap was never used it
    // returns at once. `false`: a normal collection (free empty pages, purge
    // expired ones), not a forced one that walks every heap page.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(unsafe_code, reason = "reads mimalloc options; no pointers")]
    fn option(option: libmimalloc_sys::mi_option_t) -> std::ffi::c_long {
        // SAFETY: `mi_option_get` takes an option number and returns its value.
        unsafe { libmimalloc_sys::mi_option_get(option) }
    }

    /// The option's number is mimalloc's: its neighbours in the enum hold
    /// their documented defaults (`generic_collect` 10000 before it,
    /// `page_full_retain` 2 and `page_max_candidates` 4 after it), so a
    /// mimalloc that renumbers its options fails here, not in production.
    #[test]
    fn the_reclaim_option_is_mimallocs_and_configure_turns_it_off() {
        assert_eq!(option(PAGE_RECLAIM_ON_FREE - 1), 10000, "mi_option_generic_collect");
        assert_eq!(option(PAGE_RECLAIM_ON_FREE + 1), 2, "mi_option_page_full_retain");
        assert_eq!(option(PAGE_RECLAIM_ON_FREE + 2), 4, "mi_option_page_max_candidates");
        if std::env::var_os(PAGE_RECLAIM_ON_FREE_ENV).is_none() {
            assert_eq!(option(PAGE_RECLAIM_ON_FREE), 0, "mimalloc's default");
            configure();
            assert_eq!(option(PAGE_RECLAIM_ON_FREE), -1);
        }
    }
}
