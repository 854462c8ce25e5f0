//! The process's allocator, mimalloc, and giving its free memory back to
//! the system once the load that needed it has passed.
//!
//! mimalloc frees empty pages and returns them to the system (after its
//! purge delay, a second) only from within its own calls: a thread that
//! allocates nothing after a storm keeps what the storm freed. An idle
//! router allocates almost nothing, so after 5,000 streams had ended it
//! still held 188 MiB (idle: 18 MiB) until the next requests came.
//! [`on_worker_park`] makes each runtime thread collect, at most once a
//! second, as it goes idle.

use std::cell::Cell;
use std::time::{Duration, Instant};

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
