//! Turns for the decisions that run on the workers (`decide_on = "worker"`):
//! at most `running` guest calls under way at once (a call that runs past
//! an epoch tick yields, and keeps its turn meanwhile), at most `waiting`
//! more waiting for a turn, each for at most `max_wait`; past that a
//! decision is refused (overloaded), as a full policy-thread queue refuses
//! one.
//!
//! A free turn goes to whoever asks first, a newcomer included: handing it
//! to the longest waiter instead would leave it idle until that task is
//! polled again, behind every other task of a busy worker.

use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::threads::Place;

/// The turns of one runtime.
pub(crate) struct Turns {
    running: AtomicUsize,
    max_running: usize,
    /// Decisions waiting for a turn (a request dropped while it waits gives
    /// its place back).
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
    /// A waiter that a newcomer keeps beating to a freed turn gives up then.
    max_wait: Duration,
    /// Told when a turn ends.
    freed: Notify,
}

/// A decision's turn: given back when dropped.
pub(crate) struct Turn<'a>(&'a Turns);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

impl Turns {
    /// `running` turns at once (at least one), `waiting` more in line, each
    /// for at most `max_wait`.
    pub(crate) fn new(running: usize, waiting: usize, max_wait: Duration) -> Self {
        Self {
            running: AtomicUsize::new(0),
            max_running: running.max(1),
            waiting: Arc::default(),
            max_waiting: waiting,
            max_wait,
            freed: Notify::new(),
        }
    }

    /// A turn, at once if one is free, else after waiting for one; `None`
    /// at once when the line is full, or after `max_wait` in it.
    pub(crate) async fn take(&self) -> Option<Turn<'_>> {
        if let Some(turn) = self.try_take() {
            return Some(turn);
        }
        let _waiting = Place::take(&self.waiting, self.max_waiting)?;
        let wait = async {
            loop {
                // Registered before looking, so that a turn freed in
                // between is not missed.
                let mut freed = pin!(self.freed.notified());
                freed.as_mut().enable();
                if let Some(turn) = self.try_take() {
                    return turn;
                }
                freed.await;
            }
        };
        tokio::time::timeout(self.max_wait, wait).await.ok()
    }

    fn try_take(&self) -> Option<Turn<'_>> {
        self.running.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max_running).then_some(n + 1)).ok().map(|_| Turn(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    /// A runtime entered for the waits' timers (never driven: they do not fire).
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap()
    }

    #[test]
    fn turns_run_so_many_at_once_queue_so_many_and_refuse_the_rest() {
        let rt = runtime();
        let _entered = rt.enter();
        let turns = Turns::new(1, 1, Duration::from_secs(60));
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
        let mut waiting = Box::pin(turns.take());
        assert!(waiting.as_mut().now_or_never().is_none(), "a dropped waiter gave its place back: this one waits, not refused");
        drop(again);
        assert!(waiting.now_or_never().flatten().is_some());
    }

    #[test]
    fn a_freed_turn_goes_to_whoever_asks_first() {
        let rt = runtime();
        let _entered = rt.enter();
        let turns = Turns::new(1, 1, Duration::from_secs(60));
        let first = turns.take().now_or_never().flatten().unwrap();
        let mut waiter = Box::pin(turns.take());
        assert!(waiter.as_mut().now_or_never().is_none());
        drop(first);
        // Not handed to the waiter before it runs again: a newcomer takes it.
        let newcomer = turns.take().now_or_never().flatten().expect("the free turn, at once");
        assert!(waiter.as_mut().now_or_never().is_none(), "the waiter looks again and waits");
        drop(newcomer);
        assert!(waiter.now_or_never().flatten().is_some(), "and gets the next one");
    }

    #[tokio::test]
    async fn a_waiter_gives_up_after_its_longest_wait() {
        let turns = Turns::new(1, 1, Duration::from_millis(20));
        let _first = turns.take().await.unwrap();
        assert!(turns.take().await.is_none(), "no turn came within the wait: refused");
        assert_eq!(turns.waiting.load(Ordering::Acquire), 0, "its place in line is given back");
    }
}
