//! Turns for the decisions that run on the workers (`decide_on = "worker"`):
//! at most `running` guest calls under way at once (a call longer than an
//! epoch tick yields, and keeps its instance meanwhile), at most `waiting`
//! more waiting for a turn; past that a decision is refused at once, as a
//! full policy-thread queue refuses one.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Semaphore, SemaphorePermit};

/// The turns of one runtime.
pub(crate) struct Turns {
    running: Semaphore,
    /// Decisions running or waiting for a turn.
    admitted: AtomicUsize,
    max_admitted: usize,
}

/// A decision's turn: given back when dropped.
pub(crate) struct Turn<'a> {
    _running: SemaphorePermit<'a>,
    _admitted: Admitted<'a>,
}

/// Counts a decision as admitted until dropped (while it waits too, so a
/// request dropped while waiting gives its place back).
struct Admitted<'a>(&'a AtomicUsize);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Turns {
    /// `running` turns at once (at least one), `waiting` more in line.
    pub(crate) fn new(running: usize, waiting: usize) -> Self {
        let running = running.max(1);
        Self { running: Semaphore::new(running), admitted: AtomicUsize::new(0), max_admitted: running + waiting }
    }

    /// Waits for a turn; `None` at once when the line is full.
    pub(crate) async fn take(&self) -> Option<Turn<'_>> {
        if self.admitted.fetch_add(1, Ordering::AcqRel) >= self.max_admitted {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let admitted = Admitted(&self.admitted);
        // The semaphore is never closed.
        let running = self.running.acquire().await.ok()?;
        Some(Turn { _running: running, _admitted: admitted })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn turns_run_so_many_at_once_queue_so_many_and_refuse_the_rest() {
        let turns = Turns::new(1, 1);
        let first = turns.take().now_or_never().flatten().expect("a free turn is given at once");
        let mut second = Box::pin(turns.take());
        assert!(second.as_mut().now_or_never().is_none(), "the second waits while the first runs");
        assert!(turns.take().now_or_never().expect("a refusal is immediate").is_none(), "the line is full");
        drop(first);
        let second = second.now_or_never().flatten().expect("the first's end gives the second its turn");
        drop(second);
        // Everything given back: a turn again at once, and room in line.
        let again = turns.take().now_or_never().flatten().expect("a free turn");
        let mut waiting = Box::pin(turns.take());
        assert!(waiting.as_mut().now_or_never().is_none());
        drop(waiting);
        assert!(turns.take().now_or_never().is_none(), "a dropped waiter gave its place back: this one waits");
        drop(again);
    }
}
