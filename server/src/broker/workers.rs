//! The one way work leaves an event loop: a named pool of threads behind a bounded
//! queue, and a panic guard around every job, so that a job that panics still answers
//! its connection (INTERNAL) instead of leaving it owed an answer forever.
//!
//! Four pools use it: the readers (PULLs and lookups by time, `read_threads`), the
//! slow requests (a deletion's durability wait, a message lookup), promotions (one
//! thread: a failover never waits behind the others) and the security thread (logins
//! and SECURITY_ADMIN, one worker: changes apply in order; `security_jobs.rs`). A
//! full queue refuses the job at once (BUSY, the connection stays open), never queues
//! without bound.

use keel_protocol::{ErrorCode, Response};
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Job = Box<dyn FnOnce() + Send>;

/// Why a job was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The queue holds `capacity` jobs already.
    Full,
    /// The pool has stopped (shutting down).
    Stopped,
}

impl Refused {
    /// The answer to the request whose job was refused.
    pub(crate) fn response(self, pool: &str, capacity: usize) -> Response {
        match self {
            Refused::Full => Response::error(
                ErrorCode::Busy,
                format!("{capacity} {pool} jobs are waiting; retry shortly"),
            ),
            Refused::Stopped => Response::error(
                ErrorCode::ShuttingDown,
                format!("the {pool} threads stopped"),
            ),
        }
    }
}

/// A named pool of threads taking jobs from one bounded queue.
pub(crate) struct Workers {
    name: &'static str,
    capacity: usize,
    jobs: Option<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

/// What a panic says, for the answer and the log.
fn panic_text(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_string())
}

/// Runs `work`; if it panics, logs it and returns `on_panic(what it said)` instead.
pub(crate) fn guarded<T>(
    what: &str,
    work: impl FnOnce() -> T,
    on_panic: impl FnOnce(String) -> T,
) -> T {
    match catch_unwind(AssertUnwindSafe(work)) {
        Ok(value) => value,
        Err(panic) => {
            let text = panic_text(panic.as_ref());
            log::error!("{what} panicked: {text}");
            on_panic(text)
        }
    }
}

/// The answer of a request whose work panicked.
pub(crate) fn internal(what: &str, panic: String) -> Response {
    Response::error(ErrorCode::Internal, format!("{what} failed: {panic}"))
}

impl Workers {
    /// Starts `count` threads named `keel-NAME-i` behind a queue of `capacity` jobs.
    pub(crate) fn start(
        name: &'static str,
        count: usize,
        capacity: usize,
    ) -> std::io::Result<Workers> {
        let (jobs, receiver) = std::sync::mpsc::sync_channel::<Job>(capacity);
        let receiver = Arc::new(Mutex::new(receiver));
        let mut threads = Vec::with_capacity(count);
        for index in 0..count.max(1) {
            let receiver = receiver.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("keel-{name}-{index}"))
                    .spawn(move || run(name, &receiver))?,
            );
        }
        Ok(Workers {
            name,
            capacity,
            jobs: Some(jobs),
            threads,
        })
    }

    /// Queues `job`. A job must answer its own request, panic or not (`guarded`).
    pub(crate) fn submit(&self, job: impl FnOnce() + Send + 'static) -> Result<(), Refused> {
        let Some(jobs) = &self.jobs else {
            return Err(Refused::Stopped);
        };
        match jobs.try_send(Box::new(job)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(Refused::Full),
            Err(TrySendError::Disconnected(_)) => Err(Refused::Stopped),
        }
    }

    /// The answer to a request `submit` refused.
    pub(crate) fn refusal(&self, refused: Refused) -> Response {
        refused.response(self.name, self.capacity)
    }

    /// Stops taking jobs, and waits up to `wait` for the threads to finish the queued
    /// ones. A thread stuck on a stalled disk is left behind rather than holding up the
    /// shutdown: nobody waits for its answer any more.
    pub(crate) fn stop(mut self, wait: Duration) {
        self.jobs = None;
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline && !self.threads.iter().all(|t| t.is_finished()) {
            std::thread::sleep(Duration::from_millis(5));
        }
        for thread in std::mem::take(&mut self.threads) {
            if !thread.is_finished() {
                log::warn!("a {} thread is still busy; not waiting for it", self.name);
            } else if thread.join().is_err() {
                log::error!("a {} thread panicked", self.name);
            }
        }
    }
}

