//! The debounce loop shared by the file watchers: act once a burst of change
//! signals has settled, but never let a steady stream of signals starve the
//! action.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Calls `act` once `quiet` has passed without a signal after one or more
/// signals, or `10 * quiet` after the first of a burst that does not settle,
/// or every `poll` without any signal. Returns when `act` returns `false` or
/// the senders are gone.
pub(crate) fn run(rx: &Receiver<()>, quiet: Duration, poll: Option<Duration>, mut act: impl FnMut() -> bool) {
    let mut pending_since: Option<Instant> = None;
    loop {
        let wait = match (pending_since, poll) {
            (Some(_), _) => quiet,
            (None, Some(poll)) => poll,
            (None, None) => Duration::from_secs(3600),
        };
        let fire = match rx.recv_timeout(wait) {
            Ok(()) => {
                pending_since.get_or_insert_with(Instant::now);
                false
            }
            Err(RecvTimeoutError::Timeout) => pending_since.is_some() || poll.is_some(),
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let overdue = pending_since.is_some_and(|t| t.elapsed() > quiet * 10);
        if fire || overdue {
            pending_since = None;
            if !act() {
                return;
            }
        }
    }
}
