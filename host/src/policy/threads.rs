//! The policy threads: where the guest calls made for requests run, so that
//! guest code never runs on (or blocks, or panics) an async worker.
//!
//! Why plain threads: wasmtime-wasi's synchronous bindings serve a guest's
//! stdout, stderr and polls by blocking on a tokio runtime handle, which
//! panics on a tokio worker; and a guest call that runs inline on a worker
//! stalls every connection on it. A few dedicated threads with a bounded
//! queue keep guest work apart from the I/O that serves clients.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crossbeam_channel::{Receiver, Sender, TrySendError};

/// One unit of guest work.
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed set of threads taking jobs from one bounded queue. Dropping it
/// lets the threads finish the queued jobs and exit.
pub(crate) struct PolicyThreads {
    jobs: Sender<Job>,
}

/// The queue is full: every thread is busy and `queue` jobs wait.
#[derive(Debug)]
pub(crate) struct QueueFull;

impl PolicyThreads {
    /// Starts `threads` threads (at least one, named `name-N`) behind a
    /// queue of `queue` jobs.
    pub(crate) fn start(name: &str, threads: usize, queue: usize) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(queue.max(1));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || work(&rx))?;
        }
        Ok(Self { jobs: tx })
    }

    /// Queues `job`; refused at once when the queue is full.
    pub(crate) fn submit(&self, job: Job) -> Result<(), QueueFull> {
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) | TrySendError::Disconnected(_) => QueueFull,
        })
    }
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
    fn a_panicking_job_leaves_the_thread_serving() {
        let threads = PolicyThreads::start("policy", 1, 4).unwrap();
        threads.submit(Box::new(|| panic!("on purpose"))).unwrap();
        let (tx, rx) = mpsc::channel();
        threads.submit(Box::new(move || tx.send(7).unwrap())).unwrap();
        assert_eq!(rx.recv().unwrap(), 7);
    }
}