fn run(name: &str, receiver: &Mutex<Receiver<Job>>) {
    loop {
        let job = {
            let receiver = receiver.lock().unwrap_or_else(|poison| poison.into_inner());
            receiver.recv()
        };
        let Ok(job) = job else { return };
        // A job answers its request itself; this guard only keeps the thread alive.
        guarded(name, job, |_| ());
    }
}

/// The pools a shard hands work to, shared by every loop.
#[derive(Clone)]
pub(crate) struct Pools {
    /// PULLs and lookups by time (`read_threads`).
    pub reads: Arc<Workers>,
    /// Requests that may block: a deletion's durability wait, a message lookup.
    pub slow: Arc<Workers>,
    /// Promotions, on a thread of their own: a failover never waits behind the others.
    pub promote: Arc<Workers>,
}

/// Which pool `Shard::offload` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pool {
    Slow,
    Promote,
}

impl Pools {
    /// Jobs each pool's queue holds before it refuses more (BUSY).
    pub const READS_QUEUED_MAX: usize = 1 << 16;
    pub const SLOW_QUEUED_MAX: usize = 64;
    pub const PROMOTE_QUEUED_MAX: usize = 4;
    /// Threads for the slow requests.
    pub const SLOW_THREADS: usize = 4;

    pub(crate) fn start(read_threads: usize) -> std::io::Result<Pools> {
        let start = |name, threads, queued| Workers::start(name, threads, queued).map(Arc::new);
        Ok(Pools {
            reads: start("reader", read_threads, Pools::READS_QUEUED_MAX)?,
            slow: start("slow", Pools::SLOW_THREADS, Pools::SLOW_QUEUED_MAX)?,
            promote: start("promote", 1, Pools::PROMOTE_QUEUED_MAX)?,
        })
    }

    /// Stops every pool once no loop holds them any more, waiting up to `wait` each.
    pub(crate) fn stop(self, wait: Duration) {
        for pool in [self.promote, self.slow, self.reads] {
            match Arc::try_unwrap(pool) {
                Ok(pool) => pool.stop(wait),
                Err(_) => log::warn!("a thread pool is still shared at shutdown; not waiting"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_job_is_answered_and_the_pool_keeps_working() {
        let workers = Workers::start("test", 1, 4).unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        for index in 0..3 {
            let sender = sender.clone();
            workers
                .submit(move || {
                    let answer = guarded(
                        "job",
                        || {
                            assert!(index != 1, "job {index} fails");
                            Response::Pong
                        },
                        |panic| internal("job", panic),
                    );
                    sender.send((index, answer)).unwrap();
                })
                .unwrap();
        }
        let mut answers: Vec<(i32, Response)> = (0..3).map(|_| receiver.recv().unwrap()).collect();
        answers.sort_by_key(|(index, _)| *index);
        assert_eq!(answers[0].1, Response::Pong);
        assert!(
            matches!(&answers[1].1, Response::Error(e) if e.code == ErrorCode::Internal && e.message.contains("job 1 fails")),
            "{:?}",
            answers[1].1
        );
        assert_eq!(answers[2].1, Response::Pong);
        workers.stop(Duration::from_secs(1));
    }

    #[test]
    fn a_full_queue_refuses_at_once() {
        let workers = Workers::start("test", 1, 1).unwrap();
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let wait = Mutex::new(wait);
        workers
            .submit(move || {
                let _ = wait.lock().unwrap().recv();
            })
            .unwrap();
        // The first job may still be in the queue or taken: fill until refused.
        let mut refused = None;
        for _ in 0..3 {
            if let Err(error) = workers.submit(|| ()) {
                refused = Some(error);
                break;
            }
        }
        assert_eq!(refused, Some(Refused::Full));
        let answer = workers.refusal(Refused::Full);
        assert!(matches!(answer, Response::Error(e) if e.code == ErrorCode::Busy));
        release.send(()).unwrap();
        workers.stop(Duration::from_secs(1));
    }
}
