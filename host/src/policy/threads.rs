//! Plain threads for guest work off the request path (outcomes, shadow
//! decisions) and, with `decide_on = "threads"`, decisions: a few
//! dedicated threads behind a bounded queue keep that guest CPU apart from
//! the I/O that serves clients. Guest calls are async (they yield once they
//! have run an epoch tick); a thread runs one to its end with [`block_on_guest`].

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};

/// One unit of guest work.
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed set of threads taking jobs from one queue, with room for as
/// many jobs as threads plus `queue` (counted until each job ends, so a
/// burst is not refused while idle threads are still waking). Dropping it
/// lets the threads finish the queued jobs and exit.
pub(crate) struct PolicyThreads {
    jobs: Sender<Job>,
    /// Jobs queued or running.
    admitted: Arc<AtomicUsize>,
    max_admitted: usize,
}

/// The queue is full: every thread is busy and `queue` jobs wait.
#[derive(Debug)]
pub(crate) struct QueueFull;

impl PolicyThreads {
    /// Starts `threads` threads (at least one, named `name-N`) with room
    /// for `queue` jobs waiting while every thread is busy.
    pub(crate) fn start(name: &str, threads: usize, queue: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let max_admitted = threads + queue.max(1);
        // Never full: `admitted` bounds it.
        let (tx, rx) = crossbeam_channel::bounded::<Job>(max_admitted);
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || work(&rx))?;
        }
        Ok(Self { jobs: tx, admitted: Arc::default(), max_admitted })
    }

    /// Queues `job`; refused at once when every thread is busy and the
    /// queue is full.
    pub(crate) fn submit(&self, job: Job) -> Result<(), QueueFull> {
        let Some(place) = Place::take(&self.admitted, self.max_admitted) else {
            return Err(QueueFull);
        };
        let job = Box::new(move || {
            let _place = place;
            job();
        });
        // A refused job is dropped here, and its place with it.
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) | TrySendError::Disconnected(_) => QueueFull,
        })
    }
}

/// One place of a bounded count, held until dropped (however its holder
/// ends, a panic included).
pub(crate) struct Place(Arc<AtomicUsize>);

impl Place {
    /// A place in `count`, unless it holds `max` already.
    pub(crate) fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        if count.fetch_add(1, Ordering::AcqRel) >= max {
            count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self(count.clone()))
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs `call`, a guest call, to its end on this thread, which must not be
/// a tokio runtime's (blocking there panics). Each thread keeps a
/// single-threaded runtime of its own for it: the guest's WASI clocks need a
/// timer, and its yields go to nothing else.
pub(crate) fn block_on_guest<T>(call: impl Future<Output = T>) -> T {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime =
            tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a current-thread runtime needs no resources that can fail");
    }
    RUNTIME.with(|runtime| runtime.block_on(call))
}

fn work(jobs: &Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        // A job reports its own result; a panic in one (a bug of ours, since
        // guest failures are errors) must not take the thread with it.
        if catch_unwind(AssertUnwindSafe(job)).is_err() {
            tracing::error!("a policy job panicked; the thread goes on");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn jobs_run_off_the_calling_thread_and_a_full_queue_refuses() {
        let threads = PolicyThreads::start("policy", 1, 1).unwrap();
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let (done_tx, done_rx) = mpsc::channel();
        let caller = std::thread::current().id();
        let done = done_tx.clone();
        // The first job holds the only thread until the gate opens.
        threads
            .submit(Box::new(move || {
                gate_rx.recv().unwrap();
                done.send(std::thread::current().id() != caller).unwrap();
            }))
            .unwrap();
        // Wait until the thread took it, so the queue's one slot is free.
        while !threads.jobs.is_empty() {
            std::thread::yield_now();
        }
        let done = done_tx.clone();
        threads.submit(Box::new(move || done.send(true).unwrap())).unwrap();
        assert!(threads.submit(Box::new(|| {})).is_err(), "a third job must not fit");
        gate_tx.send(()).unwrap();
        assert!(done_rx.recv().unwrap(), "the job ran on the policy thread");
        assert!(done_rx.recv().unwrap());
    }

    #[test]
    fn a_burst_fills_every_thread_and_the_queue_before_one_is_refused() {
        let threads = PolicyThreads::start("policy", 4, 1).unwrap();
        let (gate_tx, gate_rx) = crossbeam_channel::bounded::<()>(0);
        let (done_tx, done_rx) = mpsc::channel();
        // Sent at once, before any thread can have woken for the first.
        for _ in 0..5 {
            let (gate, done) = (gate_rx.clone(), done_tx.clone());
            assert!(threads
                .submit(Box::new(move || {
                    let _ = gate.recv();
                    done.send(()).unwrap();
                }))
                .is_ok());
        }
        assert!(threads.submit(Box::new(|| {})).is_err(), "four running and one waiting: the sixth is refused");
        drop(gate_tx);
        for _ in 0..5 {
            done_rx.recv().unwrap();
        }
    }

    #[test]
    fn a_panicking_job_leaves_the_thread_serving() {
        let threads = PolicyThreads::start("policy", 1, 4).unwrap();
        threads.submit(Box::new(|| panic!("on purpose"))).unwrap();
        let (tx, rx) = mpsc::channel();
        threads.submit(Box::new(move || tx.send(7).unwrap())).unwrap();
        assert_eq!(rx.recv().unwrap(), 7);
    }
}
